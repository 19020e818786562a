"""The site model: a site is data (scheduler, launcher, engine, node shape, limits), never code.

Adding a cluster means adding a YAML file in site_configs/; nothing in perfscale branches on a site's name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from perfscale.errors import SpecError
from perfscale.spec.common import AutoCount, AutoSize, EnvName, SafeName, Strict, Walltime
from perfscale.spec.loader import load_model


class Partition(Strict):
    """A Slurm partition or LSF queue and its limits."""

    max_nodes: int = Field(1, ge=1)
    max_walltime: Walltime = 86400.0
    default: bool = False


class Limits(Strict):
    max_array_size: int = Field(1001, ge=1, description="Slurm MaxArraySize (largest index + 1)")
    max_jobs_in_queue: int = Field(5000, ge=1)
    array_throttle: int = Field(100, ge=1, description="default %K: array elements running at once")
    max_nodes: int = Field(1, ge=1)
    max_walltime: Walltime = 86400.0


class Counters(Strict):
    """Which counter sources the site's compute nodes offer. Studies are checked against these at plan time,
    never against the machine that plans: a login node often has no PMU where the compute nodes do."""

    perf: bool = False
    papi: bool = False
    papi_native_events: list[str] | None = Field(
        None,
        description="native PAPI events the compute nodes know (fnmatch patterns such as 'perf::*', "
        "'skx::*'; see papi_native_avail there). Set: native events in studies must match one. Unset: "
        "on a site without a scheduler they are checked against this machine's PAPI, elsewhere only for "
        "form, and the profile row says why an event could not be counted.",
    )


class Site(Strict):
    name: SafeName
    description: str = ""
    scheduler: str = Field("none", description="a name in perfscale.sched.base.SCHEDULERS")
    launcher: str = Field("local", description="local, mpirun, or a launcher of the site's scheduler")
    engine: Literal["local", "parsl", "ray", "dask"] = "parsl"
    cores_per_node: AutoCount = "auto"
    memory_gb_per_node: AutoSize = "auto"
    gpus_per_node: int = Field(0, ge=0)
    nodes: int | None = Field(
        None,
        ge=1,
        description="compute nodes in the whole machine (not a job's limit: that is limits.max_nodes); the "
        "`simulate` stage's capacity for this machine. Unset: unknown",
    )
    gpu_model: str | None = None
    gpu_vendor: Literal["nvidia", "amd"] | None = Field(
        None,
        description="whose GPUs the nodes have: a task's GPUs are named in CUDA_VISIBLE_DEVICES (nvidia) or "
        "ROCR_VISIBLE_DEVICES and HIP_VISIBLE_DEVICES (amd); required when gpus_per_node > 0",
    )
    cpu_model: str | None = None
    arch: Literal["x86_64", "ppc64le", "aarch64"] = "x86_64"
    max_workers: AutoCount = Field("auto", description="concurrent tasks per node in pilot mode")
    accounts: list[str] = Field(default_factory=list)
    shared_filesystems: list[str] = Field(
        default_factory=list,
        description="absolute paths of file systems this site's login and compute nodes mount and other "
        "sites mount at the same path (e.g. /p/vast1): a study may run stages on two sites only when their "
        "files name one in common and the run folder lies on it",
    )
    partitions: dict[str, Partition] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    counters: Counters = Field(default_factory=Counters)
    watchdog_s: float = Field(
        300.0,
        gt=0,
        description="pilot mode: no task finished and no worker alive for this long restarts the engine; "
        "the same again right after a restart stops the run with a named error",
    )
    compact_every: int = Field(
        10_000,
        ge=0,
        description="pilot mode: each time a stage has this many new shards, `perfscale run` merges them "
        "into packs (store/packs.py), and packs the rest when the stage ends, so that a stage's file count "
        "grows with its data, not its task count; 0: never (`perfscale compact` still does)",
    )
    setup: list[str] = Field(default_factory=list, description="shell lines run before each task (modules)")
    env: dict[EnvName, str] = Field(default_factory=dict, description="exported before each task")
    directives: list[str] = Field(
        default_factory=list,
        description="extra job script directives, written after the scheduler's prefix (#SBATCH, #BSUB, "
        "#PBS, # flux:), e.g. '-l filesystems=home:eagle' on ALCF machines",
    )

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, name: str) -> str:
        from perfscale.sched.base import check_scheduler_name

        return check_scheduler_name(name)

    @field_validator("launcher")
    @classmethod
    def _launcher_of_scheduler(cls, name: str, info: ValidationInfo) -> str:
        from perfscale.sched.mpi import check_launcher_name

        scheduler = info.data.get("scheduler")
        return name if scheduler is None else check_launcher_name(scheduler, name)

    @model_validator(mode="after")
    def _one_default_partition(self) -> Site:
        defaults = [n for n, p in self.partitions.items() if p.default]
        if len(defaults) > 1:
            raise ValueError(f"at most one partition may be 'default: true', got {defaults}")
        return self

    @field_validator("shared_filesystems")
    @classmethod
    def _absolute(cls, paths: list[str]) -> list[str]:
        for p in paths:
            if not p.startswith("/"):
                raise ValueError(f"{p!r} is not an absolute path; give the mount point, e.g. /p/vast1")
        return paths

    @model_validator(mode="after")
    def _gpus_have_a_vendor(self) -> Site:
        if self.gpus_per_node and self.gpu_vendor is None:
            raise ValueError(
                f"gpus_per_node is {self.gpus_per_node} but gpu_vendor is not set; add 'gpu_vendor: nvidia' "
                "or 'gpu_vendor: amd' (it names the variable that binds a task to its GPUs)"
            )
        return self

    @model_validator(mode="after")
    def _engine_runs_on_arch(self) -> Site:
        if self.engine == "ray" and self.arch == "ppc64le":
            raise ValueError("engine 'ray' has no wheels for ppc64le; choose parsl or dask for this site")
        return self

    def partition(self, name: str | None = None) -> tuple[str | None, Partition | None]:
        """The named partition (or the default one); (None, None) for sites without partitions."""
        if not self.partitions:
            if name:
                raise SpecError(f"site {self.name!r} has no partitions; remove partition {name!r}")
            return None, None
        if name is None:
            name = next((n for n, p in self.partitions.items() if p.default), next(iter(self.partitions)))
        if name not in self.partitions:
            raise SpecError(
                f"site {self.name!r} has no partition/queue {name!r}; "
                f"choose one of {', '.join(self.partitions)}"
            )
        return name, self.partitions[name]

    def check_request(
        self, nodes: int, walltime_s: float, gpus: int = 0, partition: str | None = None
    ) -> None:
        """Raise SpecError when a request exceeds the site's or partition's limits (before any submit)."""
        from perfscale.spec.common import format_walltime

        pname, part = self.partition(partition)
        max_nodes = min(self.limits.max_nodes, part.max_nodes) if part else self.limits.max_nodes
        max_wall = min(self.limits.max_walltime, part.max_walltime) if part else self.limits.max_walltime
        where = f"site {self.name!r}" + (f" partition {pname!r}" if pname else "")
        if nodes > max_nodes:
            raise SpecError(
                f"{where}: {nodes} nodes requested, the limit is {max_nodes}; lower resources.nodes"
            )
        if walltime_s > max_wall:
            raise SpecError(
                f"{where}: walltime {format_walltime(walltime_s)} requested, the limit is "
                f"{format_walltime(max_wall)}; lower resources.walltime or pick another partition"
            )
        if gpus > self.gpus_per_node:
            raise SpecError(f"{where}: {gpus} GPUs per node requested, nodes have {self.gpus_per_node}")

    @property
    def cores(self) -> int:
        return (os.cpu_count() or 1) if self.cores_per_node == "auto" else int(self.cores_per_node)

    @property
    def workers(self) -> int:
        return self.cores if self.max_workers == "auto" else int(self.max_workers)


def site_dirs() -> list[Path]:
    """Where named sites are looked up: $PERFSCALE_SITE_PATH entries, then perfscale's site_configs/."""
    from perfscale.resources import site_configs_dir

    dirs = [Path(p) for p in os.environ.get("PERFSCALE_SITE_PATH", "").split(os.pathsep) if p]
    return [*dirs, site_configs_dir()]


def available_sites() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in site_dirs():
        for f in sorted(d.glob("*.yaml")):
            found.setdefault(f.stem, f)
    return found


def load_site(name_or_path: str | Path) -> Site:
    """Load a site by name (looked up in site_dirs()) or by path to a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        sites = available_sites()
        if str(name_or_path) not in sites:
            known = ", ".join(sorted(sites)) or "none"
            raise SpecError(
                f"unknown site {name_or_path!r}; known sites: {known} (or pass a path to a site YAML)"
            )
        path = sites[str(name_or_path)]
    return load_model(path, Site)
