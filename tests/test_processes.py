"""Real processes, real signals: one run per folder, no hung engine, no orphans, a full disk named."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from perfscale.store import RunStore
from perfscale.store.lock import LOCK_NAME

ROOT = Path(__file__).parent.parent
SLOW = """\
name: slow
stages:
  square:
    kind: function
    params: {callable: "fns.py:slow_square", delay: DELAY}
    grid:
      product: {x: [XS]}
"""
WAIT_S = 120  # generous bound on a subprocess step: never a speed assertion, only "it ends"


def slow_study(write_study, n: int, delay: float) -> Path:
    return write_study(SLOW.replace("DELAY", str(delay)).replace("XS", ", ".join(map(str, range(n)))))


def perfscale(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "perfscale.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def run_cmd(study: Path, run: Path, *extra: str, engine: str = "local", workers: int = 2) -> list[str]:
    common = ["--run-dir", str(run), "--engine", engine, "--workers", str(workers), "--no-report", "--quiet"]
    return ["run", str(study), *common, *extra]


def wait_for(cond: Callable[[], bool], proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"perfscale ended (rc {proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {WAIT_S} s")
        time.sleep(0.02)


def shards(run: Path, stage: str = "square") -> list[Path]:
    folder = run / "stages" / stage
    return list(folder.glob("*.parquet")) if folder.exists() else []


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=WAIT_S)
    return proc.returncode, out, err


def assert_each_task_ran_once(run: Path) -> None:
    store = RunStore(run)
    attempts = store.attempts()
    keys = {t.key for t in store.plan.tasks}
    assert sorted(attempts.task_key) == sorted(keys), "every task has exactly one attempt"
    assert attempts.ok.all(), attempts[~attempts.ok].message.tolist()


# ---- one run per folder -----------------------------------------------------------------------------------
def test_a_second_run_on_a_folder_is_refused_naming_the_holder(write_study, tmp_path):
    study, run = slow_study(write_study, 12, 0.2), tmp_path / "run"
    first = perfscale(*run_cmd(study, run))
    wait_for(lambda: bool(shards(run)), first, "a first shard")
    second = perfscale(*run_cmd(study, run))
    rc2, _, err2 = finish(second)
    rc1, _, err1 = finish(first)
    assert rc1 == 0, err1
    assert rc2 == 2
    lines = err2.strip().splitlines()
    assert len(lines) == 1, err2
    assert f"in use by another perfscale run (pid {first.pid} on " in lines[0]
    assert "--wait-lock" in lines[0]
    assert_each_task_ran_once(run)


def test_wait_lock_queues_behind_the_holder(write_study, tmp_path):
    study, run = slow_study(write_study, 12, 0.2), tmp_path / "run"
    first = perfscale(*run_cmd(study, run))
    wait_for(lambda: bool(shards(run)), first, "a first shard")
    second = perfscale(*run_cmd(study, run, "--wait-lock"))
    rc1, _, err1 = finish(first)
    rc2, _, err2 = finish(second)
    assert (rc1, rc2) == (0, 0), err1 + err2
    assert f'"pid": {second.pid}' in (run / LOCK_NAME).read_text()  # the second took the lock after all
    assert_each_task_ran_once(run)  # and found nothing left to do


def test_task_run_works_beside_a_running_run(write_study, tmp_path):
    study, run = slow_study(write_study, 10, 0.3), tmp_path / "run"
    first = perfscale(*run_cmd(study, run, workers=1))
    wait_for(lambda: bool(shards(run)), first, "a first shard")
    last = len(RunStore(run).plan.tasks) - 1  # one worker: the run reaches this task last
    element = perfscale("task", "run", str(run / "plan.parquet"), str(last))
    rc_task, out, err = finish(element)
    assert rc_task == 0, err
    assert "done" in out
    rc1, _, err1 = finish(first)
    assert rc1 == 0, err1
    assert_each_task_ran_once(run)
    attempts = RunStore(run).attempts()
    assert attempts.loc[attempts["index"] == last, "pid"].tolist() == [element.pid]
