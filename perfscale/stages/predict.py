"""Using a trained generator to answer questions (PERFGEN use case II).

* `predict_by_generation`: hide a target column of the real holdout, fill it with `Generator.impute`
  conditioned on the other columns, and score the predictions against the truth (MSE, MAE and R^2 for a
  numeric target, accuracy for a categorical one). A row whose other columns the model generates too
  rarely is predicted by a relaxed match (`method` = fallback, see perfscale.generators.conditional)
  instead of failing the task; `fallback_share` is the share of such rows. With `choose` (e.g. threads) and
  `group_by` (e.g. kernel, size) it also answers "which thread count meets `time_bound`?" per configuration
  from the predicted times and from the measured ones (perfscale.models.scoring.choice_hits):
  `choice_hit_rate` is the share of configurations where the two agree;
* `recommend`: the configurations a model generates under conditions (e.g. "wall_time_s < 0.5"), most
  frequent first: PERFGEN's decision-making question "which settings meet this runtime bound?".

Both are `foreach: <train stage>`: one task per trained model.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from perfscale.errors import BadInput
from perfscale.models.scoring import choice_hits
from perfscale.stages.base import StageContext, StageParams, stage_kind
from perfscale.stages.sample import load_upstream_generator
from perfscale.stages.train import real_table

if TYPE_CHECKING:
    from perfscale.plan.named import PlanCheck

log = logging.getLogger(__name__)


class PredictParams(StageParams):
    source: str = Field(description="the `split` stage whose holdout part is predicted")
    target: str = Field(description="the column to hide and predict (grid over it for several)")
    draws: int = Field(10, ge=1, description="conditional draws averaged (numeric) or voted (categorical)")
    rows: int | None = Field(None, gt=0, description="predict at most this many holdout rows (seeded choice)")
    choose: str | None = Field(None, description="a column to choose per configuration, e.g. threads")
    group_by: list[str] = Field(
        default_factory=list, description="the configuration columns, e.g. kernel, size"
    )
    time_bound: float | None = Field(
        None, gt=0, description="choose the smallest value meeting it (else fastest)"
    )

    @model_validator(mode="after")
    def _choice(self) -> PredictParams:
        if (self.choose is None) != (not self.group_by):
            raise ValueError(
                "choose and group_by go together: e.g. choose: threads, group_by: [kernel, size]"
            )
        if self.time_bound is not None and self.choose is None:
            raise ValueError("time_bound needs choose and group_by")
        if self.choose is not None and self.choose in (*self.group_by, self.target):
            raise ValueError(f"choose {self.choose!r} is also in group_by or the target")
        return self

    def plan_check(self, check: PlanCheck) -> None:
        check.source("source", self.source)
        check.upstream("train")


@stage_kind("predict_by_generation", PredictParams)
def predict_by_generation(ctx: StageContext, params: PredictParams) -> pd.DataFrame:
    """Rows: generator, target, row, truth and prediction, method (generation | fallback), plus the task's
    scores (accuracy or mse/mae/r2, over all rows) and fallback_share."""
    generator, name = load_upstream_generator(ctx)
    holdout = real_table(ctx, params.source, "holdout")
    if params.target not in holdout.columns:
        raise BadInput(
            f"predict_by_generation.target {params.target!r} is not a column of {params.source!r}; "
            f"columns: {sorted(holdout.columns)}"
        )
    if params.rows is not None and params.rows < len(holdout):
        picked = np.sort(np.random.default_rng(ctx.seed).choice(len(holdout), params.rows, replace=False))
        holdout = holdout.iloc[picked].reset_index(drop=True)
    masked = holdout.copy()
    masked[params.target] = None
    # a value the model never saw (a rare category that the split put in the holdout only) falls back too
    filled = generator.impute(masked, seed=ctx.seed, draws=params.draws, relax_unseen=True)
    truth, prediction = holdout[params.target], filled[params.target]
    fallback = np.zeros(len(holdout), dtype=bool)
    if generator.last_imputation is not None:
        fallback[list(generator.last_imputation.fallback_rows)] = True
    if fallback.any():
        log.warning(
            "%s: %d of %d holdout rows predicted by a relaxed match (their other columns are too rare for "
            "the model, or never seen in training)",
            name,
            int(fallback.sum()),
            len(holdout),
        )
    column_type = generator.meta.columns[params.target].type
    scores = prediction_scores(truth, prediction, column_type)
    # numeric targets in truth/prediction (float), categorical ones in truth_label/prediction_label (text),
    # so the shards of a grid over several targets share one schema
    if column_type in ("categorical", "boolean"):
        values = {"truth_label": truth.astype(str), "prediction_label": prediction.astype(str)}
    else:
        values = {"truth": truth.astype(float), "prediction": prediction.astype(float)}
    method = np.where(fallback, "fallback", "generation")
    out = pd.DataFrame({"row": np.arange(len(holdout)), **values, "method": method})
    if params.choose is not None:
        if column_type in ("categorical", "boolean"):
            raise BadInput(
                f"predict_by_generation.choose needs a numeric target (a time); {params.target!r} is not"
            )
        config = [*params.group_by, params.choose]
        hits = choice_hits(holdout, params.choose, params.group_by, truth, prediction, params.time_bound)
        out = pd.concat([out, holdout[config].reset_index(drop=True)], axis=1)
        scores |= {
            "choice_hit_rate": float(hits["hit"].mean()) if len(hits) else np.nan,
            "choice_groups": len(hits),
        }
    return out.assign(generator=name, target=params.target, fallback_share=float(fallback.mean()), **scores)


def prediction_scores(truth: pd.Series, prediction: pd.Series, column_type: str) -> dict[str, float]:
    """accuracy for categorical targets; mse, mae and r2 for numeric ones."""
    if column_type in ("categorical", "boolean"):
        return {"accuracy": float((truth.astype(str) == prediction.astype(str)).mean())}
    t, p = truth.to_numpy(float), prediction.to_numpy(float)
    mse = float(np.mean((t - p) ** 2))
    variance = float(np.var(t))
    return {"mse": mse, "mae": float(np.mean(np.abs(t - p))), "r2": 1 - mse / variance if variance else 0.0}


class RecommendParams(StageParams):
    conditions: str | dict[str, Any] = Field(description="e.g. 'wall_time_s < 0.5 and threads in [1, 2]'")
    columns: list[str] = Field(min_length=1, description="the configuration columns to recommend")
    rows: int = Field(2000, gt=0, description="rows drawn under the conditions")
    max_draws: int | None = Field(None, gt=0, description="rejection-sampling budget (default 100 x rows)")

    def plan_check(self, check: PlanCheck) -> None:
        check.upstream("train")
        check.conditions("conditions", self.conditions)


@stage_kind("recommend", RecommendParams)
def recommend(ctx: StageContext, params: RecommendParams) -> pd.DataFrame:
    """Configurations meeting the conditions, most frequent first, with the acceptance rate of sampling."""
    from perfscale.generators.conditional import recommend as recommend_configurations

    generator, name = load_upstream_generator(ctx)
    table = recommend_configurations(
        generator, params.conditions, params.columns, params.rows, ctx.seed, params.max_draws
    )
    report = generator.last_sampling
    return table.assign(
        generator=name,
        conditions=report.conditions if report else "",
        acceptance_rate=report.acceptance_rate if report else 1.0,
    )
