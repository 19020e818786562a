"""The local engine: a process pool on this machine (tests, tiny runs, and the inside of one allocation)."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from perfscale.engines.base import Engine
from perfscale.orphans import guard_worker


class LocalEngine(Engine):
    name = "local"
    _pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        # forkserver: workers start from a clean process (no inherited threads or locks), preloaded with
        # perfscale so each task pays no import cost
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["perfscale.execute"])
        # workers end with this process, even when it is SIGKILLed (see perfscale.orphans). On a GPU site each
        # task gets a fresh worker: CUDA and ROCm read the visible-devices variables once per process
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=ctx,
            initializer=guard_worker,
            initargs=(os.getpid(),),
            max_tasks_per_child=1 if self.site.gpus_per_node else None,
        )

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        assert self._pool is not None, "engine not started"
        try:
            return self._pool.submit(fn, *args)
        except RuntimeError:  # BrokenProcessPool: a worker died (killed, OOM); start a fresh pool
            self._pool.shutdown(wait=False, cancel_futures=True)
            self.start()
            return self._pool.submit(fn, *args)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def abort(self) -> None:
        """Kill the workers (tasks in flight included) instead of waiting for them."""
        if self._pool is not None:
            for process in list(self._pool._processes.values()):  # no public handle on the workers
                process.kill()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
