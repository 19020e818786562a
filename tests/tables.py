"""Small real tables shared by the generator tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.datasets import load_iris

from perfscale.tabular.meta import TableMeta


def iris_table(threads: Sequence[int] = (1, 2, 4, 8)) -> pd.DataFrame:
    """iris with its class as strings (`species`) and a discrete int64 `threads` column cycling `threads`."""
    iris = load_iris(as_frame=True)
    df = iris.data.copy()
    df["species"] = [str(iris.target_names[t]) for t in iris.target]
    df["threads"] = np.array(threads)[np.arange(len(df)) % len(threads)]
    return df


def assert_shaped_like(rows: pd.DataFrame, table: pd.DataFrame, meta: TableMeta, n: int) -> None:
    """A generator's `n` sampled rows have the training columns, dtypes, allowed values and ranges, no NaN."""
    assert len(rows) == n
    assert list(rows.columns) == list(table.columns)
    assert rows.dtypes.to_dict() == table.dtypes.to_dict()
    for column in meta.names("categorical", "boolean", "integer"):
        allowed = meta.columns[column].allowed
        if allowed is not None:
            assert set(rows[column]) <= set(allowed), column
    for column in meta.numeric:
        assert rows[column].between(meta.columns[column].min, meta.columns[column].max).all(), column
    assert rows.notna().all().all()
