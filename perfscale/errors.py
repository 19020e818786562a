"""Errors and failure kinds shared by every layer.

A *failure kind* is what retry policies and `perfscale status` read; it is stored as a string in the attempts
table, so the set below is part of the on-disk contract.
"""

from __future__ import annotations

from enum import Enum


class FailureKind(str, Enum):
    APP_ERROR = "app_error"  # the task's code raised, or its command exited non-zero
    TIMEOUT = "timeout"  # the task (or its command) ran past its walltime / timeout
    OOM = "oom"  # out of memory (MemoryError, or killed by the OOM killer / scheduler)
    NODE_LOST = "node_lost"  # the worker or node running the task disappeared
    UNSUPPORTED_COUNTER = "unsupported_counter"  # a requested counter cannot be measured here
    BAD_INPUT = "bad_input"  # the task's parameters or inputs are wrong: retrying cannot help
    PREEMPTED = "preempted"  # the scheduler took the node back for other work
    CANCELLED = "cancelled"  # stopped by the user or the scheduler
    CORRUPT_OUTPUT = "corrupt_output"  # a finished task's shard or artifacts were found unreadable or missing


class PerfscaleError(Exception):
    """Base class of errors perfscale reports to users (printed without a traceback by the CLI)."""


class SpecError(PerfscaleError):
    """A study or site file is invalid. The message names the file, the field (and line) and the fix."""


class CorruptFile(PerfscaleError):
    """A run file cannot be read. The message names the file, what is wrong and what was done about it."""


class TaskFailure(PerfscaleError):
    """Raised inside a task to fail it with an explicit failure kind."""

    def __init__(self, kind: FailureKind | str, message: str, exit_status: int | None = None):
        super().__init__(message)
        self.kind = FailureKind(kind)
        self.exit_status = exit_status


class BadInput(TaskFailure):
    def __init__(self, message: str):
        super().__init__(FailureKind.BAD_INPUT, message)
