"""LSF back end (Lassen-like machines): bsub submit, one bjobs call per poll, bkill, and their parsers.

LSF cannot run in this sandbox: these functions are tested on outputs written from IBM's LSF 10.1
documentation for `bsub` and `bjobs -o ... delimiter=` (see docs/architecture.md, "What ran where").
"""

from __future__ import annotations

import re
from pathlib import Path

from perfscale.sched.client import CommandClient, SchedulerCommandError
from perfscale.sched.slurm import ElementState
from perfscale.sched.states import LSF_ACTIVE, lsf_failure

BJOBS_FIELDS = ("jobid", "jobindex", "stat", "exit_code", "exit_reason")
_SUBMITTED = re.compile(r"Job <(\d+)> is submitted")


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


def parse_bjobs_poll(out: str) -> dict[tuple[str, int], ElementState]:
    states: dict[tuple[str, int], ElementState] = {}
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


class LSF:
    name = "lsf"
    first_index = 1
    lags = False  # bjobs asks mbatchd itself

    def __init__(self, client: CommandClient | None = None):
        self.client = client or CommandClient()

    def submit(
        self, script: Path, depends_on: list[str], hold: bool = False, after_any: list[str] | None = None
    ) -> str:
        return parse_bsub(
            self.client.run(bsub_argv(depends_on, hold, after_any), input_text=script.read_text())
        )

    def poll(self, job_ids: list[str]) -> dict[tuple[str, int], ElementState]:
        """ONE bjobs call, whatever the number of arrays and elements."""
        return parse_bjobs_poll(self.client.run(bjobs_poll_argv(job_ids))) if job_ids else {}

    def cancel(self, job_ids: list[str]) -> None:
        """Whole arrays (`123`) or single elements (`"123[4]"`), in one bkill call."""
        if job_ids:
            self.client.run(["bkill", *job_ids])

    @staticmethod
    def element_id(job_id: str, element: int) -> str:
        return f"{job_id}[{element}]"
