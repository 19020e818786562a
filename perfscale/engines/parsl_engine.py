"""The Parsl engine (pilot mode): a HighThroughputExecutor whose provider comes from the site file.

One site file serves both modes: array mode (`perfscale submit`) renders job arrays from it, and this engine
builds a pilot from the same fields:

| scheduler | provider      | launcher      | from the site                                            |
|-----------|---------------|---------------|----------------------------------------------------------|
| none      | LocalProvider | (none)        | setup, env                                               |
| slurm     | SlurmProvider | SrunLauncher  | default partition, first account, cores_per_node, setup  |
| lsf       | LSFProvider   | JsrunLauncher | default queue, first account (as `-P`), setup            |

Each provider is built by the site's scheduler (`Scheduler.parsl_provider` in perfscale/sched/<name>.py)
from the settings every provider takes; this module never branches on a scheduler's name.

A pilot block is one node by default and asks for the walltime its tasks need (see `pilot_walltime`), capped
at the partition's limit. Workers need the interpreter's `bin/` on PATH (HTEX starts
`process_worker_pool.py` by name): it is exported in the engine's environment and in every block's
worker_init, which assumes, as array mode does, that the login and compute nodes share the file system.
"""

from __future__ import annotations

import os
import pickle
import shlex
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from perfscale.engines.base import Engine
from perfscale.engines.guard import HeartbeatMonitor, cap_logs
from perfscale.gpus import ASSIGNED_ENV, worker_groups
from perfscale.plan.planner import Task
from perfscale.sched.base import scheduler_class
from perfscale.sched.lsf import JSRUN_OVERRIDES  # noqa: F401  (kept importable from here)
from perfscale.spec.common import export_lines, format_hms
from perfscale.spec.site import Site

PILOT_WALLTIME_FLOOR_S = 600.0  # a pilot shorter than this spends most of its life starting up


