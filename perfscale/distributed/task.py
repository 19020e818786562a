"""A multi-rank task (resources.ranks > 1): the launching side and the rank side.

- `launch` (what `execute_task` does for such a task on every engine): runs the site's launcher line
  (`sched.mpi.task_launch_line`) with `perfscale task run PLAN INDEX --attempt N --outcome FILE` as the
  program, waits for it (at most the task's walltime, then the whole launch is killed), and owns the retries:
  an MPI job is retried as a whole, never rank by rank.
- `run_rank` (what `perfscale task run` does for such a task on each rank): opens the distributed session
  (which checks that MPI's world size is the task's ranks), runs one attempt of the stage, and rank 0 alone
  writes the shard, the artifacts and the attempt record (to FILE, or to the attempts table in array mode).

A rank lost mid-task (SIGKILL, a dead node): mpi4py's runner and mpirun end every other rank, and a rank
stuck in a collective fails at the collective timeout (a torch.distributed error, classified `node_lost`).
Rank 0 then leaves no record, and `launch` records the attempt as `node_lost`; the retry resumes from the
task's checkpoints (StageContext.checkpoints).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from perfscale.errors import FailureKind, TaskFailure
from perfscale.plan.placement import site_of
from perfscale.plan.planner import Task
from perfscale.sched.mpi import mpi_program, task_launch_line
from perfscale.store.atomic import atomic_write
from perfscale.store.attempt import Attempt, utcnow
from perfscale.store.run import RunStore

if TYPE_CHECKING:
    from perfscale.execute import Outcome  # execute calls this module: no import back

log = logging.getLogger(__name__)

OUTPUT_TAIL = 3000  # characters of the launcher's output kept in a failed attempt's message


def failed_attempt(
    task: Task,
    attempt: int,
    started: datetime,
    duration: float,
    kind: FailureKind,
    rc: int | None,
    message: str,
) -> Attempt:
    """The record of an attempt this process saw fail (its host and pid)."""
    return Attempt(
        task.key, task.stage, task.index, attempt, socket.gethostname(), os.getpid(), started, utcnow(),
        duration, False, rc, kind.value, message,
    )  # fmt: skip


def outcome_file(store: RunStore, task: Task, attempt: int) -> Path:
    return store.checkpoint_dir(task.stage, task.key) / f"mpi-attempt-{attempt}.json"


def write_records(path: Path, records: list[Attempt]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps([a.to_json() for a in records])))


def read_records(path: Path) -> list[Attempt]:
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [Attempt.from_json(r) for r in rows]


def _run_launcher(argv: list[str], log_path: Path, timeout_s: float) -> tuple[int | None, str]:
    """Run the launch in its own session; on timeout the whole session (launcher and ranks) is killed.
    Returns (exit status or None on timeout, the output's tail)."""
    log.info("launching %s", shlex.join(argv))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    return rc, log_path.read_text(errors="replace")[-OUTPUT_TAIL:]


def launch(store: RunStore, task: Task, outcome: Outcome, first_attempt: int) -> Outcome:
    """Run a multi-rank task through the site's launcher until it succeeds or its retry budget is spent."""
    plan = str((store.root / "plan.parquet").resolve())
    retries: Counter[FailureKind] = Counter()
    attempt = first_attempt
    while True:
        record_path = outcome_file(store, task, attempt)
        record_path.unlink(missing_ok=True)
        argv = [
            *task_launch_line(site_of(task.site, store.site, store.root), task),
            *mpi_program(plan, str(task.index), "--attempt", str(attempt), "--outcome", str(record_path)),
        ]
        started, t0 = utcnow(), time.perf_counter()
        try:
            rc, tail = _run_launcher(argv, record_path.with_suffix(".log"), task.walltime_s)
        except FileNotFoundError as exc:
            kind, rc, message = (
                FailureKind.BAD_INPUT,
                None,
                f"launcher {argv[0]!r} not found ({exc}); install MPI (openmpi-bin) or fix the site's "
                "launcher",
            )
            records = []
        else:
            records = read_records(record_path)
            if rc is None:
                kind, message = FailureKind.TIMEOUT, f"the MPI launch ran past {task.walltime_s:g} s\n{tail}"
            elif records:
                last = records[-1]
                kind = FailureKind(last.failure_kind) if last.failure_kind else FailureKind.APP_ERROR
                message = last.message or ""
            else:  # rank 0 ended without recording: killed with its job because a rank was lost
                kind = FailureKind.NODE_LOST
                message = f"rank 0 left no record (launcher exit {rc}): a rank was lost\n{tail}"
        if records:
            outcome.attempts.extend(records)
        else:
            duration = time.perf_counter() - t0
            outcome.attempts.append(failed_attempt(task, attempt, started, duration, kind, rc, message))
        if records and records[-1].ok and store.shard_done(task.stage, task.key):
            outcome.ok, outcome.failure_kind, outcome.message = True, None, None
            return outcome
        if retries[kind] < task.retry.get(kind.value, 0):
            retries[kind] += 1
            attempt += 1
            log.info("task %s: %s, retrying (attempt %d)", task.key, kind.value, attempt)
            continue
        outcome.failure_kind, outcome.message = kind.value, message
        return outcome


RunAttempts = Callable[[RunStore, Task, "Outcome", int, int], "Outcome"]


def run_rank(store: RunStore, task: Task, attempt: int, outcome: Outcome, run: RunAttempts) -> int:
    """One attempt of a multi-rank task on this rank, run by `run(store, task, outcome, attempt, rank)`
    (perfscale.execute's attempt loop) inside the distributed session; returns the rank. Only rank 0's
    outcome is recorded."""
    from perfscale.distributed.bootstrap import mpi_world, session

    rank = mpi_world()[0]
    started, t0 = utcnow(), time.perf_counter()
    try:
        with session(task.key, task.ranks, gpus=task.gpus_per_rank > 0) as s:
            # one attempt (the launching side retries the whole job); thread pools sized to the rank's cores
            one = dataclasses.replace(task, retry={}, cores=task.cores_per_rank)
            run(store, one, outcome, attempt, s.rank)
            return s.rank
    except TaskFailure as exc:  # the session could not start (wrong world size, no port): nothing ran
        outcome.failure_kind, outcome.message = exc.kind.value, str(exc)
        duration = time.perf_counter() - t0
        outcome.attempts.append(failed_attempt(task, attempt, started, duration, exc.kind, None, str(exc)))
        return rank
    finally:
        for scratch in Path(tempfile.gettempdir()).glob(f"perfscale-{task.key}-rank{rank}-*"):
            shutil.rmtree(scratch, ignore_errors=True)
