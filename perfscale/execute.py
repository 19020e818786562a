"""Running one task: validate, call its stage, write its shard, retry per failure kind.

`execute_task` is the single entry point every engine and `perfscale task run` call. It never raises for a
task failure; it returns an Outcome whose attempt records the caller appends to the attempts table (callers
batch them: one file per batch, not per task, keeps dispatch overhead low).

Scheduler signals. Inside a job-array element (the templates in launchers/ export PERFSCALE_ELEMENT) the
task turns SIGUSR1 and SIGTERM into an `Interrupted` exception, so the attempt is recorded with a failure
kind instead of vanishing with the process:

- SIGUSR1 is the walltime warning (`#SBATCH --signal=B:USR1@120`, `#BSUB -wa USR1`, forwarded by the batch
  shell): `timeout`.
- SIGTERM at the element's deadline (PERFSCALE_ELEMENT_DEADLINE, within DEADLINE_SLACK_S) is the walltime
  kill itself: `timeout`; earlier it is scancel/bkill or a preemption, which a task cannot tell apart:
  `cancelled`. The scheduler's final state (PREEMPTED, TIMEOUT...) is added by
  `perfscale.sched.submit.record_scheduler_failures` when it names another kind.

An interrupted task is never retried in-process (its time is up); `perfscale.sched.requeue` decides from the
retry budget of that kind whether the element is requeued. Only the first signal counts: later ones (the
batch shell forwards what the process also received) are ignored.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from perfscale.errors import FailureKind, TaskFailure
from perfscale.gpus import GpuBinding, GpuShortage, bound
from perfscale.plan.placement import site_of
from perfscale.plan.planner import Task
from perfscale.sched.base import scheduler_class
from perfscale.spec.site import Site
from perfscale.stages import StageContext, get_stage_kind
from perfscale.store.attempt import Attempt, utcnow
from perfscale.store.run import Provenance, RunStore
from perfscale.store.space import is_disk_full

_HOST = socket.gethostname()
log = logging.getLogger(__name__)

ELEMENT_ENV = "PERFSCALE_ELEMENT"  # e.g. "slurm job 123[4]": set by the array templates
DEADLINE_ENV = "PERFSCALE_ELEMENT_DEADLINE"  # epoch seconds at which the element's walltime ends
DEADLINE_SLACK_S = 15.0  # a SIGTERM this close to the deadline is the walltime kill


class Interrupted(BaseException):
    """A scheduler signal stopped the task (BaseException: a task's `except Exception` cannot swallow it)."""

    def __init__(self, signum: int, kind: FailureKind, why: str, element: str):
        self.signum, self.kind = signum, kind
        super().__init__(f"{signal.Signals(signum).name} ({why}) in {element}")


def _signal_kind(signum: int) -> tuple[FailureKind, str]:
    if signum == signal.SIGUSR1:
        return FailureKind.TIMEOUT, "walltime warning"
    deadline = float(os.environ.get(DEADLINE_ENV) or "inf")
    if time.time() >= deadline - DEADLINE_SLACK_S:
        return FailureKind.TIMEOUT, "walltime reached"
    return FailureKind.CANCELLED, "cancelled or preempted before the walltime"


@contextmanager
def scheduler_signals() -> Iterator[None]:
    """Inside an array element, SIGUSR1/SIGTERM raise Interrupted (once) in the main thread."""
    element = os.environ.get(ELEMENT_ENV)
    if not element or threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, _frame: object) -> None:
        nonlocal fired
        if fired:
            return
        fired = True  # the handler stays installed: a second signal must not kill the recording
        kind, why = _signal_kind(signum)
        raise Interrupted(signum, kind, why, element)

    watched = (signal.SIGUSR1, signal.SIGTERM)
    previous = {s: signal.signal(s, handler) for s in watched}
    try:
        yield
    finally:
        if not fired:
            for s, h in previous.items():
                signal.signal(s, h)


@dataclass
class Outcome:
    index: int
    key: str
    stage: str
    ok: bool
    skipped: bool = False  # the shard already existed
    retrying: bool = False  # the worker was lost and the task has been resubmitted
    disk_full: bool = False  # an attempt failed because the disk is full: the run must stop
    failure_kind: str | None = None
    message: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    wall_s: float | None = None  # the task's wall time in its worker, all attempts (set by execute_bundle)


