"""The `split` stage: pick the modelling columns of a stage's output and mark a seeded real holdout."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pydantic import Field

from perfscale.errors import BadInput
from perfscale.stages.base import StageContext, StageParams, stage_kind
from perfscale.tabular.columns import SPLIT_COLUMN

if TYPE_CHECKING:
    from perfscale.plan.named import PlanCheck


class SplitParams(StageParams):
    source: str = Field(description="the stage whose output is split (must be listed in `inputs`)")
    columns: list[str] | None = Field(None, description="columns to keep (default: all but provenance)")
    holdout_fraction: float = Field(0.25, gt=0, lt=1)
    rows: int | None = Field(None, ge=4, description="keep a seeded random subset of this many rows first")

    def plan_check(self, check: PlanCheck) -> None:
        check.source("source", self.source)


@stage_kind("split", SplitParams)
def split(ctx: StageContext, params: SplitParams) -> pd.DataFrame:
    """Keep the modelling columns and add `split` = train | holdout (a seeded shuffle)."""
    table = ctx.input(params.source)
    if params.columns is not None:
        missing = [c for c in params.columns if c not in table.columns]
        if missing:
            hint = (
                "; columns starting with `_` are provenance, hidden from stages (the ingest stage's "
                "keep_provenance: true makes an importer's ones data)"
                if any(c.startswith("_") for c in missing)
                else ""
            )
            raise BadInput(
                f"split.columns names {missing}, not in {params.source!r}; available: {sorted(table.columns)}"
                + hint
            )
        table = table[params.columns]
    if SPLIT_COLUMN in table.columns:
        raise BadInput(f"{params.source!r} already has a column named {SPLIT_COLUMN!r}")
    if len(table) < 4:
        raise BadInput(f"{params.source!r} has {len(table)} rows; a train/holdout split needs at least 4")
    # sort first so the split does not depend on the order shards were read in
    table = table.sort_values(list(table.columns), kind="stable", ignore_index=True)
    if params.rows is not None and params.rows < len(table):
        keep = np.random.default_rng([ctx.seed, 1]).choice(len(table), params.rows, replace=False)
        table = table.iloc[np.sort(keep)].reset_index(drop=True)
    n_holdout = max(1, round(len(table) * params.holdout_fraction))
    order = np.random.default_rng(ctx.seed).permutation(len(table))
    labels = np.full(len(table), "train", dtype=object)
    labels[order[:n_holdout]] = "holdout"
    return table.assign(**{SPLIT_COLUMN: labels})
