"""Scheduler states -> perfscale failure kinds. Each scheduler's map lives in its own module (a scheduler is
one unit, see perfscale.sched.base); the names below are kept for callers of this module.

Walltime, memory, node, preemption and cancellation kills are told apart from application errors, so each
spends its own retry budget (a walltime kill never uses up the app_error retries).
"""

from __future__ import annotations

from perfscale.sched.lsf import LSF_ACTIVE, LSF_MESSAGES, LSF_REASONS, lsf_failure
from perfscale.sched.slurm_fields import SLURM_ACTIVE, SLURM_STATES, slurm_failure

__all__ = [
    "LSF_ACTIVE",
    "LSF_MESSAGES",
    "LSF_REASONS",
    "SLURM_ACTIVE",
    "SLURM_STATES",
    "lsf_failure",
    "slurm_failure",
]
