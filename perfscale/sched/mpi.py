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
from typing import TYPE_CHECKING, Literal

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


def check_layout(layout: Layout, site: Site) -> None:
    if layout.ranks_per_node * layout.cores_per_rank > site.cores:
        raise SpecError(
            f"{layout.ranks_per_node} ranks x {layout.cores_per_rank} cores per node exceed the "
            f"{site.cores} cores of a {site.name!r} node"
        )
    if layout.ranks_per_node * layout.gpus_per_rank > site.gpus_per_node:
        raise SpecError(
            f"{layout.ranks_per_node} ranks x {layout.gpus_per_rank} GPUs per node exceed the "
            f"{site.gpus_per_node} GPUs of a {site.name!r} node"
        )


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
