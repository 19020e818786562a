"""GPU binding: which GPUs a task sees, claimed from its node's pool and given back when the task ends.

`execute_task` runs each single-rank task inside `bound(binding, count)`, on the node where the task runs.
Where the engine assigns GPUs itself it says so in PERFSCALE_GPUS_ASSIGNED (`ASSIGNED_ENV`), and the task
takes those ids as they are: Parsl pins each worker with HTEX `available_accelerators`, Dask pins each
worker at its start (`pin_worker`, a claim from the pool below held for the worker's life) and Ray assigns
ids per task (`num_gpus`). Everywhere else (the local engine, array elements) the task claims its ids:

- the node's pool is the GPUs the allocation gave this process (the vendor's visible-devices variable, set
  by Slurm, LSF, PBS or Flux when a job asks for GPUs), else ids 0 to `gpus_per_node - 1` of the site;
- a task claims `count` ids by taking an exclusive `flock` on one file per id in a node-local folder shared
  by every worker of the allocation (`lock_dir`): no two tasks on a node hold the same id at once, and the
  kernel drops the locks when the task ends, even when its worker is SIGKILLed;
- the task sees exactly the claimed ids through the vendor's variables (`VISIBLE_ENV`); a task that asks for
  no GPU on a GPU node sees none (the variables are set empty), so it cannot take a GPU by accident.

The runner admits at most the engine's GPUs' worth of GPU tasks at once (`GpuAdmission`), so a claim on one
node never waits; on a multi-node pilot whose engine places tasks without looking at GPUs, a claim may wait
for a task on its node to end (logged). CUDA and ROCm read the variables once per process, so engines run a
GPU site's tasks in fresh worker processes where they can (the local engine does).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from perfscale.environ import environ

log = logging.getLogger(__name__)

# what a task of each vendor's GPUs reads to know its devices
VISIBLE_ENV: dict[str, tuple[str, ...]] = {
    "nvidia": ("CUDA_VISIBLE_DEVICES",),
    "amd": ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"),
}
ASSIGNED_ENV = "PERFSCALE_GPUS_ASSIGNED"  # ids the engine gave this worker or task (see bound)
LOCKS_ENV = "PERFSCALE_GPU_LOCKS"  # the folder of the id locks (default: see lock_dir)
WAIT_S = 0.2  # first pause between claims when the node's ids are all held (doubles up to 2 s)


@dataclass(frozen=True)
class GpuBinding:
    """What a node's GPUs are: the vendor (its variables), how many a node has, and the allocation the
    process runs in (its job id, or None outside one), which scopes the pool."""

    vendor: str
    per_node: int
    allocation: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return VISIBLE_ENV[self.vendor]

    def node_ids(self) -> list[str]:
        """The ids this node's tasks share: the allocation's (inherited variable), else the site's count."""
        for name in self.names:
            given = os.environ.get(name)
            if given:
                return [i.strip() for i in given.split(",") if i.strip()]
        return [str(i) for i in range(self.per_node)]

    def lock_dir(self) -> Path:
        """Node-local, one per allocation (two jobs on a node may each number their GPUs from 0)."""
        base = os.environ.get(LOCKS_ENV)
        if base:
            return Path(base)
        scope = "".join(c if c.isalnum() or c in "._-" else "_" for c in self.allocation or "node")
        return Path("/tmp") / f"perfscale-gpus-{os.getuid()}" / scope


class GpuShortage(RuntimeError):
    """A task asks for more GPUs than its node's pool has at all."""


def _try_claim(files: list[Path], count: int, stack: ExitStack) -> list[int]:
    held: list[int] = []
    for i, path in enumerate(files):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        stack.callback(os.close, fd)  # closing drops the lock
        held.append(i)
        if len(held) == count:
            break
    return held


@contextmanager
def claim(binding: GpuBinding, count: int) -> Iterator[list[str]]:
    """Hold `count` of the node's GPU ids until the block ends (waits while they are all held)."""
    ids = binding.node_ids()
    if count > len(ids):
        raise GpuShortage(f"the task asks for {count} GPUs; this node's pool has {len(ids)} ({ids})")
    if count == 0:
        yield []
        return
    folder = binding.lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"gpu-{i}.lock" for i in ids]
    pause, waited = WAIT_S, False
    while True:
        with ExitStack() as stack:
            held = _try_claim(files, count, stack)
            if len(held) == count:
                if waited:
                    log.info("GPUs %s claimed after waiting", [ids[i] for i in held])
                yield [ids[i] for i in held]
                return
        if not waited:
            log.info("waiting for %d of GPUs %s (held by other tasks on this node, %s)", count, ids, folder)
            waited = True
        time.sleep(pause)
        pause = min(2 * pause, 2.0)


