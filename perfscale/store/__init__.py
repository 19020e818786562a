"""Run directories, atomic Parquet shards, attempts and provenance."""

from perfscale.store.run import PROVENANCE_COLUMNS, Provenance, RunStore

__all__ = ["PROVENANCE_COLUMNS", "Provenance", "RunStore"]
