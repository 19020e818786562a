"""Array mode on a real Slurm (tests/slurm_cluster.py), through perfscale's own CLI and sched code.

Covered: a real array runs to completion (`perfscale submit` + `wait`); an element of many tasks packs their
shards; a failing element is an app_error and `perfscale resubmit --failed` resubmits only it; an element
killed at its time limit is a timeout; one scheduler call per poll for arrays of 10, 100 and 1,000 elements;
`perfscale cancel`; the walltime warning (SIGUSR1, sent for real with `scancel --signal=USR1 --batch`)
recorded by the task and the element requeued when the timeout budget allows.

The time-limit test needs Slurm's minimum limit (1 minute) plus its 30 s enforcement period, so its array is
submitted by the module's first Slurm test (fixture `timeout_run`) and checked by the last; the others run
meanwhile. `test_task_run_records_scheduler_signals` needs no Slurm.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from perfscale.cli import main
from perfscale.sched.client import CommandClient
from perfscale.sched.submit import cancel, poll, submit_run, submitted, wait
from perfscale.spec.site import load_site
from perfscale.store import RunStore
from tests.slurm_cluster import SlurmCluster, slurm  # noqa: F401

pytestmark = pytest.mark.slow

HELPERS = '''\
"""Task functions for tests/test_slurm_real.py (written next to each study)."""
import os
import signal
import time
from pathlib import Path


def square(x: int) -> dict:
    return {"x": x, "y": x * x}


def fail_unless_marker(x: int, bad: int, marker: str) -> dict:
    if x == bad and not Path(marker).exists():
        raise RuntimeError(f"x={x} fails until {marker} exists")
    return {"x": x}


def sleeper(x: int, seconds: float, folder: str, ignore_term: bool = False) -> dict:
    """Sleeps on its first run; a rerun (requeue) returns at once. ignore_term: only SIGKILL stops it."""
    started = Path(folder) / f"started-{x}"
    if started.exists():
        return {"x": x, "rerun": True}
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    started.write_text(str(os.getpid()))
    time.sleep(seconds)
    return {"x": x, "rerun": False}
'''


def _write(folder: Path, slurm_: SlurmCluster, study: str) -> tuple[Path, Path]:
    (folder / "helpers.py").write_text(HELPERS)
    site = slurm_.write_site(folder)
    path = folder / "study.yaml"
    path.write_text(textwrap.dedent(study))
    return path, site


def _cli(*argv: str | Path) -> int:
    return main([str(a) for a in argv])


def _until(what: str, check: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout_s} s")
        time.sleep(0.5)


def _attempts(run: Path):
    return RunStore(run).attempts().sort_values(["index", "attempt"])


def _sacct(slurm_: SlurmCluster, job_id: str) -> list[str]:
    out = slurm_.run(["sacct", "-n", "-P", "-X", "-D", "--format=JobID,State,ExitCode", f"--jobs={job_id}"])
    return out.split()


@pytest.mark.parametrize(
    ("sig", "deadline_in_s", "kind", "why"),
    [
        (signal.SIGUSR1, 3600, "timeout", "walltime warning"),
        (signal.SIGTERM, 3600, "cancelled", "cancelled or preempted before the walltime"),
        (signal.SIGTERM, 5, "timeout", "walltime reached"),
    ],
)
def test_task_run_records_scheduler_signals(
    tmp_path: Path, sig: int, deadline_in_s: int, kind: str, why: str
):
    """No scheduler needed: `perfscale task run` as an element runs it (PERFSCALE_ELEMENT set), signalled
    twice (the shell forwards what the process also got); one attempt, and the requeue decision."""
    from perfscale.runner import prepare_run
    from perfscale.sched.requeue import requeue_allowed

    (tmp_path / "helpers.py").write_text(HELPERS)
    study = tmp_path / "study.yaml"
    study.write_text(
        textwrap.dedent(
            f"""\
            name: sig
            retry: {{timeout: 1}}
            stages:
              s:
                kind: function
                params: {{callable: "helpers.py:sleeper", seconds: 60, folder: "{tmp_path}"}}
                grid: {{product: {{x: [0]}}}}
            """
        )
    )
    store = prepare_run(study, load_site("local"), tmp_path / "run")
    env = {
        **os.environ,
        "PERFSCALE_ELEMENT": "slurm job 77[3]",
        "PERFSCALE_ELEMENT_DEADLINE": str(int(time.time()) + deadline_in_s),
    }
    argv = [sys.executable, "-m", "perfscale.cli", "task", "run", str(store.root / "plan.parquet"), "0"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _until("the task runs", lambda: (tmp_path / "started-0").exists(), 30)
    proc.send_signal(sig)
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 1, proc.stdout.read() if proc.stdout else ""
    (row,) = RunStore(store.root).attempts().to_dict("records")
    assert (row["failure_kind"], row["exit_status"], row["ok"]) == (kind, 128 + sig, False)
    assert row["message"] == f"{signal.Signals(sig).name} ({why}) in slurm job 77[3]"
    # retry.timeout = 1: a first timeout may be requeued; a cancellation never is
    assert requeue_allowed(RunStore(store.root), 0)[0] is (kind == "timeout")


@pytest.fixture(scope="module")
def timeout_run(slurm: SlurmCluster, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    """Two 60 s elements sleeping 300 s, submitted when the module starts (checked by the last test):
    element 0 catches the SIGTERM at its limit and records a timeout itself; element 1 ignores SIGTERM, is
    SIGKILLed KillWait later, and only the scheduler's TIMEOUT state can classify it."""
    folder = tmp_path_factory.mktemp("timeout")
    study, site = _write(
        folder,
        slurm,
        f"""\
        name: walltime
        stages:
          sleep:
            kind: function
            params: {{callable: "helpers.py:sleeper", seconds: 300, folder: "{folder}"}}
            grid: {{zip: {{x: [0, 1], ignore_term: [false, true]}}}}
            resources: {{walltime: "00:01:00", memory_gb: 0.25}}
        """,
    )
    run = folder / "run"
    assert _cli("submit", study, "--site", site, "--run-dir", run) == 0
    return run, time.monotonic()


