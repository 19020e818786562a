"""Table checks and post-processing shared by every generator.

Kept apart from `base.py` because it needs pandas/numpy at import time; `base.py` imports it lazily so that
`import perfscale.generators` stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from perfscale.errors import BadInput
from perfscale.tabular.meta import Column, TableMeta
from perfscale.tabular.values import is_missing, json_value

TELEMETRY_COLUMNS = ("epoch", "step", "loss", "value")
# pd.api.types.infer_dtype results that mean "more than one kind of value in one object column"
_MIXED_KINDS = frozenset({"mixed", "mixed-integer"})


def check_table(table: Any, meta: Any) -> None:
    """Reject tables no generator can learn from, with a message that says what to fix."""
    if not isinstance(table, pd.DataFrame):
        raise BadInput(f"the training table must be a pandas DataFrame, got {type(table).__name__}")
    if not isinstance(meta, TableMeta):
        raise BadInput(f"meta must be a perfscale.tabular.meta.TableMeta, got {type(meta).__name__}")
    if table.shape[1] == 0 or table.shape[0] == 0:
        raise BadInput(f"the training table is empty ({table.shape[0]} rows, {table.shape[1]} columns)")
    if table.shape[0] < 2:
        raise BadInput("the training table has a single row; a generator needs at least 2 rows")
    _check_columns(table, meta)
    for name in table.columns:
        _check_column(table[name], name)


def _check_columns(table: pd.DataFrame, meta: TableMeta) -> None:
    not_str = [c for c in table.columns if not isinstance(c, str)]
    if not_str:
        raise BadInput(f"column names must be strings; rename {not_str[:5]}")
    if table.columns.has_duplicates:
        dups = sorted(set(table.columns[table.columns.duplicated()]))
        raise BadInput(f"the training table has duplicate columns {dups}")
    missing, extra = set(meta.columns) - set(table.columns), set(table.columns) - set(meta.columns)
    if missing or extra:
        raise BadInput(
            f"meta does not describe the table: columns only in meta {sorted(missing)}, "
            f"only in the table {sorted(extra)}"
        )


def _check_column(series: pd.Series, name: str) -> None:
    if series.isna().all():
        raise BadInput(f"column {name!r} has only missing values; drop it before training")
    if series.dtype == object:
        kind = pd.api.types.infer_dtype(series, skipna=True)
        if kind in _MIXED_KINDS:
            kinds = sorted({type(v).__name__ for v in series.dropna()})
            raise BadInput(
                f"column {name!r} mixes value types {kinds} in one column; cast it to a single type "
                "(e.g. all strings) before training"
            )


@dataclass
class TableSpec:
    """What a generator remembers about its training table to shape every sample like it.

    `constants` are columns with a single value: they are not shown to the model and are reproduced as that
    constant in every sample. `category_values` keeps, per categorical/boolean column, the training values
    and their counts: invalid sampled values are redrawn from that distribution.
    """

    meta: TableMeta
    columns: list[str]
    dtypes: dict[str, str]
    constants: dict[str, Any] = field(default_factory=dict)
    category_values: dict[str, list[list[Any]]] = field(default_factory=dict)
    nullable: list[str] = field(default_factory=list)
    dtype_categories: dict[str, list[Any]] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: pd.DataFrame, meta: TableMeta) -> TableSpec:
        spec = cls(meta=meta, columns=list(table.columns), dtypes={c: str(table[c].dtype) for c in table})
        for name in table.columns:
            series = table[name]
            if series.nunique(dropna=False) == 1:
                spec.constants[name] = json_value(series.iloc[0])
            if series.isna().any():
                spec.nullable.append(name)
            if meta.columns[name].type in ("categorical", "boolean"):
                counts = series.dropna().value_counts(sort=False)
                spec.category_values[name] = [[json_value(v), int(k)] for v, k in counts.items()]
            if isinstance(series.dtype, pd.CategoricalDtype):
                spec.dtype_categories[name] = [json_value(v) for v in series.dtype.categories]
        return spec

    @property
    def model_columns(self) -> list[str]:
        """The columns a model learns: all but the constants."""
        return [c for c in self.columns if c not in self.constants]

    def model_meta(self) -> TableMeta:
        return TableMeta(columns={c: self.meta.columns[c] for c in self.model_columns})

    def dtype(self, name: str) -> Any:
        text = self.dtypes[name]
        if text == "category":
            return pd.CategoricalDtype(self.dtype_categories.get(name, []))
        return pd.api.types.pandas_dtype(text)

    def to_json(self) -> dict[str, Any]:
        return {
            "columns": [
                {"name": c, "dtype": self.dtypes[c], "type": self.meta.columns[c].type} for c in self.columns
            ],
            "meta": self.meta.model_dump(mode="json"),
            "constants": self.constants,
            "category_values": self.category_values,
            "nullable": self.nullable,
            "dtype_categories": self.dtype_categories,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TableSpec:
        spec = cls(
            meta=TableMeta.model_validate(data["meta"]),
            columns=[str(c["name"]) for c in data["columns"]],
            dtypes={str(c["name"]): str(c["dtype"]) for c in data["columns"]},
            constants=dict(data.get("constants", {})),
            category_values={k: list(v) for k, v in data.get("category_values", {}).items()},
            nullable=list(data.get("nullable", [])),
            dtype_categories=dict(data.get("dtype_categories", {})),
        )
        if set(spec.columns) != set(spec.meta.columns):
            raise ValueError("'columns' and 'meta' name different columns")
        for name in spec.columns:
            spec.dtype(name)  # fails early on an unknown dtype
        return spec


def model_table(table: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """The table a model sees: constants dropped, pandas categoricals as plain objects, a fresh index."""
    out = table[spec.model_columns].reset_index(drop=True)
    for name in out.columns:
        if isinstance(out[name].dtype, pd.CategoricalDtype):
            out[name] = out[name].astype(object)
    return out


def telemetry_frame(rows: pd.DataFrame | None) -> pd.DataFrame:
    """Normalise a generator's telemetry to the columns epoch, step (int), loss (str), value (float)."""
    if rows is None or rows.empty:
        return pd.DataFrame(
            {
                "epoch": pd.Series(dtype="int64"),
                "step": pd.Series(dtype="int64"),
                "loss": pd.Series(dtype=object),
                "value": pd.Series(dtype="float64"),
            }
        )
    missing = set(TELEMETRY_COLUMNS) - set(rows.columns)
    if missing:
        raise ValueError(f"generator telemetry lacks columns {sorted(missing)}")
    out = rows[list(TELEMETRY_COLUMNS)].reset_index(drop=True)
    return out.astype({"epoch": "int64", "step": "int64", "loss": object, "value": "float64"})


