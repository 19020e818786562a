"""Slurm back end: sbatch submit, one sacct (or squeue) call per poll, scancel, and their output parsers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from perfscale.errors import FailureKind
from perfscale.sched.client import CommandClient
from perfscale.sched.states import SLURM_ACTIVE, slurm_failure

# pending reasons after which a job never starts by itself (Slurm keeps it queued unless the site sets
# DependencyParameters=kill_invalid_depend)
NEVER_RUNS = {"DependencyNeverSatisfied"}


@dataclass(frozen=True)
class ElementState:
    """One array element as the scheduler reports it. `active`: queued or running (and able to run)."""

    job_id: str  # the array's job id
    element: int  # array index (Slurm: from 0; LSF: from 1)
    state: str
    active: bool
    failure: FailureKind | None
    exit_code: int | None = None
    reason: str | None = None

    @property
    def blocked(self) -> bool:
        """Pending on a dependency that can never be satisfied (an upstream element failed)."""
        return self.state == "PENDING" and (self.reason or "") in NEVER_RUNS


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
    """ "123_4" -> ("123", [4]); "123_[5-7,9%2]" (pending elements) -> ("123", [5, 6, 7, 9])."""
    if "_" not in job_id:
        return None
    base, idx = job_id.split("_", 1)
    if not idx.startswith("["):
        return base, [int(idx)]
    elements: list[int] = []
    for part in idx.strip("[]").split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        elements.extend(range(int(lo), int(hi or lo) + 1))
    return base, elements


def parse_sacct_poll(out: str) -> dict[tuple[str, int], ElementState]:
    """Latest state per (array job id, element); with --duplicates a requeued element keeps its last line.

    Real sacct (22.05) lines: `7_1|FAILED|1:0|None`, `6_[0-999%100]|PENDING|0:0|JobHeldUser` for elements
    not yet started, `8_[0-9]|PENDING|0:0|DependencyNeverSatisfied`. The Reason of a finished element is
    stale (e.g. JobArrayTaskLimit) and only read for pending ones. A new job is missing for a few seconds
    (slurmdbd lags the controller): see perfscale.sched.submit.poll.
    """
    states: dict[tuple[str, int], ElementState] = {}
    for line in out.splitlines():
        fields = line.split("|")
        if len(fields) < 3 or not (split := _split_job_id(fields[0])):
            continue
        base, elements = split
        state = fields[1].split()[0] if fields[1].strip() else "UNKNOWN"
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
            )
    return states


def squeue_poll_argv(job_ids: list[str]) -> list[str]:
    """Fallback without accounting: active elements only (finished ones leave the queue)."""
    return ["squeue", "--noheader", "--array", "--format=%i|%T|%r", "--jobs=" + ",".join(job_ids)]


def parse_squeue_poll(out: str) -> dict[tuple[str, int], ElementState]:
    states: dict[tuple[str, int], ElementState] = {}
    for line in out.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 3 or not (split := _split_job_id(fields[0])):
            continue
        base, elements = split
        for el in elements:
            states[(base, el)] = ElementState(base, el, fields[1], True, None, None, fields[2])
    return states


class Slurm:
    name = "slurm"
    first_index = 0

    def __init__(self, client: CommandClient | None = None, use_sacct: bool = True):
        self.client = client or CommandClient()
        self.use_sacct = use_sacct

    @property
    def lags(self) -> bool:
        """sacct reads slurmdbd, which learns of a new job seconds after the controller."""
        return self.use_sacct

    def submit(
        self, script: Path, depends_on: list[str], hold: bool = False, after_any: list[str] | None = None
    ) -> str:
        return parse_sbatch(self.client.run(sbatch_argv(script, depends_on, hold, after_any)))

    def poll(self, job_ids: list[str]) -> dict[tuple[str, int], ElementState]:
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
