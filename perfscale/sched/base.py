"""A batch scheduler is one unit: the `Scheduler` interface and the table that finds each one by name.

Everything perfscale knows about a scheduler lives in its class (one module per scheduler, plus its job
script template in launchers/ and its site files):

- name, array index base: `name`, `first_index`;
- submit / poll / cancel, one status call per poll cycle: `submit`, `poll`, `cancel`;
- how one array element is named: `element_id`;
- job script template, log file names, values only its template uses: `template`, `log_pattern`,
  `template_values`;
- scheduler state -> failure kind: `states`, `failure`;
- job id, node list and array index environment variables: `job_id_env`, `nodelist_env`, `index_env`,
  `allocation`;
- launchers (srun, jsrun, mpiexec, flux run) and whether tasks must go through one: `launchers`,
  `wraps_tasks`;
- Parsl provider and dask-jobqueue cluster for pilots: `parsl_provider`, `dask_cluster_class`, `dask_options`;
- the commands `perfscale sites probe` looks for, and its queue listing: `commands`, `queues_argv`,
  `parse_queues`.

`SCHEDULERS` maps the names a site file may give in `scheduler:` to `"module:Class"` (imported on use, as
`engines.base.ENGINES` does). Render, submit, mpi and the engines look schedulers up there and never branch
on a name: adding a scheduler is a module, a template, a site file and one line in `SCHEDULERS`.

This module imports nothing heavy (the site model validates `scheduler:` against the table).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from perfscale.errors import FailureKind, SpecError

if TYPE_CHECKING:
    from perfscale.sched.arrays import ArrayJob
    from perfscale.sched.client import CommandClient
    from perfscale.sched.mpi import Launcher
    from perfscale.spec.site import Site

# name in a site file -> "module:Class"
SCHEDULERS: dict[str, str] = {
    "none": "perfscale.sched.base:NoScheduler",
    "slurm": "perfscale.sched.slurm:Slurm",
    "lsf": "perfscale.sched.lsf:LSF",
    "pbs": "perfscale.sched.pbs:PBS",
    "flux": "perfscale.sched.flux:Flux",
}


@dataclass(frozen=True)
class ElementState:
    """One array element as the scheduler reports it. `active`: queued or running (and able to run)."""

    job_id: str  # the array's job id, as submit returned it
    element: int  # array index (from the scheduler's first_index)
    state: str
    active: bool
    failure: FailureKind | None
    exit_code: int | None = None
    reason: str | None = None
    blocked: bool = False  # waits for ever: pending on a dependency that failed (cancel and resubmit it)


States = dict[tuple[str, int], ElementState]


class Scheduler(ABC):
    """A batch scheduler (see the module docstring for what each member is for).

    An instance runs its commands through `client` (argument lists, retries, logging). `state_dir` is the
    run's `arrays/` folder, for schedulers whose poll also reads files their job scripts wrote there.
    """

    name: ClassVar[str]
    batch: ClassVar[bool] = True  # False only for "none": tasks run here, there is nothing to submit
    first_index: ClassVar[int] = 0
    lags: ClassVar[bool] = False  # poll reads a source that learns of new jobs late (Slurm's sacct)
    template: ClassVar[str] = ""  # job script template in launchers/
    log_pattern: ClassVar[str] = ""  # element log file name; {name} is the array's name
    job_id_env: ClassVar[str] = ""  # set inside a job: its id
    nodelist_env: ClassVar[str] = ""  # set inside a job: its nodes (a list, a file or a hostlist)
    index_env: ClassVar[str] = ""  # set inside an array element: its index
    commands: ClassVar[tuple[str, ...]] = ()  # what submit, poll and cancel run
    launchers: ClassVar[Mapping[str, Launcher]] = {}  # the scheduler's own launchers, by site name
    wraps_tasks: ClassVar[bool] = False  # the job script runs off the compute nodes: tasks need a launcher
    states: ClassVar[Mapping[str, FailureKind | None]] = {}  # scheduler state -> failure kind (None: not one)
    dask_cluster_class: ClassVar[str | None] = None  # the dask_jobqueue class for pilots (None: no cluster)

    def __init__(self, client: CommandClient | None = None, state_dir: Path | None = None):
        from perfscale.sched.client import CommandClient

        self.client = client or CommandClient()
        self.state_dir = state_dir

    # --- array mode -----------------------------------------------------------------------------------------
    @abstractmethod
    def submit(
        self, script: Path, depends_on: list[str], hold: bool = False, after_any: list[str] | None = None
    ) -> str:
        """Submit the job script; returns the job id. `depends_on`: arrays that must succeed first,
        `after_any`: arrays that must only end. `hold`: submitted held (nothing runs until released)."""

    @abstractmethod
    def poll(self, job_ids: list[str]) -> States:
        """State of every element of every array in `job_ids`, from ONE scheduler call."""

    @abstractmethod
    def cancel(self, job_ids: list[str]) -> None:
        """Cancel whole arrays or single elements (as `element_id` names them), in one call."""

    @staticmethod
    @abstractmethod
    def element_id(job_id: str, element: int) -> str:
        """How the scheduler's commands name element `element` of array `job_id`."""

    @classmethod
    def failure(cls, state: str, reason: str | None = None) -> FailureKind | None:
        """Failure kind of a finished element in `state` (None: not a failure); unknown states: app errors."""
        return cls.states.get(state.upper(), FailureKind.APP_ERROR)

    def log_name(self, job: ArrayJob) -> str:
        return self.log_pattern.format(name=job.name)

    def template_values(self, job: ArrayJob, site: Site, run_root: Path) -> dict[str, Any]:
        """Values only this scheduler's template uses (added to the common ones in perfscale.sched.render)."""
        return {}

    # --- inside an allocation -------------------------------------------------------------------------------
    def allocation(self, site: Site) -> tuple[str, list[str]] | None:
        """(job id, compute hosts) of the allocation this process runs in; None outside one."""
        return None

    # --- pilots ---------------------------------------------------------------------------------------------
    def parsl_provider(
        self, site: Site, common: dict[str, Any], partition: str | None, account: str | None
    ) -> Any:
        """The Parsl execution provider for a pilot block; `common` holds the block settings every provider
        takes (nodes_per_block, blocks, walltime as HH:MM:SS, worker_init)."""
        raise SpecError(
            f"site {site.name!r}: Parsl has no provider for scheduler {self.name!r}; "
            "use array mode (`perfscale submit`) or another engine"
        )

    def dask_options(
        self, site: Site, config: dict[str, Any], account: str | None, walltime_s: float
    ) -> dict[str, Any]:
        """Keyword arguments of `dask_cluster_class`: `config` (cores, processes, memory, queue, job name,
        prologue, logs) completed with this scheduler's fields (account, walltime, directives)."""
        return config

    # --- probe ----------------------------------------------------------------------------------------------
    def queues_argv(self) -> list[str] | None:
        """The command that lists partitions/queues (for `perfscale sites probe`)."""
        return None

    def parse_queues(self, out: str) -> list[str]:
        return out.split()


