"""MPI launch lines from task resources and the site's launcher (srun, jsrun, lrun, mpirun).

The line is a list of arguments (never a shell string), so no value can inject shell syntax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from perfscale.errors import SpecError
from perfscale.spec.site import Site

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


def _srun(lay: Layout) -> list[str]:
    line = [
        "srun",
        f"--nodes={lay.nodes}",
        f"--ntasks={lay.ranks}",
        f"--ntasks-per-node={lay.ranks_per_node}",
        f"--cpus-per-task={lay.cores_per_rank}",
    ]
    if lay.gpus_per_rank:
        line.append(f"--gpus-per-task={lay.gpus_per_rank}")
    line.append(
        {"none": "--cpu-bind=none", "cores": "--cpu-bind=cores", "sockets": "--cpu-bind=sockets"}[lay.bind]
    )
    return line


def _jsrun(lay: Layout) -> list[str]:
    # one resource set per rank: -a ranks/set, -c cores/set, -g GPUs/set, -r sets/node, -n sets in all
    line = [
        "jsrun",
        f"--nrs={lay.ranks}",
        "--tasks_per_rs=1",
        f"--cpu_per_rs={lay.cores_per_rank}",
        f"--gpu_per_rs={lay.gpus_per_rank}",
        f"--rs_per_host={lay.ranks_per_node}",
    ]
    line.append(
        {"none": "--bind=none", "cores": f"--bind=packed:{lay.cores_per_rank}", "sockets": "--bind=rs"}[
            lay.bind
        ]
    )
    return line


def _lrun(lay: Layout) -> list[str]:
    line = ["lrun", f"-N{lay.nodes}", f"-T{lay.ranks_per_node}"]
    if lay.gpus_per_rank:
        line.append(f"--gpus_per_task={lay.gpus_per_rank}")
    return line


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


_BUILDERS = {"srun": _srun, "jsrun": _jsrun, "lrun": _lrun, "mpirun": _mpirun}


def launch_line(site: Site, layout: Layout, launcher: str | None = None) -> list[str]:
    """The launcher's argument list for `layout` on `site` (append the program and its arguments)."""
    name = launcher or site.launcher
    if name == "local":
        name = "mpirun"
    check_layout(layout, site)
    return _BUILDERS[name](layout)
