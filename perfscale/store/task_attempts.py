"""Attempt records of single tasks, found without reading the run's whole attempts table.

The attempts table is every `*.parquet` under `RUN/attempts/`. Writers that record many tasks at once (the
runner, every 2 s) write one file there per batch. Writers that record one task (`perfscale task run` in an
array element, the scheduler's final state, a quarantined shard) write into the task's bucket instead:

    RUN/attempts/tasks/<first 3 hex digits of the key>/<key>.a<last attempt>.<pid>-<rand>.parquet

so numbering the next attempt of a task lists one of 4,096 buckets and reads no file's contents: the name
holds the highest attempt number the file records. Batch files of a `perfscale run` on the same folder are
read too (filtered by key); a pure array run has none, so an element's bookkeeping does not grow with the
run. Compaction merges the batch files into one (`merged-*.parquet`, whose footer names the files it holds,
so that a merge killed before deleting them does not count their rows twice).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from perfscale.store.atomic import atomic_write_table
from perfscale.store.attempt import ATTEMPT_SCHEMA, Attempt

BUCKETS = "tasks"


def bucket(root: Path, key: str) -> Path:
    return Path(root) / "attempts" / BUCKETS / key[:3]


def append_task_attempts(root: Path, records: Iterable[Attempt]) -> list[Path]:
    """Write the records of each task into its bucket, one file per task."""
    by_key: dict[str, list[Attempt]] = {}
    for r in records:
        by_key.setdefault(r.task_key, []).append(r)
    written = []
    for key, rows in by_key.items():
        last = max(r.attempt for r in rows)
        name = f"{key}.a{last}.{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
        table = pa.Table.from_pylist([r.row() for r in rows], schema=ATTEMPT_SCHEMA)
        written.append(atomic_write_table(table, bucket(root, key) / name))
    return written


def _own_files(root: Path, key: str) -> list[tuple[int, str]]:
    """(last attempt, path) of the task's files in its bucket."""
    folder = bucket(root, key)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if name.startswith(f"{key}.a") and name.endswith(".parquet"):
            try:
                found.append((int(name[len(key) + 2 :].split(".", 1)[0]), f"{folder}/{name}"))
            except ValueError:
                continue
    return found


MERGED_PREFIX = "merged-"  # a batch file that merges others (store/compact.py compact_attempts)
MERGED_META = b"perfscale.merged"  # its footer's JSON list of the batch file names it holds


def batch_files(root: Path | str) -> list[str]:
    """The runner's batch files (`RUN/attempts/*.parquet`), less those a merged file already holds (a merge
    killed before deleting its sources leaves them: each row is read once)."""
    folder = Path(root) / "attempts"
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".parquet") and not n.startswith("."))
    except FileNotFoundError:
        return []
    held: set[str] = set()
    for name in names:
        if name.startswith(MERGED_PREFIX):
            held.update(merged_sources(folder / name))
    return [str(folder / n) for n in names if n not in held]


def merged_sources(path: Path | str) -> list[str]:
    """The batch file names a merged file holds (none if its footer cannot be read: it is then read, or
    quarantined, like any other file)."""
    try:
        with pa.OSFile(str(path)) as source:
            raw = (pq.read_metadata(source).metadata or {}).get(MERGED_META, b"[]")
        names = json.loads(raw)
    except (pa.ArrowException, OSError, ValueError):
        return []
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def attempt_files(root: Path | str) -> list[str]:
    """Every file of the attempts table: the batch files (`batch_files`) and the tasks' buckets."""
    buckets = Path(root) / "attempts" / BUCKETS
    own = sorted(str(p) for p in buckets.rglob("*.parquet")) if buckets.exists() else []
    return batch_files(root) + own


def _batch_rows(root: Path, key: str) -> pa.Table:
    """The task's rows in the batch files (unreadable ones are skipped here; `RunStore.attempts()`
    quarantines them)."""
    tables = []
    for f in batch_files(root):
        try:
            t = pq.read_table(f, schema=ATTEMPT_SCHEMA, filters=[("task_key", "=", key)])
        except (pa.ArrowException, OSError):
            continue
        tables.append(t)
    return pa.concat_tables(tables) if tables else ATTEMPT_SCHEMA.empty_table()


def task_attempts(root: Path, key: str) -> pa.Table:
    """Every recorded attempt row of task `key` (bucket and batch files), unsorted."""
    tables = [_batch_rows(root, key)]
    for _last, path in _own_files(root, key):
        try:
            tables.append(pq.read_table(path, schema=ATTEMPT_SCHEMA))
        except (pa.ArrowException, OSError):
            continue
    return pa.concat_tables(tables)


def next_attempt(root: Path, key: str) -> int:
    """1 + the highest attempt number recorded for task `key` (1 for a task never attempted)."""
    last = max((n for n, _ in _own_files(root, key)), default=0)
    batch = _batch_rows(root, key).column("attempt")
    if len(batch):
        last = max(last, int(pc.max(batch).as_py()))
    return last + 1
