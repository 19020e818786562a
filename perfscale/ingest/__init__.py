"""Importers of existing performance data into perfscale tables."""

from perfscale.ingest.registry import get_ingester, ingester, list_ingesters, read_source

__all__ = ["get_ingester", "ingester", "list_ingesters", "read_source"]
