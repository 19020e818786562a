"""The stage contract: a stage kind is a params model plus a function (context, params) -> table.

A stage function returns one table (pandas or Arrow); the runner adds provenance columns and writes it as the
task's shard. Everything else a task needs (its inputs, its seed, a folder for artifacts) comes from the
StageContext. Stage functions keep heavy imports (torch, sdv) inside their bodies so planning stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, Field, model_validator

from perfscale.errors import BadInput
from perfscale.plan import kinds
from perfscale.plan.checks import Problems, checked_once, freeze
from perfscale.plan.kinds import StageKind, StageParams, get_stage_kind, registered_kinds
from perfscale.plan.planner import Task
from perfscale.spec.site import Site
from perfscale.store.run import RunStore

__all__ = [
    "PartedParams",
    "Problems",
    "StageContext",
    "StageKind",
    "StageParams",
    "checked_once",
    "freeze",
    "get_stage_kind",
    "registered_kinds",
    "stage_kind",
]

P = TypeVar("P", bound=BaseModel)


class PartedParams(StageParams):
    """Params of a stage whose work is cut into `parts` tasks (sample, evaluate, infer): task `part` does
    one, with `params: {parts: k}` and `grid: {product: {part: [0, ..., k-1]}}`."""

    part: int = Field(0, ge=0, description="this task's part (0-based; grid: {product: {part: [...]}})")
    parts: int = Field(1, ge=1, description="how many parts the work is cut into (1: uncut)")

    @model_validator(mode="after")
    def _part_in_range(self) -> PartedParams:
        if self.part >= self.parts:
            raise ValueError(
                f"part {self.part} is not below parts {self.parts}: set params.parts to the number of part "
                "values in the grid (part: [0, ..., parts-1])"
            )
        return self


@dataclass
class StageContext:
    store: RunStore
    task: Task
    attempt: int
    rank: int = 0  # of a multi-rank task: only rank 0 writes to the run folder

    @property
    def site(self) -> Site:
        """Where the task runs: its stage's `resources.site`, else the run's."""
        from perfscale.plan.placement import site_of

        return site_of(self.task.site, self.store.site, self.store.root)

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


def stage_kind(
    name: str, params: type[P]
) -> Callable[[Callable[[StageContext, P], Any]], Callable[..., Any]]:
    """Register a stage kind: `@stage_kind("train", TrainParams) def train(ctx, params): ...`. A built-in
    kind also needs its line in `perfscale.plan.kinds.KINDS`, which finds its module by name."""

    def register(fn: Callable[[StageContext, P], Any]) -> Callable[..., Any]:
        kinds.register(StageKind(name, params, fn, (fn.__doc__ or "").strip().split("\n")[0]))
        return fn

    return register