def postprocess(raw: pd.DataFrame | None, spec: TableSpec, n: int, seed: int) -> pd.DataFrame:
    """Shape raw model output like the training table: columns, order, dtypes and allowed values.

    `seed` drives the redraw of invalid categorical values, so the result is a pure function of its inputs.
    """
    if raw is not None:
        missing = set(spec.model_columns) - set(raw.columns)
        if missing or len(raw) != n:
            raise RuntimeError(
                f"generator returned {len(raw)} rows (wanted {n}) and lacks columns {sorted(missing)}"
            )
        raw = raw.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    out = {}
    for name in spec.columns:
        if name in spec.constants:
            values = pd.Series([spec.constants[name]] * n, dtype=object)
        else:
            values = _fix_column(raw[name], spec.meta.columns[name], spec, name, rng)
        out[name] = values.astype(spec.dtype(name))
    return pd.DataFrame(out, columns=spec.columns)


def _fix_column(
    values: pd.Series, col: Column, spec: TableSpec, name: str, rng: np.random.Generator
) -> pd.Series:
    if col.type in ("integer", "numerical"):
        fixed = fix_numeric(values.to_numpy(), col)
        if np.isnan(fixed).any() and not _holds_nan(spec.dtype(name)):
            fixed = np.where(np.isnan(fixed), _fallback(fixed, col), fixed)
        return pd.Series(fixed)
    if col.type in ("categorical", "boolean"):
        return fix_categorical(values, col, spec.category_values.get(name, []), name in spec.nullable, rng)
    return values


def fix_numeric(values: np.ndarray, col: Column) -> np.ndarray:
    """Snap to the nearest allowed value if the column has a set, else round integers; clip to [min, max]."""
    x = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    if col.allowed:
        x = snap(x, np.asarray(sorted(float(v) for v in col.allowed)))
    elif col.type == "integer":
        x = np.round(x)
    lo = -np.inf if col.min is None else col.min
    hi = np.inf if col.max is None else col.max
    return np.clip(x, lo, hi)


def snap(x: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Each value replaced by the nearest of the sorted `allowed` values (ties go low); NaN stays NaN."""
    if len(allowed) == 1:
        return np.where(np.isnan(x), np.nan, allowed[0])
    idx = np.clip(np.searchsorted(allowed, x), 1, len(allowed) - 1)
    lower, upper = allowed[idx - 1], allowed[idx]
    nearest = np.where(np.abs(x - lower) <= np.abs(upper - x), lower, upper)
    return np.where(np.isnan(x), np.nan, nearest)


def _holds_nan(dtype: Any) -> bool:
    if isinstance(dtype, pd.api.extensions.ExtensionDtype):
        return True
    return not (pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))


def _fallback(x: np.ndarray, col: Column) -> float:
    """Value for a NaN the dtype cannot hold: the (fixed) median of the other values, else the lowest."""
    finite = x[~np.isnan(x)]
    if finite.size:
        return float(fix_numeric(np.array([np.median(finite)]), col)[0])
    if col.allowed:
        return float(min(col.allowed))
    return float(col.min if col.min is not None else 0.0)


def fix_categorical(
    values: pd.Series, col: Column, seen: list[list[Any]], nullable: bool, rng: np.random.Generator
) -> pd.Series:
    """Keep values whose text is allowed (as the training value); redraw the rest by training frequency."""
    canonical = {str(v): v for v, _ in seen}
    allowed = {str(v) for v in col.allowed} if col.allowed is not None else set(canonical)
    text = values.map(lambda v: None if is_missing(v) else str(v))
    valid = text.isin(allowed) | (text.isna() & nullable)
    out = text.map(lambda t: canonical.get(t, t)).astype(object)
    bad = int((~valid).sum())
    if bad:
        choices, weights = _draw_pool(seen, allowed)
        picks = rng.choice(len(choices), size=bad, p=weights)
        out[~valid] = [choices[i] for i in picks]
    return out


def _draw_pool(seen: list[list[Any]], allowed: set[str]) -> tuple[list[Any], np.ndarray]:
    pool = [(v, k) for v, k in seen if str(v) in allowed] or [(v, 1) for v in sorted(allowed)]
    weights = np.asarray([k for _, k in pool], dtype=float)
    return [v for v, _ in pool], weights / weights.sum()
