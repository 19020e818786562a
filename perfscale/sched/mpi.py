"""MPI launch lines from task resources and the site's launcher (srun, jsrun, lrun, mpiexec, flux, mpirun).

A `Launcher` builds the argument list for a rank layout and, for the Ray engine, the options that pin ranks
to given hosts. `mpirun` (and `local`, its alias) belongs to no scheduler; every other launcher is declared
by the scheduler that provides it (`Scheduler.launchers` in perfscale/sched/<name>.py), so a site's launcher
is looked up through its scheduler and never by branching on its name.

The line is a list of arguments (never a shell string), so no value can inject shell syntax.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from perfscale.errors import SpecError

if TYPE_CHECKING:
    from perfscale.spec.site import Site  # the site model validates its launcher here: no import back

Binding = Literal["none", "cores", "sockets"]


@dataclass(frozen=True)
class Layout:
    nodes: int = 1
    ranks_per_node: int = 1
    cores_per_rank: int = 1
    gpus_per_rank: int = 0
    bind: Binding = "cores"

    @property
    def ranks(self) -> int:
        return self.nodes * self.ranks_per_node


def _no_pin(hosts: list[str]) -> list[str]:
    """Launchers without a host option (jsrun, lrun) fill the allocation's hosts in order."""
    return []


@dataclass(frozen=True)
class Launcher:
    """`line(layout)`: the launcher's arguments (append the program); `pin(hosts)`: options that place the
    ranks on `hosts`."""

    name: str
    line: Callable[[Layout], list[str]]
    pin: Callable[[list[str]], list[str]] = _no_pin


def layout_problem(layout: Layout, site: Site) -> tuple[str, str] | None:
    """(the resources field at fault, what is wrong and the fix) when a node of `site` cannot hold `layout`;
    the one capacity check behind both `check_layout` (launch lines) and `check_ranks` (plan time)."""
    per_node, cores, gpus = layout.ranks_per_node, layout.cores_per_rank, layout.gpus_per_rank
    if per_node * cores > site.cores:
        return "ranks_per_node", (
            f"{per_node} ranks x {cores} cores_per_rank exceed the {site.cores} cores of a {site.name!r} "
            "node; lower ranks_per_node or cores_per_rank"
        )
    if gpus and not site.gpus_per_node:
        return "gpus_per_rank", (
            f"site {site.name!r} has no GPUs (gpus_per_node: 0); remove gpus_per_rank or choose a site "
            "with GPUs"
        )
    if per_node * gpus > site.gpus_per_node:
        return "gpus_per_rank", (
            f"{per_node} ranks x {gpus} GPUs exceed the {site.gpus_per_node} GPUs of a {site.name!r} node; "
            "lower ranks_per_node or gpus_per_rank"
        )
    return None


def check_layout(layout: Layout, site: Site) -> None:
    found = layout_problem(layout, site)
    if found is not None:
        raise SpecError(f"{found[0]}: {found[1]}")


def _mpirun(lay: Layout) -> list[str]:
    bind = {"none": "none", "cores": "core", "sockets": "socket"}[lay.bind]
    return [
        "mpirun",
        "-n",
        str(lay.ranks),
        "--map-by",
        f"ppr:{lay.ranks_per_node}:node:PE={lay.cores_per_rank}",
        "--bind-to",
        bind,
    ]


MPIRUN = Launcher("mpirun", _mpirun, lambda hosts: ["--host", ",".join(hosts)])
# launchers of no particular scheduler; "local" (no launcher) runs MPI programs with mpirun
GENERIC: dict[str, Launcher] = {"local": MPIRUN, "mpirun": MPIRUN}


def launcher_names(scheduler: str) -> list[str]:
    """The launchers a site with `scheduler` may name (the scheduler's own, then the generic ones)."""
    from perfscale.sched.base import scheduler_class

    return [*scheduler_class(scheduler).launchers, *GENERIC]


def check_launcher_name(scheduler: str, launcher: str) -> str:
    """For the site model's `launcher` field: a ValueError naming the choices (the loader adds file:line)."""
    choices = launcher_names(scheduler)
    if launcher not in choices:
        raise ValueError(
            f"launcher {launcher!r} does not go with scheduler {scheduler!r}; "
            f"choose one of {', '.join(choices)}"
        )
    return launcher


