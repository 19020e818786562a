"""The predictor contract (docs/models.md): `fit(table, targets, features)`, `predict`, `predict_proba`,
`save(folder)` and `load(folder)`.

A model folder holds `model.json` (the model's name, task, targets, features, classes, hyperparameters and
any small arrays such as linear coefficients or scaler statistics) and, for models with a native format, one
more file written by the library itself: XGBoost's JSON `save_model`, a torch `state_dict` as safetensors.
Nothing is pickled, so loading a model folder never runs code from it.

Targets are either one categorical column (classification: the classes are the column's sorted distinct
values, stored in `model.json`) or one or more numeric columns (regression, multi-output where the model
allows). Features must be numeric and finite: the caller decides what to do with NaN (the `fit_predict`
stage refuses them by default, see perfscale.models.features).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from perfscale.errors import BadInput
from perfscale.store.atomic import atomic_write_text

Task = Literal["regression", "classification"]
META_FILE = "model.json"
FORMAT_VERSION = 1


class Hyperparameters(BaseModel):
    """Base of every model's hyperparameters: unknown fields are errors, numbers are finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def is_categorical(column: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)


class Predictor(ABC):
    """A model: subclasses give `name`, `Hyper`, what tasks they handle and the four `_` methods."""

    name: ClassVar[str]
    Hyper: ClassVar[type[Hyperparameters]]
    tasks: ClassVar[tuple[Task, ...]] = ("regression", "classification")
    multi_output: ClassVar[bool] = True

    def __init__(self, hyperparameters: dict[str, Any] | Hyperparameters | None = None, seed: int = 0):
        hp = hyperparameters if isinstance(hyperparameters, Hyperparameters) else None
        self.hp = hp or self.Hyper.model_validate(hyperparameters or {})
        self.seed = seed
        self.task: Task = "regression"
        self.targets: list[str] = []
        self.features: list[str] = []
        self.classes: list[str] = []

    # --- the public contract -------------------------------------------------------------------------
    def fit(
        self, table: pd.DataFrame, targets: list[str], features: list[str], task: Task | None = None
    ) -> Predictor:
        missing = [c for c in [*targets, *features] if c not in table.columns]
        if missing:
            raise BadInput(
                f"{self.name}: columns {missing} are not in the table; columns: {list(table.columns)}"
            )
        if not targets or not features:
            raise BadInput(f"{self.name}: needs at least one target and one feature")
        self.targets, self.features = list(targets), list(features)
        self.task = task or (
            "classification" if any(is_categorical(table[t]) for t in targets) else "regression"
        )
        if self.task not in self.tasks:
            raise BadInput(f"{self.name}: does not do {self.task}; it does {', '.join(self.tasks)}")
        if self.task == "classification":
            if len(targets) != 1:
                raise BadInput(f"{self.name}: classification takes one target column, got {targets}")
            labels = table[targets[0]].astype(str)
            self.classes = sorted(labels.unique())
            if len(self.classes) < 2:
                raise BadInput(f"{self.name}: target {targets[0]!r} has one class {self.classes}; need two")
            y = labels.map({c: i for i, c in enumerate(self.classes)}).to_numpy(np.int64)
        else:
            if len(targets) > 1 and not self.multi_output:
                raise BadInput(f"{self.name}: one regression target at a time, got {targets}")
            y = table[targets].to_numpy(np.float64)
        self._fit(self._matrix(table), y)
        return self

    def predict(self, table: pd.DataFrame) -> pd.DataFrame:
        """Regression: one column per target. Classification: the target column holding class labels."""
        raw = self._raw(self._matrix(table))
        if self.task == "classification":
            labels = np.asarray(self.classes, dtype=object)[raw.argmax(axis=1)]
            return pd.DataFrame({self.targets[0]: labels}, index=table.index)
        return pd.DataFrame(raw.reshape(len(table), -1), columns=self.targets, index=table.index)

    def predict_proba(self, table: pd.DataFrame) -> np.ndarray:
        """Class probabilities, one column per class in `self.classes` order."""
        if self.task != "classification":
            raise BadInput(f"{self.name}: predict_proba is for classification models")
        return self._raw(self._matrix(table))

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT_VERSION,
            "model": self.name,
            "task": self.task,
            "targets": self.targets,
            "features": self.features,
            "classes": self.classes,
            "seed": self.seed,
            "hyperparameters": self.hp.model_dump(mode="json"),
            "state": self._save(folder),
        }
        atomic_write_text(json.dumps(meta, indent=1), folder / META_FILE)
        return folder

    @classmethod
    def restore(cls, folder: Path, meta: dict[str, Any]) -> Predictor:
        model = cls(meta["hyperparameters"], seed=meta["seed"])
        model.task, model.targets, model.features = meta["task"], meta["targets"], meta["features"]
        model.classes = meta["classes"]
        model._load(folder, meta["state"])
        return model

    # --- helpers and the parts each model gives ------------------------------------------------------
    def _matrix(self, table: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.features if c not in table.columns]
        if missing:
            raise BadInput(f"{self.name}: feature columns {missing} are not in the table")
        x = table[self.features].to_numpy(np.float64)
        if not np.isfinite(x).all():
            bad = [c for c in self.features if not np.isfinite(table[c].to_numpy(np.float64)).all()]
            raise BadInput(
                f"{self.name}: feature columns {bad} hold NaN or infinite values; drop or fill them"
            )
        return x

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.task == "classification" else len(self.targets)

    @abstractmethod
    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        """y: class indices (classification) or an (n, targets) float array (regression)."""

    @abstractmethod
    def _raw(self, x: np.ndarray) -> np.ndarray:
        """(n, classes) probabilities, or (n, targets) predictions."""

    @abstractmethod
    def _save(self, folder: Path) -> dict[str, Any]:
        """Write native files into `folder`; return the JSON-able state kept in model.json."""

    @abstractmethod
    def _load(self, folder: Path, state: dict[str, Any]) -> None: ...


def load_model(folder: Path) -> Predictor:
    """The model saved in `folder` (its model.json names the model kind)."""
    from perfscale.models.registry import get_model

    path = folder / META_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path}: not a readable model file: {exc}") from None
    if meta.get("format") != FORMAT_VERSION:
        raise BadInput(f"{path}: model format {meta.get('format')!r}; this perfscale reads {FORMAT_VERSION}")
    return get_model(meta["model"]).restore(folder, meta)
