"""Scheduler states -> perfscale failure kinds, for Slurm and LSF.

Walltime, memory, node, preemption and cancellation kills are told apart from application errors, so each
spends its own retry budget (a walltime kill never uses up the app_error retries).
"""

from __future__ import annotations

from perfscale.errors import FailureKind

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

SLURM_ACTIVE = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "REQUEUED",
    "RESIZING",
    "SUSPENDED",
    "STAGE_OUT",
    "SIGNALING",
}

# LSF: a job in EXIT is classified by its exit reason (bjobs -o exit_reason / bhist TERM_* codes)
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


def slurm_failure(state: str) -> FailureKind | None:
    """Failure kind of a Slurm state ("CANCELLED by 1234" reads as CANCELLED; unknown states: app errors)."""
    base = state.split()[0].rstrip("+").upper() if state else ""
    return SLURM_STATES.get(base, FailureKind.APP_ERROR)


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
