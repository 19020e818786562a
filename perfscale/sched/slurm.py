"""Slurm: sbatch submit, one sacct (or squeue) call per poll, scancel, their parsers, srun, and the pilots'
SlurmProvider / SLURMCluster.

Checked against a real Slurm 22.05 (tests/test_slurm_real.py, docs/clusters.md).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perfscale.errors import FailureKind
from perfscale.sched.base import ElementState, Scheduler, States
from perfscale.sched.client import CommandClient, run_logged
from perfscale.sched.mpi import Launcher, Layout
from perfscale.sched.slurm_fields import SLURM_ACTIVE, SLURM_STATES, parse_job_id, parse_state, slurm_failure
from perfscale.spec.common import format_walltime

if TYPE_CHECKING:
    from perfscale.spec.site import Site

__all__ = ["ElementState", "Slurm"]  # ElementState: re-exported for callers of its old home

# pending reasons after which a job never starts by itself (Slurm keeps it queued unless the site sets
# DependencyParameters=kill_invalid_depend)
NEVER_RUNS = {"DependencyNeverSatisfied"}


def dependency_arg(after_ok: list[str], after_any: list[str] | None = None) -> str | None:
    """`afterok:1:2,afterany:3` (comma: all must hold): this round's upstream arrays must succeed, arrays of
    earlier rounds only end (some of their elements may already have failed and been resubmitted)."""
    parts = []
    if after_ok:
        parts.append("afterok:" + ":".join(after_ok))
    if after_any:
        parts.append("afterany:" + ":".join(after_any))
    return ",".join(parts) or None


def sbatch_argv(
    script: Path, depends_on: list[str], hold: bool = False, after_any: list[str] | None = None
) -> list[str]:
    argv = ["sbatch", "--parsable"]
    if hold:
        argv.append("--hold")
    dep = dependency_arg(depends_on, after_any)
    if dep:
        argv.append("--dependency=" + dep)
    return [*argv, str(script)]


def parse_sbatch(out: str) -> str:
    """`sbatch --parsable` prints `jobid` or `jobid;cluster`."""
    return out.strip().splitlines()[-1].split(";")[0]


SACCT_POLL_FIELDS = ("JobID", "State", "ExitCode", "Reason")


def sacct_poll_argv(job_ids: list[str]) -> list[str]:
    """One call for every element of every array: -X gives one line per element, not per step."""
    return [
        "sacct",
        "--noheader",
        "--parsable2",
        "--allocations",
        "--duplicates",
        "--format=" + ",".join(SACCT_POLL_FIELDS),
        "--jobs=" + ",".join(job_ids),
    ]


def _split_job_id(job_id: str) -> tuple[str, list[int]] | None:
    """(array job id, its elements) of an array element's id ("123_4", "123_[5-7,9%2]"); None for others."""
    try:
        parsed = parse_job_id(job_id)
        return (parsed.base, parsed.elements) if parsed.task is not None else None
    except ValueError:  # not a job id (a header, a warning line)
        return None


def parse_sacct_poll(out: str) -> States:
    """Latest state per (array job id, element); with --duplicates a requeued element keeps its last line.

    Real sacct (22.05) lines: `7_1|FAILED|1:0|None`, `6_[0-999%100]|PENDING|0:0|JobHeldUser` for elements
    not yet started, `8_[0-9]|PENDING|0:0|DependencyNeverSatisfied`. The Reason of a finished element is
    stale (e.g. JobArrayTaskLimit) and only read for pending ones. A new job is missing for a few seconds
    (slurmdbd lags the controller): see perfscale.sched.submit.poll.
    """
    states: States = {}
    for line in out.splitlines():
        fields = line.split("|")
        if len(fields) < 3 or not (split := _split_job_id(fields[0])):
            continue
        base, elements = split
        state = parse_state(fields[1])[0] or "UNKNOWN"
        code = fields[2].split(":")[0]
        reason = fields[3].strip() if len(fields) > 3 and fields[3].strip() not in ("", "None") else None
        blocked = state == "PENDING" and (reason or "") in NEVER_RUNS
        for el in elements:
            states[(base, el)] = ElementState(
                base,
                el,
                state,
                state in SLURM_ACTIVE and not blocked,
                slurm_failure(fields[1]),
                int(code) if code.isdigit() else None,
                reason,
                blocked,
            )
    return states


