"""The mean baseline and linear models (ridge for regression, logistic regression for classes).

Both keep everything in model.json: the mean model its means or class shares, the linear model the
standardisation (mean, scale) and the coefficients, and both predict with numpy from those arrays, so a
loaded model predicts exactly what the saved one did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from perfscale.models.base import Hyperparameters, Predictor


class MeanHyper(Hyperparameters):
    pass


class MeanModel(Predictor):
    """Predicts the training mean of each target, or the training class shares (majority class)."""

    name = "mean"
    Hyper = MeanHyper

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        if self.task == "classification":
            self.value = np.bincount(y, minlength=len(self.classes)) / len(y)
        else:
            self.value = y.mean(axis=0)

    def _raw(self, x: np.ndarray) -> np.ndarray:
        return np.tile(self.value, (len(x), 1))

    def _save(self, folder: Path) -> dict[str, Any]:
        return {"value": self.value.tolist()}

    def _load(self, folder: Path, state: dict[str, Any]) -> None:
        self.value = np.asarray(state["value"], dtype=np.float64)


class LinearHyper(Hyperparameters):
    alpha: float = Field(1.0, ge=0, description="ridge penalty (regression)")
    C: float = Field(1.0, gt=0, description="inverse penalty of logistic regression (classification)")
    max_iter: int = Field(1000, ge=10, le=100_000)
    class_weight: str | None = Field(None, pattern="^balanced$", description="'balanced' or unset")


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class LinearModel(Predictor):
    """Ridge regression (multi-output) or multinomial logistic regression, on standardised features."""

    name = "linear"
    Hyper = LinearHyper
    hp: LinearHyper

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression, Ridge

        self.mean = x.mean(axis=0)
        scale = x.std(axis=0)
        self.scale = np.where(scale > 0, scale, 1.0)
        z = (x - self.mean) / self.scale
        if self.task == "classification":
            model = LogisticRegression(
                C=self.hp.C,
                max_iter=self.hp.max_iter,
                class_weight=self.hp.class_weight,
                random_state=self.seed,
            ).fit(z, y)
        else:
            model = Ridge(alpha=self.hp.alpha).fit(z, y)
        self.coef = np.atleast_2d(model.coef_).astype(np.float64)
        self.intercept = np.atleast_1d(model.intercept_).astype(np.float64)

    def _raw(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.scale) @ self.coef.T + self.intercept
        if self.task != "classification":
            return z
        if len(self.classes) == 2:  # sklearn keeps one row of coefficients for two classes
            p = 1 / (1 + np.exp(-z[:, 0]))
            return np.column_stack([1 - p, p])
        return _softmax(z)

    def _save(self, folder: Path) -> dict[str, Any]:
        return {k: getattr(self, k).tolist() for k in ("mean", "scale", "coef", "intercept")}

    def _load(self, folder: Path, state: dict[str, Any]) -> None:
        for k in ("mean", "scale", "coef", "intercept"):
            setattr(self, k, np.asarray(state[k], dtype=np.float64))
