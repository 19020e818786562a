"""Stage kinds by name: the table the planner and `execute_task` look kinds up in.

A stage kind is a params model plus a function `(StageContext, params) -> table`, registered by
`@stage_kind` (perfscale.stages.base) when its module is imported. This module is a leaf: it imports no
stage. `KINDS` maps each built-in kind to `"module:function"` (as `engines.base.ENGINES` does), and a kind's
module is imported only when a plan or a task names that kind, so planning a profile study never loads the
generators, torch or sdv. A kind registered by other code (a test, a plugin) is found once its module has
been imported.

Kind names are snake_case. `RENAMED` maps old spellings to today's names: they are still accepted, with a
DeprecationWarning naming the study line to change.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from perfscale.errors import SpecError

if TYPE_CHECKING:
    from perfscale.plan.named import PlanCheck


class StageParams(BaseModel):
    """Base of every stage's params model: unknown fields are errors, numbers are finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    def plan_check(self, check: PlanCheck) -> None:
        """Check what these params name against the rest of the study (stages read, generators, metrics and
        their options; see perfscale.plan.named), adding problems to `check`. The planner calls it once per
        distinct params of a stage; a kind that names nothing keeps this no-op."""


P = TypeVar("P", bound=BaseModel)


@dataclass(frozen=True)
class StageKind(Generic[P]):
    name: str
    params: type[P]
    run: Callable[..., Any]  # (StageContext, P) -> pandas or Arrow table
    doc: str = ""


# kind name -> "module:function" of its stage function; the module registers the kind when imported
KINDS: dict[str, str] = {
    "ingest": "perfscale.stages.ingest:ingest",
    "profile": "perfscale.stages.profile:profile",
    "split": "perfscale.stages.split:split",
    "train": "perfscale.stages.train:train",
    "sample": "perfscale.stages.sample:sample",
    "evaluate": "perfscale.stages.evaluate:evaluate",
    "predict_by_generation": "perfscale.stages.predict:predict_by_generation",
    "recommend": "perfscale.stages.predict:recommend",
    "infer": "perfscale.stages.infer:infer",
    "fit_predict": "perfscale.stages.fit_predict:fit_predict_stage",
    "relperf": "perfscale.stages.relperf:relperf",
    "simulate": "perfscale.stages.simulate:simulate_stage",
    "corrupt": "perfscale.stages.corrupt:corrupt",
    "metric_study": "perfscale.stages.metric_study:metric_study",
    "function": "perfscale.stages.function:function",
    "noop": "perfscale.stages.function:noop",
}

# old spelling -> today's name (accepted with a DeprecationWarning)
RENAMED: dict[str, str] = {"predict-by-generation": "predict_by_generation"}

_REGISTRY: dict[str, StageKind[Any]] = {}


def register(kind: StageKind[Any]) -> None:
    """Add a kind (what `@stage_kind` does); a name may be registered once."""
    if kind.name in _REGISTRY:
        raise ValueError(f"stage kind {kind.name!r} registered twice")
    if kind.name in RENAMED:
        raise ValueError(f"stage kind {kind.name!r} is the old name of {RENAMED[kind.name]!r}; pick another")
    _REGISTRY[kind.name] = kind


def canonical_kind(name: str, where: str = "stage kind") -> str:
    """Today's name of kind `name`: an old spelling gives a DeprecationWarning naming `where` and the fix."""
    new = RENAMED.get(name)
    if new is None:
        return name
    warnings.warn(
        f"{where}: stage kind {name!r} is now spelled {new!r}; write `kind: {new}` (the old name will be "
        "removed)",
        DeprecationWarning,
        stacklevel=2,
    )
    return new


def get_stage_kind(name: str, where: str = "stage kind") -> StageKind[Any]:
    """The kind called `name` (or an old spelling of it), importing its module on first use."""
    name = canonical_kind(name, where)
    if name not in _REGISTRY and name in KINDS:
        _load(name)
    if name not in _REGISTRY:
        known = sorted({*KINDS, *_REGISTRY})
        raise SpecError(f"{where}: unknown stage kind {name!r}; known kinds: {', '.join(known)}")
    return _REGISTRY[name]


def registered_kinds() -> dict[str, StageKind[Any]]:
    """Every kind: the built-in ones (all their modules imported now) and any registered by other code."""
    for name in KINDS:
        if name not in _REGISTRY:
            _load(name)
    return dict(_REGISTRY)


def _load(name: str) -> None:
    module, function = KINDS[name].split(":")
    fn = getattr(import_module(module), function, None)
    kind = _REGISTRY.get(name)
    if kind is None or kind.run is not fn:
        raise RuntimeError(
            f"perfscale.plan.kinds.KINDS[{name!r}] = {KINDS[name]!r}, but importing it did not register that "
            f"function as kind {name!r}; fix the table or the @stage_kind line"
        )
