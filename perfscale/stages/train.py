"""The `train` stage: fit a generator on a real table; the model folder is the task's artifact (the `sample`,
`predict_by_generation` and `recommend` stages load it)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import Field

from perfscale.stages.base import StageContext, StageParams, stage_kind
from perfscale.tabular.columns import SPLIT_COLUMN, split_part

if TYPE_CHECKING:
    from perfscale.plan.named import PlanCheck

MODEL_FOLDER = "model"


class TrainParams(StageParams):
    generator: str = Field(description="registered generator: gaussian_copula, ctgan, tvae, copulagan...")
    source: str = Field(description="stage with the real table (a `split` stage: its train part is used)")
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    columns: dict[str, dict[str, Any]] = Field(default_factory=dict, description="column metadata overrides")

    def plan_check(self, check: PlanCheck) -> None:
        check.source("source", self.source)
        check.generator("generator", self.generator, "hyperparameters", self.hyperparameters)


def real_table(ctx: StageContext, source: str, part: str = "train") -> pd.DataFrame:
    table = ctx.input(source)
    return split_part(table, part) if SPLIT_COLUMN in table.columns else table


@stage_kind("train", TrainParams)
def train(ctx: StageContext, params: TrainParams) -> pd.DataFrame:
    """Fit one generator; the model folder is an artifact, the shard is its training telemetry."""
    from perfscale.generators import get_generator
    from perfscale.tabular.meta import infer_meta

    real = real_table(ctx, params.source)
    meta = infer_meta(real).with_overrides(params.columns)
    cls = get_generator(params.generator)
    hyperparameters = dict(params.hyperparameters)
    if cls.resumable:
        hyperparameters.setdefault("checkpoint_dir", str(ctx.checkpoints))
    generator = cls(**hyperparameters)
    log = generator.fit(real, meta, seed=ctx.seed)
    generator.save(ctx.artifacts / MODEL_FOLDER)
    (ctx.artifacts / "meta.json").write_text(json.dumps(meta.model_dump(mode="json"), indent=2))
    telemetry = log.telemetry if not log.telemetry.empty else pd.DataFrame({"step": [pd.NA]})
    return telemetry.assign(
        generator=params.generator,
        fit_elapsed_s=log.elapsed_s,
        peak_rss_bytes=log.peak_rss_bytes,
        train_rows=len(real),
        device=generator.device_used,
        precision=generator.precision_used,
    )
