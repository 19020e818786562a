"""The `fit_predict` stage: one model over one split of an upstream table (perfscale.models.fit).

Checked at plan time: the model name and its typed hyperparameters, the split's columns, and that no
feature is known only after a job ends (unless `allow_post_submit_features: true`). The shard holds one row
per tested row with the fold's scores; the last fold's model is saved in the task's artifacts (`model/`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
from pydantic import Field, model_validator

from perfscale.models.features import check_submit_time
from perfscale.models.fit import FitSpec, fit_predict
from perfscale.models.registry import check_hyperparameters
from perfscale.models.resample import Resample
from perfscale.models.splits import SplitKind
from perfscale.stages.base import StageContext, StageParams, stage_kind

if TYPE_CHECKING:
    from perfscale.plan.named import PlanCheck

MODEL_FOLDER = "model"


class FitPredictParams(StageParams):
    source: str = Field(description="the stage whose output is modelled (listed in `inputs`)")
    targets: list[str] = Field(min_length=1, description="one class column, or one or more numeric ones")
    features: list[str] = Field(min_length=1, description="input columns (derived ones are added to these)")
    model: str = Field(description="mean, linear, random_forest, xgboost or mlp")
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    split: SplitKind = "random"
    test_fraction: float = Field(0.25, gt=0, lt=1)
    folds: int = Field(5, ge=2, le=100, description="k of `kfold`")
    group_column: str | None = Field(
        None, description="`group`: leave one group out; random, holdout, kfold: whole groups per side"
    )
    time_column: str | None = Field(None, description="submit time (Unix s): `time` split, calendar, history")
    calendar: bool = Field(False, description="add submit hour, day of week, day of month")
    history_by: list[str] = Field(default_factory=list, description="history features per user/project...")
    history_outcome: str | None = Field(None, description="class column whose earlier shares are features")
    end_columns: list[str] | None = Field(None, description="summed into each job's end time")
    resample: Resample = "none"
    allow_post_submit_features: bool = False
    post_submit_columns: list[str] = Field(default_factory=list, description="more post-submit names")
    nan: Literal["error", "drop"] = "error"
    rows: int | None = Field(None, ge=10, description="a seeded subset of this many rows, after features")
    one_hot: list[str] = Field(default_factory=list, description="categorical inputs: a 0/1 feature a value")
    classes: list[str] | None = Field(
        None, min_length=2, description="keep only rows of these target classes (drop e.g. RUNNING), counted"
    )
    save_model: bool = True

    @model_validator(mode="after")
    def _checks(self) -> FitPredictParams:
        try:
            check_hyperparameters(self.model, self.hyperparameters)
        except Exception as exc:  # BadInput (unknown model) or pydantic's ValidationError
            raise ValueError(f"model {self.model!r} hyperparameters: {exc}") from None
        check_submit_time(
            [*self.features, *self.one_hot], self.allow_post_submit_features, self.post_submit_columns
        )
        if self.split == "time" and not self.time_column:
            raise ValueError("split: time needs time_column")
        if self.split == "group" and not self.group_column:
            raise ValueError("split: group needs group_column")
        if (self.calendar or self.history_by) and not self.time_column:
            raise ValueError("calendar and history_by need time_column")
        if self.history_outcome and not self.history_by:
            raise ValueError("history_outcome needs history_by (the user or project column)")
        if self.history_outcome and not self.end_columns:
            raise ValueError(
                "history_outcome needs end_columns (when each job ended): counting earlier jobs' outcomes by "
                "submit time would let a job see the end state of jobs still queued or running"
            )
        return self

    def plan_check(self, check: PlanCheck) -> None:
        check.source("source", self.source)

    def spec(self) -> FitSpec:
        fields = self.model_dump(exclude={"source", "save_model"})
        return FitSpec(**fields)


@stage_kind("fit_predict", FitPredictParams)
def fit_predict_stage(ctx: StageContext, params: FitPredictParams) -> pd.DataFrame:
    """One row per tested row: truth, prediction, class probabilities, fold and the fold's scores."""
    table = ctx.input(params.source)
    model_dir = ctx.artifacts / MODEL_FOLDER if params.save_model else None
    return fit_predict(table, params.spec(), ctx.seed, model_dir)
