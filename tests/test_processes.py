"""Real processes, real signals: one run per folder, no hung engine, no orphans, a full disk named."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from perfscale.engines.guard import cap_logs
from perfscale.runner import AttemptLog, prepare_run, run_plan
from perfscale.spec import load_site
from perfscale.store import RunStore
from perfscale.store.lock import LOCK_NAME, run_lock
from perfscale.store.space import RESERVE_NAME, DiskFull
from tests.procs import alive, in_session, processes
from tests.studies import slow_squares

ROOT = Path(__file__).parent.parent
GRID = """\
name: grid
stages:
  square:
    kind: function
    params: PARAMS
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
SLEEPY = """\
name: sleepy
stages:
  nap:
    kind: function
    params: {callable: "fns.py:sleep_marked", seconds: 600}
    grid:
      product: {x: [1, 2, 3, 4]}
"""
WATCHDOG_S = 3
WAIT_S = 120  # generous bound on a subprocess step: never a speed assertion, only "it ends"


def grid_study(write_study, n: int, params: str) -> Path:
    return write_study(GRID.replace("PARAMS", params).replace("XS", ", ".join(map(str, range(n)))))


def slow_study(write_study, n: int, delay: float) -> Path:
    return write_study(slow_squares(n, delay))


def gated_study(write_study, n: int) -> Path:
    """n tasks that wait for the test's go (RUN/go-<x> or RUN/go-all): no race with the runs' start-up."""
    return grid_study(write_study, n, '{callable: "fns.py:gated"}')


def perfscale(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kw}
    return subprocess.Popen([sys.executable, "-m", "perfscale.cli", *args], env=env, text=True, **pipes)


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
def test_two_runs_started_together_one_runs_the_other_names_it(write_study, tmp_path):
    study, run = gated_study(write_study, 6), tmp_path / "run"
    runs = [perfscale(*run_cmd(study, run)) for _ in range(2)]
    refused = None
    deadline = time.monotonic() + WAIT_S
    while refused is None and time.monotonic() < deadline:  # the holder waits for its go: one must give up
        refused = next((p for p in runs if p.poll() is not None), None)
        time.sleep(0.02)
    assert refused is not None, "neither run was refused"
    holder = runs[1 - runs.index(refused)]
    rc, _, err = finish(refused)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"in use by another perfscale run (pid {holder.pid} on " in lines[0]
    assert "--wait-lock" in lines[0]
    (run / "go-all").touch()
    rc, _, err = finish(holder)
    assert rc == 0, err
    assert_each_task_ran_once(run)


def test_a_run_that_has_not_written_its_manifest_yet_is_named_as_the_holder(write_study, tmp_path):
    """The moment between taking the lock and writing manifest.json: a second run must name the holder, not
    call the folder foreign (a race two runs started together once hit)."""
    study, run = gated_study(write_study, 2), tmp_path / "run"
    with run_lock(run):
        (run / "study.yaml").write_text(study.read_text())  # what a starting run writes before its manifest
        rc, _, err = finish(perfscale(*run_cmd(study, run)))
    assert rc == 2
    assert f"in use by another perfscale run (pid {os.getpid()} on " in err.strip().splitlines()[-1], err


def test_wait_lock_queues_behind_the_holder(write_study, tmp_path):
    study, run = gated_study(write_study, 6), tmp_path / "run"
    first = perfscale(*run_cmd(study, run))
    wait_for(lambda: any(run.glob("started-*")), first, "a running task")
    log = tmp_path / "second.err"
    with open(log, "w") as err_file:
        second = perfscale(*run_cmd(study, run, "--wait-lock"), stderr=err_file)
        wait_for(lambda: "waiting for" in log.read_text(), second, "the second run to wait")
    assert f"held by pid {first.pid} on " in log.read_text()
    (run / "go-all").touch()
    rc1, _, err1 = finish(first)
    rc2, _, _ = finish(second)
    assert (rc1, rc2) == (0, 0), err1 + log.read_text()
    assert f'"pid": {second.pid}' in (run / LOCK_NAME).read_text()  # the second took the lock after all
    assert_each_task_ran_once(run)  # and found nothing left to do


def test_task_run_works_beside_a_running_run(write_study, tmp_path):
    study, run = gated_study(write_study, 6), tmp_path / "run"
    first = perfscale(*run_cmd(study, run, workers=1))
    wait_for(lambda: any(run.glob("started-*")), first, "a running task")
    last = max(RunStore(run).plan.tasks, key=lambda t: t.index)  # one worker, two in flight: never reached
    (run / f"go-{last.params['x']}").touch()
    element = perfscale("task", "run", str(run / "plan.parquet"), str(last.index))
    rc_task, out, err = finish(element)
    assert rc_task == 0, err
    assert "done" in out
    (run / "go-all").touch()
    rc1, _, err1 = finish(first)
    assert rc1 == 0, err1
    assert_each_task_ran_once(run)
    attempts = RunStore(run).attempts()
    assert attempts.loc[attempts["index"] == last.index, "pid"].tolist() == [element.pid]


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


