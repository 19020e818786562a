"""Guards that keep a run's processes honest: worker heartbeats the runner's watchdog reads, and a cap on the
size of engine log files.

Heartbeats. A Parsl worker runs on a node the runner may not see, and a broken worker pool (its
multiprocessing Manager killed, say) can keep answering Parsl's own heartbeats while no worker is left to run
anything. So each worker process touches `<folder>/<host>-<pid>` every `period_s` seconds from a daemon
thread, started by its first task. The runner's side (`HeartbeatMonitor`) counts a file whose mtime *changed*
since its last look as a live worker: comparing mtimes with each other, never with the runner's clock, so
clock skew between nodes does not matter.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

_BEATING: set[str] = set()  # heartbeat folders this process already beats into
_LOCK = threading.Lock()


def start_heartbeat(folder: str | Path, period_s: float) -> None:
    """Touch `folder/<host>-<pid>` every `period_s` s for as long as this process lives (once per folder)."""
    folder = str(folder)
    with _LOCK:
        if folder in _BEATING:
            return
        _BEATING.add(folder)
    path = Path(folder) / f"{socket.gethostname()}-{os.getpid()}"

    def touch() -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        except OSError:  # a full or flaky disk must not kill the worker; the watchdog will see silence
            pass

    def beat() -> None:
        while True:
            time.sleep(period_s)
            touch()

    touch()  # before the first task runs: a task that dies at once has still been seen
    threading.Thread(target=beat, name="perfscale-heartbeat", daemon=True).start()


class HeartbeatMonitor:
    """The runner's view of a heartbeat folder: when a worker last showed life (time.monotonic())."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.seen: dict[str, int] = {}
        self.armed = False  # a worker has beaten since the monitor started (files found now are history)
        self.last_alive = time.monotonic()
        self._changed()

    def _changed(self) -> bool:
        changed = False
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            try:
                mtime = entry.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            if self.seen.get(entry.name) != mtime:
                changed, self.seen[entry.name] = True, mtime
        return changed

    def poll(self) -> float | None:
        """When a worker last beat; None until one has beaten at all (a pool still starting is no hang)."""
        if self._changed():
            self.armed, self.last_alive = True, time.monotonic()
        return self.last_alive if self.armed else None


def cap_logs(folder: Path, max_bytes: int, keep_bytes: int) -> list[Path]:
    """Every `*.log` under `folder` larger than `max_bytes` keeps its last `keep_bytes` in `<name>.1` and is
    truncated to zero. Log writers append (O_APPEND), so they go on writing at the new end. Returns the
    files capped."""
    capped = []
    for path in folder.rglob("*.log"):
        try:
            size = path.stat().st_size
            if size <= max_bytes:
                continue
            with open(path, "rb") as f:
                f.seek(max(0, size - keep_bytes))
                tail = f.read(keep_bytes)
            path.with_name(path.name + ".1").write_bytes(tail)
            os.truncate(path, 0)
        except OSError as exc:
            log.warning("could not cap %s: %s", path, exc)
            continue
        log.warning(
            "%s grew to %d bytes: truncated, its last %d bytes kept in %s.1",
            path,
            size,
            keep_bytes,
            path.name,
        )
        capped.append(path)
    return capped
