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
from perfscale.engines.local import LocalEngine
from perfscale.errors import FailureKind
from perfscale.execute import execute_bundle
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


# ---- bundled dispatch ------------------------------------------------------------------------------------
class CountingEngine(LocalEngine):
    """The local engine, keeping the task indices of every call (a real engine; only the calls are noted)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[list[int]] = []

    def submit(self, fn, *args):
        if fn is execute_bundle:
            self.calls.append([index for index, _ in args[1]])
        return super().submit(fn, *args)


def _bundled_study(write_study, callable_: str, params: str, n: int = 16) -> Path:
    return write_study(f"""\
        name: bundles
        retry: {{app_error: 2}}
        resources: {{expected_runtime: 0.001}}
        stages:
          s:
            kind: function
            params: {{callable: "fns.py:{callable_}", {params}}}
            grid:
              product: {{x: {list(range(n))}}}
        """)


def _run_counted(store: RunStore, bundle: bool = True) -> tuple[dict, list[list[int]]]:
    with CountingEngine(store.site, store.root, 1) as engine:
        summary = run_plan(store, engine, progress=False, bundle=bundle)
    return summary, engine.calls


def _by_task(store: RunStore) -> dict[int, list[tuple[int, bool, str | None]]]:
    table = store.attempts().sort_values(["index", "attempt"])
    out: dict[int, list] = {}
    for row in table.itertuples():
        out.setdefault(int(row.index), []).append((int(row.attempt), bool(row.ok), row.failure_kind))
    return out


def test_a_bundle_keeps_each_tasks_shard_records_retries_and_failure_kind(write_study, study_dir):
    study = _bundled_study(write_study, "fail_on", "bad: 5")
    store = prepare_run(study, load_site("local"), study_dir / "run")
    summary, calls = _run_counted(store)
    assert max(len(c) for c in calls) > 1 and sorted(i for c in calls for i in c) == list(range(16))
    assert (summary["s"].done, summary["s"].failed, dict(summary["s"].failure_kinds)) == (
        15,
        1,
        {"app_error": 1},
    )
    attempts = _by_task(store)
    assert attempts[5] == [(1, False, "app_error"), (2, False, "app_error"), (3, False, "app_error")]
    assert all(attempts[i] == [(1, True, None)] for i in range(16) if i != 5)
    assert store.done_keys("s") == {t.key for t in store.plan.tasks if t.index != 5}
    assert sorted(store.read_stage("s", provenance=False)["x"].to_pylist()) == [
        x for x in range(16) if x != 5
    ]

    # the same run with bundling off: one call per task, the same records
    again = prepare_run(study, load_site("local"), study_dir / "run-single")
    _, calls = _run_counted(again, bundle=False)
    assert all(len(c) == 1 for c in calls) and len(calls) == 16
    assert _by_task(again) == attempts


def test_a_worker_killed_inside_a_bundle_loses_only_its_unfinished_tasks(write_study, study_dir):
    store = prepare_run(
        _bundled_study(write_study, "die_once", "kill: 5"), load_site("local"), study_dir / "r"
    )
    summary, calls = _run_counted(store)
    assert summary["s"].done == 16 and summary["s"].failed == 0
    killed = next(c for c in calls if 5 in c)
    assert len(killed) > 1 and killed.index(5) > 0, calls  # the killer ran after a neighbour in its bundle
    attempts = _by_task(store)
    before = killed[: killed.index(5)]
    assert all(attempts[i] == [(1, True, None)] for i in before)  # finished before the kill: kept as is
    lost = [i for i, rows in attempts.items() if rows[0][2] == "node_lost"]
    assert 5 in lost and not set(before) & set(lost)
    for i in lost:  # each lost task: a node_lost attempt, then rerun alone (a call of its own)
        assert attempts[i] == [(1, False, "node_lost"), (2, True, None)]
        assert [i] in calls[calls.index(killed) + 1 :]
    assert len(store.done_keys("s")) == 16
