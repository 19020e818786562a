"""Imports the modules of the built-in stage kinds so that they register themselves."""

from perfscale.stages import evaluate, function, generate, ingest, predict, profile, split  # noqa: F401
