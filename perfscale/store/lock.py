"""One `perfscale run` per run folder: an exclusive flock on RUN/.lock, held for the whole run.

The lock file holds who took it (pid, host, start time), so a second run can say whom it waits for. The
kernel drops the lock when its holder dies, even by SIGKILL, so a stale file never blocks anyone: its text is
read only while the lock is actually held. `perfscale task run` (array elements, one task each) takes no
lock: elements claim single tasks and run side by side with each other and with a `perfscale run`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from perfscale.errors import PerfscaleError

LOCK_NAME = ".lock"
log = logging.getLogger(__name__)


class RunLocked(PerfscaleError):
    """Another `perfscale run` holds the run folder."""


def lock_holder(root: Path) -> str:
    """`pid P on HOST since TIME` from the lock file (`an unknown process` while it is being written)."""
    try:
        info = json.loads((Path(root) / LOCK_NAME).read_text())
        return f"pid {info['pid']} on {info['host']} since {info['started_at']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown process"


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


@contextmanager
def run_lock(root: Path, wait: bool = False) -> Iterator[None]:
    """Hold RUN/.lock for the block. Busy: wait for it (`wait`), or raise RunLocked naming the holder."""
    from perfscale.store.run import utcnow

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if not _try_lock(fd):
            holder = lock_holder(root)
            if not wait:
                raise RunLocked(
                    f"{root} is in use by another perfscale run ({holder}, lock {path}); "
                    "wait for it to end, or pass --wait-lock to queue behind it"
                )
            log.warning("waiting for %s, held by %s", path, holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": utcnow().isoformat()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the lock
