"""A stage's done index: which shards were already checked, so the done-check need not open them again.

    RUN/index/<stage>.done     one line per checked shard: `<key> <size in bytes> <mtime in ns>`

A line says: the shard of task `key`, as it was at that size and modification time, passed the done-check
of store/shards.py (or was just written by `RunStore.write_shard`) and lists no artifacts. The done-check
(`RunStore.done_keys`) trusts a line only while the file at the shard path still has that size and mtime
(one `stat`, no open, no footer parse); any other shard of the stage's listing has its footer checked as
before, and is added to the index when it passes. So the index is only ever a cache of footer checks:

- a shard that is deleted, quarantined, overwritten, truncated or rewritten no longer matches its line, and
  is checked (or found missing) as if the index did not exist;
- shards that list artifacts are never indexed: their artifacts are checked on every done-check, because a
  user may delete a model folder after the check;
- a lost, torn or garbled index (a writer killed mid-line, two writers at once) costs footer checks, never
  a wrong answer: unparsable lines are skipped, and keys that are not the plan's are ignored.

Writers append whole lines with one `write` on a file opened with O_APPEND (array elements and bundle
workers append concurrently). A reader that finds the index much longer than the valid lines in it
rewrites it (atomically) with the valid lines only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from perfscale.store.atomic import atomic_write_text

INDEX = "index"

Entry = str  # "<size in bytes> <mtime in ns>" of a shard when it was checked: compared as text, not parsed


def index_path(root: Path | str, stage: str) -> str:
    return f"{root}/{INDEX}/{stage}.done"


def read_index(root: Path | str, stage: str) -> tuple[dict[str, Entry], int]:
    """({key: "size mtime_ns"} of the stage's index, last line of a key wins; number of lines read).
    A line that is not three fields is skipped; one with garbled numbers never equals a stat, so it is a
    cache miss."""
    try:
        with open(index_path(root, stage), "rb") as f:
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return {}, 0
    lines = text.split("\n")
    if lines and lines[-1]:
        lines.pop()  # a torn last line (a writer killed mid-write)
    fields = [line.split(" ", 1) for line in lines if line]  # each append starts with a newline
    entries = dict(f for f in fields if len(f) == 2 and f[1].count(" ") == 1)
    return entries, len(fields)


def stat_entry(path: str) -> Entry | None:
    """ "size mtime_ns" of the file at `path`; None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return f"{st.st_size} {st.st_mtime_ns}"


def _line(key: str, entry: Entry) -> str:
    return f"{key} {entry}\n"


def append_index(root: Path | str, stage: str, entries: Iterable[tuple[str, Entry]]) -> None:
    """Append lines for `entries` ((key, "size mtime_ns")) with one write. It starts with a newline, so a
    line torn by a killed writer never swallows the first one appended after it."""
    text = "".join(_line(k, e) for k, e in entries)
    if not text:
        return
    text = "\n" + text
    path = index_path(root, stage)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def rewrite_index(root: Path | str, stage: str, entries: dict[str, Entry]) -> None:
    """Replace the index with `entries` (atomically; a line appended meanwhile may be lost: a cache miss)."""
    path = Path(index_path(root, stage))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text("".join(_line(k, e) for k, e in entries.items()), path)
