"""Slurm job ids and job states as sacct and squeue print them: the one parser that array mode
(perfscale.sched.slurm) and the sacct importer (perfscale.ingest.sacct) share.

A leaf: it imports only the failure kinds, so the importer loads none of array mode.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from perfscale.errors import FailureKind

# Slurm's spellings of "no value" in sacct output
NULLS = frozenset({"", "Unknown", "None", "NONE", "N/A", "None assigned", "(null)", "INVALID", "NOT_SET"})

STATE_ABBREVIATIONS = {
    "BF": "BOOT_FAIL", "CA": "CANCELLED", "CD": "COMPLETED", "CF": "CONFIGURING", "CG": "COMPLETING",
    "DL": "DEADLINE", "F": "FAILED", "NF": "NODE_FAIL", "OOM": "OUT_OF_MEMORY", "PD": "PENDING",
    "PR": "PREEMPTED", "R": "RUNNING", "RD": "RESV_DEL_HOLD", "RF": "REQUEUE_FED", "RH": "REQUEUE_HOLD",
    "RQ": "REQUEUED", "RS": "RESIZING", "RV": "REVOKED", "S": "SUSPENDED", "SE": "SPECIAL_EXIT",
    "SI": "SIGNALING", "SO": "STAGE_OUT", "ST": "STOPPED", "TO": "TIMEOUT",
}  # fmt: skip
"""squeue's compact state codes (`%t`) -> the long names sacct prints."""

# Slurm job states (sacct/squeue long names); None: not a failure (pending, running or done)
SLURM_STATES: dict[str, FailureKind | None] = {
    "PENDING": None,
    "CONFIGURING": None,
    "RUNNING": None,
    "COMPLETING": None,
    "REQUEUED": None,
    "RESIZING": None,
    "SUSPENDED": None,
    "STAGE_OUT": None,
    "SIGNALING": None,
    "COMPLETED": None,
    "FAILED": FailureKind.APP_ERROR,
    "TIMEOUT": FailureKind.TIMEOUT,
    "DEADLINE": FailureKind.TIMEOUT,
    "OUT_OF_MEMORY": FailureKind.OOM,
    "NODE_FAIL": FailureKind.NODE_LOST,
    "BOOT_FAIL": FailureKind.NODE_LOST,
    "PREEMPTED": FailureKind.PREEMPTED,
    "CANCELLED": FailureKind.CANCELLED,
    "REVOKED": FailureKind.CANCELLED,
}

# states of a job that is queued or running (and able to run)
SLURM_ACTIVE = frozenset(s for s, kind in SLURM_STATES.items() if kind is None and s != "COMPLETED")


def parse_state(value: str | None) -> tuple[str | None, int | None]:
    """Normalised state and, for "CANCELLED by 1234", the uid that cancelled.

    Long names are kept, squeue's short codes are expanded, and the "+" that fixed-width output appends to
    cut names is dropped. Names perfscale does not know are kept, upper-cased. No value (`NULLS`): None.
    """
    text = (value or "").strip()
    if text in NULLS:
        return None, None
    words = text.split()
    state = words[0].rstrip("+").upper()
    state = STATE_ABBREVIATIONS.get(state, state)
    by = None
    if len(words) == 3 and words[1].lower() == "by" and words[2].isdigit():
        by = int(words[2])
    return state, by


def slurm_failure(state: str) -> FailureKind | None:
    """Failure kind of a Slurm state ("CANCELLED by 1234" reads as CANCELLED; unknown states: app errors)."""
    return SLURM_STATES.get(parse_state(state)[0] or "", FailureKind.APP_ERROR)


_JOB_ID = re.compile(r"^(?P<base>\d+)(?:_(?P<task>\d+|\[[^\]]*\]))?(?:\+(?P<het>\d+))?$")


@dataclass(frozen=True)
class JobId:
    """A Slurm job id: `9`, `9_2` (array element), `9_[0-3%2]` (elements not started), `123+1`
    (heterogeneous job component), each optionally with a step (`9_2.batch`)."""

    job_id: str  # the allocation's id, without the step
    base: str  # the (array) job's number
    task: str | None  # the array part: "2", or "[0-3%2]"
    step: str | None

    @property
    def array_task_id(self) -> int | None:
        return int(self.task) if self.task and self.task.isdigit() else None

    @property
    def elements(self) -> list[int]:
        """The array indices it stands for: [2] for `9_2`, [0, 1, 2, 3] for `9_[0-3%2]`, [] for no array."""
        if self.task is None:
            return []
        if self.task.isdigit():
            return [int(self.task)]
        found: list[int] = []
        for part in self.task.strip("[]").split("%")[0].split(","):
            lo, _, hi = part.partition("-")
            found.extend(range(int(lo), int(hi or lo) + 1))
        return found


def parse_job_id(value: str) -> JobId:
    """`9_2.batch` -> JobId("9_2", "9", "2", "batch"); ValueError if `value` is not a Slurm job id."""
    alloc, _, step = value.strip().partition(".")
    match = _JOB_ID.match(alloc)
    if not match:
        raise ValueError(f"not a Slurm job id: {value!r}")
    return JobId(alloc, match["base"], match["task"], step or None)
