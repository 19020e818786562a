"""Plan-time checks of what a stage names: the stages it reads, its generator and hyperparameters, its
metrics and their options, its sampling conditions, its importer.

The planner calls each kind's `StageParams.plan_check(check)` once per distinct params of a stage (grid
points that differ only in values the check does not read are still checked once each: the checks are
cheap). A kind's hook calls the methods below with its own field names; each problem lands at its field,
so `perfscale plan` names the study file's line, the field and the choices, before anything runs or is
written. Generators, metrics, conditions and importers are imported when a hook asks for them (they sit
below the plan in the layer order), so a profile study never loads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from perfscale.errors import BadInput, SpecError
from perfscale.options import Problem

#: problem locations start with PARAMS for the stage's params (the planner finds them in the grid or the
#: params), or name a field of the stage itself (`foreach`, `inputs`)
PARAMS = "params"


@dataclass
class PlanCheck:
    """One stage as the planner sees it, and the problems its hook found (at stage-relative locations)."""

    stage: str
    inputs: tuple[str, ...]
    foreach: str | None
    kinds: Mapping[str, str]  # the kind of every stage before this one
    gpus: int | None = None  # GPUs each task of the stage gets (None: planned without a site)
    site: str | None = None
    problems: list[Problem] = field(default_factory=list)

    def add(self, found: Iterable[Problem], *at: str | int) -> None:
        """Problems of an option set held by params field `at` (their locations are inside it)."""
        self.problems += [Problem((PARAMS, *at, *p.loc), p.message, p.value) for p in found]

    def problem(self, message: str, *at: str | int) -> None:
        """One problem of params field `at`."""
        self.add([Problem((), message)], *at)

    def reads_some(self, kind: str) -> None:
        """The stage reads every stage in its `inputs`: there must be one."""
        if not self.inputs:
            message = f"this kind reads {kind} stages: list them in `inputs`"
            self.problems.append(Problem(("inputs",), message))

    def source(self, name: str, value: str) -> None:
        """Params field `name` names a stage this stage reads whole: it must be in `inputs`."""
        self._reads(value, name)

    def sources(self, name: str, values: Sequence[str]) -> None:
        """Params field `name` lists stages this stage reads whole: each must be in `inputs`."""
        for i, value in enumerate(values):
            self._reads(value, name, i)

    def _reads(self, value: str, *at: str | int) -> None:
        if value not in self.inputs:
            listed = f"[{', '.join(self.inputs)}]" if self.inputs else "none"
            fix = "list it in `inputs` or fix the name"
            self.problem(f"stage {value!r} is not in this stage's inputs ({listed}); {fix}", *at)

    def upstream(self, *kinds: str) -> None:
        """The stage runs once per task of a `foreach` stage, of one of `kinds` (any kind when none given)."""
        wanted = " or ".join(kinds) or "any"
        if self.foreach is None:
            message = f"this kind runs once per upstream task: set `foreach: <a {wanted} stage>`"
            self.problems.append(Problem(("foreach",), message))
        elif kinds and self.kinds.get(self.foreach) not in kinds:
            found = self.kinds.get(self.foreach)
            message = f"stage {self.foreach!r} is a {found} stage; this kind reads a {wanted} stage"
            self.problems.append(Problem(("foreach",), message))

    def generator(self, name_field: str, name: str, hp_field: str, hyperparameters: Any) -> None:
        """A registered generator, with hyperparameters its model accepts."""
        from perfscale.generators import hyperparameter_problems, list_generators

        if name not in list_generators():
            choices = ", ".join(list_generators())
            self.problem(f"unknown generator {name!r}; choose one of {choices}", name_field)
            return
        found = hyperparameter_problems(name, hyperparameters)
        self.add(found, hp_field)
        if not found and isinstance(hyperparameters, Mapping):
            self.device(hyperparameters.get("device"), hp_field, "device")

    def device(self, value: Any, *at: str | int) -> None:
        """A forced CUDA device needs GPUs in the stage's resources (a task without sees none)."""
        if self.gpus == 0 and isinstance(value, str) and value.startswith("cuda"):
            self.problem(
                f"device {value!r} needs a GPU, and the stage's tasks get none (resources.gpus: 0 on site "
                f"{self.site!r}); set resources.gpus (on a site with GPUs), or device 'auto' or 'cpu'",
                *at,
            )

    def metrics(self, names: Sequence[str], options: Any, metrics_field: str, options_field: str) -> None:
        """Registered metrics, and options each metric's model accepts (`options` maps metric -> options)."""
        from perfscale.metrics.registry import metric_problems

        # metric_problems places them at ("metrics", i) and ("options", metric, ...)
        rename = {"metrics": metrics_field, "options": options_field}
        found = metric_problems(names, options)
        self.add(Problem((rename[str(p.loc[0])], *p.loc[1:]), p.message, p.value) for p in found)

    def metric_names(self, name: str, values: Sequence[str] | Mapping[str, Any]) -> None:
        """Params field `name` lists registered metrics (a list, or a mapping keyed by metric)."""
        keys: Iterable[str | int] = values if isinstance(values, Mapping) else range(len(values))
        for key, value in zip(keys, values, strict=True):
            self._metric(value, name, key)

    def metric_name(self, name: str, value: str) -> None:
        """Params field `name` names a registered metric."""
        self._metric(value, name)

    def _metric(self, value: str, *at: str | int) -> None:
        from perfscale.metrics import list_metrics

        known = sorted(m.name for m in list_metrics())
        if value not in known:
            self.problem(f"unknown metric {value!r}; choose one of {', '.join(known)}", *at)

    def importer(self, name: str, value: str) -> None:
        """Params field `name` names a registered importer."""
        from perfscale.ingest.registry import list_ingesters

        known = [i.name for i in list_ingesters()]
        if value not in known:
            self.problem(f"unknown importer {value!r}; choose one of {', '.join(known)}", name)

    def conditions(self, name: str, value: Any) -> None:
        """Params field `name` holds sampling conditions: they must parse (columns are checked when run)."""
        from perfscale.generators.conditions import Conditions

        if value is None:
            return
        try:
            Conditions.parse(value)
        except (BadInput, SpecError, ValueError) as exc:
            self.problem(str(exc), name)