def classify(exc: BaseException) -> tuple[FailureKind, int | None]:
    """Failure kind and exit status of an exception raised by a task."""
    if isinstance(exc, TaskFailure):
        return exc.kind, exc.exit_status
    if isinstance(exc, Interrupted):
        return exc.kind, 128 + exc.signum
    if isinstance(exc, ValidationError):
        return FailureKind.BAD_INPUT, None
    if _lost_peer(exc):
        return FailureKind.NODE_LOST, None
    if isinstance(exc, MemoryError):
        return FailureKind.OOM, None
    if isinstance(exc, TimeoutError):
        return FailureKind.TIMEOUT, None
    if isinstance(exc, KeyboardInterrupt):
        return FailureKind.CANCELLED, None
    return FailureKind.APP_ERROR, None


def _lost_peer(exc: BaseException) -> bool:
    """A torch.distributed collective failed: a peer rank died or stopped answering. torch raises DistError
    for some; gloo's transport errors ("Read error ... Connection reset by peer") are plain RuntimeErrors."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is None or not isinstance(exc, RuntimeError):
        return False
    return isinstance(exc, getattr(dist, "DistError", ())) or any(m in str(exc) for m in _LOST_PEER)


_LOST_PEER = ("/gloo/transport/", "NCCL communicator was aborted", "Connection closed by peer")


def _message(exc: BaseException) -> str:
    if isinstance(exc, TaskFailure | Interrupted):
        return str(exc)
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-3)
    return f"{type(exc).__name__}: {exc}\n{''.join(tb)}"[-4000:]


@lru_cache(maxsize=8)
def _open_store(root: str, plan_mtime_ns: int) -> RunStore:
    store = RunStore(root)
    _ = store.site  # parse once per process and plan version; tasks are read one row group at a time
    return store


def open_store(root: str | Path) -> RunStore:
    root = str(root)
    return _open_store(root, os.stat(Path(root) / "plan.parquet").st_mtime_ns)


def _attempt_record(
    task: Task,
    attempt: int,
    started: datetime,
    duration: float,
    ok: bool,
    kind: FailureKind | None = None,
    exit_status: int | None = None,
    message: str | None = None,
) -> Attempt:
    """The task's own record of one attempt (this host and process)."""
    return Attempt(
        task_key=task.key,
        stage=task.stage,
        index=task.index,
        attempt=attempt,
        host=_HOST,
        pid=os.getpid(),
        started_at=started,
        ended_at=utcnow(),
        duration_s=duration,
        ok=ok,
        exit_status=0 if ok else exit_status,
        failure_kind=kind.value if kind else None,
        message=message,
    )


def execute_task(root: str | Path, index: int, first_attempt: int = 1) -> Outcome:
    """Run task `index` of the run at `root` until it succeeds or its retry budget for a kind is spent."""
    store = open_store(root)
    task = store.task(index)
    outcome = Outcome(index=index, key=task.key, stage=task.stage, ok=False)
    if store.shard_done(task.stage, task.key):  # a bad shard is quarantined here and the task runs again
        outcome.ok = outcome.skipped = True
        return outcome
    if task.ranks > 1:  # an MPI job: every rank runs `perfscale task run`, started by the site's launcher
        from perfscale.distributed.task import launch

        return launch(store, task, outcome, first_attempt)
    try:
        with scheduler_signals(), bound(gpu_binding(site_of(task.site, store.site, store.root)), task.gpus):
            return _attempts(store, task, outcome, first_attempt)
    except GpuShortage as exc:
        outcome.failure_kind, outcome.message = FailureKind.BAD_INPUT.value, f"GpuShortage: {exc}"
        attempt_no = first_attempt + len(outcome.attempts)
        outcome.attempts.append(
            _attempt_record(
                task, attempt_no, utcnow(), 0.0, False, FailureKind.BAD_INPUT, None, outcome.message
            )
        )
        return outcome
    except Interrupted as exc:  # the signal came between attempts or while one was being recorded
        if not outcome.ok and outcome.failure_kind is None:
            now = utcnow()
            attempt = first_attempt + len(outcome.attempts)
            outcome.failure_kind, outcome.message = exc.kind.value, _message(exc)
            outcome.attempts.append(
                _attempt_record(task, attempt, now, 0.0, False, exc.kind, 128 + exc.signum, outcome.message)
            )
        return outcome


def gpu_binding(site: Site) -> GpuBinding | None:
    """How tasks on the site's nodes are bound to GPUs (None: the site has none). The allocation is the job id
    the site's scheduler sets in a job."""
    if not site.gpus_per_node or site.gpu_vendor is None:
        return None
    job_env = scheduler_class(site.scheduler).job_id_env
    return GpuBinding(site.gpu_vendor, site.gpus_per_node, os.environ.get(job_env) if job_env else None)


