"""The `evaluate` stage: metrics of one synthetic table against the real train and holdout splits.

One task evaluates one synthetic table (`foreach: <sample stage>`), whole or one part of it: with
``params: {parts: k}`` and ``grid: {product: {part: [0, 1, ..., k-1]}}`` the column and pair metrics are split
over k tasks by columns / column-pair blocks and the table metrics dealt out among them (see
`perfscale.metrics.registry`); `perfscale.metrics.combine_parts` (used by the report) merges the parts and
recomputes the aggregates. A grid over `metrics` (``metrics: [[dcr], [column_shapes, jsd]]``) splits the
work by metric instead; both can be combined.

Each row carries `generator`, the `part` / `parts` it came from, and `evaluation`: a key shared by all the
parts of one evaluation (same synthetic table, real input, options, part count and seed) that `combine_parts`
groups by.

Options: metrics with a `seed` option get the task's seed unless the study sets one (any subsampling is
seeded, and every part of an evaluation uses the same seed); metrics with a `holdout` option get the real
holdout split. A part converts only the columns its metrics use (`part_columns`) to pandas, and the holdout
only when one of its metrics takes it (the Arrow read of the real and synthetic shards is whole:
`RunStore.read_stage` has no column projection).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
from pydantic import Field

from perfscale.errors import BadInput
from perfscale.plan.keys import task_key
from perfscale.stages.base import PartedParams, StageContext, stage_kind
from perfscale.tabular.columns import SPLIT_COLUMN, split_part

if TYPE_CHECKING:
    from perfscale.metrics import MetricSpec
    from perfscale.plan.named import PlanCheck

DEFAULT_METRICS = ["column_shapes", "kl_divergence", "wasserstein", "jsd", "dcr"]
GENERATOR_COLUMN = "generator"


class EvaluateParams(PartedParams):
    source: str = Field(description="the `split` stage holding the real train/holdout table")
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def plan_check(self, check: PlanCheck) -> None:
        check.source("source", self.source)
        check.upstream()
        check.metrics(self.metrics, self.options, "metrics", "options")


def metric_options(
    options: dict[str, dict[str, Any]],
    specs: Sequence[MetricSpec],
    seed: int,
    holdout: pd.DataFrame | None = None,
) -> dict[str, dict[str, Any]]:
    """The study's metric options plus `seed` (where a metric takes one and none is set) and `holdout`."""
    out = {name: dict(opts) for name, opts in options.items()}
    for spec in specs:
        if "seed" in spec.options:
            out.setdefault(spec.name, {}).setdefault("seed", seed)
        if holdout is not None and "holdout" in spec.options:
            out.setdefault(spec.name, {})["holdout"] = holdout
    return out


def evaluation_key(ctx: StageContext, params: EvaluateParams) -> str:
    """What all parts of one evaluation share: what determines the task, except the part and the metrics."""
    what = params.model_dump(mode="json", exclude={"part", "metrics"}) | {"seed": ctx.seed}
    return task_key(ctx.task.stage, ctx.task.kind, what, ctx.task.inputs, ctx.task.upstream_key)


def _columns(table: pa.Table, wanted: list[str]) -> pd.DataFrame:
    return table.select([c for c in wanted if c in table.column_names]).to_pandas()


@stage_kind("evaluate", EvaluateParams)
def evaluate(ctx: StageContext, params: EvaluateParams) -> pd.DataFrame:
    """Long table: generator, metric, component, value, elapsed_s, part, parts, evaluation (`foreach`)."""
    from perfscale.metrics import Part, get_metric, part_columns
    from perfscale.metrics import evaluate as run_metrics
    from perfscale.metrics.registry import PART_COLUMNS, RESULT_COLUMNS, plan_part
    from perfscale.tabular.meta import infer_meta

    part = Part(params.part, params.parts)
    specs = [get_metric(n) for n in dict.fromkeys(params.metrics)]
    real = ctx.store.read_stage(params.source, provenance=False)
    synth = ctx.store.read_stage(ctx.upstream.stage, keys=[ctx.upstream.key], provenance=False)
    columns = [c for c in real.column_names if c != SPLIT_COLUMN]
    synth_columns = [c for c in synth.column_names if c != GENERATOR_COLUMN]
    if set(synth_columns) != set(columns):
        raise BadInput(
            f"the synthetic table of {ctx.upstream.stage!r} has other columns than the real table "
            f"{params.source!r}: missing {sorted(set(columns) - set(synth_columns))}, "
            f"extra {sorted(set(synth_columns) - set(columns))}"
        )
    needed = part_columns(params.metrics, columns, part)
    if not needed:  # more parts than work: this one has nothing to compute
        return pd.DataFrame(columns=[*RESULT_COLUMNS, *PART_COLUMNS, GENERATOR_COLUMN, "evaluation"])
    split = SPLIT_COLUMN in real.column_names
    real_rows = _columns(real, [*needed, SPLIT_COLUMN])
    train = split_part(real_rows, "train") if split else real_rows
    holdout = None
    if any("holdout" in u.spec.options for u in plan_part(specs, columns, part)):
        holdout = split_part(real_rows, "holdout") if split else real_rows
    del real, real_rows
    synth_rows = _columns(synth, [*needed, GENERATOR_COLUMN])
    del synth
    generator = (
        str(synth_rows.pop(GENERATOR_COLUMN).iloc[0])
        if GENERATOR_COLUMN in synth_rows
        else ctx.upstream.stage
    )
    options = metric_options(params.options, specs, ctx.seed, holdout)
    table = run_metrics(
        train, synth_rows, infer_meta(train), params.metrics, options, part=part, table_columns=columns
    )
    return table.assign(generator=generator, evaluation=evaluation_key(ctx, params))
