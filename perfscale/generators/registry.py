"""Generator registry: names used in study files -> `Generator` classes, and their hyperparameter models.

Generator classes import no model library at import time, so `hyperparameters_model` and
`hyperparameter_problems` (what the planner checks a study with) never load torch, sdv or transformers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

from perfscale.errors import BadInput, SpecError
from perfscale.generators.base import GENERATOR_JSON, Generator, read_manifest
from perfscale.options import OptionsModel, Problem, option_problems

_REGISTRY: dict[str, type[Generator]] = {}

T = TypeVar("T", bound=type[Generator])


def register_generator(cls: T) -> T:
    """Class decorator: make `cls` available under `cls.name` to `get_generator` and `load_generator`."""
    if not (isinstance(cls, type) and issubclass(cls, Generator)):
        raise TypeError(f"register_generator expects a Generator subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} must set a non-empty class attribute `name`")
    known = _REGISTRY.get(name)
    if known is not None and _qualified(known) != _qualified(cls):  # same class re-imported is fine
        raise ValueError(f"generator name {name!r} is taken by {_qualified(known)}")
    _REGISTRY[name] = cls
    return cls


def get_generator(name: str) -> type[Generator]:
    """The generator class registered as `name`; SpecError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(list_generators())
        raise SpecError(f"unknown generator {name!r}; known generators: {known}") from None


def list_generators() -> list[str]:
    return sorted(_REGISTRY)


def hyperparameters_model(name: str) -> type[OptionsModel]:
    """The hyperparameters model of generator `name` (names, types, bounds, choices, defaults)."""
    return get_generator(name).hyperparameters_model


def hyperparameter_problems(name: str, hyperparameters: Any) -> list[Problem]:
    """Every problem of `hyperparameters` for generator `name` (an unknown name lists the known ones)."""
    return option_problems(hyperparameters_model(name), hyperparameters, "hyperparameter", name)


def load_generator(folder: str | os.PathLike[str], trust: bool = False) -> Generator:
    """Load a saved generator of any registered kind, picked by the name in its generator.json."""
    manifest = read_manifest(folder)
    name = manifest["generator"]
    if name not in _REGISTRY:
        raise BadInput(
            f"{Path(folder) / GENERATOR_JSON} names generator {name!r}, which this perfscale does not know; "
            f"known generators: {', '.join(list_generators())}"
        )
    return _REGISTRY[name].load(folder, trust=trust)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
