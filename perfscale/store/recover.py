"""Damaged run files: moved to RUN/quarantine/ and recorded.

- A shard that fails its check (see `perfscale.store.shards`) is moved to `RUN/quarantine/stages/<stage>/`
  and gets a `corrupt_output` attempt row saying why; its task is then not done and runs again.

Quarantined files keep their path under `RUN/quarantine/`, with a time stamp appended to their name, so that
no reader of `*.parquet` picks them up again.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from perfscale.errors import CorruptFile, FailureKind
from perfscale.store.shards import one_line

if TYPE_CHECKING:
    from perfscale.store.run import RunStore

logger = logging.getLogger("perfscale.store")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def quarantine(store: RunStore, path: Path) -> Path | None:
    """Move `path` (inside the run folder) to RUN/quarantine/; None if another process moved it first."""
    rel = path.relative_to(store.root)
    dest = (
        store.root / "quarantine" / rel.parent / f"{rel.name}.{_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(path, dest)
    except FileNotFoundError:
        return None
    return dest


def _moved(dest: Path | None) -> str:
    return f"moved to {dest}" if dest else "already moved to quarantine by another process"


def quarantine_shards(store: RunStore, stage: str, bad: dict[str, str]) -> list[str]:
    """Quarantine the shards of `bad` ({key: why}), record a `corrupt_output` attempt for each, and return
    one message per shard naming the file, what is wrong and where it went."""
    attempts = store.attempts()  # read before moving: a shard's own (recovered) record counts
    last = attempts.groupby("task_key")["attempt"].max() if len(attempts) else {}
    index = store.plan_keys.get(stage, {})
    messages, records = [], []
    for key, why in bad.items():
        path = store.shard_path(stage, key)
        dest = quarantine(store, path)
        message = f"{path}: {why}; {_moved(dest)}; `perfscale run` runs its task again"
        logger.warning("corrupt shard: %s", message)
        messages.append(message)
        if dest is None:
            continue
        now = _now()
        records.append(
            {
                "task_key": key,
                "stage": stage,
                "index": index.get(key, -1),
                "attempt": int(last.get(key, 0)) + 1,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started_at": now,
                "ended_at": now,
                "duration_s": 0.0,
                "ok": False,
                "exit_status": None,
                "failure_kind": FailureKind.CORRUPT_OUTPUT.value,
                "message": message,
            }
        )
    store.append_attempts(records)
    return messages


def corrupt_shards_error(store: RunStore, stage: str, bad: dict[str, str]) -> CorruptFile:
    messages = quarantine_shards(store, stage, bad)
    more = f" (and {len(messages) - 1} more bad shards of stage {stage!r})" if len(messages) > 1 else ""
    return CorruptFile(messages[0] + more)


def unreadable_shards(store: RunStore, stage: str, paths: list[str]) -> dict[str, str]:
    """{key: why} of the shards whose data pages cannot be read (their footers parsed)."""
    bad = {}
    for path in paths:
        try:
            pq.read_table(path)
        except FileNotFoundError:
            continue
        except (pa.ArrowException, OSError) as exc:
            bad[Path(path).name.removesuffix(".parquet")] = f"its data cannot be read ({one_line(exc)})"
    return bad
