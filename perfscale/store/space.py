"""A full disk is a named error, never a raw ENOSPC traceback, and the last attempts still get written.

While a run is going, `RUN/.reserve` holds `RESERVE_BYTES` of the run folder's file system. When a write
fails because the disk (or the user's quota) is full, the runner deletes the reserve, writes the attempt
records it still holds into the space that frees, and stops with `DiskFull`. Writes are atomic (temp file,
then rename), so a failed write leaves nothing half-written; the next run, once space is freed, resumes.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from perfscale.errors import PerfscaleError

RESERVE_NAME = ".reserve"
RESERVE_BYTES = 1 << 20  # attempt records of a 2 s batch take a few kB
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
log = logging.getLogger(__name__)


class DiskFull(PerfscaleError):
    """The run folder's file system (or quota) is full."""

    def __init__(self, root: Path, detail: object = ""):
        super().__init__(f"disk full in {root}: free space and run again to resume ({detail})")


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


@contextmanager
def disk_full_named(root: Path) -> Iterator[None]:
    """Turn an ENOSPC/EDQUOT OSError raised in the block into DiskFull naming the run folder."""
    try:
        yield
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFull(root, exc) from exc
        raise


def reserve(root: Path, nbytes: int = RESERVE_BYTES) -> bool:
    """Hold `nbytes` of the run folder's file system in RUN/.reserve; False if there is no room already."""
    path = Path(root) / RESERVE_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        if is_disk_full(exc):
            return False
        raise
    try:
        os.posix_fallocate(fd, 0, nbytes)
        return True
    except OSError as exc:
        if exc.errno in FULL_ERRNOS:
            path.unlink(missing_ok=True)
            return False
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        return _write_zeros(fd, path, nbytes)  # a file system without fallocate
    finally:
        os.close(fd)


def _write_zeros(fd: int, path: Path, nbytes: int) -> bool:
    block = b"\0" * (64 << 10)
    try:
        for _ in range(0, nbytes, len(block)):
            os.write(fd, block)
        os.fsync(fd)  # a delayed-allocation file system only takes the blocks at writeback
        return True
    except OSError as exc:
        if is_disk_full(exc):
            path.unlink(missing_ok=True)
            return False
        raise


def release(root: Path) -> bool:
    """Give the reserve back to the file system; False if there was none."""
    try:
        (Path(root) / RESERVE_NAME).unlink()
        return True
    except FileNotFoundError:
        return False
