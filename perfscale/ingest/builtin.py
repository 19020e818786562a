"""Imports the built-in importers so that they register themselves."""

from perfscale.ingest import jobtrace, sacct, tabular  # noqa: F401
