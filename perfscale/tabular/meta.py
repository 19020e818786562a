"""Column metadata shared by generators and metrics: what each column is and which values it may take."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from perfscale.errors import BadInput

ColumnType = Literal["numerical", "integer", "categorical", "boolean", "datetime"]

# an integer column with at most this many distinct values is a discrete set (threads: 1, 2, 4, 8...)
DISCRETE_MAX_VALUES = 32


class Column(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: ColumnType
    allowed: list[Any] | None = Field(None, description="the only values the column may take")
    min: float | None = None
    max: float | None = None

    @property
    def is_numeric(self) -> bool:
        return self.type in ("numerical", "integer")


class TableMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")

    columns: dict[str, Column]

    def names(self, *types: ColumnType) -> list[str]:
        return [n for n, c in self.columns.items() if not types or c.type in types]

    @property
    def numeric(self) -> list[str]:
        return self.names("numerical", "integer")

    @property
    def categorical(self) -> list[str]:
        return self.names("categorical", "boolean")

    def with_overrides(self, overrides: dict[str, dict[str, Any]]) -> TableMeta:
        cols = dict(self.columns)
        for name, fields in overrides.items():
            if name not in cols:
                raise BadInput(f"column override names unknown column {name!r}; columns are {sorted(cols)}")
            cols[name] = Column.model_validate(cols[name].model_dump() | fields)
        return TableMeta(columns=cols)


def infer_column(series: pd.Series) -> Column:
    s = series.dropna()
    if pd.api.types.is_bool_dtype(series):
        return Column(type="boolean", allowed=[False, True])
    if pd.api.types.is_datetime64_any_dtype(series):
        return Column(type="datetime")
    if pd.api.types.is_numeric_dtype(series):
        if s.empty:
            return Column(type="numerical")
        lo, hi = float(s.min()), float(s.max())
        integral = pd.api.types.is_integer_dtype(series) or bool(np.all(np.mod(s.to_numpy(float), 1) == 0))
        if integral:
            values = np.unique(s.to_numpy())
            allowed = [int(v) for v in values] if len(values) <= DISCRETE_MAX_VALUES else None
            return Column(type="integer", allowed=allowed, min=lo, max=hi)
        return Column(type="numerical", min=lo, max=hi)
    values = sorted(map(str, s.unique()))
    return Column(type="categorical", allowed=values)


def infer_meta(df: pd.DataFrame) -> TableMeta:
    """Infer column types and allowed values; raise BadInput for tables that cannot be modelled."""
    if df.shape[1] == 0:
        raise BadInput("the table has no columns")
    return TableMeta(columns={str(c): infer_column(df[c]) for c in df.columns})
