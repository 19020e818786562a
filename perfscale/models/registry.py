"""Model names -> Predictor classes. Heavy libraries (xgboost, torch) load when a model is built, not here."""

from __future__ import annotations

from typing import Any

from perfscale.errors import BadInput
from perfscale.models.base import Hyperparameters, Predictor
from perfscale.models.linear import LinearModel, MeanModel
from perfscale.models.llm_head import LLMClassifierModel
from perfscale.models.mlp import MLPModel
from perfscale.models.trees import RandomForestModel, XGBoostModel
from perfscale.models.vae_dnn import VAEDNNModel

MODELS: dict[str, type[Predictor]] = {
    m.name: m
    for m in (
        MeanModel,
        LinearModel,
        RandomForestModel,
        XGBoostModel,
        MLPModel,
        VAEDNNModel,
        LLMClassifierModel,
    )
}


def get_model(name: str) -> type[Predictor]:
    if name not in MODELS:
        raise BadInput(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[name]


def check_hyperparameters(name: str, hyperparameters: dict[str, Any]) -> Hyperparameters:
    """The model's typed hyperparameters (pydantic, unknown fields refused): called at plan time."""
    return get_model(name).Hyper.model_validate(hyperparameters)


def build_model(name: str, hyperparameters: dict[str, Any] | None = None, seed: int = 0) -> Predictor:
    return get_model(name)(hyperparameters or {}, seed=seed)