class NoScheduler(Scheduler):
    """`scheduler: none`: tasks run on this machine (pilots use Parsl's LocalProvider); nothing to submit."""

    name = "none"
    batch = False

    def _refuse(self) -> SpecError:
        return SpecError(
            "this site has no batch scheduler; use `perfscale run` for sites with `scheduler: none`"
        )

    def submit(
        self, script: Path, depends_on: list[str], hold: bool = False, after_any: list[str] | None = None
    ) -> str:
        raise self._refuse()

    def poll(self, job_ids: list[str]) -> States:
        if job_ids:
            raise self._refuse()
        return {}

    def cancel(self, job_ids: list[str]) -> None:
        if job_ids:
            raise self._refuse()

    @staticmethod
    def element_id(job_id: str, element: int) -> str:
        return f"{job_id}[{element}]"

    def parsl_provider(
        self, site: Site, common: dict[str, Any], partition: str | None, account: str | None
    ) -> Any:
        from parsl.providers import LocalProvider

        return LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, worker_init=common["worker_init"])


def scheduler_class(name: str) -> type[Scheduler]:
    """The class registered under `name` in SCHEDULERS (imported now)."""
    if name not in SCHEDULERS:
        raise SpecError(f"unknown scheduler {name!r}; choose one of {', '.join(sorted(SCHEDULERS))}")
    module, cls = SCHEDULERS[name].split(":")
    return getattr(import_module(module), cls)


def make_scheduler(
    site: Site, client: CommandClient | None = None, state_dir: Path | None = None
) -> Scheduler:
    return scheduler_class(site.scheduler)(client, state_dir)


def check_scheduler_name(name: str) -> str:
    """For the site model's `scheduler` field: a ValueError naming the choices (the loader adds file:line)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(sorted(SCHEDULERS))}")
    return name


def dask_capable() -> list[str]:
    """Schedulers with a dask-jobqueue cluster."""
    return sorted(n for n in SCHEDULERS if scheduler_class(n).dask_cluster_class)