def test_array_runs_to_completion(slurm: SlurmCluster, timeout_run, tmp_path: Path):  # noqa: F811
    study, site = _write(
        tmp_path,
        slurm,
        """\
        name: squares
        stages:
          square:
            kind: function
            params: {callable: "helpers.py:square"}
            grid: {product: {x: [0, 1, 2, 3, 4, 5]}}
            resources: {walltime: "00:05:00", memory_gb: 0.25}
        """,
    )
    run = tmp_path / "run"
    assert _cli("submit", study, "--site", site, "--run-dir", run) == 0
    store = RunStore(run)
    (arr,) = submitted(store)
    assert arr.elements == [[i] for i in range(6)] and arr.first_index == 0
    script = (run / "arrays" / f"{arr.name}.sh").read_text()
    assert "#SBATCH --array=0-5%6" in script and "#SBATCH --partition=debug" in script
    assert "--signal" not in script  # 5 min elements: no walltime warning (see render.py)
    states = wait(store, every_s=1, timeout_s=120)
    assert {s.state for s in states.values()} == {"COMPLETED"} and len(states) == 6
    assert len(list((run / "stages" / "square").glob("*.parquet"))) == 6
    assert store.read_stage("square").to_pandas().sort_values("x")["y"].tolist() == [0, 1, 4, 9, 16, 25]
    attempts = _attempts(run)
    assert attempts["ok"].all() and attempts["index"].tolist() == list(range(6))
    assert sorted(_sacct(slurm, arr.job_id)) == sorted(f"{arr.job_id}_{i}|COMPLETED|0:0" for i in range(6))


def test_an_element_of_many_tasks_packs_their_shards(slurm: SlurmCluster, timeout_run, tmp_path: Path):  # noqa: F811
    """Six short tasks packed into one element, on a site with compact_every 4: the element packs its four
    shards after its fourth task and the last two after its sixth (launchers/element.sh.j2), so the stage
    folder ends with two packs and no loose shard, and the table reads whole."""
    (tmp_path / "helpers.py").write_text(HELPERS)
    site = slurm.write_site(tmp_path, compact_every=4)
    study = tmp_path / "study.yaml"
    study.write_text(
        textwrap.dedent(
            """\
            name: packing
            stages:
              square:
                kind: function
                params: {callable: "helpers.py:square"}
                grid: {product: {x: [0, 1, 2, 3, 4, 5]}}
                resources: {walltime: "00:02:00", expected_runtime: "00:00:05", memory_gb: 0.25}
            """
        )
    )
    run = tmp_path / "run"
    assert _cli("submit", study, "--site", site, "--run-dir", run) == 0
    store = RunStore(run)
    (arr,) = submitted(store)
    assert arr.elements == [list(range(6))]
    assert "task pack" in (run / "arrays" / f"{arr.name}.sh").read_text()
    states = wait(store, every_s=1, timeout_s=180)
    assert [s.state for s in states.values()] == ["COMPLETED"] * 6
    assert list(store.stage_dir("square").glob("*.parquet")) == []
    packs = RunStore(run).packs("square")
    assert len(packs.packs) == 2 and packs.keys() == set(store.plan_keys["square"])
    table = RunStore(run).read_stage("square").to_pandas()
    assert table.sort_values("x")["y"].tolist() == [0, 1, 4, 9, 16, 25]
    assert RunStore(run).done_keys("square") == set(store.plan_keys["square"])
    assert _attempts(run)["ok"].tolist() == [True] * 6


