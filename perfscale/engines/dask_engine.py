"""The Dask engine: a `distributed.LocalCluster` on this machine, or a dask-jobqueue pilot on a batch site.

Sites with `scheduler: none` get a LocalCluster of `workers` single-threaded worker processes (one task per
process, as with the other engines). Batch sites get the dask-jobqueue cluster their scheduler names
(`Scheduler.dask_cluster_class`: `SLURMCluster`, `LSFCluster`...), whose job script is built from the site
file by `dask_cluster_config`: one job per node, `site.workers` worker processes per job, the site's
`setup:` lines and `env:` in the prologue.

Settings that make Dask behave like every other perfscale engine (see `DASK_SETTINGS`):

- `allowed-failures: 0`: a task whose worker dies fails at once with `KilledWorker`, instead of being
  rescheduled silently up to three times. `run_plan` then records `node_lost` and reruns the task under the
  study's retry policy, so the retry budget is spent in one place.
- `worker-saturation: 1.0`: a worker holds no more tasks than it has threads, so a dying worker takes few
  innocent tasks with it.
- worker processes are not daemonic, so a task may start its own processes (joblib, data loaders).

GPUs (`task_gpus` > 0: the engine runs a stage whose tasks take that many GPUs, on a GPU site): each worker
declares the resource `{"GPU": task_gpus}` and each task asks for it (`resources=`), and a worker plugin
(`GpuPinPlugin`) pins every worker at its start, before any task, to its own `task_gpus` of the node's GPUs
(claimed from the node's pool, perfscale.gpus.WorkerPin, held for the worker's life): the vendor's variables
are set in the worker process, so a task that initialises CUDA in a reused worker sees the same GPUs as every
task before it. A node runs no more workers than it has such groups (`Engine.gpu_slots`).

Dask futures are copied into `concurrent.futures.Future`s: the runner waits on them with
`concurrent.futures.as_completed`.

Worker processes of a LocalCluster are started with multiprocessing's *spawn*, which imports the main module
of the parent again. The `perfscale` command and pytest guard their entry points with
`if __name__ == "__main__"`; a script of your own that calls `run_plan(..., "dask")` must do the same.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from perfscale.engines.base import Engine
from perfscale.errors import SpecError
from perfscale.extras import require
from perfscale.sched.base import Scheduler, dask_capable, scheduler_class
from perfscale.spec.common import export_lines
from perfscale.spec.site import Site

DASK_SETTINGS: dict[str, Any] = {
    "distributed.scheduler.allowed-failures": 0,
    "distributed.scheduler.worker-saturation": 1.0,
    "distributed.worker.daemon": False,
}
# the same worker setting for jobqueue workers, which read it from their environment
_WORKER_ENV = {"DASK_DISTRIBUTED__WORKER__DAEMON": "False"}


class WorkerLost(RuntimeError):
    """A Dask task ended without a result or an error (its future was cancelled or lost)."""


def _node_shape(site: Site) -> tuple[int, float]:
    if site.cores_per_node == "auto" or site.memory_gb_per_node == "auto":
        raise SpecError(
            f"site {site.name!r}: a Dask pilot on {site.scheduler} needs numbers for cores_per_node and "
            "memory_gb_per_node (not 'auto'): they size each job"
        )
    if site.workers > site.cores:
        raise SpecError(f"site {site.name!r}: max_workers {site.workers} exceeds cores_per_node {site.cores}")
    return site.cores, float(site.memory_gb_per_node)


def _prologue(site: Site) -> list[str]:
    env = {**site.env, **_WORKER_ENV}
    return [*site.setup, *export_lines(env)]


def dask_cluster_config(
    site: Site,
    log_directory: Path | None = None,
    partition: str | None = None,
    account: str | None = None,
    walltime_s: float | None = None,
    task_gpus: int = 0,
) -> dict[str, Any]:
    """Keyword arguments of the dask-jobqueue cluster class for `site` (see `jobqueue_cluster`).

    One job is one node: `cores` and `memory` are the node's, split into `site.workers` single-threaded
    worker processes. The queue is the given or default partition, the account the given or the site's
    first, the walltime the given or the partition's limit. The site's scheduler adds its own fields
    (`Scheduler.dask_cluster`). `task_gpus` > 0: as many worker processes as the node has groups of that
    many GPUs, each with the resource `GPU=task_gpus` (the engine pins them, see `gpu_pin_plugin`). Nothing is
    submitted here.
    """
    sched = _jobqueue_scheduler(site)
    cores, memory_gb = _node_shape(site)
    queue, part = site.partition(partition)
    walltime = walltime_s or (part.max_walltime if part else site.limits.max_walltime)
    site.check_request(1, walltime, partition=queue)
    account = account or (site.accounts[0] if site.accounts else None)
    processes = min(site.workers, site.gpus_per_node // task_gpus) if task_gpus else site.workers
    config: dict[str, Any] = {
        "cores": cores,
        "processes": processes,
        "memory": f"{memory_gb:g}GiB",
        "queue": queue,
        "job_name": f"perfscale-{site.name}",
        "job_script_prologue": _prologue(site),
        "log_directory": str(log_directory) if log_directory else None,
        # no dashboard; the scheduler's small HTTP server (health checks) on a free port, not on 8787
        "scheduler_options": {"dashboard": False, "dashboard_address": ":0"},
    }
    if task_gpus:
        config["worker_extra_args"] = ["--resources", f"GPU={task_gpus}"]
    return sched.dask_options(site, config, account, walltime)


def _jobqueue_scheduler(site: Site) -> Scheduler:
    sched = scheduler_class(site.scheduler)()
    if sched.dask_cluster_class is None:
        raise SpecError(
            f"site {site.name!r} has scheduler {site.scheduler!r}: dask-jobqueue needs one of "
            f"{', '.join(dask_capable())}"
        )
    return sched


def jobqueue_cluster(site: Site, **config: Any) -> Any:
    """The dask-jobqueue cluster class of the site's scheduler (`Scheduler.dask_cluster_class`) built with
    `config` (see dask_cluster_config); no job until scale()."""
    dask_jobqueue = require("engines", "dask_jobqueue", "the dask engine on a batch site")
    return getattr(dask_jobqueue, str(_jobqueue_scheduler(site).dask_cluster_class))(**config)


def _copy_outcome(done: Any, out: Future[Any]) -> None:
    try:
        if done.status == "finished":
            out.set_result(done.result())
        elif done.status == "error":
            out.set_exception(done.exception())
        else:
            out.set_exception(WorkerLost(f"dask task {done.key} ended as {done.status!r}"))
    except BaseException as exc:  # fetching the result itself failed (connection lost)
        if not out.done():
            out.set_exception(exc)


def gpu_pin_plugin(site: Site, count: int) -> Any:
    """A WorkerPlugin that pins each worker, at its start, to `count` GPUs of its node (see the module
    docstring); the plugin travels to the workers pickled, with the site."""
    from distributed import WorkerPlugin

    class GpuPinPlugin(WorkerPlugin):  # type: ignore[misc]
        name = "perfscale-gpu-pin"

        def __init__(self, site: Site, count: int):
            self.site, self.count = site, count

        def setup(self, worker: Any) -> None:
            from perfscale.execute import gpu_binding
            from perfscale.gpus import WorkerPin

            binding = gpu_binding(self.site)
            if binding is not None:
                self.pin = WorkerPin(binding, self.count)

        def teardown(self, worker: Any) -> None:
            pin = getattr(self, "pin", None)
            if pin is not None:
                pin.release()

    return GpuPinPlugin(site, count)


class DaskEngine(Engine):
    name = "dask"
    binds_gpus = True

    def __init__(self, site: Site, run_root: Path, workers: int | None = None, task_gpus: int = 0):
        super().__init__(site, run_root, workers, task_gpus)
        self._cluster: Any = None
        self._client: Any = None
        self._config: AbstractContextManager[Any] | None = None
        # distributed releases a task whose future is garbage collected: hold them until they finish
        self._inflight: set[Any] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        import dask
        from distributed import Client

        self._config = dask.config.set(DASK_SETTINGS)
        self._config.__enter__()  # kept for the engine's life: restarted workers read it too
        try:
            batch = scheduler_class(self.site.scheduler).batch
            self._cluster = self._job_cluster() if batch else self._local_cluster()
            self._client = Client(self._cluster)
            if self.task_gpus:
                self._client.register_plugin(gpu_pin_plugin(self.site, self.task_gpus))
        except BaseException:
            self.shutdown()
            raise

    def _local_cluster(self) -> Any:
        from distributed import LocalCluster

        memory = "auto"
        if self.site.memory_gb_per_node != "auto":
            memory = f"{float(self.site.memory_gb_per_node) / self.workers:.3f}GiB"
        return LocalCluster(
            n_workers=min(self.workers, self.gpu_slots) if self.task_gpus else self.workers,
            resources={"GPU": self.task_gpus} if self.task_gpus else None,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            scheduler_port=0,
            dashboard_address=None,
            # no dashboard; its HTTP server (health checks) on a free local port instead of 8787
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            memory_limit=memory,
            env=dict(self.site.env),
            silence_logs=logging.ERROR,
        )

    def _job_cluster(self) -> Any:
        jobs = math.ceil(self.workers / self.site.workers)
        if jobs > self.site.limits.max_nodes:
            raise SpecError(
                f"site {self.site.name!r}: {self.workers} workers need {jobs} one-node jobs, more than the "
                f"site's max_nodes {self.site.limits.max_nodes}"
            )
        config = dask_cluster_config(self.site, self.run_root / "dask", task_gpus=self.task_gpus)
        cluster = jobqueue_cluster(self.site, **config)
        cluster.scale(jobs=jobs)
        return cluster

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        assert self._client is not None, "engine not started"
        out: Future[Any] = Future()
        out.set_running_or_notify_cancel()
        # pure=False: a resubmitted task (same arguments) must run again, not reuse a cached result
        gpus = {"resources": {"GPU": self.task_gpus}} if self.task_gpus else {}
        fut = self._client.submit(fn, *args, pure=False, retries=0, **gpus)
        with self._lock:
            self._inflight.add(fut)

        def done(d: Any) -> None:
            _copy_outcome(d, out)
            with self._lock:
                self._inflight.discard(d)

        fut.add_done_callback(done)
        return out

    def shutdown(self) -> None:
        for closeable in (self._client, self._cluster):
            if closeable is not None:
                closeable.close()
        self._client = self._cluster = None
        with self._lock:
            self._inflight.clear()
        if self._config is not None:
            self._config.__exit__(None, None, None)
            self._config = None
