"""The one DataFrame -> Arrow conversion: what a stage or an importer returns, as the table the store writes.

No pandas index column and no pandas schema metadata: a shard's schema is its columns only, so shards written
from pandas and from Arrow unify. Pandas is imported only for a DataFrame (the run store stays light).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    import pandas as pd


def to_arrow(data: pa.Table | pd.DataFrame) -> pa.Table:
    """`data` as an Arrow table (an Arrow table is returned as it is)."""
    if isinstance(data, pa.Table):
        return data
    names = list(data.columns)
    if data.columns.is_unique and all(type(n) is str for n in names):
        # column by column, as from_pandas converts them, without building the pandas metadata it would
        # then drop: half the cost of a one-row shard's conversion
        try:
            arrays = [pa.array(column, from_pandas=True) for _, column in data.items()]
            return pa.Table.from_arrays(arrays, names=names)
        except (pa.ArrowException, TypeError, ValueError):
            pass  # from_pandas raises the same error, naming the column
    return pa.Table.from_pandas(data, preserve_index=False).replace_schema_metadata(None)