# ---- no orphans -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["local", "parsl"])
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_run_leaves_no_process_behind(write_study, tmp_path, engine, signum):
    study, run = write_study(SLEEPY), tmp_path / "run"
    proc = perfscale(*run_cmd(study, run, engine=engine), start_new_session=True)
    wait_for(lambda: len(list(run.glob("started-*"))) == 2, proc, "two running tasks")
    # every process the run started, pilot blocks re-parented to init included: its session
    started = in_session(proc.pid) - {proc.pid}
    workers = {int(p.read_text()) for p in run.glob("started-*")}
    assert workers <= started and len(started) > len(workers)
    os.kill(proc.pid, signum)
    try:
        rc, _, err = finish(proc)
        deadline = time.monotonic() + WAIT_S  # a bound on the test, not a speed claim: the tasks sleep 600 s
        while alive(started) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(started), {p: processes()[p].cmdline for p in alive(started)}
    finally:
        for pid in alive(started):
            os.kill(pid, signal.SIGKILL)
    if signum == signal.SIGKILL:
        assert rc == -signal.SIGKILL
        return
    # SIGTERM is handled like SIGINT: a clean stop, one line, the tasks in flight recorded as cancelled
    assert rc == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == (
        "perfscale: interrupted by SIGTERM: attempts so far are recorded; run again to resume"
    )
    attempts = RunStore(run).attempts()
    assert len(attempts) >= 2 and set(attempts.failure_kind) == {"cancelled"}
    running = {int(p.name.split("-")[1]) for p in run.glob("started-*")}
    assert set(attempts["index"]) >= {t.index for t in RunStore(run).plan.tasks if t.params["x"] in running}
    assert set(attempts.message) == {"run interrupted (SIGINT or SIGTERM)"}


# ---- a full disk ----------------------------------------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB file system (tmpfs), where mounting is allowed (root); the flush-boundary test below runs
    everywhere."""
    folder = tmp_path / "small"
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(folder)], capture_output=True
    )
    if done.returncode != 0:
        why = f"cannot mount a 2 MiB tmpfs here: {done.stderr.decode().strip()}"
        if os.environ.get("PERFSCALE_REQUIRE_MOUNT") == "1":
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: Path) -> int:
    """Write zeros to folder/filler until the file system says ENOSPC; the bytes written."""
    fd, written = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT), 0
    try:
        while True:
            written += os.write(fd, bytes(4096))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return written


def test_a_full_disk_is_named_recorded_and_resumed(write_study, tmp_path, small_fs):
    hold, n = tmp_path / "hold", 8
    hold.touch()
    study, run = grid_study(write_study, n, f'{{callable: "fns.py:held", hold: "{hold}"}}'), small_fs / "run"
    proc = perfscale(*run_cmd(study, run))
    wait_for(lambda: (run / RESERVE_NAME).exists(), proc, "the run's reserve")
    assert fill(small_fs) > 0
    hold.unlink()  # the tasks now write their shards, to a full disk
    rc, _, err = finish(proc)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"perfscale: error: disk full in {run}: free space and run again to resume (")
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")], "nothing half-written"
    attempts = RunStore(run).attempts()  # recorded in the reserve's space
    kinds = attempts.failure_kind.value_counts().to_dict()
    assert kinds.get("app_error", 0) >= 1 and set(kinds) <= {"app_error", "cancelled"}, kinds
    full = attempts[attempts.failure_kind == "app_error"].message
    assert full.str.contains("No space left on device").all()
    assert not (run / RESERVE_NAME).exists()

    (small_fs / "filler").unlink()  # space freed: the run resumes
    rc, _, err = finish(perfscale(*run_cmd(study, run)))
    assert rc == 0, err
    store = RunStore(run)
    assert store.done_keys("square") == {t.key for t in store.plan.tasks}
    ok = store.attempts().query("ok")
    assert sorted(ok.task_key) == sorted(t.key for t in store.plan.tasks)  # every task done once


def test_a_full_disk_at_the_attempts_flush_keeps_the_records(write_study, tmp_path, monkeypatch):
    """The flush boundary alone, on any machine: appending attempts fails with ENOSPC while the run's
    reserve is held (as a full disk would), and succeeds in the space its release frees. Every record the
    runner handed over is kept, once (a worker lost under load adds its own record and a rerun's: still
    every record, each once), and every task has its ok row."""
    store = prepare_run(slow_study(write_study, 3, 0.0), load_site("local"), tmp_path / "run")
    real_append = RunStore.append_attempts
    refused, kept = [], []

    def append(self: RunStore, records: list) -> None:
        if records and (self.root / RESERVE_NAME).exists():
            refused.append(len(records))
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(self, records)
        kept.extend((r.task_key, r.attempt) for r in records)

    monkeypatch.setattr(RunStore, "append_attempts", append)
    # every record reaches the run's last flush (a 2 s mid-run flush on a slow start would stop the run first)
    monkeypatch.setattr(AttemptLog, "add", lambda self, records: self.buffer.extend(records))
    with pytest.raises(DiskFull, match=f"^disk full in {store.root}: free space and run again to resume"):
        run_plan(store, "local", workers=2, progress=False)
    assert refused and refused[-1] == len(kept), "the refused batch is the one written after the release"
    attempts = RunStore(store.root).attempts()
    rows = attempts.to_dict("records")
    assert sorted(zip(attempts.task_key, attempts.attempt, strict=True)) == sorted(kept), rows
    assert set(attempts.query("ok").task_key) == {t.key for t in store.plan.tasks}, rows
    assert not attempts.duplicated(["task_key", "attempt"]).any(), rows
    assert not (store.root / RESERVE_NAME).exists()
