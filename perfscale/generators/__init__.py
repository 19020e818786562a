"""Synthetic-data generators behind one protocol (`Generator`) and a name registry.

Importing this package is cheap: model libraries (sdv, torch...) are imported when a generator is used.
Built-in generators: gaussian_copula, ctgan, tvae, copulagan (SDV); tabddpm (TabDDPM diffusion, torch);
smote (SMOTE interpolation between nearest training rows); great (GReaT: a causal language model fine-tuned
on rows written as text: great.py, with the language-model pieces in perfscale.llm).
"""

# importing the built-in generator modules registers them (they import no model library at import time)
from perfscale.generators import great as _great  # noqa: F401
from perfscale.generators import sdv_models as _sdv_models  # noqa: F401
from perfscale.generators import smote as _smote  # noqa: F401
from perfscale.generators import tabddpm as _tabddpm  # noqa: F401
from perfscale.generators.base import GENERATOR_JSON, Generator, TrainingLog
from perfscale.generators.registry import (
    get_generator,
    hyperparameter_problems,
    hyperparameters_model,
    list_generators,
    load_generator,
    register_generator,
)

__all__ = [
    "GENERATOR_JSON",
    "Generator",
    "TrainingLog",
    "get_generator",
    "hyperparameter_problems",
    "hyperparameters_model",
    "list_generators",
    "load_generator",
    "register_generator",
]
