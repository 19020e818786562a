"""Bookkeeping that must not grow with the run: `perfscale task run` numbers its attempt from its own task's
bucket (store/task_attempts.py) and reads its task from one row group of the plan."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from perfscale.cli import main
from perfscale.errors import FailureKind
from perfscale.runner import prepare_run, run_plan
from perfscale.spec import load_site
from perfscale.store import RunStore
from perfscale.store.attempt import Attempt
from perfscale.store.task_attempts import bucket
from tests.studies import FAILING

ROOT = Path(__file__).parent.parent


def _failing_run(write_study, study_dir: Path) -> RunStore:
    return prepare_run(write_study(FAILING.replace("MODE", "raise")), load_site("local"), study_dir / "run")


def _attempts_of(store: RunStore, index: int) -> list[tuple[int, str | None]]:
    rows = store.task_attempts(store.task(index).key)
    return list(zip(rows["attempt"].tolist(), rows["failure_kind"].tolist(), strict=True))


def test_task_run_numbers_attempts_after_every_writer(write_study, study_dir):
    store = _failing_run(write_study, study_dir)
    bad = next(t for t in store.plan.tasks if t.params.get("x") == 2 and t.stage == "fail")
    assert main(["task", "run", str(store.plan_path), str(bad.index)]) == 1
    assert _attempts_of(store, bad.index) == [(1, "app_error"), (2, "app_error"), (3, "app_error")]
    # the scheduler's record (its bucket) and a `perfscale run` (a batch file) count for the next number
    store.append_task_attempts(
        [Attempt.recorded(bad.key, bad.stage, bad.index, 4, FailureKind.TIMEOUT, "scheduler job 1[0]")]
    )
    run_plan(store, "local", workers=1, stages=["fail"], progress=False)
    assert [n for n, _ in _attempts_of(store, bad.index)] == list(range(1, 8))
    assert main(["task", "run", str(store.plan_path), str(bad.index)]) == 1
    assert [n for n, _ in _attempts_of(store, bad.index)] == list(range(1, 11))
    # the whole table reads the buckets too, and agrees
    table = store.attempts()
    assert sorted(table.loc[table.task_key == bad.key, "attempt"]) == list(range(1, 11))


def _listed_under(root: Path, argv: list[str]) -> set[str]:
    """Folders listed under RUN/attempts by `perfscale task run` (Python's audit events)."""
    listed: set[str] = set()
    attempts = str(root / "attempts")

    def hook(event: str, args: tuple) -> None:
        if event in ("os.listdir", "os.scandir") and args and str(args[0]).startswith(attempts):
            listed.add(os.path.relpath(str(args[0]), root))

    sys.addaudithook(hook)  # hooks cannot be removed: this one only looks at paths under this run
    main(argv)
    return listed


def test_task_run_reads_only_its_own_bucket(write_study, study_dir):
    store = _failing_run(write_study, study_dir)
    task = store.task(0)
    # 3,000 attempt files of other tasks, in the buckets an array run would fill
    others = [
        Attempt.recorded(f"{i:03x}{'0' * 17}", "fail", 0, 1, FailureKind.TIMEOUT, "other")
        for i in range(3000)
    ]
    store.append_task_attempts(others)
    assert sum(len(files) for _, _, files in os.walk(store.root / "attempts")) == 3000
    listed = _listed_under(store.root, ["task", "run", str(store.plan_path), "0"])
    assert listed == {"attempts", os.path.relpath(bucket(store.root, task.key), store.root)}
    assert _attempts_of(store, 0)[-1][0] == 1

    if shutil.which("strace") is None:  # the audit events above show what Python lists; strace shows opens
        pytest.skip("strace is not installed: the files opened by `task run` are not traced here")
    trace = study_dir / "trace"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "perfscale.cli", "task", "run", str(store.plan_path), "1"]
    subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=openat", "-o", str(trace), *cmd], env=env, capture_output=True
    )
    opened = {
        line.split('"')[1]
        for line in trace.read_text().splitlines()
        if '"' in line and f"{store.root}/attempts" in line and "= -1" not in line
    }
    own = str(bucket(store.root, store.task(1).key))
    assert any(p.startswith(own) for p in opened), opened  # it wrote its record there
    assert all(p.startswith(own) or p == f"{store.root}/attempts" for p in opened), opened