def test_failed_element_is_app_error_and_resubmitted_alone(
    slurm: SlurmCluster,  # noqa: F811
    timeout_run,
    tmp_path: Path,
):
    marker = tmp_path / "fixed"
    study, site = _write(
        tmp_path,
        slurm,
        f"""\
        name: flaky
        retry: {{app_error: 0}}
        stages:
          f:
            kind: function
            params: {{callable: "helpers.py:fail_unless_marker", bad: 2, marker: "{marker}"}}
            grid: {{product: {{x: [0, 1, 2, 3]}}}}
            resources: {{walltime: "00:05:00", memory_gb: 0.25}}
        """,
    )
    run = tmp_path / "run"
    assert _cli("submit", study, "--site", site, "--run-dir", run) == 0
    store = RunStore(run)
    states = wait(store, every_s=1, timeout_s=120)
    assert states[2].state == "FAILED" and states[2].exit_code == 1
    assert all(states[i].state == "COMPLETED" for i in (0, 1, 3))
    failed = _attempts(run).query("not ok")
    assert failed["index"].tolist() == [2] and failed["failure_kind"].tolist() == ["app_error"]
    assert "fails until" in failed["message"].iloc[0]

    marker.write_text("ok")
    assert _cli("resubmit", run, "--failed") == 0
    first, again = submitted(store)
    assert again.elements == [[2]] and again.name == "flaky-r1-f-0" and again.job_id != first.job_id
    assert "#SBATCH --array=0-0%1" in (run / "arrays" / "flaky-r1-f-0.sh").read_text()
    states = wait(store, every_s=1, timeout_s=120)
    assert states[2].job_id == again.job_id and states[2].state == "COMPLETED"
    assert len(store.done_keys("f")) == 4
    assert _attempts(run).query("index == 2")["ok"].tolist() == [False, True]


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_one_scheduler_call_per_poll(slurm: SlurmCluster, timeout_run, tmp_path: Path, n: int):  # noqa: F811
    study, site = _write(
        tmp_path,
        slurm,
        f"""\
        name: held{n}
        stages:
          noop:
            kind: noop
            grid: {{product: {{i: {list(range(n))}}}}}
            resources: {{walltime: "00:05:00", memory_gb: 0.1}}
        """,
    )
    from perfscale.runner import prepare_run

    store = prepare_run(study, load_site(site), tmp_path / "run")
    submit_client = CommandClient()
    (arr,) = submit_run(store, hold=True, client=submit_client)
    assert submit_client.calls == {"sbatch": 1} and len(arr.elements) == n
    # accounting lags the controller by seconds: until sacct lists the array, poll says NotListedYet
    _until("sacct lists the held array", lambda: poll(store)[0].reason == "JobHeldUser")
    client = CommandClient()
    states = poll(store, client)
    assert client.calls == {"sacct": 1}
    assert len(states) == n and {(s.state, s.reason, s.active) for s in states.values()} == {
        ("PENDING", "JobHeldUser", True)
    }
    client = CommandClient()
    assert cancel(store, client) == [arr.job_id] and client.calls == {"scancel": 1}
    _until("cancelled", lambda: not any(s.active for s in poll(store).values()))


def test_cancel(slurm: SlurmCluster, timeout_run, tmp_path: Path):  # noqa: F811
    study, site = _write(
        tmp_path,
        slurm,
        f"""\
        name: cancelme
        stages:
          sleep:
            kind: function
            params: {{callable: "helpers.py:sleeper", seconds: 300, folder: "{tmp_path}"}}
            grid: {{product: {{x: [0, 1, 2]}}}}
            resources: {{walltime: "00:05:00", memory_gb: 0.25}}
        """,
    )
    run = tmp_path / "run"
    assert _cli("submit", study, "--site", site, "--run-dir", run, "--throttle", "1") == 0
    store = RunStore(run)
    _until("element 0 runs its task", lambda: (tmp_path / "started-0").exists())
    time.sleep(1)  # the task installs its signal handlers before calling the function; be sure
    assert _cli("cancel", run) == 0
    states = wait(store, every_s=1, timeout_s=60)
    assert {s.state for s in states.values()} == {"CANCELLED"}
    attempts = _attempts(run)
    assert attempts["failure_kind"].tolist() == ["cancelled"] * 3 and attempts["attempt"].tolist() == [1] * 3
    by_index = dict(zip(attempts["index"], attempts["message"], strict=True))
    # the running task caught SIGTERM and said so; the two pending elements never ran: the scheduler's word
    assert by_index[0].startswith("SIGTERM (cancelled or preempted before the walltime) in slurm job")
    assert by_index[1].startswith("scheduler job") and by_index[1].endswith("CANCELLED")
    assert not (tmp_path / "started-1").exists()


