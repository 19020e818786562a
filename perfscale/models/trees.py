"""XGBoost gradient boosting and random forests, both saved with XGBoost's own JSON `save_model`.

The random forest is XGBoost's random-forest mode (`XGBRFRegressor` / `XGBRFClassifier`: one round of
`n_estimators` parallel trees, row and column subsampling, no shrinkage), not scikit-learn's
RandomForest: scikit-learn models can only be saved by pickling (or skops, which still needs a list of
trusted types), and a model folder must be safe to load. XGBoost's JSON holds only trees and numbers.
Regression with several targets fits one multi-output booster (`multi_strategy="one_output_per_tree"`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from perfscale.extras import require
from perfscale.models.base import Hyperparameters, Predictor

NATIVE_FILE = "xgboost.json"


class XGBoostHyper(Hyperparameters):
    n_estimators: int = Field(200, ge=1, le=10_000)
    max_depth: int = Field(6, ge=1, le=32)
    learning_rate: float = Field(0.1, gt=0, le=1)
    subsample: float = Field(1.0, gt=0, le=1)
    colsample_bynode: float = Field(1.0, gt=0, le=1)
    min_child_weight: float = Field(1.0, ge=0)
    n_jobs: int = Field(1, ge=1, le=256)


class RandomForestHyper(Hyperparameters):
    n_estimators: int = Field(200, ge=1, le=10_000)
    max_depth: int = Field(12, ge=1, le=32)
    subsample: float = Field(0.8, gt=0, le=1, description="share of rows each tree sees")
    colsample_bynode: float = Field(0.8, gt=0, le=1, description="share of features each split sees")
    min_child_weight: float = Field(1.0, ge=0)
    n_jobs: int = Field(1, ge=1, le=256)


class _XGBBase(Predictor):
    def _estimator(self) -> Any:
        raise NotImplementedError

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        self.model = self._estimator()
        if self.task == "classification" and len(self.classes) == 2:
            self.model.set_params(objective="binary:logistic")
        self.model.fit(x, y)

    def _raw(self, x: np.ndarray) -> np.ndarray:
        if self.task == "classification":
            return np.asarray(self.model.predict_proba(x), dtype=np.float64)
        return np.asarray(self.model.predict(x), dtype=np.float64).reshape(len(x), -1)

    def _save(self, folder: Path) -> dict[str, Any]:
        self.model.save_model(folder / NATIVE_FILE)
        return {"native": NATIVE_FILE}

    def _load(self, folder: Path, state: dict[str, Any]) -> None:
        self.model = self._estimator()
        self.model.load_model(folder / state["native"])


class XGBoostModel(_XGBBase):
    """Gradient-boosted trees (xgboost), multi-output for regression."""

    name = "xgboost"
    Hyper = XGBoostHyper
    hp: XGBoostHyper

    def _estimator(self) -> Any:
        xgb = require("synth", "xgboost", "the xgboost model")
        common = {**self.hp.model_dump(), "random_state": self.seed, "tree_method": "hist"}
        if self.task == "classification":
            return xgb.XGBClassifier(**common)
        return xgb.XGBRegressor(**common, multi_strategy="one_output_per_tree")


class RandomForestModel(_XGBBase):
    """A random forest in XGBoost's random-forest mode (see the module's docstring for why)."""

    name = "random_forest"
    Hyper = RandomForestHyper
    hp: RandomForestHyper

    def _estimator(self) -> Any:
        xgb = require("synth", "xgboost", "the random_forest model (XGBoost's random-forest mode)")
        common = {**self.hp.model_dump(), "random_state": self.seed, "tree_method": "hist"}
        if self.task == "classification":
            return xgb.XGBRFClassifier(**common)
        return xgb.XGBRFRegressor(**common)
