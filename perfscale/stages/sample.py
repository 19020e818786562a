"""The `sample` stage: draw synthetic rows from the model of the upstream `train` task (`foreach: train`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import Field

from perfscale.stages.base import StageContext, StageParams, stage_kind
from perfscale.stages.train import MODEL_FOLDER

if TYPE_CHECKING:
    from perfscale.generators import Generator
    from perfscale.plan.named import PlanCheck

SAMPLING_JSON = "sampling.json"


class SampleParams(StageParams):
    rows: int | None = Field(None, gt=0, description="rows to draw (default: as many as the training table)")
    conditions: str | dict[str, Any] | None = Field(
        None, description="e.g. 'threads in [4, 8] and 5 <= wall_time_s <= 10' (see docs/generators.md)"
    )
    max_draws: int | None = Field(None, gt=0, description="rejection-sampling budget (default 100 x rows)")

    def plan_check(self, check: PlanCheck) -> None:
        check.upstream("train")
        check.conditions("conditions", self.conditions)


def load_upstream_generator(ctx: StageContext) -> tuple[Generator, str]:
    """The model of the upstream `train` task (`foreach: train`) and its generator name."""
    from perfscale.generators import load_generator

    # the model folder was written by this run's own train task, so loading its pickle is trusted
    generator = load_generator(ctx.upstream_artifacts() / MODEL_FOLDER, trust=True)
    return generator, str(ctx.upstream.params["generator"])


@stage_kind("sample", SampleParams)
def sample(ctx: StageContext, params: SampleParams) -> pd.DataFrame:
    """Draw rows from the upstream `train` task's model (`foreach: train`).

    How sampling went (rows drawn, accepted, acceptance rate, native or rejection; an LLM's valid-row rate)
    is written to the task's artifacts as sampling.json, which the report shows.
    """
    generator, name = load_upstream_generator(ctx)
    n = params.rows or int(ctx.upstream_table()["train_rows"].iloc[0])
    rows = generator.sample(n, seed=ctx.seed, conditions=params.conditions, max_draws=params.max_draws)
    report = generator.last_sampling.as_dict() if generator.last_sampling else {}
    if "valid_row_rate" in rows.attrs:  # generators that write text (the LLM) report their valid-row rate
        report["valid_row_rate"] = rows.attrs["valid_row_rate"]
    (ctx.artifacts / SAMPLING_JSON).write_text(json.dumps(report | {"generator": name}, indent=2))
    return rows.assign(generator=name)