def test_walltime_warning_is_recorded_and_requeues_within_budget(
    slurm: SlurmCluster,  # noqa: F811
    timeout_run,
    tmp_path: Path,
):
    """SIGUSR1 sent to the batch shell as Slurm's `--signal=B:USR1@120` would: the shell forwards it, the task
    records a timeout; with retry.timeout = 1 the element is requeued and its rerun succeeds, with 0 not."""
    study, site = _write(
        tmp_path,
        slurm,
        f"""\
        name: warned
        stages:
          again:
            kind: function
            retry: {{timeout: 1}}
            params: {{callable: "helpers.py:sleeper", seconds: 300, folder: "{tmp_path}"}}
            grid: {{product: {{x: [0]}}}}
            resources: {{walltime: "00:05:00", memory_gb: 0.25}}
          once:
            kind: function
            retry: {{timeout: 0}}
            params: {{callable: "helpers.py:sleeper", seconds: 300, folder: "{tmp_path}"}}
            grid: {{product: {{x: [1]}}}}
            resources: {{walltime: "00:05:00", memory_gb: 0.25}}
        """,
    )
    run = tmp_path / "run"
    assert _cli("submit", study, "--site", site, "--run-dir", run) == 0
    store = RunStore(run)
    again, once = submitted(store)
    _until("both tasks run", lambda: all((tmp_path / f"started-{x}").exists() for x in (0, 1)))
    time.sleep(1)
    for arr in (again, once):
        slurm.run(["scancel", "--signal=USR1", "--batch", f"{arr.job_id}_0"])
    _until("both record a timeout", lambda: len(_attempts(run)) == 2)
    attempts = _attempts(run)
    assert attempts["failure_kind"].tolist() == ["timeout", "timeout"]
    assert attempts["exit_status"].tolist() == [138, 138]  # 128 + SIGUSR1
    for msg, arr in zip(attempts["message"], (again, once), strict=True):
        assert msg == f"SIGUSR1 (walltime warning) in slurm job {arr.job_id}[0]"

    # the requeued element waits out Slurm's requeue delay (BeginTime = now + ~2 min); skip it
    _until("requeued", lambda: "REQUEUED" in " ".join(_sacct(slurm, again.job_id)))
    _until("pending again", lambda: poll(store)[0].state == "PENDING")
    slurm.run(["scontrol", "update", f"JobId={again.job_id}_0", "StartTime=now"])
    states = wait(store, every_s=1, timeout_s=120)
    assert states[0].state == "COMPLETED" and states[1].state == "FAILED"
    assert _sacct(slurm, again.job_id) == [
        f"{again.job_id}_0|REQUEUED|0:0",
        f"{again.job_id}_0|COMPLETED|0:0",
    ]
    assert store.read_stage("again").to_pandas()["rerun"].tolist() == [True]
    assert store.done_keys("once") == set()
    attempts = _attempts(run)
    assert attempts.query("index == 0")[["attempt", "ok", "failure_kind"]].values.tolist() == [
        [1, False, "timeout"],
        [2, True, None],
    ]
    assert attempts.query("index == 1")["failure_kind"].tolist() == ["timeout"]  # no scheduler duplicate
    assert (run / "arrays" / f"{again.name}.idx.0.resume").read_text().strip() == "0"


def test_time_limit_kill_is_a_timeout(slurm: SlurmCluster, timeout_run):  # noqa: F811
    run, submitted_at = timeout_run
    store = RunStore(run)
    (arr,) = submitted(store)
    states = wait(store, every_s=2, timeout_s=180)
    elapsed = time.monotonic() - submitted_at
    assert {s.state for s in states.values()} == {"TIMEOUT"}, states
    attempts = _attempts(run)
    assert attempts["failure_kind"].tolist() == ["timeout", "timeout"]
    own, killed = attempts["message"].tolist()
    assert own == f"SIGTERM (walltime reached) in slurm job {arr.job_id}[0]"  # caught by the task
    assert killed == f"scheduler job {arr.job_id}[1]: TIMEOUT"  # SIGKILLed: record_scheduler_failures
    assert 55 < elapsed < 150
    killed_after = attempts["duration_s"].iloc[0]  # the task's own record: start to SIGTERM
    print(f"60 s element: SIGTERM {killed_after:.1f} s after its task started; wait took {elapsed:.0f} s")
    assert 55 < killed_after < 100
    # a second poll adds nothing
    wait(store, every_s=1, timeout_s=10)
    assert len(_attempts(run)) == 2
    info = json.loads((run / "arrays" / "jobs.json").read_text())
    assert info[0]["job_id"] == arr.job_id
