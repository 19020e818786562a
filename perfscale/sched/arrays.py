"""Array mode, part 1: turn a stage's tasks into scheduler job arrays.

Tasks are *packed* into array elements so that an element's requested walltime fits the partition limit,
then elements are *chunked* into arrays no larger than the site's MaxArraySize and queue limits. Both steps
are deterministic (plan order), so the same plan always gives the same arrays.

Packing rule: an element's requested walltime is `sum(expected_runtime) + max(walltime - expected_runtime)`
over its tasks: every task's expected time, plus room for the worst overrun any one of them is allowed.
Only tasks with an `expected_runtime` shorter than their walltime are packed; others get one element each
(packing tasks that may each use their whole walltime would only make elements long). A single task that
does not fit the partition limit is an error before anything is submitted.
"""

from __future__ import annotations

from dataclasses import dataclass

from perfscale.errors import SpecError
from perfscale.plan.planner import Task
from perfscale.sched.mpi import task_layout
from perfscale.spec.common import format_walltime
from perfscale.spec.site import Site

WALLTIME_FLOOR_S = 60.0  # schedulers count walltime in minutes: never ask for less than one


@dataclass(frozen=True)
class Element:
    """One array element: the task indices it runs, one after another."""

    indices: tuple[int, ...]
    walltime_s: float


@dataclass
class ArrayJob:
    """One scheduler array: elements 0..len-1 (Slurm) or 1..len (LSF) of one stage."""

    name: str
    stage: str
    elements: list[Element]
    nodes: int
    cores: int
    memory_gb: float
    gpus: int
    partition: str | None
    account: str | None
    throttle: int
    # a multi-rank stage (resources.ranks > 1): each task line is the site launcher's MPI launch
    ranks: int = 1
    ranks_per_node: int = 1
    cores_per_rank: int = 1
    gpus_per_rank: int = 0

    @property
    def walltime_s(self) -> float:
        return max(WALLTIME_FLOOR_S, max(e.walltime_s for e in self.elements))

    @property
    def size(self) -> int:
        return len(self.elements)


def element_walltime(tasks: list[Task]) -> float:
    expected = sum(t.expected_runtime_s for t in tasks)
    return expected + max(t.walltime_s - t.expected_runtime_s for t in tasks)


def _packable(t: Task) -> bool:
    return t.expected_runtime_s < t.walltime_s


def pack(tasks: list[Task], limit_s: float, max_tasks: int | None = None) -> list[Element]:
    """Greedy packing in plan order under `limit_s` (see the module docstring)."""
    elements: list[Element] = []
    current: list[Task] = []
    for t in tasks:
        if element_walltime([t]) > limit_s:
            raise SpecError(
                f"task {t.index} of stage {t.stage!r} asks for {format_walltime(t.walltime_s)}, "
                f"more than the partition limit {format_walltime(limit_s)}; lower its walltime"
            )
        alone = not (_packable(t) and current and _packable(current[-1]))
        full = max_tasks is not None and len(current) >= max_tasks
        if current and (alone or full or element_walltime([*current, t]) > limit_s):
            elements.append(Element(tuple(x.index for x in current), element_walltime(current)))
            current = []
        current.append(t)
    if current:
        elements.append(Element(tuple(x.index for x in current), element_walltime(current)))
    return elements


def chunk_size(site: Site) -> int:
    """Elements per array: Slurm indices run 0..MaxArraySize-1, LSF arrays hold MAX_JOB_ARRAY_SIZE elements;
    every element also counts against the queue limit."""
    return max(1, min(site.limits.max_array_size, site.limits.max_jobs_in_queue))


def stage_arrays(
    study: str,
    stage: str,
    tasks: list[Task],
    site: Site,
    partition: str | None = None,
    account: str | None = None,
    throttle: int | None = None,
    pack_tasks: bool = True,
) -> list[ArrayJob]:
    """The arrays that run `tasks` (all of one stage) on `site`, checked against its limits."""
    if not tasks:
        return []
    first = tasks[0]
    pname, part = site.partition(partition)
    limit = min(site.limits.max_walltime, part.max_walltime) if part else site.limits.max_walltime
    for t in tasks:
        site.check_request(t.nodes, t.walltime_s, t.gpus, pname)
    if first.cores > site.cores:
        raise SpecError(
            f"stage {stage!r} asks for {first.cores} cores per task; {site.name!r} nodes have {site.cores}"
        )
    elements = pack(tasks, limit, None if pack_tasks else 1)
    size = chunk_size(site)
    account = account or (site.accounts[0] if site.accounts else None)
    arrays = []
    for n, start in enumerate(range(0, len(elements), size)):
        part_elements = elements[start : start + size]
        arrays.append(
            ArrayJob(
                name=f"{study}-{stage}-{n}",
                stage=stage,
                elements=part_elements,
                nodes=max(first.nodes, task_layout(first).nodes) if first.ranks > 1 else first.nodes,
                cores=first.cores_per_rank if first.ranks > 1 else first.cores,
                memory_gb=first.memory_gb,
                gpus=max(first.gpus, first.ranks_per_node * first.gpus_per_rank),
                partition=pname,
                account=account,
                throttle=min(throttle or site.limits.array_throttle, len(part_elements)),
                ranks=first.ranks,
                ranks_per_node=first.ranks_per_node,
                cores_per_rank=first.cores_per_rank,
                gpus_per_rank=first.gpus_per_rank,
            )
        )
    return arrays
