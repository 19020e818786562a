"""Flux (LLNL El Capitan- and Tioga-like machines): one `flux batch` allocation per array, whose script
submits the elements into its own Flux instance with `flux submit --cc`, one `flux jobs --json` call per poll,
`flux cancel`, and `flux run` as the launcher.

Flux has no job arrays. An array is one allocation (`flux batch`) sized for `throttle` elements at once; its
script (launchers/flux_array.sh.j2) runs `flux submit --cc=0-N --wait` inside the allocation, so the
allocation's own scheduler starts the elements as cores free up, and exits with the worst element's exit
status (so that `--dependency=afterok` on it holds only when every element succeeded, as on Slurm). Before
it exits it writes the elements' final records (`flux jobs -a --json` inside the allocation) to
RUN/arrays/NAME.flux.json, because the allocation's instance, and its job list, end with it. The same
script run with `--element` is one element: FLUX_JOB_CC is its index.

Polling: arrays whose record file exists are read from it; the others are listed by ONE
`flux jobs -a -R -L 1 -c 0 --json IDS` call, which descends into running allocations and lists their
elements. An allocation that ended without writing its record (walltime, cancel, node failure, or a
dependency that failed) gives every element its own result.

No Flux runs in this sandbox. Formats come from the flux-core sources (github.com/flux-framework/flux-core,
read at commit 4a5e79f5): flux-batch(1), flux-submit(1) (`--cc`, `{cc}` in options, FLUX_JOB_CC,
`--signal`, `--dependency`, `--urgency=hold`), flux-jobs(1) and src/cmd/flux-jobs.py (`--json` prints
`{"jobs": [...]}`, or one object when one jobid is given; `-R` adds each running instance's jobs as a
`jobs` array), JobInfo.to_dict() in src/bindings/python/flux/job/info.py (keys `id`, `jobid` in F58,
`name`, `state`, `result`, `returncode`, `exception: {occurred, type, note}`), and flux-environment(7)
(FLUX_ENCLOSING_ID in a batch script).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perfscale.errors import FailureKind, SpecError
from perfscale.sched.base import ElementState, Scheduler, States
from perfscale.sched.client import SchedulerCommandError, run_logged
from perfscale.sched.mpi import Launcher, Layout
from perfscale.spec.common import format_walltime

if TYPE_CHECKING:
    from perfscale.sched.arrays import ArrayJob
    from perfscale.spec.site import Site

ACTIVE = ("DEPEND", "PRIORITY", "SCHED", "RUN", "CLEANUP")
# state (active jobs) or result (inactive ones) -> failure kind
FLUX_STATES: dict[str, FailureKind | None] = {
    **dict.fromkeys(ACTIVE),
    "COMPLETED": None,
    "FAILED": FailureKind.APP_ERROR,
    "CANCELED": FailureKind.CANCELLED,
    "TIMEOUT": FailureKind.TIMEOUT,
}
# exception types raised on a job (flux-core job-exec, job-manager): dependency = never ran, not a failure
EXCEPTIONS: dict[str, FailureKind | None] = {
    "timeout": FailureKind.TIMEOUT,
    "cancel": FailureKind.CANCELLED,
    "node-failure": FailureKind.NODE_LOST,
    "dependency": None,
}
STARTUP_S = 120.0  # allocation time beyond its elements: starting the instance, the record at the end
RECORD = "{name}.flux.json"  # the elements' final records, written by the allocation
JOBID = "{name}.flux-id"  # the allocation's id, written by Flux.submit (poll maps ids to arrays with it)


def f58(job_id: str) -> str:
    """F58 job ids start with 'ƒ', or 'f' where it cannot be printed (FLUX_F58_FORCE_ASCII): one form."""
    return "f" + job_id[1:] if job_id.startswith("ƒ") else job_id


def flux_failure(job: dict[str, Any]) -> FailureKind | None:
    """Failure kind of one job record of `flux jobs --json` (None: active, completed, or never ran)."""
    if job.get("state", "INACTIVE") != "INACTIVE":
        return None
    result = str(job.get("result", ""))
    if result == "COMPLETED":
        return None
    exc = job.get("exception") or {}
    kind = exc.get("type") if exc.get("occurred") else None
    if kind in EXCEPTIONS:
        return EXCEPTIONS[kind]
    if result in ("TIMEOUT", "CANCELED"):
        return FLUX_STATES[result]
    if job.get("returncode") in (137, -9):  # SIGKILL: the OOM killer, as exit 137 elsewhere
        return FailureKind.OOM
    return FailureKind.APP_ERROR


def _state(job: dict[str, Any]) -> str:
    state = str(job.get("state", ""))
    if state != "INACTIVE":
        return state or "UNKNOWN"
    exc = job.get("exception") or {}
    if exc.get("occurred") and exc.get("type") == "dependency":
        return "DEPENDENCY"
    return str(job.get("result") or "INACTIVE")


def _reason(job: dict[str, Any]) -> str | None:
    exc = job.get("exception") or {}
    if exc.get("occurred"):
        return f"{exc.get('type')}: {exc.get('note', '')}".rstrip(": ")
    return None


def _element(job_id: str, index: int, job: dict[str, Any], prefix: str = "") -> ElementState:
    code = job.get("returncode")
    return ElementState(
        job_id,
        index,
        prefix + _state(job),
        job.get("state", "INACTIVE") != "INACTIVE",
        flux_failure(job),
        code if isinstance(code, int) else None,
        _reason(job),
    )


def parse_flux_jobs(out: str) -> dict[str, dict[str, Any]]:
    """`flux jobs --json` output -> {F58 id (ascii 'f'): record}; one object or a `jobs` array."""
    data = json.loads(out) if out.strip() else {}
    jobs = data["jobs"] if "jobs" in data and "id" not in data else [data] if data else []
    return {f58(str(j.get("jobid", j.get("id")))): j for j in jobs}


def element_states(
    job_id: str, allocation: dict[str, Any] | None, children: list[dict[str, Any]] | None, size: int | None
) -> States:
    """Element states of the array `job_id` from its allocation's record and its elements' records.

    Elements are named `ARRAY.K` (`--job-name=NAME.{cc}`). `children` None: the allocation's instance is not
    listed (not running). `size`: the number of elements (from the array's index file), to report those
    no record names: pending while the allocation is active, otherwise from the allocation's result.
    """
    states: States = {}
    for child in children or []:
        m = re.search(r"\.(\d+)$", str(child.get("name", "")))
        if m:
            states[(job_id, int(m.group(1)))] = _element(job_id, int(m.group(1)), child)
    for k in range(size or 0):
        if (job_id, k) in states:
            continue
        if allocation is None:  # finished: the allocation's record lists every element it started
            states[(job_id, k)] = ElementState(job_id, k, "NOT_RUN", False, None)
        elif allocation.get("state", "INACTIVE") != "INACTIVE":
            state = "PENDING" if children is not None else str(allocation["state"])
            states[(job_id, k)] = ElementState(job_id, k, state, True, None, None, "allocation " + state)
        else:
            states[(job_id, k)] = _element(job_id, k, allocation, "allocation ")
    return states


def flux_jobs_argv(job_ids: list[str]) -> list[str]:
    """-a: inactive jobs too; -R -L 1: the elements inside each running allocation; -c 0: no 1,000 cap."""
    return ["flux", "jobs", "-a", "-R", "-L", "1", "-c", "0", "--json", *job_ids]


def flux_batch_argv(
    script: Path, depends_on: list[str], hold: bool = False, after_any: list[str] | None = None
) -> list[str]:
    argv = ["flux", "batch"]
    if hold:
        argv.append("--urgency=hold")
    argv += [f"--dependency=afterok:{j}" for j in depends_on]
    argv += [f"--dependency=afterany:{j}" for j in after_any or []]
    return [*argv, str(script)]


def parse_flux_batch(out: str) -> str:
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    if not lines or not re.fullmatch(r"[ƒf][1-9A-HJ-NP-Za-km-z]+|\d+", lines[-1]):
        raise SchedulerCommandError(f"flux batch did not report a job id: {out.strip()[-300:]}")
    return f58(lines[-1])


def flux_run_line(lay: Layout) -> list[str]:
    """`flux run`: tasks spread evenly over the nodes; cpu-affinity binds each task to its cores."""
    line = [
        "flux",
        "run",
        f"--nodes={lay.nodes}",
        f"--ntasks={lay.ranks}",
        f"--cores-per-task={lay.cores_per_rank}",
    ]
    if lay.gpus_per_rank:
        line.append(f"--gpus-per-task={lay.gpus_per_rank}")
    line.append("--setopt=cpu-affinity=" + {"none": "off", "cores": "per-task", "sockets": "on"}[lay.bind])
    return line


def allocation_shape(job: ArrayJob, site: Site) -> tuple[int, int, float]:
    """(nodes, elements at once, seconds) of the allocation that runs `job`'s elements, `throttle` at once
    where the partition's node limit allows, in rounds of the element walltime."""
    if job.nodes > 1:
        raise SpecError(
            f"array {job.name}: stage {job.stage!r} asks for {job.nodes} nodes per task; Flux array mode "
            "runs one-node elements inside one allocation: set resources.nodes to 1 (a task may still start "
            "multi-node runs with `flux run`)"
        )
    per_node = max(1, site.cores // max(1, job.cores))
    if job.gpus:
        per_node = min(per_node, site.gpus_per_node // job.gpus)
    pname, part = site.partition(job.partition)
    max_nodes = min(site.limits.max_nodes, part.max_nodes) if part else site.limits.max_nodes
    max_wall = min(site.limits.max_walltime, part.max_walltime) if part else site.limits.max_walltime
    nodes = min(max_nodes, math.ceil(min(job.throttle, job.size) / per_node))
    at_once = min(job.throttle, job.size, nodes * per_node)
    seconds = math.ceil(job.size / at_once) * job.walltime_s + STARTUP_S
    if seconds > max_wall:
        raise SpecError(
            f"array {job.name}: {job.size} elements of {format_walltime(job.walltime_s)}, {at_once} at a "
            f"time on {nodes} node(s), need {format_walltime(seconds)} in one Flux allocation; "
            f"{pname or 'the site'} allows {format_walltime(max_wall)}: raise --throttle or lower the "
            "walltime"
        )
    return nodes, at_once, seconds


class Flux(Scheduler):
    name = "flux"
    first_index = 0
    template = "flux_array.sh.j2"
    log_pattern = "{name}-{{cc}}.out"  # flux submit replaces {cc} with the element's index
    job_id_env = "FLUX_ENCLOSING_ID"  # in a batch script or `flux alloc` shell: the allocation's id
    nodelist_env = "FLUX_URI"  # no node list variable: `flux hostlist instance` asks the instance at FLUX_URI
    index_env = "FLUX_JOB_CC"
    commands = ("flux",)
    launchers = {
        "flux": Launcher("flux", flux_run_line, lambda hosts: [f"--requires=host:{','.join(hosts)}"])
    }
    states = FLUX_STATES

    def submit(
        self, script: Path, depends_on: list[str], hold: bool = False, after_any: list[str] | None = None
    ) -> str:
        job_id = parse_flux_batch(self.client.run(flux_batch_argv(script, depends_on, hold, after_any)))
        script.with_name(JOBID.format(name=script.stem)).write_text(job_id + "\n")
        return job_id

    def _arrays(self) -> dict[str, str]:
        """{allocation id: array name} from the id files submit wrote in the state folder."""
        if self.state_dir is None or not self.state_dir.is_dir():
            return {}
        suffix = JOBID.format(name="")
        return {p.read_text().strip(): p.name[: -len(suffix)] for p in self.state_dir.glob("*" + suffix)}

    def _size(self, name: str | None) -> int | None:
        idx = self.state_dir / f"{name}.idx" if self.state_dir and name else None
        return len(idx.read_text().splitlines()) if idx and idx.exists() else None

    def poll(self, job_ids: list[str]) -> States:
        """Records of finished arrays from their files; ONE `flux jobs` call for the others."""
        names = self._arrays()
        records = {
            j: path
            for j in job_ids
            if self.state_dir
            and j in names
            and (path := self.state_dir / RECORD.format(name=names[j])).exists()
        }
        live = [j for j in job_ids if j not in records]
        listing = parse_flux_jobs(self.client.run(flux_jobs_argv(live))) if live else {}
        states: States = {}
        for j in job_ids:
            size = self._size(names.get(j))
            if j in records:
                children = list(parse_flux_jobs(records[j].read_text()).values())
                states.update(element_states(j, None, children, size))
            elif (alloc := listing.get(f58(j))) is not None:
                states.update(element_states(j, alloc, alloc.get("jobs"), size))
        return states

    def cancel(self, job_ids: list[str]) -> None:
        """Whole allocations (their elements end with them), in one `flux cancel` call."""
        single = [j for j in job_ids if "[" in j]
        if single:
            raise SchedulerCommandError(
                f"flux cannot cancel single elements ({', '.join(single)}) from outside their allocation; "
                "cancel the allocation"
            )
        if job_ids:
            self.client.run(["flux", "cancel", *job_ids])

    @staticmethod
    def element_id(job_id: str, element: int) -> str:
        return f"{job_id}[{element}]"  # a name for messages: elements live inside the allocation

    def template_values(self, job: ArrayJob, site: Site, run_root: Path) -> dict[str, Any]:
        nodes, at_once, seconds = allocation_shape(job, site)
        return {
            "alloc_nodes": nodes,
            "alloc_at_once": at_once,
            "alloc_seconds": math.ceil(seconds),
            "alloc_log": str(run_root / "logs" / f"{job.name}.allocation.out"),
            "record_file": str(run_root / "arrays" / RECORD.format(name=job.name)),
        }

    def allocation(self, site: Site) -> tuple[str, list[str]] | None:
        job_id = os.environ.get(self.job_id_env)
        if not job_id:
            return None
        done = run_logged(["flux", "hostlist", "--expand", "instance"])
        done.check_returncode()
        return f58(job_id), done.stdout.split()

    def queues_argv(self) -> list[str] | None:
        return ["flux", "queue", "list", "--no-header", "--format={queue}"]