def squeue_poll_argv(job_ids: list[str]) -> list[str]:
    """Fallback without accounting: active elements only (finished ones leave the queue)."""
    return ["squeue", "--noheader", "--array", "--format=%i|%T|%r", "--jobs=" + ",".join(job_ids)]


def parse_squeue_poll(out: str) -> States:
    states: States = {}
    for line in out.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 3 or not (split := _split_job_id(fields[0])):
            continue
        base, elements = split
        for el in elements:
            states[(base, el)] = ElementState(base, el, fields[1], True, None, None, fields[2])
    return states


def srun_line(lay: Layout) -> list[str]:
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


def srun_pin(hosts: list[str]) -> list[str]:
    # --overlap: a task may still start its own job steps (MPI runs) on nodes Ray occupies
    return ["--overlap", f"--nodelist={','.join(hosts)}"]


class Slurm(Scheduler):
    name = "slurm"
    first_index = 0
    template = "slurm_array.sh.j2"
    log_pattern = "{name}-%A_%a.out"
    job_id_env = "SLURM_JOB_ID"
    nodelist_env = "SLURM_JOB_NODELIST"
    index_env = "SLURM_ARRAY_TASK_ID"
    commands = ("sbatch", "squeue", "sacct")
    launchers = {"srun": Launcher("srun", srun_line, srun_pin)}
    states = SLURM_STATES
    dask_cluster_class = "SLURMCluster"

    def __init__(
        self, client: CommandClient | None = None, state_dir: Path | None = None, use_sacct: bool = True
    ):
        super().__init__(client, state_dir)
        self.use_sacct = use_sacct

    @property
    def lags(self) -> bool:  # type: ignore[override]
        """sacct reads slurmdbd, which learns of a new job seconds after the controller."""
        return self.use_sacct

    @classmethod
    def failure(cls, state: str, reason: str | None = None) -> FailureKind | None:
        return slurm_failure(state)

    def submit(
        self, script: Path, depends_on: list[str], hold: bool = False, after_any: list[str] | None = None
    ) -> str:
        return parse_sbatch(self.client.run(sbatch_argv(script, depends_on, hold, after_any)))

    def poll(self, job_ids: list[str]) -> States:
        """ONE scheduler call, whatever the number of arrays and elements."""
        if not job_ids:
            return {}
        if self.use_sacct:
            return parse_sacct_poll(self.client.run(sacct_poll_argv(job_ids)))
        return parse_squeue_poll(self.client.run(squeue_poll_argv(job_ids)))

    def cancel(self, job_ids: list[str]) -> None:
        """Whole arrays (`123`) or single elements (`123_4`), in one scancel call."""
        if job_ids:
            self.client.run(["scancel", *job_ids])

    @staticmethod
    def element_id(job_id: str, element: int) -> str:
        return f"{job_id}_{element}"

    def allocation(self, site: Site) -> tuple[str, list[str]] | None:
        job_id = os.environ.get(self.job_id_env)
        if not job_id:
            return None
        nodelist = os.environ.get(self.nodelist_env) or os.environ["SLURM_NODELIST"]
        done = run_logged(["scontrol", "show", "hostnames", nodelist])
        done.check_returncode()
        return job_id, done.stdout.split()

    def parsl_provider(
        self, site: Site, common: dict[str, Any], partition: str | None, account: str | None
    ) -> Any:
        from parsl.launchers import SrunLauncher
        from parsl.providers import SlurmProvider

        cores = None if site.cores_per_node == "auto" else int(site.cores_per_node)
        return SlurmProvider(
            partition=partition,
            account=account,
            cores_per_node=cores,
            exclusive=False,
            launcher=SrunLauncher(),
            cmd_timeout=60,
            **common,
        )

    def dask_options(
        self, site: Site, config: dict[str, Any], account: str | None, walltime_s: float
    ) -> dict[str, Any]:
        extra = [f"--gpus-per-node={site.gpus_per_node}"] if site.gpus_per_node else []
        return {
            **config,
            "account": account,
            "walltime": format_walltime(walltime_s),
            "python": sys.executable,
            "job_extra_directives": extra,
        }

    def queues_argv(self) -> list[str] | None:
        return ["sinfo", "--noheader", "--format=%P"]

    def parse_queues(self, out: str) -> list[str]:
        return [p.rstrip("*") for p in out.split()]
