"""Engines decide where tasks run. The interface is deliberately tiny: a context manager with submit().

    with make_engine("parsl", site, run_root) as engine:
        future = engine.submit(execute_task, run_root, index)

`submit` returns a concurrent.futures.Future (Parsl's AppFuture is one). Engines know nothing about stages,
shards or retries: that all lives in perfscale.execute, so every engine behaves the same.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from importlib import import_module
from pathlib import Path
from typing import Any, ClassVar

from perfscale.errors import PerfscaleError, SpecError
from perfscale.extras import require
from perfscale.spec.site import Site

log = logging.getLogger(__name__)


class Engine(ABC):
    name: ClassVar[str]
    # the engine gives tasks their GPUs itself (Parsl, Dask: pinned workers; Ray: num_gpus): it is built for
    # the GPUs each of its tasks takes (`task_gpus`), one engine per stage shape (runner._Engines). False
    # (local): each task claims its GPUs from the node's pool (perfscale.gpus)
    binds_gpus: ClassVar[bool] = False

    def __init__(self, site: Site, run_root: Path, workers: int | None = None, task_gpus: int = 0):
        self.site = site
        self.run_root = Path(run_root)
        self.workers = workers or site.workers
        self.task_gpus = task_gpus if site.gpus_per_node else 0

    @property
    def gpu_slots(self) -> int:
        """Workers per node when each is pinned to `task_gpus` GPUs (0: workers are not pinned)."""
        return self.site.gpus_per_node // self.task_gpus if self.task_gpus else 0

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]: ...

    @abstractmethod
    def shutdown(self) -> None: ...

    @property
    def nodes(self) -> int:
        """Nodes the engine's workers span: one without a scheduler, else `workers` over the site's workers
        per node."""
        from perfscale.sched.base import scheduler_class

        if not scheduler_class(self.site.scheduler).batch:
            return 1
        return -(-self.workers // self.site.workers)

    @property
    def gpu_capacity(self) -> int:
        """GPUs of the engine's nodes: how many GPUs' worth of tasks the runner lets run at once."""
        return self.site.gpus_per_node * self.nodes

    def last_alive(self) -> float | None:
        """When (time.monotonic()) a worker last showed life, or the engine was waiting for resources it asked
        for. None: this engine cannot tell, and the runner's watchdog leaves it alone."""
        return None

    def restart(self) -> None:
        """Throw the workers away and start afresh (the watchdog's remedy); futures in flight are lost."""
        log.info("%s engine: restarting (run %s)", self.name, self.run_root)
        self.__exit__()
        self.__enter__()

    def abort(self) -> None:
        """Stop now, tasks in flight included (after an interrupt or an error); by default, `shutdown`."""
        self.shutdown()

    def __enter__(self) -> Engine:
        log.info(
            "%s engine: starting %d workers on site %s (run %s)",
            self.name,
            self.workers,
            self.site.name,
            self.run_root,
        )
        started = time.monotonic()
        self.start()
        log.info("%s engine: started in %.2f s", self.name, time.monotonic() - started)
        return self

    def __exit__(self, exc_type: type[BaseException] | None = None, *exc: object) -> None:
        started = time.monotonic()
        if exc_type is None:
            self.shutdown()
        else:
            self.abort()
        how = "stopped" if exc_type is None else f"aborted ({exc_type.__name__})"
        log.info("%s engine: %s in %.2f s", self.name, how, time.monotonic() - started)


class EngineStalled(PerfscaleError):
    """No task finished and no worker was alive for the watchdog's limit, even after a restart."""


# name -> "module:Class", imported on use so `perfscale plan` never pays for Parsl's import
ENGINES: dict[str, str] = {
    "local": "perfscale.engines.local:LocalEngine",
    "parsl": "perfscale.engines.parsl_engine:ParslEngine",
    "dask": "perfscale.engines.dask_engine:DaskEngine",
    "ray": "perfscale.engines.ray_engine:RayEngine",
}
# what an engine needs from perfscale[engines]; `local` needs nothing more than the core
ENGINE_MODULES: dict[str, str] = {"parsl": "parsl", "dask": "distributed", "ray": "ray"}


def engine_class(name: str) -> type[Engine]:
    if name not in ENGINES:
        raise SpecError(f"engine {name!r} is not available; choose one of {', '.join(sorted(ENGINES))}")
    if name in ENGINE_MODULES:
        require("engines", ENGINE_MODULES[name], f"the {name} engine", hint=" (or use --engine local)")
    module, cls = ENGINES[name].split(":")
    return getattr(import_module(module), cls)  # type: ignore[no-any-return]


def make_engine(
    name: str, site: Site, run_root: Path, workers: int | None = None, task_gpus: int = 0
) -> Engine:
    """Engine `name` on `site`; `task_gpus`: the GPUs each task it will run takes (engines that bind GPUs
    themselves are built for one such shape, see Engine.binds_gpus)."""
    return engine_class(name)(site, run_root, workers, task_gpus)
