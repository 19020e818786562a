"""Imports the built-in importers so that they register themselves."""

from perfscale.ingest import tabular  # noqa: F401
