"""Combining the parts of a split evaluation into the result of the unsplit one.

`evaluate(..., part=Part(i, k))` (or the evaluate stage with ``parts: k``) leaves the aggregates of column and
pair metrics out, because a part sees only some columns. `combine_parts` takes the long tables of all parts
and, per evaluation and metric, concatenates the per-column/per-pair components (part by part, so column
metrics keep the table's column order) and appends each declared aggregate as the mean of all of them, which
is what the unsplit metric returns (to rounding: pairs are summed in another order). elapsed_s becomes the
total over the parts. Rows of unsplit evaluations (``parts`` = 1, or no part columns) pass through unchanged,
so the report can call it on any evaluate stage.

Rows belong to the same evaluation when all their other columns (generator, the stage's `evaluation` key...)
agree; provenance columns are ignored. Parts that are missing (a failed task) are simply absent from the
aggregates: check the run status.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from perfscale.errors import BadInput
from perfscale.metrics.registry import _REGISTRY, PART_COLUMNS, RESULT_COLUMNS
from perfscale.tabular.columns import PROVENANCE_COLUMNS


def _as_table(tables: pd.DataFrame | Iterable[pd.DataFrame]) -> pd.DataFrame:
    frames = [tables] if isinstance(tables, pd.DataFrame) else list(tables)
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=[*RESULT_COLUMNS, "parts"])
    table = pd.concat(frames, ignore_index=True)
    missing = [c for c in RESULT_COLUMNS if c not in table.columns]
    if missing:
        raise BadInput(f"combine_parts: the tables lack the column(s) {missing} of an evaluate result")
    table = table.drop(columns=[c for c in PROVENANCE_COLUMNS if c in table.columns])
    for name in PART_COLUMNS:
        default = 0 if name == "part" else 1  # rows without part columns are whole evaluations
        table[name] = table[name].fillna(default).astype("int64") if name in table.columns else default
    return table


def _combine_metric(rows: pd.DataFrame, metric: str, where: str) -> pd.DataFrame:
    counts = sorted(int(k) for k in rows["parts"].unique())
    if len(counts) > 1:
        raise BadInput(
            f"combine_parts: metric {metric!r} of {where} has rows of evaluations split into "
            f"{counts} parts; the rows of one evaluation must all use the same `parts`"
        )
    spec = _REGISTRY.get(metric)
    if counts[0] == 1 or spec is None or spec.per == "table":
        if rows["part"].nunique() > 1:
            raise BadInput(f"combine_parts: metric {metric!r} of {where} was computed by several parts")
        return rows
    rows = rows.sort_values("part", kind="stable")
    repeated = rows["component"][rows["component"].duplicated()].unique().tolist()
    stray = rows["component"][rows["component"].isin(spec.aggregate)].unique().tolist()
    if repeated or stray:
        raise BadInput(
            f"combine_parts: metric {metric!r} of {where} has component(s) {repeated + stray} more than once "
            "or already aggregated; an evaluate grid that selects a metric twice cannot be combined"
        )
    rows = rows.assign(elapsed_s=float(rows.groupby("part")["elapsed_s"].first().sum()))
    if rows.empty or not spec.aggregate:
        return rows
    mean = float(np.mean(rows["value"].to_numpy()))
    first = rows.iloc[[0] * len(spec.aggregate)]
    return pd.concat([rows, first.assign(component=list(spec.aggregate), value=mean)], ignore_index=True)


def combine_parts(tables: pd.DataFrame | Iterable[pd.DataFrame]) -> pd.DataFrame:
    """One long table per evaluation from the long tables of its parts (see the module docstring).

    Columns: the grouping columns, then metric, component, value, elapsed_s, parts. Groups come out sorted by
    their grouping columns and metric name, so the result does not depend on the order parts were read in.
    """
    table = _as_table(tables)
    keys = [c for c in table.columns if c not in (*RESULT_COLUMNS, *PART_COLUMNS)]
    columns = [*keys, *RESULT_COLUMNS, "parts"]
    if table.empty:
        return table.reindex(columns=columns)
    combined = []
    for group, rows in table.groupby([*keys, "metric"], sort=True, dropna=False):
        where = ", ".join(f"{k}={v!r}" for k, v in zip(keys, group[:-1], strict=True)) or "the table"
        combined.append(_combine_metric(rows, str(group[-1]), where))
    out = pd.concat(combined, ignore_index=True)[columns]
    return out.astype({"value": "float64", "elapsed_s": "float64"})


def summary_rows(table: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """The rows of a (combined) result that summarise a whole table: the aggregates of column and pair
    metrics, and every component of other metrics that is not named like one of `columns`."""
    names = set(map(str, columns))

    def is_summary(metric: str, component: str) -> bool:
        spec = _REGISTRY.get(metric)
        if spec is not None and spec.per != "table":
            return component in spec.aggregate
        return component not in names

    mask = [is_summary(m, c) for m, c in zip(table["metric"], table["component"], strict=True)]
    return table[np.asarray(mask, dtype=bool)]
