"""The `sample` stage: draw synthetic rows from the model of the upstream `train` task (`foreach: train`).

A sample can be split into parts like `evaluate`: ``params: {parts: k}`` and ``grid: {product: {part: [0, ...,
k-1]}}``; part i draws the i-th share of `rows` (as numpy's array_split deals them) with a seed of its own
(derived from the task's seed and i), so the parts fan out over workers. A stage reading the sample whole gets
every part's rows. Each part's sampling.json holds its own figures (an LLM's valid-row rate and the counts it
comes from); `perfscale.results.sampling.combined_sampling` adds the parts of each sample up.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import Field

from perfscale.results.sampling import SAMPLING_JSON
from perfscale.stages.base import PartedParams, StageContext, stage_kind
from perfscale.stages.train import MODEL_FOLDER

if TYPE_CHECKING:
    from perfscale.generators import Generator
    from perfscale.plan.named import PlanCheck


class SampleParams(PartedParams):
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
    total = params.rows or int(ctx.upstream_table()["train_rows"].iloc[0])
    n, seed = part_share(total, ctx.seed, params.part, params.parts)
    if n == 0:  # more parts than rows: this one draws nothing
        rows = generator.sample(1, seed=seed, conditions=params.conditions, max_draws=params.max_draws).iloc[
            :0
        ]
    else:
        rows = generator.sample(n, seed=seed, conditions=params.conditions, max_draws=params.max_draws)
    report = generator.last_sampling.as_dict() if generator.last_sampling and n else {}
    for key in TEXT_COUNTS:  # generators that write text (the LLM) report their valid-row rate
        if key in rows.attrs and n:
            report[key] = rows.attrs[key]
    report |= {"generator": name, "part": params.part, "parts": params.parts, "rows": n}
    (ctx.artifacts / SAMPLING_JSON).write_text(json.dumps(report, indent=2))
    return rows.assign(generator=name)


TEXT_COUNTS = ("valid_row_rate", "generated_texts", "valid_texts")


def part_share(total: int, seed: int, part: int, parts: int) -> tuple[int, int]:
    """The rows and seed of part `part` of `parts` of a sample of `total` rows (unsplit: all, the seed)."""
    if parts == 1:
        return total, seed
    rows = len(np.array_split(np.arange(total), parts)[part])
    return rows, int(np.random.SeedSequence([seed, part]).generate_state(1)[0])
