"""Small real tables shared by the generator tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.datasets import load_iris


def iris_table(threads: Sequence[int] = (1, 2, 4, 8)) -> pd.DataFrame:
    """iris with its class as strings (`species`) and a discrete int64 `threads` column cycling `threads`."""
    iris = load_iris(as_frame=True)
    df = iris.data.copy()
    df["species"] = [str(iris.target_names[t]) for t in iris.target]
    df["threads"] = np.array(threads)[np.arange(len(df)) % len(threads)]
    return df
