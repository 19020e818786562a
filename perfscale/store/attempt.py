"""One attempt of one task: the record every writer of the attempts table uses, and the one a shard's footer
keeps (store/shards.py).

The task records its own attempts (perfscale.execute); others record the attempts a task could not: the
runner (a worker lost, a run stopped), the scheduler's final states (perfscale.sched.submit) and the store (a
corrupt shard quarantined) use `Attempt.recorded`. `ATTEMPT_SCHEMA`, the attempts table's Arrow schema, is
derived from the fields. A leaf: it imports nothing of perfscale but the failure kinds.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any, get_type_hints

import pyarrow as pa

from perfscale.errors import FailureKind


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Attempt:
    task_key: str
    stage: str
    index: int
    attempt: int
    host: str | None  # None: recorded by someone other than the task (see `recorded`)
    pid: int | None
    started_at: datetime
    ended_at: datetime
    duration_s: float | None
    ok: bool
    exit_status: int | None
    failure_kind: str | None  # a FailureKind value; None when ok
    message: str | None

    @classmethod
    def recorded(
        cls,
        task_key: str,
        stage: str,
        index: int,
        attempt: int,
        kind: FailureKind,
        message: str,
        exit_status: int | None = None,
        here: bool = False,
    ) -> Attempt:
        """A failed attempt recorded for a task by someone else, started and ended now: a worker lost, a run
        stopped, the scheduler's final state (no host, pid or duration), or, `here`, something this process
        found (a corrupt shard: this host and pid, duration 0)."""
        now = utcnow()
        host, pid, duration = (socket.gethostname(), os.getpid(), 0.0) if here else (None, None, None)
        return cls(
            task_key,
            stage,
            index,
            attempt,
            host,
            pid,
            now,
            now,
            duration,
            False,
            exit_status,
            kind.value,
            message,
        )

    def row(self) -> dict[str, Any]:
        """The attempts table's row (not dataclasses.asdict, which deep-copies every field: a third of the
        cost of a no-op task's records)."""
        return {name: getattr(self, name) for name in _FIELD_NAMES}

    def to_json(self) -> dict[str, Any]:
        """The row as JSON values (times in ISO 8601), for a shard's footer."""
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in self.row().items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attempt:
        """The attempt `to_json` wrote (a field missing from an older footer is None)."""
        values = {f.name: data.get(f.name) for f in fields(cls)}
        for name in _TIME_FIELDS:
            if isinstance(values[name], str):
                values[name] = datetime.fromisoformat(values[name])
        return cls(**values)


_ARROW_TYPES: dict[type, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    datetime: pa.timestamp("us", tz="UTC"),
}


def _arrow_type(hint: Any) -> pa.DataType:
    """The Arrow type of a field: its Python type, or the one non-None type of an optional."""
    options = [t for t in getattr(hint, "__args__", (hint,)) if t is not type(None)]
    return _ARROW_TYPES[options[0]]


_FIELD_NAMES = tuple(f.name for f in fields(Attempt))
_HINTS = get_type_hints(Attempt)
ATTEMPT_SCHEMA = pa.schema([(f.name, _arrow_type(_HINTS[f.name])) for f in fields(Attempt)])
_TIME_FIELDS = tuple(f.name for f in fields(Attempt) if _HINTS[f.name] is datetime)
