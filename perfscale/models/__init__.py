"""Predictors (docs/models.md): the `Predictor` contract, models (mean, linear, random_forest, xgboost,
mlp), splits, submit-time features for job traces, SMOTETomek resampling and scores."""

from perfscale.models.base import Hyperparameters, Predictor, load_model
from perfscale.models.registry import MODELS, build_model, check_hyperparameters, get_model

__all__ = [
    "MODELS",
    "Hyperparameters",
    "Predictor",
    "build_model",
    "check_hyperparameters",
    "get_model",
    "load_model",
]
