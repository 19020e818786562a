"""Plain tables: CSV and Parquet files, with their source file recorded on every row (`_source_file`, a
provenance column: hidden from stages, see perfscale.ingest.registry)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from perfscale.errors import BadInput
from perfscale.ingest.registry import ingester

SOURCE_FILE = "_source_file"


def _tag(table: pa.Table, file: Path) -> pa.Table:
    """Record the file each row came from (a re-import keeps the original `_source_file`)."""
    if SOURCE_FILE in table.column_names:
        return table
    return table.append_column(SOURCE_FILE, pa.array([str(file)] * table.num_rows, pa.string()))


def _concat(tables: list[pa.Table], files: list[Path]) -> pa.Table:
    tagged = [_tag(t, f) for t, f in zip(tables, files, strict=True)]
    return pa.concat_tables(tagged, promote_options="permissive")


@ingester("csv", patterns=("*.csv",), description="CSV files (header row), types inferred by Arrow")
def ingest_csv(files: list[Path]) -> pa.Table:
    tables = []
    for f in files:
        try:
            tables.append(pacsv.read_csv(f))
        except pa.ArrowInvalid as exc:
            raise BadInput(f"{f}: not a readable CSV file: {exc}") from None
    return _concat(tables, files)


@ingester("parquet", patterns=("*.parquet",), description="Parquet files, schemas unified")
def ingest_parquet(files: list[Path]) -> pa.Table:
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f))
        except (pa.ArrowInvalid, OSError) as exc:
            raise BadInput(f"{f}: not a readable Parquet file: {exc}") from None
    return _concat(tables, files)
