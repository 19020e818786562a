"""PBS Professional / OpenPBS (ALCF Polaris- and Aurora-like machines): qsub -J arrays, one
`qstat -x -f -F json -t` call per poll, qdel, the mpiexec launcher (Cray PALS), and the pilots'
PBSProProvider / PBSCluster.

No PBS runs in this sandbox. Everything here is written from, and tested against, the OpenPBS sources
(github.com/openpbs/openpbs, read at commit cd7ab5ed):
- `qsub -J start-end[:step][%max]` (src/cmds/qsub.c, src/lib/Libcmds/chk_Jrange.c): start must be below
  end, so an array has at least 2 subjobs; `%max` sets the `max_run_subjobs` attribute (how many subjobs
  run at once). A one-element "array" is therefore submitted as a plain job; its index reads as 0.
- qsub prints the job id: `123[].server` for an array, `123.server` for a plain job. A subjob is
  `123[4].server`; inside it PBS sets PBS_ARRAY_INDEX=4 and PBS_ARRAY_ID=123[].server.
- `qstat -x -f -F json -t IDS` prints `{"timestamp": ..., "pbs_version": ..., "pbs_server": ..., "Jobs":
  {id: {attribute: value}}}`, numbers as JSON numbers (src/cmds/qstat.c). With -t the array's subjobs are
  listed after it. An id the server no longer knows is reported on stderr and qstat exits with
  PBSE_UNKJOBID (15001) & 0xff = 153, still printing the others.
- job states (src/include/job.h): B (array begun), E, F (finished), H, M, Q, R, S, T, U, W, X (subjob
  finished). Finished jobs carry `substate` (91 terminated by qdel, 92 finished, 93 failed) and, when they
  ran, `Exit_status`: the script's exit code, 256 + signal when a signal killed it, or a negative
  JOB_EXEC_* code (-29 walltime, -27/-26 memory, -28 cput, -1..-7, -11, -14, -20 execution or node
  failures).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perfscale.errors import FailureKind
from perfscale.sched.base import ElementState, Scheduler, States
from perfscale.sched.client import SchedulerCommandError
from perfscale.sched.mpi import Launcher, Layout
from perfscale.spec.common import format_hms

if TYPE_CHECKING:
    from perfscale.sched.arrays import ArrayJob
    from perfscale.spec.site import Site

UNKNOWN_JOB_RC = 15001 & 0xFF  # qstat's exit status when one of the ids is unknown (purged from history)
ACTIVE = {"B", "E", "H", "M", "Q", "R", "S", "T", "U", "W"}
STATE_NAMES = {
    "B": "BEGUN",
    "E": "EXITING",
    "F": "FINISHED",
    "H": "HELD",
    "M": "MOVED",
    "Q": "QUEUED",
    "R": "RUNNING",
    "S": "SUSPENDED",
    "T": "TRANSIT",
    "U": "USER_SUSPENDED",
    "W": "WAITING",
    "X": "FINISHED",
}
SUBSTATE_TERMINATED, SUBSTATE_FINISHED, SUBSTATE_FAILED = 91, 92, 93
# job state letter -> failure kind; finished jobs (F, X) are classified by exit status (see pbs_failure)
PBS_STATES: dict[str, FailureKind | None] = {s: None for s in [*ACTIVE, "F", "X"]}
# negative Exit_status values (JOB_EXEC_* in src/include/job.h)
EXIT_CODES: dict[int, FailureKind] = {
    -29: FailureKind.TIMEOUT,  # KILL_WALLTIME
    -28: FailureKind.TIMEOUT,  # KILL_CPUT
    -27: FailureKind.OOM,  # KILL_MEM
    -26: FailureKind.OOM,  # KILL_VMEM
    -1: FailureKind.NODE_LOST,  # FAIL1: exec failed before files
    -2: FailureKind.NODE_LOST,  # FAIL2: exec failed after files
    -3: FailureKind.NODE_LOST,  # RETRY
    -4: FailureKind.NODE_LOST,  # INITABT: aborted on MOM initialisation
    -5: FailureKind.NODE_LOST,  # INITRST
    -6: FailureKind.NODE_LOST,  # INITRMG
    -7: FailureKind.NODE_LOST,  # BADRESRT
    -11: FailureKind.NODE_LOST,  # RERUN
    -14: FailureKind.NODE_LOST,  # RERUN_SIS_FAIL: a sister node failed
    -20: FailureKind.NODE_LOST,  # RERUN_MS_FAIL: the mother superior failed
}
SIGNALLED = 256  # Exit_status = 256 + signal number when a signal killed the job script
_ID = re.compile(r"^(\d+)(\[(\d*)\])?(\..*)?$")


def pbs_failure(job_state: str, substate: int | None, exit_status: int | None) -> FailureKind | None:
    """Failure kind of a PBS job or subjob (None: active, finished well, or never started)."""
    if job_state in ACTIVE:
        return None
    if substate == SUBSTATE_TERMINATED:
        return FailureKind.CANCELLED  # qdel (a preemption by deletion reads the same)
    if exit_status is None:
        return FailureKind.APP_ERROR if substate == SUBSTATE_FAILED else None
    if exit_status == 0:
        return None
    if exit_status in EXIT_CODES:
        return EXIT_CODES[exit_status]
    if exit_status == SIGNALLED + 9:
        return FailureKind.OOM  # SIGKILL without a walltime code: the memory enforcer, as exit 137 elsewhere
    if exit_status == SIGNALLED + 15:
        return FailureKind.CANCELLED
    return FailureKind.APP_ERROR


def qsub_argv(
    script: Path, depends_on: list[str], hold: bool = False, after_any: list[str] | None = None
) -> list[str]:
    """`-W depend=afterok:A:B,afterany:C` (PBS deletes a job whose afterok can no longer hold); -h: held."""
    argv = ["qsub"]
    if hold:
        argv.append("-h")
    parts = []
    if depends_on:
        parts.append("afterok:" + ":".join(depends_on))
    if after_any:
        parts.append("afterany:" + ":".join(after_any))
    if parts:
        argv += ["-W", "depend=" + ",".join(parts)]
    return [*argv, str(script)]


def parse_qsub(out: str) -> str:
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    if not lines or not _ID.match(lines[-1]):
        raise SchedulerCommandError(f"qsub did not report a job id: {out.strip()[-300:]}")
    return lines[-1]


def qstat_poll_argv(job_ids: list[str]) -> list[str]:
    """-x: finished jobs too (job history); -t: every subjob of each array; one call for all arrays."""
    return ["qstat", "-x", "-f", "-F", "json", "-t", *job_ids]


def _int(value: Any) -> int | None:
    """qstat prints numbers as JSON numbers; older servers as strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return None


