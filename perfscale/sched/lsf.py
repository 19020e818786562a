"""LSF (Lassen-like machines): bsub submit, one bjobs call per poll, bkill, their parsers, jsrun and lrun, and
the pilots' LSFProvider / LSFCluster.

LSF cannot run in this sandbox: these functions are tested on outputs written from IBM's LSF 10.1
documentation for `bsub` and `bjobs -o ... delimiter=` (see docs/clusters.md).
"""

from __future__ import annotations

import math
import os
import re
import shlex
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perfscale.errors import FailureKind
from perfscale.sched.base import ElementState, Scheduler, States
from perfscale.sched.client import SchedulerCommandError
from perfscale.sched.mpi import Launcher, Layout, launch_line

if TYPE_CHECKING:
    from perfscale.sched.arrays import ArrayJob
    from perfscale.spec.site import Site

BJOBS_FIELDS = ("jobid", "jobindex", "stat", "exit_code", "exit_reason")
_SUBMITTED = re.compile(r"Job <(\d+)> is submitted")
REQUEUE_EXIT = 75  # `#BSUB -Q 75` requeues an element that exits with it (EX_TEMPFAIL)
# jsrun for a Parsl pilot: one resource set per node holding all its cores and GPUs; the pool places tasks
JSRUN_OVERRIDES = "--tasks_per_rs=1 --cpu_per_rs=ALL_CPUS --gpu_per_rs=ALL_GPUS --bind=none"
# lines of dask-jobqueue that Lassen-like machines refuse (they allocate whole nodes with -nnodes)
DASK_LSF_SKIP = ["#BSUB -n ", '#BSUB -R "span', "#BSUB -M "]

# a job in EXIT is classified by its exit reason (bjobs -o exit_reason / bhist TERM_* codes)
LSF_REASONS: dict[str, FailureKind] = {
    "TERM_RUNLIMIT": FailureKind.TIMEOUT,
    "TERM_CPULIMIT": FailureKind.TIMEOUT,
    "TERM_DEADLINE": FailureKind.TIMEOUT,
    "TERM_MEMLIMIT": FailureKind.OOM,
    "TERM_SWAP": FailureKind.OOM,
    "TERM_PREEMPT": FailureKind.PREEMPTED,
    "TERM_OWNER": FailureKind.CANCELLED,
    "TERM_ADMIN": FailureKind.CANCELLED,
    "TERM_FORCE_OWNER": FailureKind.CANCELLED,
    "TERM_FORCE_ADMIN": FailureKind.CANCELLED,
    "TERM_REQUEUE_OWNER": FailureKind.CANCELLED,
    "TERM_REQUEUE_ADMIN": FailureKind.CANCELLED,
    "TERM_HOST": FailureKind.NODE_LOST,
    "TERM_ORPHAN_SYSTEM": FailureKind.NODE_LOST,
    "TERM_UNKNOWN": FailureKind.NODE_LOST,
}
LSF_ACTIVE = {"PEND", "PSUSP", "RUN", "USUSP", "SSUSP", "WAIT", "PROV"}

# bjobs' exit_reason is often the message without its TERM_ code: match the documented messages too
LSF_MESSAGES: dict[str, FailureKind] = {
    "run time limit": FailureKind.TIMEOUT,
    "runlimit": FailureKind.TIMEOUT,
    "memory limit": FailureKind.OOM,
    "memlimit": FailureKind.OOM,
    "preempt": FailureKind.PREEMPTED,
    "killed by owner": FailureKind.CANCELLED,
    "killed by lsf administrator": FailureKind.CANCELLED,
    "bkill": FailureKind.CANCELLED,
    "host": FailureKind.NODE_LOST,
}


def lsf_failure(stat: str, exit_reason: str | None = None) -> FailureKind | None:
    """Failure kind of an LSF job from its STAT and exit reason (TERM_* code or message)."""
    stat = stat.upper()
    if stat in LSF_ACTIVE or stat == "DONE":
        return None
    reason = exit_reason or ""
    for token in reason.replace(":", " ").split():
        if token.upper() in LSF_REASONS:
            return LSF_REASONS[token.upper()]
    lowered = reason.lower()
    return next((kind for text, kind in LSF_MESSAGES.items() if text in lowered), FailureKind.APP_ERROR)


def lsf_walltime(seconds: float) -> str:
    """LSF -W takes [hours:]minutes, rounded up."""
    minutes = math.ceil(seconds / 60)
    return f"{minutes // 60}:{minutes % 60:02d}"


def bsub_argv(depends_on: list[str], hold: bool = False, after_any: list[str] | None = None) -> list[str]:
    """bsub reads the script (with its #BSUB lines) from standard input; -H submits it held (PSUSP)."""
    argv = ["bsub"]
    if hold:
        argv.append("-H")
    conditions = [f"done({j})" for j in depends_on] + [f"ended({j})" for j in after_any or []]
    if conditions:
        argv += ["-w", " && ".join(conditions)]
    return argv


def parse_bsub(out: str) -> str:
    m = _SUBMITTED.search(out)
    if not m:
        raise SchedulerCommandError(f"bsub did not report a job id: {out.strip()[-300:]}")
    return m.group(1)


