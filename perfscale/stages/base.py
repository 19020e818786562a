"""The stage contract: a stage kind is a params model plus a function (context, params) -> table.

A stage function returns one table (pandas or Arrow); the runner adds provenance columns and writes it as the
task's shard. Everything else a task needs (its inputs, its seed, a folder for artifacts) comes from the
StageContext. Stage functions keep heavy imports (torch, sdv) inside their bodies so planning stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Generic, TypeVar

import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

from perfscale.errors import BadInput, SpecError
from perfscale.plan.planner import Task
from perfscale.spec.site import Site
from perfscale.store.run import RunStore

P = TypeVar("P", bound=BaseModel)


class StageParams(BaseModel):
    """Base of every stage's params model: unknown fields are errors, numbers are finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


@dataclass
class Problems:
    """Problems of a params model, gathered so that one validation reports all of them, each at its field
    (pydantic stops at the first error a model validator raises)."""

    found: list[InitErrorDetails] = field(default_factory=list)

    def add(self, loc: tuple[str | int, ...], message: str, value: Any = None) -> None:
        """One problem at `loc`; `value`, where given, is quoted after the message."""
        error = PydanticCustomError("problem", "{message}", {"message": message})
        self.found.append(InitErrorDetails(type=error, loc=loc, input=value))

    @contextmanager
    def check(self, *loc: str | int, value: Any = None) -> Iterator[None]:
        """Record the ValueError (or BadInput) raised inside as a problem at `loc`."""
        try:
            yield
        except (ValueError, BadInput) as exc:
            self.add(loc, str(exc), value)

    def extend(self, found: list[InitErrorDetails]) -> None:
        self.found.extend(found)

    def raise_all(self, model: type[BaseModel], before: ValidationError | None = None) -> None:
        """Raise one ValidationError with `before`'s errors (field validation) and these problems, if any."""
        if before is None and not self.found:
            return
        errors = [] if before is None else [_as_detail(e) for e in before.errors()]
        raise ValidationError.from_exception_data(model.__name__, [*errors, *self.found])


def _as_detail(error: Any) -> InitErrorDetails:
    """A pydantic error again as raisable details, with its type and message kept."""
    custom = PydanticCustomError(error["type"], "{message}", {"message": error["msg"]})
    return InitErrorDetails(type=custom, loc=tuple(error["loc"]), input=error.get("input"))


#: the validation-context key of the planner's CheckCache
CHECK_CACHE = "checks"
T = TypeVar("T")


class CheckCache:
    """Results of params checks, kept for one plan, by what the checks read (and the site).

    Planning validates a stage's params at every grid point, but grids mostly vary values that the costly
    checks (counter events against perf, PAPI and the site; templates; FOM regexes) do not read. The planner
    passes one cache per plan in the validation context, with the site, so such a check runs once per
    distinct input: a 10,000-point grid over sizes and threads checks its events once, a grid over event
    lists once per list. The site is part of every key: what one site's nodes can count, another's may not.
    """

    def __init__(self, site: Site | None):
        self.site = site
        self._site_key = None if site is None else site.model_dump_json()
        self._results: dict[Hashable, Any] = {}

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """compute()'s result for `key`, computed on first use."""
        full = (self._site_key, key)
        if full not in self._results:
            self._results[full] = compute()
        return self._results[full]


def checked_once(info: ValidationInfo, key: Callable[[], Hashable], compute: Callable[[], T]) -> T:
    """compute() through the plan's CheckCache where the planner gave one, else every time (a task
    re-validating its params where it runs). `key()` must stand for every input of compute but the site."""
    cache = (info.context or {}).get(CHECK_CACHE)
    return compute() if cache is None else cache.get(key(), compute)


def freeze(value: Any) -> Hashable:
    """A hashable stand-in for a JSON-like value, typed so that 1, 1.0 and True stay apart."""
    if isinstance(value, Mapping):
        return ("dict", tuple(sorted((str(k), freeze(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("list", tuple(freeze(v) for v in value))
    return (type(value).__name__, value)


@dataclass
class StageContext:
    store: RunStore
    task: Task
    attempt: int
    rank: int = 0  # of a multi-rank task: only rank 0 writes to the run folder

    @property
    def site(self) -> Site:
        return self.store.site

    @property
    def seed(self) -> int:
        """The task's seed: its stage's seed, offset by the repetition so repetitions differ."""
        return self.task.seed + self.task.rep

    def input(self, stage: str, provenance: bool = False) -> pd.DataFrame:
        """The whole output of an upstream stage listed in this stage's `inputs`."""
        if stage not in self.task.inputs:
            raise BadInput(f"stage {self.task.stage!r} reads {stage!r} but does not list it in `inputs`")
        return self.store.read_stage(stage, provenance=provenance).to_pandas()

    @cached_property
    def upstream(self) -> Task:
        """The upstream task of a `foreach` stage."""
        if self.task.upstream_key is None:
            raise BadInput(f"stage {self.task.stage!r} needs `foreach: <stage>` in the study")
        return next(t for t in self.store.plan.tasks if t.key == self.task.upstream_key)

    def upstream_table(self, provenance: bool = False) -> pd.DataFrame:
        up = self.upstream
        return self.store.read_stage(up.stage, keys=[up.key], provenance=provenance).to_pandas()

    def upstream_artifacts(self) -> Path:
        return self.store.artifact_dir(self.upstream.stage, self.upstream.key)

    @cached_property
    def artifacts(self) -> Path:
        """An empty folder of this task's own, for files besides its shard (cleared at each attempt). The
        other ranks of a multi-rank task get a scratch folder outside the run (perfscale.distributed.task)."""
        if self.rank:
            import tempfile

            return Path(tempfile.mkdtemp(prefix=f"perfscale-{self.task.key}-rank{self.rank}-"))
        return self.store.clear_artifacts(self.task.stage, self.task.key)

    @cached_property
    def checkpoints(self) -> Path:
        """A folder of this task's own that survives failed attempts: a retried task resumes from it."""
        path = self.store.checkpoint_dir(self.task.stage, self.task.key)
        path.mkdir(parents=True, exist_ok=True)
        return path


StageFn = Callable[[StageContext, Any], "pd.DataFrame | pa.Table"]


@dataclass(frozen=True)
class StageKind(Generic[P]):
    name: str
    params: type[P]
    run: Callable[[StageContext, P], pd.DataFrame | pa.Table]
    doc: str = ""


_REGISTRY: dict[str, StageKind[Any]] = {}


def stage_kind(
    name: str, params: type[P]
) -> Callable[[Callable[[StageContext, P], Any]], Callable[..., Any]]:
    """Register a stage kind: `@stage_kind("train", TrainParams) def train(ctx, params): ...`."""

    def register(fn: Callable[[StageContext, P], Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"stage kind {name!r} registered twice")
        _REGISTRY[name] = StageKind(name, params, fn, (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return register


def registered_kinds() -> dict[str, StageKind[Any]]:
    return dict(_REGISTRY)


def get_stage_kind(name: str, where: str = "stage kind") -> StageKind[Any]:
    if name not in _REGISTRY:
        raise SpecError(f"{where}: unknown stage kind {name!r}; known kinds: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