@contextmanager
def visible(binding: GpuBinding, ids: list[str]) -> Iterator[None]:
    """The vendor's variables name exactly `ids` (empty: no GPU) inside the block; restored after."""
    with environ({name: ",".join(ids) for name in binding.names}):
        yield


def assigned() -> list[str] | None:
    """The GPU ids the engine assigned to this worker or task (None: it assigned none, the task claims)."""
    given = os.environ.get(ASSIGNED_ENV)
    return None if given is None else [i.strip() for i in given.split(",") if i.strip()]


@contextmanager
def engine_ids(binding: GpuBinding, count: int, ids: list[str]) -> Iterator[list[str]]:
    """The engine's assignment, taken as it is: the engine keeps it apart from its other workers' (no claim:
    a Dask worker holds the locks of its ids itself, and a second flock on them would wait for ever)."""
    if count > len(ids):
        raise GpuShortage(
            f"the task asks for {count} GPUs; the engine assigned its worker {len(ids)} ({ids})"
        )
    yield ids[:count]


@contextmanager
def bound(binding: GpuBinding | None, count: int) -> Iterator[list[str]]:
    """Claim `count` GPUs (or take the engine's, see `assigned`) and make them the only ones visible (nothing
    to do on a site without GPUs)."""
    if binding is None:
        yield []
        return
    given = assigned()
    ids_of = claim(binding, count) if given is None else engine_ids(binding, count, given)
    with ids_of as ids, visible(binding, ids):
        if ids:
            how = "claimed" if given is None else "assigned by the engine"
            log.info("task bound to GPUs %s (%s, %s)", ids, ",".join(binding.names), how)
        yield ids


class WorkerPin:
    """A worker's GPUs for its life (Dask: `pin_worker` at worker start): `count` ids claimed from the node's
    pool, visible to every task of the worker and named in ASSIGNED_ENV. The locks go with the process."""

    def __init__(self, binding: GpuBinding, count: int):
        self._claim = claim(binding, count)
        self.ids = self._claim.__enter__()
        os.environ.update({name: ",".join(self.ids) for name in binding.names})
        os.environ[ASSIGNED_ENV] = ",".join(self.ids)
        log.info("worker %d pinned to GPUs %s (%s)", os.getpid(), self.ids, ",".join(binding.names))

    def release(self) -> None:
        os.environ.pop(ASSIGNED_ENV, None)
        self._claim.__exit__(None, None, None)


def worker_groups(per_node: int, count: int) -> list[str]:
    """A node's GPU ids cut into one group of `count` per pinned worker (Parsl's available_accelerators):
    4 GPUs in ones: ["0", "1", "2", "3"]; in twos: ["0,1", "2,3"]."""
    ids = [str(i) for i in range(per_node)]
    return [",".join(ids[i : i + count]) for i in range(0, per_node - count + 1, count)]


class _Task(Protocol):
    index: int
    gpus: int


T = TypeVar("T", bound=_Task)


class GpuAdmission(Generic[T]):
    """The runner's queue of tasks to submit, with at most `capacity` GPUs' worth of tasks in flight.

    Two queues in plan order: tasks without GPUs and tasks with. `next_source` says which queue's head goes
    next (the runner takes a bundle from its front: GPU tasks are never bundled, see perfscale.bundles):

    - GPU tasks start in plan order: none overtakes an earlier one that waits for GPUs, so a 2-GPU task is
      never starved by 1-GPU ones;
    - tasks that need no GPU are never held back by a GPU task that waits, and otherwise go in plan order
      with them;
    - a task asking for more than `capacity` is let through alone (its claim then fails with a named error
      instead of waiting forever).
    """

    def __init__(self, tasks: Iterable[T], capacity: int):
        self.capacity, self.used = capacity, 0
        self.cpu: deque[T] = deque()
        self.gpu: deque[T] = deque()
        for t in tasks:
            (self.gpu if t.gpus else self.cpu).append(t)

    def __bool__(self) -> bool:
        return bool(self.cpu or self.gpu)

    def _fits(self, count: int) -> bool:
        return self.used + count <= self.capacity or (self.used == 0 and count > self.capacity)

    def next_source(self) -> deque[T] | None:
        """The queue whose head may start now (None: only GPU tasks are left and their GPUs are in use)."""
        gpu = self.gpu[0] if self.gpu and self._fits(self.gpu[0].gpus) else None
        cpu = self.cpu[0] if self.cpu else None
        if gpu is not None and (cpu is None or gpu.index < cpu.index):
            return self.gpu
        return self.cpu if cpu is not None else None

    def started(self, tasks: Iterable[T]) -> None:
        """`tasks` went to the engine as one call (they run one after another: their largest need counts)."""
        self.used += max((t.gpus for t in tasks), default=0)

    def ended(self, tasks: Iterable[T]) -> None:
        self.used -= max((t.gpus for t in tasks), default=0)
