"""The `train` and `sample` stages: fit a generator on a real table, then draw synthetic rows from it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import Field

from perfscale.stages.base import StageContext, StageParams, stage_kind
from perfscale.tabular.columns import SPLIT_COLUMN, split_part

if TYPE_CHECKING:
    from perfscale.generators import Generator
    from perfscale.plan.named import PlanCheck

MODEL_FOLDER = "model"
SAMPLING_JSON = "sampling.json"


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
    )


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
