"""Table <-> model space for TabDDPM: quantile-normalised numbers and category indices.

Numeric columns (numerical, integer, and datetime as seconds since 1970 UTC) go through scikit-learn's
`QuantileTransformer(output_distribution="normal")` fitted on the training table, as in the reference code
(n_quantiles = max(min(rows // 30, 1000), 10), at most the row count). Its fitted state (quantiles and
references) is saved as plain arrays in the safetensors file and the transformer is rebuilt from them on
load: no pickle.

Categorical and boolean columns become category indices (categories sorted by their text; a missing value is
a category of its own, last). Values are matched by their text, as the shared post-processing does.

Discrete integer columns (an `allowed` set in the meta, as `infer_meta` gives integer columns with at most 32
values: thread counts, node counts...) are categories too when `discrete_as_categories` is on (the default
hyperparameter): the quantile transform maps a column's minimum and maximum to the transform's bounds
(+-5.2), so a few-valued column becomes a few spikes, two of them far out, which Gaussian diffusion learns
poorly (on iris with a 4-valued column, short fits put ~95% of the samples on the two extreme values).
Their categories are matched and sorted by value, so 4 and 4.0 are the same category.

Missing numeric cells: the cell enters the Gaussian part as 0 (the median, in quantile space) and an extra
two-class categorical column `<name>::missing` (0 = present, 1 = missing) is learned with the others; at
sampling a 1 there turns the generated number back into NaN, so the missing rate and its dependence on the
other columns are modelled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from perfscale.errors import BadInput
from perfscale.tabular.meta import TableMeta
from perfscale.tabular.values import json_value

MISSING_SUFFIX = "::missing"
_EPOCH = pd.Timestamp(0, tz="UTC")
_SECOND = pd.Timedelta(seconds=1)


@dataclass
class TableEncoder:
    """How a table's columns map to the model's numeric block and categorical block (see module doc).

    columns: the table's columns in order. numeric: the numeric block's columns (datetimes included).
    categorical: the categorical block's columns: the table's categorical/boolean columns, then one
        `<name>::missing` indicator per numeric column in `missing`.
    categories: each categorical-block column's values (JSON values; None is the missing category).
    datetimes: datetime columns -> their time zone name, or None for naive timestamps.
    discrete: integer columns modelled as categories (see the module docstring).
    """

    columns: list[str]
    numeric: list[str]
    categorical: list[str]
    categories: dict[str, list[Any]]
    missing: list[str] = field(default_factory=list)
    datetimes: dict[str, str | None] = field(default_factory=dict)
    discrete: list[str] = field(default_factory=list)
    quantiles: np.ndarray | None = None
    references: np.ndarray | None = None

    # ---- fitting and (de)serialisation -------------------------------------------------------------------

    @classmethod
    def fit(
        cls, table: pd.DataFrame, meta: TableMeta, seed: int, discrete_as_categories: bool = True
    ) -> TableEncoder:
        types = {c: meta.columns[c].type for c in table.columns}
        discrete = [
            c
            for c in table.columns
            if discrete_as_categories and types[c] == "integer" and meta.columns[c].allowed
        ]
        numeric = [
            c for c in table.columns if types[c] in ("numerical", "integer", "datetime") and c not in discrete
        ]
        plain = [c for c in table.columns if types[c] in ("categorical", "boolean") or c in discrete]
        missing = [c for c in numeric if table[c].isna().any()]
        categories = {c: _categories(table[c], c in discrete) for c in plain}
        categories |= {c + MISSING_SUFFIX: [0, 1] for c in missing}
        datetimes = {
            c: (str(table[c].dtype.tz) if getattr(table[c].dtype, "tz", None) is not None else None)
            for c in numeric
            if meta.columns[c].type == "datetime"
        }
        encoder = cls(
            columns=list(table.columns),
            numeric=numeric,
            categorical=plain + [c + MISSING_SUFFIX for c in missing],
            categories=categories,
            missing=missing,
            datetimes=datetimes,
            discrete=discrete,
        )
        if numeric:
            from sklearn.preprocessing import QuantileTransformer

            n_quantiles = min(max(min(len(table) // 30, 1000), 10), len(table))
            transformer = QuantileTransformer(
                n_quantiles=n_quantiles, output_distribution="normal", subsample=10**9, random_state=seed
            ).fit(encoder._raw_numeric(table))
            encoder.quantiles, encoder.references = transformer.quantiles_, transformer.references_
        return encoder

    def to_json(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "numeric": self.numeric,
            "categorical": self.categorical,
            "categories": self.categories,
            "missing": self.missing,
            "datetimes": self.datetimes,
            "discrete": self.discrete,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The quantile transformer's fitted state, to save next to the model weights."""
        if self.quantiles is None or self.references is None:
            return {}
        return {"quantiles": self.quantiles, "references": self.references}

    @classmethod
    def from_json(cls, data: dict[str, Any], arrays: dict[str, np.ndarray]) -> TableEncoder:
        """Rebuild from `to_json()` and `arrays()`; KeyError/TypeError/ValueError when they do not fit."""
        encoder = cls(
            columns=[str(c) for c in data["columns"]],
            numeric=[str(c) for c in data["numeric"]],
            categorical=[str(c) for c in data["categorical"]],
            categories={str(k): list(v) for k, v in data["categories"].items()},
            missing=[str(c) for c in data["missing"]],
            datetimes={str(k): v for k, v in data["datetimes"].items()},
            discrete=[str(c) for c in data["discrete"]],
        )
        if set(encoder.categorical) != set(encoder.categories):
            raise ValueError("'categorical' and 'categories' name different columns")
        if encoder.numeric:
            quantiles = np.asarray(arrays["quantiles"], dtype=np.float64)
            references = np.asarray(arrays["references"], dtype=np.float64)
            if quantiles.ndim != 2 or quantiles.shape != (len(references), len(encoder.numeric)):
                raise ValueError(
                    f"quantiles of shape {quantiles.shape} do not fit {len(encoder.numeric)} columns"
                )
            encoder.quantiles, encoder.references = quantiles, references
        return encoder

    # ---- encoding ----------------------------------------------------------------------------------------

    @property
    def num_classes(self) -> list[int]:
        return [len(self.categories[c]) for c in self.categorical]

    def encode(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """The training table as (numbers float32 [rows, numeric], category indices int64 [rows, categ.])."""
        raw = self._raw_numeric(table)
        x_num = self._to_normal(raw)
        absent = np.isnan(x_num)
        x_num[absent] = 0.0
        codes = [
            self._codes(table[c], c, strict=True)[0] for c in self.categorical if c not in self._indicators
        ]
        codes += [absent[:, self.numeric.index(c)].astype(np.int64) for c in self.missing]
        return x_num.astype(np.float32), _stack(codes, len(table))

    def encode_known(self, known: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A partly filled table as (numbers, numbers known?, indices, indices known?).

        NaN/None cells are unknown (to be generated); a known numeric cell also fixes its missing indicator
        to "present". Category values never seen in training are refused with BadInput.
        """
        raw = self._raw_numeric(known)
        num_known = ~np.isnan(raw)
        x_num = np.where(num_known, self._to_normal(raw), 0.0)
        codes, cat_known = [], []
        for c in self.categorical:
            if c in self._indicators:
                j = self.numeric.index(self._indicators[c])
                codes.append(np.zeros(len(known), dtype=np.int64))
                cat_known.append(num_known[:, j])
            else:
                code, is_known = self._codes(known[c], c, strict=False)
                codes.append(code)
                cat_known.append(is_known)
        n = len(known)
        cat_mask = np.column_stack(cat_known) if cat_known else np.zeros((n, 0), dtype=bool)
        return x_num.astype(np.float32), num_known, _stack(codes, n), cat_mask

    def decode(self, x_num: np.ndarray, x_cat: np.ndarray) -> pd.DataFrame:
        """Model-space rows back to a raw table with `columns` (post-processing snaps and clips later)."""
        out: dict[str, pd.Series] = {}
        if self.numeric:
            raw = self._transformer().inverse_transform(np.asarray(x_num, dtype=np.float64))
            for j, c in enumerate(self.numeric):
                values = raw[:, j].copy()
                if c in self.missing:
                    values[x_cat[:, self.categorical.index(c + MISSING_SUFFIX)] == 1] = np.nan
                out[c] = (
                    _from_seconds(values, self.datetimes[c]) if c in self.datetimes else pd.Series(values)
                )
        for j, c in enumerate(self.categorical):
            if c not in self._indicators:
                values = self.categories[c]
                out[c] = pd.Series([values[i] for i in x_cat[:, j]], dtype=object)
        return pd.DataFrame({c: out[c] for c in self.columns})

    # ---- helpers -----------------------------------------------------------------------------------------

    @property
    def _indicators(self) -> dict[str, str]:
        return {c + MISSING_SUFFIX: c for c in self.missing}

    def _raw_numeric(self, table: pd.DataFrame) -> np.ndarray:
        columns = [
            _to_seconds(table[c]) if c in self.datetimes else _to_float(table[c], c) for c in self.numeric
        ]
        return np.column_stack(columns) if columns else np.zeros((len(table), 0))

    def _transformer(self) -> Any:
        from sklearn.preprocessing import QuantileTransformer

        assert self.quantiles is not None and self.references is not None
        transformer = QuantileTransformer(n_quantiles=len(self.references), output_distribution="normal")
        transformer.quantiles_, transformer.references_ = self.quantiles, self.references
        transformer.n_quantiles_, transformer.n_features_in_ = len(self.references), len(self.numeric)
        return transformer

    def _to_normal(self, raw: np.ndarray) -> np.ndarray:
        return self._transformer().transform(raw) if self.numeric else raw.copy()

    def _codes(self, series: pd.Series, name: str, strict: bool) -> tuple[np.ndarray, np.ndarray]:
        """Category indices of `series` and whether each cell is set; missing cells are the missing
        category when `strict` (training), unknown (index 0, not set) otherwise."""
        by_value = name in self.discrete
        index = {_key(v, by_value): i for i, v in enumerate(self.categories[name])}
        codes = np.zeros(len(series), dtype=np.int64)
        is_set = np.zeros(len(series), dtype=bool)
        for row, value in enumerate(series.tolist()):
            key = _key(value, by_value)
            if key is None and not strict:
                continue
            if key not in index:
                seen = [v for v in self.categories[name] if v is not None]
                raise BadInput(
                    f"column {name!r} has value {value!r}, never seen in training; use one of {seen}"
                )
            codes[row], is_set[row] = index[key], True
        return codes, is_set


def _key(value: Any, by_value: bool = False) -> str | None:
    """The text a category value is matched by (by its float value for discrete integer columns)."""
    if value is None or (not isinstance(value, str) and bool(pd.isna(value))):
        return None
    if by_value:
        try:
            return repr(float(value))
        except (TypeError, ValueError):
            return str(value)
    return str(json_value(value))


def _categories(series: pd.Series, by_value: bool) -> list[Any]:
    values = {_key(v, by_value): json_value(v) for v in series.dropna().unique()}
    order = sorted(values, key=float) if by_value else sorted(values)
    out = [values[k] for k in order]
    return [*out, None] if series.isna().any() else out


def _stack(codes: list[np.ndarray], rows: int) -> np.ndarray:
    return np.column_stack(codes).astype(np.int64) if codes else np.zeros((rows, 0), dtype=np.int64)


def _to_float(series: pd.Series, name: str) -> np.ndarray:
    values = pd.to_numeric(series, errors="coerce")
    if int(values.isna().sum()) > int(series.isna().sum()):
        bad = series[values.isna() & series.notna()].iloc[0]
        raise BadInput(f"column {name!r} is numeric but has the non-numeric value {bad!r}")
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def _to_seconds(series: pd.Series) -> np.ndarray:
    return ((pd.to_datetime(series, utc=True) - _EPOCH) / _SECOND).to_numpy(dtype=np.float64, na_value=np.nan)


def _from_seconds(seconds: np.ndarray, tz: str | None) -> pd.Series:
    stamps = _EPOCH + pd.to_timedelta(pd.Series(seconds), unit="s")
    return stamps.dt.tz_localize(None) if tz is None else stamps.dt.tz_convert(tz)
