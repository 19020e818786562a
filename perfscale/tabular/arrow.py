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
    return pa.Table.from_pandas(data, preserve_index=False).replace_schema_metadata(None)
