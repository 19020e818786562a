"""Slurm back end: sbatch submit, one sacct (or squeue) call per poll, scancel, and their output parsers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from perfscale.errors import FailureKind
from perfscale.sched.client import CommandClient
from perfscale.sched.states import SLURM_ACTIVE, slurm_failure


@dataclass(frozen=True)
class ElementState:
    job_id: str  # the array's job id
    element: int  # array index (Slurm: from 0; LSF: from 1)
    state: str
    active: bool
    failure: FailureKind | None
    exit_code: int | None = None
    reason: str | None = None


def sbatch_argv(script: Path, depends_on: list[str]) -> list[str]:
    argv = ["sbatch", "--parsable"]
    if depends_on:
        argv.append("--dependency=afterok:" + ":".join(depends_on))
    return [*argv, str(script)]


def parse_sbatch(out: str) -> str:
    """`sbatch --parsable` prints `jobid` or `jobid;cluster`."""
    return out.strip().splitlines()[-1].split(";")[0]


SACCT_POLL_FIELDS = ("JobID", "State", "ExitCode")


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
    """Latest state per (array job id, element); with --duplicates a requeued element keeps its last line."""
    states: dict[tuple[str, int], ElementState] = {}
    for line in out.splitlines():
        fields = line.split("|")
        if len(fields) < 3 or not (split := _split_job_id(fields[0])):
            continue
        base, elements = split
        state = fields[1]
        code = fields[2].split(":")[0]
        for el in elements:
            states[(base, el)] = ElementState(
                base,
                el,
                state.split()[0],
                state.split()[0] in SLURM_ACTIVE,
                slurm_failure(state),
                int(code) if code.isdigit() else None,
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

    def submit(self, script: Path, depends_on: list[str]) -> str:
        return parse_sbatch(self.client.run(sbatch_argv(script, depends_on)))

    def poll(self, job_ids: list[str]) -> dict[tuple[str, int], ElementState]:
        """ONE scheduler call, whatever the number of arrays and elements."""
        if not job_ids:
            return {}
        if self.use_sacct:
            return parse_sacct_poll(self.client.run(sacct_poll_argv(job_ids)))
        return parse_squeue_poll(self.client.run(squeue_poll_argv(job_ids)))

    def cancel(self, job_ids: list[str]) -> None:
        if job_ids:
            self.client.run(["scancel", *job_ids])
