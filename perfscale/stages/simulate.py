"""The `simulate` stage: model-based scheduling (perfscale.models.schedsim, docs/relperf.md). Jobs are sampled
with replacement from a `fit_predict` stage's tested rows of relative performance (`truth_speed_<machine>`,
`pred_speed_<machine>` of one model and split), placed by the predicted speed, the true speed or at random,
and run by FCFS + EASY backfilling on each machine. One row per placement policy: makespan, mean wait.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
from pydantic import Field

from perfscale.stages.base import StageContext, StageParams, stage_kind

if TYPE_CHECKING:
    from perfscale.plan.named import PlanCheck


class SimulateParams(StageParams):
    source: str = Field(description="a fit_predict stage of speed_<machine> targets, listed in `inputs`")
    model: str = Field(description="whose predictions place the jobs (a model of that stage)")
    split: str = Field("random:vector", description="which of that stage's splits (its `split` column)")
    machines: dict[str, int] = Field(min_length=2, description="machine (its speed_ target) -> node count")
    jobs: int = Field(50_000, ge=1, le=1_000_000)
    max_nodes: int = Field(4, ge=1, description="a job asks for 1 to max_nodes nodes, uniformly")
    mean_interarrival: float = Field(1.0, gt=0, description="mean time between arrivals (exponential)")
    mean_runtime: float = Field(20.0, gt=0, description="mean run time on the job's fastest machine")
    backfill_depth: int = Field(100, ge=0)

    def plan_check(self, check: PlanCheck) -> None:
        check.source("source", self.source)


@stage_kind("simulate", SimulateParams)
def simulate_stage(ctx: StageContext, params: SimulateParams) -> pd.DataFrame:
    """Makespan and mean wait per placement policy (predicted, true, random)."""
    from perfscale.errors import BadInput
    from perfscale.models.schedsim import place_and_simulate

    table = ctx.input(params.source)
    rows = table[(table["model"] == params.model) & (table["split"] == params.split)]
    if rows.empty:
        pairs = sorted(set(zip(table["model"], table["split"], strict=True)))
        raise BadInput(f"simulate: {params.source!r} has no rows of model {params.model!r}, split "
                       f"{params.split!r}; it has {pairs}")  # fmt: skip
    truth = pd.DataFrame({m: rows.get(f"truth_speed_{m}") for m in params.machines})
    guess = pd.DataFrame({m: rows.get(f"pred_speed_{m}") for m in params.machines})
    missing = [m for m in params.machines if truth[m].isna().all() or guess[m].isna().all()]
    if missing:
        raise BadInput(f"simulate: {params.source!r} predicts no speed_ target for machines {missing}")
    result = place_and_simulate(
        truth.reset_index(drop=True),
        guess.clip(lower=1e-6).reset_index(drop=True),
        params.machines,
        params.jobs,
        ctx.seed,
        max_nodes=params.max_nodes,
        mean_interarrival=params.mean_interarrival,
        mean_runtime=params.mean_runtime,
        backfill_depth=params.backfill_depth,
    )
    return result.assign(model=params.model, split=params.split)
