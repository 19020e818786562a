"""Atomic file writes: write to a hidden temp name in the same folder, then rename over the target.

A reader therefore sees either no file or a complete one, whatever kills the writer. Temp names start with a
dot and end in `.tmp`, so dataset readers (which only take `*.parquet`) never pick them up. Set
PERFSCALE_FSYNC=1 to fsync before the rename (protects against power loss, costs a few ms per shard).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pyarrow loads on first table write, so text writers stay light to import
    import pyarrow as pa

_FSYNC = os.environ.get("PERFSCALE_FSYNC", "0") == "1"


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_dead_writers_temps(folder: Path) -> int:
    """Remove the temp files under `folder` whose writer process is gone (a worker killed mid-write leaves
    its temp file: its `except` never ran). Files of live writers, and names not made here, are kept.
    Returns how many were removed."""
    removed = 0
    for tmp in folder.rglob(".*.tmp"):
        parts = tmp.name.rsplit(".", 3)  # ".NAME", pid, uuid, "tmp"
        if len(parts) == 4 and parts[1].isdigit() and not _alive(int(parts[1])):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` then rename tmp onto `path`; the temp file is removed if writing fails. The folder
    is made when the first write finds none (not checked before every write: a task's shard is one of many
    in its folder)."""
    tmp = _temp_name(path)
    try:
        try:
            write(tmp)
        except FileNotFoundError:
            if path.parent.is_dir():
                raise
            path.parent.mkdir(parents=True, exist_ok=True)
            write(tmp)
        if _FSYNC:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


SMALL_TABLE_BYTES = 1 << 20  # tables below this are encoded in memory and written with one system call
TINY_TABLE_BYTES = 64 << 10  # tables below this are written plain (TINY_TABLE_OPTIONS)
# A few rows gain nothing from compression, dictionary pages or column statistics (a filtering reader
# opens the footer of a file this small either way), and they are a quarter of the instructions of an
# empty shard's encoding (pyarrow 26). Every reader reads plain pages.
TINY_TABLE_OPTIONS: dict[str, Any] = {
    "compression": "none",
    "use_dictionary": False,
    "write_statistics": False,
}


def _write_parquet(table: pa.Table, tmp: Path, options: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    size = table.get_total_buffer_size()  # not `nbytes`, which took 40 us on a shard of no rows
    if size < SMALL_TABLE_BYTES:
        # a small shard in one write: the Parquet writer's dozens of small writes cost more than encoding
        # (and on a parallel file system each is a round trip)
        if size < TINY_TABLE_BYTES:
            options = {**TINY_TABLE_OPTIONS, **options}
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **options)
        _write_bytes(tmp, sink.getvalue())
        return
    with pa.OSFile(str(tmp), "wb") as sink:  # an explicit OSFile skips filesystem inference (~20% faster)
        pq.write_table(table, sink, **options)


def _write_bytes(tmp: Path, data: pa.Buffer) -> None:
    """`data` into a new file `tmp` (os.open: the io module's file object costs a third of the write)."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)  # type: ignore[arg-type]  # a pyarrow Buffer is a bytes-like
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def atomic_write_table(table: pa.Table, path: Path, **options: Any) -> Path:
    """Write `table` as Parquet at `path`, atomically; `options` go to `pyarrow.parquet.write_table`."""
    return atomic_write(path, lambda tmp: _write_parquet(table, tmp, options))


def atomic_write_text(text: str, path: Path) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
