"""Study expansion: a study becomes a plan, one row per task, in dependency order."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from perfscale.errors import SpecError
from perfscale.plan.cache import DIGEST_KEY
from perfscale.plan.checks import CHECK_CACHE, CheckCache, Problems
from perfscale.plan.grid import expand_grid
from perfscale.plan.keys import SORTED_JSON, stage_digest, task_key
from perfscale.plan.kinds import StageParams, canonical_kind, get_stage_kind
from perfscale.plan.named import PARAMS, PlanCheck
from perfscale.plan.placement import placed_site
from perfscale.spec.loader import Loc, format_validation_error, line_prefix, read_yaml
from perfscale.spec.site import Site
from perfscale.spec.study import Stage, Study
from perfscale.version import __version__


@dataclass(frozen=True, slots=True)
class Task:
    index: int
    stage: str
    kind: str
    key: str
    params: dict[str, Any]
    rep: int
    seed: int
    inputs: dict[str, str] = field(default_factory=dict)  # whole-stage inputs: stage -> stage digest
    upstream_stage: str | None = None  # foreach: the one upstream task this task consumes
    upstream_key: str | None = None
    cores: int = 1
    memory_gb: float = 1.0
    gpus: int = 0
    nodes: int = 1
    walltime_s: float = 3600.0
    expected_runtime_s: float = 3600.0
    retry: dict[str, int] = field(default_factory=dict)
    ranks: int = 1  # > 1: an MPI job (perfscale/distributed)
    ranks_per_node: int = 1
    cores_per_rank: int = 1
    gpus_per_rank: int = 0
    site: str | None = None  # another site than the run's (resources.site)
    partition: str | None = None  # resources.partition


_JSON_FIELDS = ("params", "inputs", "retry")


@dataclass
class Plan:
    study: str
    tasks: list[Task]
    version: str = __version__
    # {id(value): its JSON} of params already encoded while planning (each grid point's once), so that
    # writing the plan does not encode them again; values are alive as long as the tasks holding them
    encoded: dict[int, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def stages(self) -> list[str]:
        return list(dict.fromkeys(t.stage for t in self.tasks))

    def of_stage(self, stage: str) -> list[Task]:
        return [t for t in self.tasks if t.stage == stage]

    def to_table(self, digest: str | None = None) -> pa.Table:
        """Column by column (not dataclasses.asdict, which deep-copies every task: 80% of a big plan's time).
        A JSON field is encoded once per distinct object: tasks of one grid point share their params, and
        tasks of one stage their inputs and retry policy."""
        columns = []
        for name in _PLAN_SCHEMA.names:
            values = [getattr(t, name) for t in self.tasks]
            if name in _JSON_FIELDS:
                encoded: dict[int, str] = dict(self.encoded) if name == "params" else {}
                values = [
                    encoded.get(id(v)) or encoded.setdefault(id(v), SORTED_JSON.encode(v)) for v in values
                ]
            columns.append(pa.array(values, _PLAN_SCHEMA.field(name).type))
        table = pa.Table.from_arrays(columns, schema=_PLAN_SCHEMA)
        meta = {"study": self.study, "perfscale_version": self.version}
        if digest is not None:
            meta[DIGEST_KEY] = digest
        return table.replace_schema_metadata(meta)

    def write(self, path: Path, digest: str | None = None) -> None:
        """Write the plan; `digest` (perfscale.plan.cache) lets a rerun of the same study reuse it."""
        from perfscale.store.atomic import atomic_write_table

        # small row groups: one task is read by decoding one group (PlanRows), not the whole plan
        atomic_write_table(self.to_table(digest), path, row_group_size=PLAN_ROW_GROUP)

    @classmethod
    def read(cls, path: Path | str) -> Plan:
        table = pq.read_table(path)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        tasks = _tasks(table)
        return cls(study=meta.get("study", "?"), tasks=tasks, version=meta.get("perfscale_version", "?"))


PLAN_ROW_GROUP = 4096  # tasks per row group of plan.parquet


def _tasks(table: pa.Table) -> list[Task]:
    """Tasks of plan rows; equal JSON texts are decoded once and their value shared, as `build_plan` shares
    a stage's inputs and retry policy and a grid point's params."""
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    for name in _JSON_FIELDS:
        decoded: dict[str, Any] = {}
        columns[name] = [
            decoded[v] if v in decoded else decoded.setdefault(v, json.loads(v)) for v in columns[name]
        ]
    names = list(columns)
    return [Task(**dict(zip(names, row, strict=True))) for row in zip(*columns.values(), strict=True)]


class PlanRows:
    """Single tasks of a plan file, each read by decoding the one row group that holds it (kept, a few at a
    time): what a worker or an array element needs, at a cost that does not grow with the plan. Plans
    written as one big row group (before PLAN_ROW_GROUP) are read whole, once."""

    def __init__(self, path: Path | str, keep: int = 4):
        self.file = pq.ParquetFile(str(path))
        md = self.file.metadata
        self.starts = [0]
        for i in range(md.num_row_groups):
            self.starts.append(self.starts[-1] + md.row_group(i).num_rows)
        self.keep = keep
        self._groups: dict[int, list[Task]] = {}

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int) -> Task:
        if not 0 <= index < len(self):
            raise IndexError(index)
        from bisect import bisect_right

        group = bisect_right(self.starts, index) - 1
        tasks = self._groups.get(group)
        if tasks is None:
            if len(self._groups) >= self.keep:
                self._groups.pop(next(iter(self._groups)))
            tasks = self._groups[group] = _tasks(self.file.read_row_group(group))
        return tasks[index - self.starts[group]]


_PLAN_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("stage", pa.string()),
        ("kind", pa.string()),
        ("key", pa.string()),
        ("params", pa.string()),
        ("rep", pa.int64()),
        ("seed", pa.int64()),
        ("inputs", pa.string()),
        ("upstream_stage", pa.string()),
        ("upstream_key", pa.string()),
        ("cores", pa.int64()),
        ("memory_gb", pa.float64()),
        ("gpus", pa.int64()),
        ("nodes", pa.int64()),
        ("walltime_s", pa.float64()),
        ("expected_runtime_s", pa.float64()),
        ("retry", pa.string()),
        ("ranks", pa.int64()),
        ("ranks_per_node", pa.int64()),
        ("cores_per_rank", pa.int64()),
        ("gpus_per_rank", pa.int64()),
        ("site", pa.string()),
        ("partition", pa.string()),
    ]
)


def _params_loc(spec: Stage, stage: str, loc: Loc, point: dict[str, Any] | None = None) -> Loc:
    """Where a parameter is set in the study file: in the stage's grid, or in its params. A location inside
    a grid value (a field of a mapping such as `hyperparameters`) goes through the value's list entry."""
    for part in ("product", "zip"):
        values = getattr(spec.grid, part)
        if loc and loc[0] in values:
            where: Loc = ("stages", stage, "grid", part, loc[0])
            if len(loc) > 1 and point is not None and point.get(loc[0]) in values[loc[0]]:
                where = (*where, values[loc[0]].index(point[loc[0]]))
            return (*where, *loc[1:])
    return ("stages", stage, "params", *loc)


@dataclass
class _Checks:
    """A stage's plan-time checks: its params at each grid point, and its kind's `plan_check` once per
    distinct params."""

    spec: Stage
    stage: str
    params_model: type[BaseModel]
    named: PlanCheck
    source: str
    context: dict[str, Any]
    lines: _StudyLines
    checked: set[str] = field(default_factory=set)
    encoded: dict[int, str] = field(default_factory=dict)  # id(params) -> their JSON, for Plan.to_table

    def params(self, point: dict[str, Any]) -> dict[str, Any]:
        """The params at grid `point`, validated (and, the first time these params are seen, their names
        checked); SpecError naming every problem at its line otherwise."""
        try:
            model = self.params_model.model_validate({**self.spec.params, **point}, context=self.context)
        except ValidationError as exc:
            raise SpecError(self._message(exc, point)) from None
        params = model.model_dump(mode="json")
        digest = SORTED_JSON.encode(params)  # also the plan's stored form of these params (Plan.encoded)
        self.encoded[id(params)] = digest
        if digest not in self.checked:
            self.checked.add(digest)
            self._plan_check(model, point)
        return params

    def _plan_check(self, model: BaseModel, point: dict[str, Any]) -> None:
        if not isinstance(model, StageParams):  # a kind registered with a plain pydantic model
            return
        self.named.problems = []
        model.plan_check(self.named)
        if not self.named.problems:
            return
        problems = Problems()
        for problem in self.named.problems:
            problems.add(problem.loc, problem.message, problem.value)
        try:
            problems.raise_all(self.params_model)
        except ValidationError as exc:
            raise SpecError(self._message(exc, point)) from None

    def _message(self, exc: ValidationError, point: dict[str, Any]) -> str:
        def locate(loc: Loc) -> Loc:
            if loc and loc[0] == PARAMS:  # a plan_check problem inside the params
                return _params_loc(self.spec, self.stage, loc[1:], point)
            if loc and loc[0] in ("foreach", "inputs"):  # ... or at a field of the stage itself
                return ("stages", self.stage, *loc)
            return _params_loc(self.spec, self.stage, loc, point)

        what = f": stages.{self.stage}.params" + (f" at grid point {point}" if point else "")
        return format_validation_error(self.source, exc, self.lines.lines, locate=locate, what=what)


class _StudyLines:
    """Line numbers of the study file, read again only when an error needs them."""

    def __init__(self, source: str):
        self.source = source
        self._lines: dict[Loc, int] | None = None

    @property
    def lines(self) -> dict[Loc, int]:
        if self._lines is None:
            path = Path(self.source)
            try:
                self._lines = read_yaml(path)[1] if path.is_file() else {}
            except SpecError:
                self._lines = {}
        return self._lines

    def where(self, loc: Loc) -> str:
        """`file:line` (or just the file) of a field of the study."""
        return line_prefix(self.source, self.lines, loc)


def _validation_context(site: Site | None) -> dict[str, Any]:
    """What stage params models see while a plan is built: the site, and one CheckCache for the whole plan
    (checks that read only fields a grid leaves alone run once, not at every grid point)."""
    return {"site": site, CHECK_CACHE: CheckCache(site)}


def _too_many_gpus(gpus: int, site: Site, where: str, stage: str) -> str:
    has = "has no GPUs (gpus_per_node: 0)" if not site.gpus_per_node else f"nodes have {site.gpus_per_node}"
    return (
        f"{where}: stages.{stage}.resources.gpus: each task asks for {gpus} GPUs and site {site.name!r} "
        f"{has}; a task runs on one node, so lower gpus or choose a site with more GPUs per node"
    )


def build_plan(study: Study, source: str = "<study>", site: Site | None = None) -> Plan:
    """Expand every stage's grid x repetitions x seeds (x upstream tasks for foreach stages). With `site`,
    what depends on where tasks run (counter events) is checked against it."""
    tasks: list[Task] = []
    encoded: dict[int, str] = {}  # id(params) -> their JSON (Plan.encoded)
    keys_by_stage: dict[str, list[str]] = {}
    kinds_by_stage: dict[str, str] = {}
    lines = _StudyLines(source)
    contexts = {site.name if site else None: _validation_context(site)}
    for name, spec in study.stages.items():
        resources = study.resources_of(name)
        retry = study.retry_of(name).model_dump()
        inputs = {up: stage_digest(keys_by_stage[up]) for up in spec.inputs}
        upstream_keys: list[str | None] = list(keys_by_stage[spec.foreach]) if spec.foreach else [None]
        seeds = spec.seeds if spec.seeds is not None else [study.seed]
        keys: list[str] = []
        kind = canonical_kind(spec.kind, where=lines.where(("stages", name, "kind")))
        params_model = get_stage_kind(kind, where=f"{source}: stages.{name}.kind").params
        named = PlanCheck(name, tuple(spec.inputs), spec.foreach, kinds_by_stage)
        where = lines.where(("stages", name, "resources"))
        stage_site = placed_site(resources, site, where, name) if site is not None else None
        if stage_site is not None:
            named.gpus, named.site = resources.gpus, stage_site.name
            if resources.gpus > stage_site.gpus_per_node:
                raise SpecError(_too_many_gpus(resources.gpus, stage_site, where, name))
            if resources.ranks > 1 or resources.gpus_per_rank:
                from perfscale.sched.mpi import check_ranks

                check_ranks(resources, stage_site, where, f"stages.{name}")
        # what depends on where tasks run (counter events) is checked against the stage's own site
        key = stage_site.name if stage_site is not None else None
        context = contexts.setdefault(key, _validation_context(stage_site))
        checks = _Checks(spec, name, params_model, named, source, context, lines, encoded=encoded)
        points = expand_grid(spec.grid)
        if not points:
            loc = ("stages", name, "grid", "exclude")
            raise SpecError(
                f"{lines.where(loc)}: {'.'.join(loc)}: the rules exclude every grid point, so the stage has "
                "no tasks; loosen or remove them"
            )
        for point in points:
            params = checks.params(point)
            for upstream in upstream_keys:
                for seed in seeds:
                    for rep in range(spec.repetitions):
                        key = task_key(name, kind, {**params, "rep": rep, "seed": seed}, inputs, upstream)
                        keys.append(key)
                        tasks.append(
                            Task(
                                index=len(tasks),
                                stage=name,
                                kind=kind,
                                key=key,
                                params=params,
                                rep=rep,
                                seed=seed,
                                inputs=inputs,
                                upstream_stage=spec.foreach,
                                upstream_key=upstream,
                                cores=resources.cores,
                                memory_gb=resources.memory_gb,
                                gpus=resources.gpus,
                                nodes=resources.nodes,
                                walltime_s=resources.walltime,
                                expected_runtime_s=resources.expected_runtime or resources.walltime,
                                retry=retry,
                                ranks=resources.ranks,
                                ranks_per_node=resources.ranks_per_node
                                or -(-resources.ranks // resources.nodes),
                                cores_per_rank=resources.cores_per_rank,
                                gpus_per_rank=resources.gpus_per_rank,
                                site=resources.site,
                                partition=resources.partition,
                            )
                        )
        if len(set(keys)) != len(keys):
            raise SpecError(
                f"{source}: stages.{name}: the grid yields duplicate tasks; remove repeated values"
            )
        keys_by_stage[name] = keys
        kinds_by_stage[name] = kind
    return Plan(study=study.name, tasks=tasks, encoded=encoded)