def bjobs_poll_argv(job_ids: list[str]) -> list[str]:
    """-a includes recently finished jobs; every element of each array is listed, one per line."""
    return ["bjobs", "-a", "-noheader", "-o", " ".join(BJOBS_FIELDS) + " delimiter='|'", *job_ids]


def parse_bjobs_poll(out: str) -> States:
    states: States = {}
    for line in out.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 5 or not fields[0].isdigit():
            continue  # "Job <N> is not found" and other messages
        job, index, stat, code, reason = fields[:5]
        element = int(index) if index.isdigit() else 0
        reason = None if reason in ("-", "") else reason
        states[(job, element)] = ElementState(
            job,
            element,
            stat,
            stat in LSF_ACTIVE,
            lsf_failure(stat, reason),
            int(code) if code.isdigit() else None,
            reason,
        )
    return states


def jsrun_line(lay: Layout) -> list[str]:
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


def lrun_line(lay: Layout) -> list[str]:
    line = ["lrun", f"-N{lay.nodes}", f"-T{lay.ranks_per_node}"]
    if lay.gpus_per_rank:
        line.append(f"--gpus_per_task={lay.gpus_per_rank}")
    return line


class LSF(Scheduler):
    name = "lsf"
    first_index = 1
    lags = False  # bjobs asks mbatchd itself
    template = "lsf_array.sh.j2"
    log_pattern = "{name}-%J_%I.out"
    job_id_env = "LSB_JOBID"
    nodelist_env = "LSB_MCPU_HOSTS"
    index_env = "LSB_JOBINDEX"
    commands = ("bsub", "bjobs")
    launchers = {"jsrun": Launcher("jsrun", jsrun_line), "lrun": Launcher("lrun", lrun_line)}
    # the batch script runs on a launch node (Lassen-like machines): tasks start through the site launcher
    wraps_tasks = True
    states = {s: None for s in [*LSF_ACTIVE, "DONE"]} | {"EXIT": FailureKind.APP_ERROR}
    dask_cluster_class = "LSFCluster"

    @classmethod
    def failure(cls, state: str, reason: str | None = None) -> FailureKind | None:
        return lsf_failure(state, reason)

    def submit(
        self, script: Path, depends_on: list[str], hold: bool = False, after_any: list[str] | None = None
    ) -> str:
        return parse_bsub(
            self.client.run(bsub_argv(depends_on, hold, after_any), input_text=script.read_text())
        )

    def poll(self, job_ids: list[str]) -> States:
        """ONE bjobs call, whatever the number of arrays and elements."""
        return parse_bjobs_poll(self.client.run(bjobs_poll_argv(job_ids))) if job_ids else {}

    def cancel(self, job_ids: list[str]) -> None:
        """Whole arrays (`123`) or single elements (`"123[4]"`), in one bkill call."""
        if job_ids:
            self.client.run(["bkill", *job_ids])

    @staticmethod
    def element_id(job_id: str, element: int) -> str:
        return f"{job_id}[{element}]"

    def template_values(self, job: ArrayJob, site: Site, run_root: Path) -> dict[str, Any]:
        return {"walltime_lsf": lsf_walltime(job.walltime_s), "requeue_exit": REQUEUE_EXIT}

    def allocation(self, site: Site) -> tuple[str, list[str]] | None:
        job_id = os.environ.get(self.job_id_env)
        if not job_id:
            return None
        words = os.environ.get(self.nodelist_env, "").split()
        hosts = list(dict.fromkeys(words[::2]))
        # on Lassen-like machines the job script runs on a launch node listed first: not a compute node
        if site.launcher in self.launchers and len(hosts) > 1:
            hosts = [h for h in hosts if h != socket.gethostname().split(".")[0]] or hosts
        return job_id, hosts

    def parsl_provider(
        self, site: Site, common: dict[str, Any], partition: str | None, account: str | None
    ) -> Any:
        from parsl.launchers import JsrunLauncher
        from parsl.providers import LSFProvider

        # LSF reads #BSUB lines from standard input (`bsub < script`), as array mode submits them
        return LSFProvider(
            queue=partition,
            project=account,
            bsub_redirection=True,
            request_by_nodes=True,
            launcher=JsrunLauncher(overrides=JSRUN_OVERRIDES),
            cmd_timeout=120,
            **common,
        )

    def dask_options(
        self, site: Site, config: dict[str, Any], account: str | None, walltime_s: float
    ) -> dict[str, Any]:
        # the job script runs on a launch node, so the worker command goes through the launcher onto the
        # compute node; whole nodes come with -nnodes, the bank with -G (as in array mode)
        layout = Layout(cores_per_rank=config["cores"], gpus_per_rank=site.gpus_per_node, bind="none")
        return {
            **config,
            "walltime": lsf_walltime(walltime_s),
            "python": shlex.join([*launch_line(site, layout), sys.executable]),
            "job_extra_directives": ["-nnodes 1", *([f"-G {shlex.quote(account)}"] if account else [])],
            "job_directives_skip": DASK_LSF_SKIP,
            "lsf_units": "mb",
            "use_stdin": True,
        }

    def queues_argv(self) -> list[str] | None:
        return ["bqueues", "-o", "queue_name", "-noheader"]