def execute_bundle(root: str | Path, items: list[tuple[int, int]]) -> list[Outcome]:
    """Tasks `[(index, first_attempt), ...]` one after another in this worker (one engine call: see
    perfscale/bundles.py), each exactly as `execute_task` runs it alone. Stops after a task that found the
    disk full: the ones after it would fail the same way (the runner records them as cancelled)."""
    outcomes = []
    for index, first_attempt in items:
        t0 = time.perf_counter()
        outcome = execute_task(root, index, first_attempt)
        outcome.wall_s = time.perf_counter() - t0
        outcomes.append(outcome)
        if outcome.disk_full:
            break
    return outcomes


def execute_rank(root: str | Path, index: int, attempt: int) -> tuple[int, Outcome]:
    """One attempt of multi-rank task `index` on this rank of its MPI job (`perfscale task run` inside the
    launch): (rank, outcome); rank 0 alone writes (perfscale/distributed/task.py)."""
    from perfscale.distributed.task import run_rank

    store = open_store(root)
    task = store.task(index)
    outcome = Outcome(index=index, key=task.key, stage=task.stage, ok=False)
    return run_rank(store, task, attempt, outcome, _attempts), outcome


def _attempts(store: RunStore, task: Task, outcome: Outcome, first_attempt: int, rank: int = 0) -> Outcome:
    """Attempts of `task` until one succeeds or the retry budget is spent. `rank` > 0 (a rank of a multi-rank
    task other than 0) runs the stage but writes no shard."""
    kind = get_stage_kind(task.kind)
    retries: Counter[FailureKind] = Counter()
    attempt = first_attempt
    while True:
        started, t0 = utcnow(), time.perf_counter()
        try:
            params = kind.params.model_validate(task.params)
            with _thread_limit(task.cores):
                result = kind.run(StageContext(store, task, attempt, rank), params)
            duration = time.perf_counter() - t0
            prov = Provenance(
                task.key, site_of(task.site, store.site, store.root).name, _HOST, started, duration, attempt
            )
            record = _attempt_record(task, attempt, started, duration, True)
            if rank == 0:
                store.write_shard(task.stage, task.key, result, prov, attempt=record)  # the footer keeps it
        except BaseException as exc:  # a task failure is data: record it, never crash the worker
            failure, exit_status = classify(exc)
            msg = _message(exc)
            outcome.attempts.append(
                _attempt_record(
                    task, attempt, started, time.perf_counter() - t0, False, failure, exit_status, msg
                )
            )
            if isinstance(exc, Interrupted):  # the element is ending: record, never retry here
                outcome.failure_kind, outcome.message = failure.value, msg
                return outcome
            if is_disk_full(exc):  # retrying cannot help, and every other task would fail the same way
                outcome.failure_kind, outcome.message, outcome.disk_full = failure.value, msg, True
                return outcome
            if failure is FailureKind.CANCELLED:
                raise
            budget = task.retry.get(failure.value, 0)
            if retries[failure] < budget:
                retries[failure] += 1
                log.info(
                    "task %d (%s %s) attempt %d: %s; retrying (%s retry %d of %d)",
                    task.index,
                    task.stage,
                    task.key,
                    attempt,
                    failure.value,
                    failure.value,
                    retries[failure],
                    budget,
                )
                attempt += 1
                continue
            log.info(
                "task %d (%s %s) attempt %d: %s; no retry left",
                task.index,
                task.stage,
                task.key,
                attempt,
                failure.value,
            )
            outcome.failure_kind, outcome.message = failure.value, msg
            return outcome
        outcome.attempts.append(record)
        outcome.ok = True
        return outcome


_POOLS: dict[str, Any] = {}


@contextmanager
def _thread_limit(cores: int) -> Iterator[None]:
    """BLAS and OpenMP pools sized to the task's cores: two workers on two cores must not each spin two
    OpenBLAS threads (one SVD measured 2 s oversubscribed vs 0.03 s on one thread).

    Scanning the loaded libraries costs ~6 ms, so the scan is kept and redone only when modules were
    imported since (a task may load torch or xgboost); applying a kept scan costs ~0.01 ms.
    """
    import sys

    from threadpoolctl import ThreadpoolController

    if _POOLS.get("modules") != len(sys.modules):
        _POOLS["controller"], _POOLS["modules"] = ThreadpoolController(), len(sys.modules)
    with _POOLS["controller"].limit(limits=max(1, cores)):
        yield


def noop(*args: Any) -> None:
    """A task that does nothing: the baseline of the dispatch benchmark."""
    return None
