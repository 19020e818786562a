"""Column values as the metrics read them, and the input checks every metric relies on.

Metrics never look at raw dtypes: numeric and datetime columns go through `continuous_values` (here) /
`float_values`, categorical and boolean columns through `category_codes` (both in perfscale.tabular.encode,
shared with generators and the report). `check_tables` guarantees that
these conversions succeed, so metric code can stay free of input validation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from perfscale.errors import BadInput
from perfscale.tabular.encode import (
    CONTINUOUS_TYPES,
    DISCRETE_TYPES,
    as_datetimes,
    as_numbers,
    category_codes,
    float_values,
)
from perfscale.tabular.meta import ColumnType, TableMeta

_EXAMPLES = 5  # offending values quoted in an error message


def is_int(value: object) -> bool:
    """True for Python/numpy integers but not for booleans (options such as bins=True are mistakes)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def continuous_columns(meta: TableMeta) -> list[str]:
    return meta.names(*CONTINUOUS_TYPES)


def discrete_columns(meta: TableMeta) -> list[str]:
    return meta.names(*DISCRETE_TYPES)


def continuous_values(series: pd.Series, ctype: ColumnType) -> np.ndarray:
    """The non-missing values of a numeric or datetime column.

    Datetimes are int64 nanoseconds since the epoch, kept as integers so that timestamps closer than a float's
    resolution (~256 ns today) stay distinct, as they do in SDMetrics' KSComplement.
    """
    if ctype == "datetime":
        dt = as_datetimes(series).dropna()
        return dt.to_numpy(dtype="datetime64[ns]").view("int64")
    values = as_numbers(series).to_numpy()
    return values[~np.isnan(values)]


def category_counts(*series: pd.Series, keep_missing: bool) -> list[np.ndarray]:
    """Counts of every category of the shared union (see `category_codes`), one aligned array per series."""
    codes, k = category_codes(*series, keep_missing=keep_missing)
    return [np.bincount(c[c >= 0], minlength=k).astype("float64") for c in codes]


def with_aggregate(per_column: dict[str, float], name: str) -> dict[str, float]:
    """Per-column components followed by their mean under `name`; {} when there is no column.

    A column literally called like the aggregate (e.g. a column "mean") is reported as "column:<name>" so that
    it cannot overwrite the aggregate.
    """
    if not per_column:
        return {}
    out = {(f"column:{col}" if col == name else col): float(v) for col, v in per_column.items()}
    out[name] = float(np.mean(list(per_column.values())))
    return out


def _non_numeric(series: pd.Series, ctype: ColumnType) -> pd.Series:
    """The values of a numeric/datetime column that are present but cannot be read as its type."""
    present = series.notna()
    converted = as_datetimes(series) if ctype == "datetime" else as_numbers(series)
    return series[present & converted.isna()]


def _check_values(table: pd.DataFrame, meta: TableMeta, what: str) -> None:
    for name in continuous_columns(meta):
        ctype = meta.columns[name].type
        bad = _non_numeric(table[name], ctype)
        if not bad.empty:
            examples = list(pd.unique(bad.astype(object)))[:_EXAMPLES]
            kind = "datetime" if ctype == "datetime" else "numeric"
            raise BadInput(
                f"{what} column {name!r} is {ctype} but holds {len(bad)} non-{kind} value(s), e.g. {examples}"
            )
        if ctype != "datetime" and np.isinf(float_values(table[name], ctype)).any():
            raise BadInput(f"{what} column {name!r} holds infinite values; metrics need finite numbers")


def _check_columns(table: pd.DataFrame, expected: list[str], what: str, against: str) -> None:
    cols = [str(c) for c in table.columns]
    dupes = sorted({c for c in cols if cols.count(c) > 1})
    if dupes:
        raise BadInput(f"{what} table has duplicated columns {dupes}")
    missing, extra = sorted(set(expected) - set(cols)), sorted(set(cols) - set(expected))
    if missing or extra:
        raise BadInput(f"{what} table's columns differ from the {against}: missing {missing}, extra {extra}")


def check_tables(real: pd.DataFrame, synth: pd.DataFrame, meta: TableMeta, what: str = "synthetic") -> None:
    """Raise BadInput unless `real` and `synth` (named `what` in messages) can be compared under `meta`.

    Checks: both are non-empty DataFrames with the same set of columns (order is free), which are the
    columns of `meta`; numeric columns hold only finite numbers (or missing values), datetime columns only
    parseable dates.
    """
    for label, table in (("real", real), (what, synth)):
        if not isinstance(table, pd.DataFrame):
            raise BadInput(f"the {label} table must be a pandas DataFrame, not {type(table).__name__}")
    _check_columns(real, list(meta.columns), "real", "column metadata")
    _check_columns(synth, [str(c) for c in real.columns], what, "real table's")
    for label, table in (("real", real), (what, synth)):
        if table.empty:
            raise BadInput(f"the {label} table has no rows")
    real, synth = real.rename(columns=str), synth.rename(columns=str)
    _check_values(real, meta, "real")
    _check_values(synth, meta, what)