def worker_init(site: Site) -> str:
    """Shell lines run before the worker pool starts: the site's setup, its env, the interpreter on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    lines = [*site.setup]
    lines += export_lines(site.env)
    lines.append(f"export PATH={shlex.quote(bin_dir)}:$PATH")
    return "\n".join(lines)


def pilot_walltime(tasks: Sequence[Task], slots: int, limit_s: float) -> float:
    """Walltime of one pilot block: the array packing rule spread over the block's worker slots,
    `sum(expected_runtime) / slots + max(walltime - expected_runtime)`, within [10 min, limit]."""
    if not tasks:
        return limit_s
    need = sum(t.expected_runtime_s for t in tasks) / max(1, slots)
    need += max(t.walltime_s - t.expected_runtime_s for t in tasks)
    return min(limit_s, max(PILOT_WALLTIME_FLOOR_S, need))


def _limit(site: Site, partition: str | None) -> tuple[str | None, float]:
    pname, part = site.partition(partition)
    limit = min(site.limits.max_walltime, part.max_walltime) if part else site.limits.max_walltime
    return pname, limit


def make_provider(
    site: Site,
    walltime_s: float | None = None,
    partition: str | None = None,
    account: str | None = None,
    nodes_per_block: int = 1,
    max_blocks: int = 1,
) -> Any:
    """The Parsl execution provider for `site` (see the module docstring for the field mapping)."""
    sched = scheduler_class(site.scheduler)()
    if not sched.batch:
        # a local block is detached from this process (LocalProvider): a watcher ends it with the run
        watch = f"{shlex.quote(sys.executable)} -m perfscale.orphans watch {os.getpid()} &"
        return sched.parsl_provider(site, {"worker_init": f"{worker_init(site)}\n{watch}"}, None, None)
    site.check_request(nodes_per_block, walltime_s or 0, 0, partition)
    pname, limit = _limit(site, partition)
    account = account or (site.accounts[0] if site.accounts else None)
    common: dict[str, Any] = {
        "nodes_per_block": nodes_per_block,
        "init_blocks": 1,
        "min_blocks": 0,
        "max_blocks": max_blocks,
        "walltime": format_hms(walltime_s or limit),
        "worker_init": worker_init(site),
    }
    return sched.parsl_provider(site, common, pname, account)


def parsl_config(
    site: Site,
    run_dir: Path,
    workers: int,
    walltime_s: float | None = None,
    partition: str | None = None,
    account: str | None = None,
    nodes_per_block: int = 1,
    task_gpus: int = 0,
) -> Any:
    """A Parsl Config for `site`: one HTEX, `workers` workers per node, logs under `run_dir`.

    `task_gpus` > 0 (a stage whose tasks take that many GPUs, on a GPU site): HTEX `available_accelerators`
    pins each worker for its life to its own group of `task_gpus` of the node's GPUs (`worker_groups`), and
    a node runs no more workers than it has groups.

    On a scheduler site the interchange listens on every interface and workers probe the submit host's
    addresses (HTEX's default), unless PERFSCALE_PARSL_ADDRESS names the one compute nodes can reach.
    Blocks are scaled by Parsl's `simple` strategy, so a block that ends (walltime) is replaced while
    tasks remain.
    """
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor

    local = not scheduler_class(site.scheduler).batch
    provider = make_provider(site, walltime_s, partition, account, nodes_per_block)
    executor = HighThroughputExecutor(
        label="perfscale",
        address="127.0.0.1" if local else os.environ.get("PERFSCALE_PARSL_ADDRESS"),
        max_workers_per_node=workers,
        cores_per_worker=1,
        available_accelerators=worker_groups(site.gpus_per_node, task_gpus) if task_gpus else (),
        provider=provider,
        # the interchange dies with this process, even by SIGKILL (see perfscale.orphans)
        interchange_launch_cmd=[
            sys.executable,
            "-m",
            "perfscale.orphans",
            "exec",
            str(os.getpid()),
            "interchange.py",
        ],
    )
    return Config(
        executors=[executor],
        run_dir=str(run_dir),
        strategy="none" if local else "simple",
        usage_tracking=0,
        initialize_logging=True,
    )


LOG_CAP_BYTES = 64 << 20  # a Parsl log past this size is truncated (a broken pool logged 1.87 GB in 5 min)
LOG_KEEP_BYTES = 4 << 20  # ... keeping its last bytes in <name>.log.1
MAINTAIN_S = 5.0  # how often the engine checks its log sizes


def pack(obj: Any) -> bytes:
    """`obj` as pickled bytes, for Parsl to carry. Parsl serializes a call's arguments and result with dill,
    whose pure-Python pickler took 0.3 ms for one task's Outcome (C pickle: 0.01 ms), and a pickled
    `bytes` costs it next to nothing. What C pickle refuses (a lambda, a closure) is pickled by dill, as
    Parsl would; `pickle.loads` reads both."""
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError):
        import dill

        return dill.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[no-any-return]


def run_packed(packed: bytes) -> bytes:
    """What a Parsl worker runs: `packed` (see `pack`) holds the heartbeat folder and period, whether the
    worker is pinned to GPUs, and the call; it returns the call's result, packed.

    The worker beats for the watchdog and dies with its pool (no orphans). A worker `pinned` by
    available_accelerators hands its GPUs to the task as the engine's (perfscale.gpus.bound): HTEX sets
    ROCR_VISIBLE_DEVICES (and CUDA_VISIBLE_DEVICES) to the worker's accelerator at its start."""
    from perfscale.engines.guard import start_heartbeat
    from perfscale.orphans import die_with_parent

    heartbeat_dir, beat_s, pinned, fn, args = pickle.loads(packed)
    die_with_parent()
    start_heartbeat(heartbeat_dir, beat_s)
    if pinned and ASSIGNED_ENV not in os.environ:
        os.environ[ASSIGNED_ENV] = os.environ["ROCR_VISIBLE_DEVICES"]
    return pack(fn(*args))


# the executor's workers call run_packed on the payload itself (HighThroughputExecutor.submit_payload,
# Parsl >= 2025.10.6), not Parsl's execute_task (which would unpickle it with dill and run it through exec)
RUN_PACKED = {"task_executor": {"f": f"{__name__}.run_packed"}}


def _unpacked(packed: Future[bytes]) -> Future[Any]:
    """A future of the result that `packed` (the executor's future of `run_packed`) carries; the same
    exception if the call raised or its worker was lost."""
    result: Future[Any] = Future()

    def done(f: Future[bytes]) -> None:
        try:
            result.set_result(pickle.loads(f.result()))
        except BaseException as exc:  # the call's own exception, or Parsl's for a lost worker
            result.set_exception(exc)

    packed.add_done_callback(done)
    return result


def interpreter_on_path() -> None:
    """HTEX starts `process_worker_pool.py` and `interchange.py` by name: put the interpreter's bin folder on
    this process's PATH."""
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


class ParslEngine(Engine):
    name = "parsl"
    binds_gpus = True

    def _plan_tasks(self) -> list[Task]:
        """The run's tasks, to size a pilot's walltime (none when the engine runs outside a run folder)."""
        if not (self.run_root / "plan.parquet").exists():
            return []
        from perfscale.store import RunStore

        return list(RunStore(self.run_root).plan.tasks)

    def config(self) -> Any:
        walltime = None
        if scheduler_class(self.site.scheduler).batch:
            _, limit = _limit(self.site, None)
            walltime = pilot_walltime(self._plan_tasks(), self.workers, limit)
        return parsl_config(
            self.site, self.run_root / "parsl", self.workers, walltime, task_gpus=self.task_gpus
        )

    @property
    def log_dir(self) -> Path:
        return self.run_root / "parsl"

    def start(self) -> None:
        import parsl

        interpreter_on_path()
        self._heartbeats = self.log_dir / "alive"
        self._beat_s = max(0.5, min(30.0, self.site.watchdog_s / 5))
        self._alive = HeartbeatMonitor(self._heartbeats)
        self._dfk = parsl.load(self.config())
        self._executor = self._dfk.executors["perfscale"]
        self._stop = threading.Event()
        self._maintainer = threading.Thread(target=self._maintain, name="perfscale-parsl-logs", daemon=True)
        self._maintainer.start()

    def _maintain(self) -> None:
        while not self._stop.wait(MAINTAIN_S):
            cap_logs(self.log_dir, LOG_CAP_BYTES, LOG_KEEP_BYTES)

    def last_alive(self) -> float | None:
        """When a worker's heartbeat last changed, or a block last waited in the scheduler's queue (waiting
        is no hang). None until a worker of this engine has run a task: a pool still starting is no hang."""
        from parsl.jobs.states import JobState

        blocks = self._executor.status_facade.values()
        if any(b.state in (JobState.PENDING, JobState.HELD) for b in blocks):
            self._alive.last_alive = time.monotonic()
        return self._alive.poll()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """The call goes to the executor itself, not through a Parsl app: perfscale keeps its own retries,
        dependencies and records, so the DataFlowKernel's per-task work (task records, a launch thread,
        its log lines) is cost without use. The DataFlowKernel still owns the executor: it starts, scales
        and stops it."""
        packed = pack((str(self._heartbeats), self._beat_s, bool(self.task_gpus), fn, args))
        return _unpacked(self._executor.submit_payload(RUN_PACKED, packed))

    def shutdown(self) -> None:
        import parsl

        self._stop.set()
        self._maintainer.join()
        self._dfk.cleanup()
        parsl.clear()
        cap_logs(self.log_dir, LOG_CAP_BYTES, LOG_KEEP_BYTES)
