"""No orphans: every process a run starts ends when the run's own process ends, even by SIGKILL.

- `die_with_parent()`: the kernel SIGKILLs this process when its parent ends (Linux prctl PR_SET_PDEATHSIG).
  For a process whose parent is the one that matters: Parsl workers (parent: the worker pool).
- `exit_with(pid)`: a daemon thread SIGKILLs this process when `pid` ends. For a process whose parent is
  not the one that matters: local-engine workers, whose parent is the multiprocessing forkserver (which
  itself lives as long as any worker holds its "alive" pipe, so it never notices the run is gone).
- `python -m perfscale.orphans exec PID CMD...`: die with parent PID, then exec CMD (Parsl's interchange).
- `python -m perfscale.orphans watch PID`: when PID ends, SIGKILL this process group (a local Parsl pilot
  block: LocalProvider detaches it, so it has no parent to die with).

This module imports nothing heavy: it starts inside every worker and wrapper.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from functools import lru_cache

PR_SET_PDEATHSIG = 1
POLL_S = 1.0  # where pidfd_open is missing, how often a watched pid is checked


@lru_cache(maxsize=1)
def _prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


def die_with_parent() -> bool:
    """SIGKILL this process when its parent ends; False where prctl is unavailable (not Linux). Cheap
    enough to call once per task."""
    parent, prctl = os.getppid(), _prctl()
    if prctl is None or prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # the parent ended before the prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def wait_for_exit(pid: int) -> None:
    """Block until process `pid` ends (a pidfd where the kernel has one, so a reused pid cannot fool it)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # no pidfd here: poll
        while _alive(pid):
            time.sleep(POLL_S)
        return
    try:
        select.select([fd], [], [])
    finally:
        os.close(fd)


def exit_with(pid: int) -> None:
    """SIGKILL this process, from a daemon thread, as soon as process `pid` ends."""

    def watch() -> None:
        wait_for_exit(pid)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name=f"perfscale-exit-with-{pid}", daemon=True).start()


def guard_worker(run_pid: int) -> None:
    """Initializer of a local-engine worker: it ends with the run's process (and with its forkserver)."""
    die_with_parent()
    exit_with(run_pid)


def main(argv: list[str]) -> int:
    usage = "usage: python -m perfscale.orphans exec PID CMD... | watch PID"
    if len(argv) < 2 or not argv[1].isdigit():
        print(usage, file=sys.stderr)
        return 2
    action, pid = argv[0], int(argv[1])
    if action == "exec" and len(argv) > 2:
        if os.getppid() != pid:  # already orphaned
            return 1
        die_with_parent()
        os.execvp(argv[2], argv[2:])
    if action == "watch" and len(argv) == 2:
        try:
            shared = os.getpgid(pid) == os.getpgrp()
        except ProcessLookupError:  # the run has ended already
            shared = False
        if shared:  # our group holds the run itself: never kill that
            print(f"perfscale.orphans: pid {pid} shares this process group; not watching", file=sys.stderr)
            return 1
        wait_for_exit(pid)
        os.killpg(os.getpgrp(), signal.SIGKILL)
        return 0
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
