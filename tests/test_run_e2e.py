"""End to end on both engines: a small study runs, reruns only what is missing, records failures."""

from __future__ import annotations

import pytest

from perfscale.cli import main
from perfscale.runner import prepare_run, run_plan
from perfscale.spec import load_site
from perfscale.status import run_status
from perfscale.store import RunStore
from tests.studies import FAILING, STUDY


@pytest.fixture(params=["local", "parsl"])
def engine(request):
    return request.param


def test_study_runs_and_reruns_nothing(write_study, tmp_path, engine):
    store = prepare_run(write_study(STUDY), load_site("local"), tmp_path / "run")
    summary = run_plan(store, engine, workers=2, progress=False)
    assert (summary["square"].done, summary["square"].ran, summary["total"].done) == (5, 5, 1)
    squares = store.read_stage("square").to_pandas().sort_values("x")
    assert squares["y"].tolist() == [1, 4, 9, 16, 25]
    assert (squares["seed"] == 3).all() and (squares["_attempt"] == 1).all()
    row = store.read_stage("total").to_pylist()[0]
    assert (row["n"], row["sum_y"]) == (5, 55)
    again = run_plan(RunStore(store.root), engine, workers=2, progress=False)
    assert again["square"].ran == 0 and again["total"].ran == 0


def test_failures_are_recorded_and_retried_by_kind(write_study, tmp_path, engine):
    store = prepare_run(write_study(FAILING.replace("MODE", "raise")), load_site("local"), tmp_path / "run")
    summary = run_plan(store, engine, workers=2, progress=False)
    assert (summary["fail"].done, summary["fail"].failed) == (2, 1)
    assert summary["fail"].failure_kinds == {"app_error": 1}
    attempts = store.attempts()
    failed_key = next(t.key for t in store.plan.of_stage("fail") if t.params["x"] == 2)
    bad = attempts[attempts.task_key == failed_key].sort_values("attempt")
    assert bad["attempt"].tolist() == [1, 2, 3]  # retry app errors twice
    assert set(bad["failure_kind"]) == {"app_error"}
    assert "boom at x=2" in bad["message"].iloc[0]
    # the flaky stage succeeds on its second attempt
    flaky = store.read_stage("flaky").to_pandas()
    assert sorted(flaky["seen_attempt"]) == [2, 2] == sorted(flaky["_attempt"])
    states = {s.stage: s for s in run_status(store)}
    assert (states["fail"].done, states["fail"].failed, states["fail"].missing) == (2, 1, 0)


def test_bad_input_is_never_retried(write_study, tmp_path):
    store = prepare_run(
        write_study(FAILING.replace("MODE", "bad_input")), load_site("local"), tmp_path / "run"
    )
    run_plan(store, "local", workers=2, progress=False)
    attempts = store.attempts()
    assert (attempts.failure_kind == "bad_input").sum() == 1
    assert len(attempts[attempts.failure_kind == "bad_input"]) == 1


def test_a_dying_worker_is_node_lost_and_the_campaign_goes_on(write_study, tmp_path):
    store = prepare_run(write_study(FAILING.replace("MODE", "exit")), load_site("local"), tmp_path / "run")
    summary = run_plan(store, "local", workers=2, progress=False)
    assert summary["fail"].failure_kinds == {"node_lost": 1}
    assert summary["fail"].done == 2 and summary["flaky"].done == 2
    attempts = store.attempts()
    killer = next(t.key for t in store.plan.of_stage("fail") if t.params["x"] == 2)
    lost = attempts[attempts.task_key == killer].sort_values("attempt")
    # every loss is an attempt: the first and two retries (the default node_lost budget)
    assert lost["failure_kind"].tolist() == ["node_lost"] * 3
    assert lost["attempt"].tolist() == [1, 2, 3]


def test_blocked_downstream_when_an_input_failed(write_study, tmp_path):
    text = STUDY.replace('"fns.py:square"}', '"fns.py:fail_on", bad: 3}')
    store = prepare_run(write_study(text), load_site("local"), tmp_path / "run")
    summary = run_plan(store, "local", workers=2, progress=False)
    assert summary["square"].failed == 1 and summary["total"].blocked == 1 and summary["total"].ran == 0


def test_cli_plan_task_run_status_show(write_study, tmp_path, capsys):
    study = write_study(STUDY)
    assert main(["plan", str(study), "--out", str(tmp_path / "p.parquet")]) == 0
    assert "square" in capsys.readouterr().out
    run = tmp_path / "run"
    store = prepare_run(study, load_site("local"), run)
    # what an array element does: run tasks one at a time by index
    for t in store.plan.of_stage("square"):
        assert main(["task", "run", str(run / "plan.parquet"), str(t.index)]) == 0
    assert main(["task", "run", str(run / "plan.parquet"), "0"]) == 0
    assert "already done" in capsys.readouterr().out
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "square" in out and "total" in out
    assert main(["show", str(run), "square", "--format", "csv", "--columns", "x,y"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "x,y" and sorted(lines[1:]) == ["1,1", "2,4", "3,9", "4,16", "5,25"]
    assert main(["task", "run", str(run / "plan.parquet"), "99"]) == 2
    assert main(["show", str(run), "nope"]) == 2


def test_cli_reports_spec_errors_without_running(write_study, tmp_path, capsys):
    study = write_study(STUDY.replace("seed: 3", "seed: 3\nsede: 4"))
    assert main(["run", str(study), "--run-dir", str(tmp_path / "run"), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "study.yaml:3: sede: unknown field" in err
    assert not (tmp_path / "run").exists()
