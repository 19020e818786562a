"""Table values as numbers: one encoding shared by metrics (DCR, ML efficacy, dissimilarity, detection),
generators (SMOTE) and the report's UMAP.

`float_values`: a numeric or datetime column as float64, NaN where missing (datetimes in nanoseconds).
`category_codes`: the values of several columns coded in one shared set of categories.

`encode`: tables into one shared numeric space, the same for every table and fitted on the first (the real
train table) only:

* numeric and datetime columns: (x - train mean) / train std (ddof=1; a std that is 0 or undefined is 1).
  A missing value is put at the train mean, and if the column has a missing value in any table, a 0/1
  missing-indicator axis is added, so missing vs. present costs 1 more (squared) than present vs. present;
* categorical and boolean columns: one-hot over the union of categories of all tables (missing is a
  category), scaled by 1/sqrt(2) so that two rows differing only in one categorical column are at distance
  exactly 1, the same as a difference of one train std in one numeric column.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from perfscale.tabular.meta import ColumnType, TableMeta

CONTINUOUS_TYPES: tuple[ColumnType, ...] = ("numerical", "integer", "datetime")
DISCRETE_TYPES: tuple[ColumnType, ...] = ("categorical", "boolean")


def as_datetimes(series: pd.Series) -> pd.Series:
    """The column as naive datetime64 (tz-aware values converted to UTC); unparseable values become NaT."""
    if pd.api.types.is_datetime64_any_dtype(series):
        dt = series
    else:
        dt = pd.to_datetime(series, errors="coerce", utc=True, format="mixed")
    if getattr(dt.dt, "tz", None) is not None:
        dt = dt.dt.tz_convert("UTC").dt.tz_localize(None)
    return dt


def as_numbers(series: pd.Series) -> pd.Series:
    """The column as float64 (nullable NA -> NaN); non-numeric values become NaN."""
    return pd.to_numeric(series, errors="coerce").astype("float64")


def float_values(series: pd.Series, ctype: ColumnType) -> np.ndarray:
    """Every value of a numeric or datetime column as float64, NaN where missing (datetime: nanoseconds)."""
    if ctype == "datetime":
        dt = as_datetimes(series)
        out = dt.to_numpy(dtype="datetime64[ns]").view("int64").astype("float64")
        out[dt.isna().to_numpy()] = np.nan
        return out
    return as_numbers(series).to_numpy()


def category_codes(*series: pd.Series, keep_missing: bool) -> tuple[list[np.ndarray], int]:
    """Codes of each series' values in one shared set of categories (the union over all series).

    Values are compared as Python objects, so 1, 1.0 and True are one category (as in SDMetrics). With
    `keep_missing`, missing values (None, NaN, NaT) form one category of their own; otherwise their code
    is -1.
    Returns the codes of each series and the number of categories.
    """
    sizes = [len(s) for s in series]
    both = pd.concat([s.astype(object) for s in series], ignore_index=True)
    codes, uniques = pd.factorize(both, use_na_sentinel=not keep_missing)
    return np.split(codes, np.cumsum(sizes)[:-1]), len(uniques)


CATEGORY_MISMATCH_COST = 1.0  # distance between rows that differ only in one categorical column


def continuous_blocks(columns: list[np.ndarray]) -> list[np.ndarray]:
    """Standardised (n, 1) blocks, plus a missing-indicator column when any table has a missing value."""
    ref = columns[0][~np.isnan(columns[0])]
    mean = float(ref.mean()) if ref.size else 0.0
    std = float(ref.std(ddof=1)) if ref.size > 1 else 0.0
    std = std if math.isfinite(std) and std > 0 else 1.0
    any_missing = any(np.isnan(c).any() for c in columns)
    blocks = []
    for c in columns:
        missing = np.isnan(c)
        z = np.where(missing, 0.0, (c - mean) / std)[:, None]
        blocks.append(np.hstack([z, missing[:, None].astype("float64")]) if any_missing else z)
    return blocks


def one_hot_blocks(columns: list[pd.Series]) -> list[np.ndarray]:
    codes, k = category_codes(*columns, keep_missing=True)
    scale = CATEGORY_MISMATCH_COST / math.sqrt(2.0)
    blocks = []
    for c in codes:
        block = np.zeros((c.size, k))
        block[np.arange(c.size), c] = scale
        blocks.append(block)
    return blocks


def encode(tables: list[pd.DataFrame], meta: TableMeta) -> list[np.ndarray]:
    """Encode all tables into one shared numeric space; tables[0] (the real train table) fixes the scaling."""
    per_table: list[list[np.ndarray]] = [[] for _ in tables]
    for name, col in meta.columns.items():
        if col.type in CONTINUOUS_TYPES:
            blocks = continuous_blocks([float_values(t[name], col.type) for t in tables])
        else:
            blocks = one_hot_blocks([t[name] for t in tables])
        for acc, block in zip(per_table, blocks, strict=True):
            acc.append(block)
    return [np.hstack(acc) for acc in per_table]
