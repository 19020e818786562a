"""Real processes, real signals: one run per folder, no hung engine, no orphans, a full disk named."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from perfscale.engines.guard import cap_logs
from perfscale.store import RunStore
from perfscale.store.lock import LOCK_NAME
from tests.procs import processes

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
BREAK = """\
name: broken
stages:
  breaker:
    kind: function
    params: {callable: "fns.py:break_pool"}
    grid:
      product: {x: [1]}
"""
WATCHDOG_S = 3
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


# ---- a hung Parsl pool ----------------------------------------------------------------------------------
@pytest.fixture
def watchdog_site(tmp_path: Path) -> Path:
    """The local site with a short watchdog."""
    text = (ROOT / "site_configs" / "local.yaml").read_text().replace("name: local", "name: watchdog")
    path = tmp_path / "watchdog.yaml"
    path.write_text(text + f"watchdog_s: {WATCHDOG_S}\n")
    return path


def node_lost_messages(run: Path) -> list[str]:
    attempts = RunStore(run).attempts().sort_values("attempt")
    return attempts.loc[attempts.failure_kind == "node_lost", "message"].tolist()


def test_a_broken_parsl_pool_is_restarted_by_the_watchdog(write_study, tmp_path, watchdog_site):
    study, run = slow_study(write_study, 12, 1.0), tmp_path / "run"
    proc = perfscale(
        *run_cmd(study, run, "--site", str(watchdog_site), engine="parsl"), start_new_session=True
    )
    wait_for(lambda: bool(shards(run)), proc, "a first shard")
    table = processes()
    pool = next(p.pid for p in table.values() if p.sid == proc.pid and "process_worker_pool" in p.cmdline)
    # its multiprocessing Manager and its workers: the pool lives on, answering Parsl's heartbeats, broken
    victims = [p.pid for p in table.values() if p.ppid == pool and "resource_tracker" not in p.cmdline]
    assert len(victims) == 3  # the Manager and two workers
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    rc, _, err = finish(proc)
    assert rc == 0, err
    lost = node_lost_messages(run)
    assert lost, "the tasks in flight were lost with the broken pool"
    why = f"engine restarted: no task finished and no worker alive for {WATCHDOG_S} s"
    assert all(m.startswith(why) for m in lost), lost
    attempts = RunStore(run).attempts()
    ok = attempts[attempts.ok]
    assert sorted(ok.task_key) == sorted(t.key for t in RunStore(run).plan.tasks)  # each done once
    assert "restarting it" in err


def test_a_pool_that_breaks_again_stops_the_run_with_a_named_error(write_study, tmp_path, watchdog_site):
    study, run = write_study(BREAK), tmp_path / "run"
    rc, _, err = finish(perfscale(*run_cmd(study, run, "--site", str(watchdog_site), engine="parsl")))
    assert rc == 2
    last = err.strip().splitlines()[-1]
    stalled = f"perfscale: error: parsl engine stalled in {run}: no task finished and no worker alive"
    assert last.startswith(stalled), err
    assert "even after a restart" in last and "watchdog_s" in last
    lost = node_lost_messages(run)
    assert [m.split(":")[0] for m in lost] == ["engine restarted", "run stopped"]


def test_engine_logs_are_capped_while_a_process_appends(tmp_path):
    log_file, chunk, chunks = tmp_path / "parsl" / "block-0" / "manager.log", 1000, 10_000
    log_file.parent.mkdir(parents=True)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import logging, sys\n"
            "h = logging.FileHandler(sys.argv[1])\n"  # appends, as Parsl's handlers do
            "for i in range(int(sys.argv[2])):\n"
            "    h.emit(logging.makeLogRecord({'msg': f'{i:08d} ' + 'x' * (int(sys.argv[3]) - 10)}))\n",
            str(log_file),
            str(chunks),
            str(chunk),
        ]
    )
    capped = []
    while writer.poll() is None:
        capped += cap_logs(tmp_path / "parsl", max_bytes=1 << 20, keep_bytes=4 << 10)
    assert writer.wait() == 0
    capped += cap_logs(tmp_path / "parsl", max_bytes=1 << 20, keep_bytes=4 << 10)
    written = chunks * chunk
    assert capped and set(capped) == {log_file}
    size = log_file.stat().st_size
    assert size <= 1 << 20 < written  # 10 MiB written, at most 1 MiB left
    assert log_file.stat().st_blocks * 512 <= size + (64 << 10)  # the writer appends at the new end: no hole
    kept = log_file.with_name("manager.log.1").read_bytes()
    assert len(kept) == 4 << 10
    last = log_file.read_text().splitlines() or kept.decode().splitlines()
    assert last[-1].startswith(f"{chunks - 1:08d} ")  # the newest record survives