def parse_qstat_poll(out: str, job_ids: list[str]) -> States:
    """Subjobs (and plain jobs) of the arrays `job_ids` (ids as qsub printed them) -> their states.

    Entries are matched to `job_ids` by sequence number, so the server suffix may differ. The array's own
    entry (`123[]`) is skipped: its subjobs are listed. A finished job that never ran (aborted because its
    dependency failed) has neither Exit_status nor the terminated substate: it is ABORTED, not a failure.
    """
    by_seq = {m.group(1): j for j in job_ids if (m := _ID.match(j))}
    jobs = json.loads(out).get("Jobs", {}) if out.strip() else {}
    states: States = {}
    for key, attrs in jobs.items():
        m = _ID.match(key)
        if not m or m.group(1) not in by_seq or (m.group(2) and not m.group(3)):
            continue
        element = int(m.group(3)) if m.group(3) else 0
        job_id = by_seq[m.group(1)]
        letter = str(attrs.get("job_state", "")).upper()
        substate, exit_status = _int(attrs.get("substate")), _int(attrs.get("Exit_status"))
        failure = pbs_failure(letter, substate, exit_status)
        name = STATE_NAMES.get(letter, letter or "UNKNOWN")
        if letter not in ACTIVE:
            if substate == SUBSTATE_TERMINATED:
                name = "TERMINATED"
            elif exit_status is None and substate != SUBSTATE_FINISHED and failure is None:
                name = "ABORTED"
            elif failure is not None:
                name = "FAILED"
        states[(job_id, element)] = ElementState(
            job_id, element, name, letter in ACTIVE, failure, exit_status, attrs.get("comment") or None
        )
    return states


def mpiexec_line(lay: Layout) -> list[str]:
    """Cray PALS mpiexec (Polaris, Aurora): --ppn ranks per node, --depth cores per rank."""
    bind = {"none": "none", "cores": "depth", "sockets": "socket"}[lay.bind]
    return [
        "mpiexec",
        "-n",
        str(lay.ranks),
        "--ppn",
        str(lay.ranks_per_node),
        "--depth",
        str(lay.cores_per_rank),
        "--cpu-bind",
        bind,
    ]


