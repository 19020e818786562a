"""The `evaluate` stage: metrics of one synthetic table against the real train and holdout splits."""

from __future__ import annotations

from typing import Any

import pandas as pd
from pydantic import Field

from perfscale.stages.base import StageContext, StageParams, stage_kind
from perfscale.stages.generate import real_table

DEFAULT_METRICS = ["column_shapes", "kl_divergence", "wasserstein", "jsd", "dcr"]


class EvaluateParams(StageParams):
    source: str = Field(description="the `split` stage holding the real train/holdout table")
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)


@stage_kind("evaluate", EvaluateParams)
def evaluate(ctx: StageContext, params: EvaluateParams) -> pd.DataFrame:
    """Long table: generator, metric, component, value, elapsed_s (`foreach: <sample stage>`)."""
    from perfscale.metrics import evaluate as run_metrics
    from perfscale.tabular.meta import infer_meta

    synth = ctx.upstream_table()
    generator = str(synth.pop("generator").iloc[0]) if "generator" in synth else ctx.upstream.stage
    train, holdout = real_table(ctx, params.source, "train"), real_table(ctx, params.source, "holdout")
    options = {name: dict(opts) for name, opts in params.options.items()}
    if "dcr" in params.metrics:
        options.setdefault("dcr", {})["holdout"] = holdout
    table = run_metrics(train, synth, infer_meta(train), metrics=params.metrics, options=options)
    return table.assign(generator=generator)