def launcher_for(site: Site, name: str | None = None) -> Launcher:
    """The site's launcher (or `name`), looked up in its scheduler's launchers and the generic ones."""
    from perfscale.sched.base import scheduler_class

    name = name or site.launcher
    found = {**GENERIC, **scheduler_class(site.scheduler).launchers}.get(name)
    if found is None:
        raise SpecError(
            f"site {site.name!r}: launcher {name!r} does not go with scheduler {site.scheduler!r}; "
            f"choose one of {', '.join(launcher_names(site.scheduler))}"
        )
    return found


def launch_line(site: Site, layout: Layout, launcher: str | None = None) -> list[str]:
    """The launcher's argument list for `layout` on `site` (append the program and its arguments)."""
    found = launcher_for(site, launcher)
    check_layout(layout, site)
    return found.line(layout)


# ---- multi-rank tasks (perfscale/distributed) ----------------------------------------------------------


class _RankResources(Protocol):
    ranks: int
    cores_per_rank: int
    gpus_per_rank: int


def task_layout(res: _RankResources) -> Layout:
    """The rank layout of a stage's resources or a task (ranks_per_node None: ranks spread over `nodes`)."""
    given = getattr(res, "ranks_per_node", None) or -(-res.ranks // getattr(res, "nodes", 1))
    per_node = min(given, res.ranks)
    nodes = -(-res.ranks // per_node)
    return Layout(nodes, per_node, res.cores_per_rank, res.gpus_per_rank)


def check_ranks(res: _RankResources, site: Site, where: str, field: str) -> None:
    """Plan-time check that the site can hold a multi-rank stage: SpecError naming the field and the fix.

    MPI itself (mpirun, mpi4py) is probed on this host only for a site without a batch scheduler (the
    `local` site runs here); a cluster site is planned on a login node that may lack both, and its nodes
    are checked by `perfscale sites probe` there.
    """
    import shutil
    from importlib.util import find_spec

    from perfscale.sched.base import scheduler_class

    lay = task_layout(res)
    at = f"{where}: {field}.resources"
    if res.ranks % lay.ranks_per_node:
        raise SpecError(
            f"{at}.ranks: {res.ranks} ranks do not fill nodes of {lay.ranks_per_node} ranks; make ranks a "
            "multiple of ranks_per_node"
        )
    if lay.nodes > site.limits.max_nodes:
        raise SpecError(
            f"{at}.ranks: {res.ranks} ranks at {lay.ranks_per_node} per node need {lay.nodes} nodes, site "
            f"{site.name!r} has {site.limits.max_nodes}; lower ranks or raise ranks_per_node"
        )
    found = layout_problem(lay, site)
    if found is not None:
        raise SpecError(f"{at}.{found[0]}: {found[1]}")
    if res.ranks <= 1 or scheduler_class(site.scheduler).batch:
        return
    if launcher_for(site) is MPIRUN and shutil.which("mpirun") is None:
        raise SpecError(
            f"{at}.ranks: {res.ranks} ranks need MPI, and mpirun is not on PATH; install Open MPI "
            "(apt-get install openmpi-bin libopenmpi-dev) or set ranks: 1"
        )
    if find_spec("mpi4py") is None:
        raise SpecError(
            f"{at}.ranks: {res.ranks} ranks need mpi4py, which is not installed; pip install "
            "'perfscale[mpi]' or set ranks: 1"
        )


def mpi_program(plan_path: str, *args: str) -> list[str]:
    """What every rank runs: `perfscale task run PLAN ...` under mpi4py's runner (-m mpi4py), which aborts
    every rank when one of them raises, so no rank waits forever on a dead peer."""
    import sys

    return [sys.executable, "-m", "mpi4py", "-m", "perfscale.cli", "task", "run", plan_path, *args]


def task_launch_line(site: Site, res: _RankResources) -> list[str]:
    """The launcher's argument list for a multi-rank task on `site` (append `mpi_program(...)`).

    mpirun on a machine without a scheduler also gets --oversubscribe (hardware threads and a busy machine
    must not refuse the job) and, for root only, --allow-run-as-root.
    """
    import os

    from perfscale.sched.base import scheduler_class

    line = launch_line(site, task_layout(res))
    if launcher_for(site) is MPIRUN and not scheduler_class(site.scheduler).batch:
        root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
        line = [line[0], *root, "--oversubscribe", *line[1:]]
    return line