class PBS(Scheduler):
    name = "pbs"
    first_index = 0
    template = "pbs_array.sh.j2"
    log_pattern = "{name}.^array_index^.out"  # PBS puts the subjob index where ^array_index^ stands
    job_id_env = "PBS_JOBID"
    nodelist_env = "PBS_NODEFILE"
    index_env = "PBS_ARRAY_INDEX"
    commands = ("qsub", "qstat", "qdel")
    launchers = {"mpiexec": Launcher("mpiexec", mpiexec_line, lambda hosts: ["--hosts", ",".join(hosts)])}
    states = PBS_STATES
    dask_cluster_class = "PBSCluster"

    @classmethod
    def failure(cls, state: str, reason: str | None = None) -> FailureKind | None:
        """By state letter alone (finished jobs need their substate and Exit_status: see pbs_failure)."""
        letter = state.upper()
        return pbs_failure(letter, None, None) if letter in PBS_STATES else FailureKind.APP_ERROR

    def submit(
        self, script: Path, depends_on: list[str], hold: bool = False, after_any: list[str] | None = None
    ) -> str:
        return parse_qsub(self.client.run(qsub_argv(script, depends_on, hold, after_any)))

    def poll(self, job_ids: list[str]) -> States:
        """ONE qstat call, whatever the number of arrays and subjobs."""
        if not job_ids:
            return {}
        out = self.client.run(qstat_poll_argv(job_ids), ok_codes=(0, UNKNOWN_JOB_RC))
        return parse_qstat_poll(out, job_ids)

    def cancel(self, job_ids: list[str]) -> None:
        """Whole arrays (`123[]`) or single subjobs (`123[4]`), in one qdel call."""
        if job_ids:
            self.client.run(["qdel", *job_ids])

    @staticmethod
    def element_id(job_id: str, element: int) -> str:
        return job_id.replace("[]", f"[{element}]", 1) if "[]" in job_id else job_id

    def log_name(self, job: ArrayJob) -> str:
        return f"{job.name}.0.out" if job.size == 1 else super().log_name(job)

    def template_values(self, job: ArrayJob, site: Site, run_root: Path) -> dict[str, Any]:
        return {"walltime_hms": format_hms(job.walltime_s)}

    def allocation(self, site: Site) -> tuple[str, list[str]] | None:
        job_id, nodefile = os.environ.get(self.job_id_env), os.environ.get(self.nodelist_env)
        if not job_id or not nodefile:
            return None
        return job_id, list(dict.fromkeys(Path(nodefile).read_text().split()))

    def parsl_provider(
        self, site: Site, common: dict[str, Any], partition: str | None, account: str | None
    ) -> Any:
        from parsl.launchers import MpiExecLauncher
        from parsl.providers import PBSProProvider

        cores = None if site.cores_per_node == "auto" else int(site.cores_per_node)
        # one worker pool per node (--ppn 1) holding all its cores, as ALCF's Parsl examples do
        return PBSProProvider(
            account=account,
            queue=partition,
            scheduler_options="\n".join(f"#PBS {d}" for d in site.directives),
            select_options=f"ngpus={site.gpus_per_node}" if site.gpus_per_node else "",
            cpus_per_node=cores or 1,
            launcher=MpiExecLauncher(bind_cmd="--cpu-bind", overrides=f"--depth={cores or 1} --ppn 1"),
            cmd_timeout=120,
            **common,
        )

    def dask_options(
        self, site: Site, config: dict[str, Any], account: str | None, walltime_s: float
    ) -> dict[str, Any]:
        chunk = f"select=1:ncpus={config['cores']}"
        if site.gpus_per_node:
            chunk += f":ngpus={site.gpus_per_node}"
        return {
            **config,
            "account": account,
            "walltime": format_hms(walltime_s),
            "resource_spec": chunk,
            "python": sys.executable,
            "job_extra_directives": list(site.directives),
        }

    def queues_argv(self) -> list[str] | None:
        return ["qstat", "-Q", "-f", "-F", "json"]

    def parse_queues(self, out: str) -> list[str]:
        return sorted(json.loads(out).get("Queue", {}))
