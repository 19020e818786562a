"""Corrupt or missing run files are detected and redone: real runs, real damaged files (truncated, garbage,
renamed, deleted), real SIGKILLs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from perfscale.cli import main
from perfscale.errors import PerfscaleError
from perfscale.report import build_report
from perfscale.runner import prepare_run, run_plan
from perfscale.spec import load_site
from perfscale.status import run_status
from perfscale.store import RunStore
from perfscale.store.recover import RECOVERED_MESSAGE
from perfscale.store.shards import SHARD_META
from tests.studies import slow_squares

TESTS = Path(__file__).parent

STUDY = """\
name: corrupt
stages:
  square:
    kind: function
    params: {callable: "fns.py:square"}
    grid:
      product: {x: [1, 2, 3]}
  total:
    kind: function
    params: {callable: "fns.py:total"}
    inputs: [square]
  train:
    kind: function
    params: {callable: "fns.py:write_model"}
    grid:
      product: {x: [1, 2]}
  sample:
    kind: function
    params: {callable: "fns.py:read_model"}
    foreach: train
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished run of STUDY; each test works on its own copy (see `run`)."""
    folder = tmp_path_factory.mktemp("study")
    shutil.copy(TESTS / "fns.py", folder / "fns.py")
    (folder / "study.yaml").write_text(textwrap.dedent(STUDY))
    store = prepare_run(folder / "study.yaml", load_site("local"), folder / "run")
    summary = run_plan(store, "local", workers=1, progress=False)
    assert all(s.done == s.total for s in summary.values()), summary
    return store.root


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> RunStore:
    return RunStore(shutil.copytree(finished, tmp_path / "run"))


def _shard(store: RunStore, stage: str, i: int = 0) -> Path:
    return store.shard_path(stage, store.plan.of_stage(stage)[i].key)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _rerun(store: RunStore) -> dict:
    return run_plan(RunStore(store.root), "local", workers=1, progress=False)


def _corrupt_rows(store: RunStore):
    attempts = store.attempts()
    return attempts[attempts.failure_kind == "corrupt_output"]


# ---- shards: footer metadata, done-check, quarantine ---------------------------------------------------
def test_every_shard_footer_records_its_task_rows_artifacts_and_attempt(run):
    for stage in run.plan.stages:
        for t in run.plan.of_stage(stage):
            md = pq.read_metadata(run.shard_path(stage, t.key))
            meta = json.loads(md.metadata[SHARD_META])
            assert meta["key"] == t.key and meta["rows"] == md.num_rows == 1
            assert meta["attempt"]["ok"] is True and meta["attempt"]["task_key"] == t.key
            assert meta["attempt"]["index"] == t.index and meta["attempt"]["attempt"] == 1
            assert meta["artifacts"] == (
                {"model.txt": len(f"model of x={t.params['x']}")} if stage == "train" else {}
            )


def test_truncated_and_garbage_shards_are_quarantined_and_their_tasks_run_again(run):
    truncated, garbage = _shard(run, "square", 0), _shard(run, "square", 1)
    _truncate(truncated)
    garbage.write_bytes(b"not parquet at all")
    assert run.listed_keys("square") == {t.key for t in run.plan.of_stage("square")}  # files are still there

    summary = _rerun(run)
    assert summary["square"].ran == 2 and summary["square"].done == 3
    assert summary["total"].ran == 0  # its input was complete when it ran: it stays done
    quarantined = sorted(p.name for p in (run.root / "quarantine" / "stages" / "square").iterdir())
    assert [n.split(".parquet.")[0] for n in quarantined] == sorted([truncated.stem, garbage.stem])
    rows = _corrupt_rows(run)
    assert set(rows.task_key) == {truncated.stem, garbage.stem}
    assert all("not a readable Parquet file" in m and "quarantine" in m for m in rows.message)
    assert (rows.attempt == 2).all() and not rows.ok.any()  # after the attempt that wrote the shard
    assert sorted(run.read_stage("square").to_pandas()["y"]) == [1, 4, 9]


def test_a_shard_copied_onto_another_tasks_path_is_not_done(run):
    a, b = _shard(run, "square", 0), _shard(run, "square", 1)
    shutil.copy(a, b)
    assert run.done_keys("square") == {a.stem, _shard(run, "square", 2).stem}
    (message,) = _corrupt_rows(run).message
    assert f"names task {a.stem!r}, not {b.stem!r}" in message


def test_status_counts_a_bad_shard_as_corrupt_output(run):
    _truncate(_shard(run, "square", 2))
    square = next(s for s in run_status(run) if s.stage == "square")
    assert (square.done, square.failed, square.failure_kinds) == (2, 1, {"corrupt_output": 1})


def test_task_run_redoes_a_bad_shard(run, capsys):
    _truncate(_shard(run, "square", 1))
    index = run.plan.of_stage("square")[1].index
    assert main(["task", "run", str(run.plan_path), str(index)]) == 0
    assert "already done" not in capsys.readouterr().out
    assert run.shard_done("square", _shard(run, "square", 1).stem)


@pytest.mark.parametrize("damage", ["truncated", "data pages"])
def test_show_names_a_bad_shard_in_one_line(run, damage):
    shard = _shard(run, "square", 0)
    if damage == "truncated":
        _truncate(shard)
    else:  # the footer stays intact: only reading the data finds it
        data = bytearray(shard.read_bytes())
        data[4:30] = b"\xff" * 26
        shard.write_bytes(bytes(data))
    show = [sys.executable, "-m", "perfscale.cli", "show", str(run.root), "square"]
    proc = subprocess.run(show, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err  # no warning line repeating the error
    assert err.startswith(f"perfscale: error: {shard}: ")
    assert "moved to" in err and "runs its task again" in err
    assert not shard.exists()
    assert subprocess.run(show, capture_output=True, timeout=120).returncode == 0  # the others are shown


def test_the_report_says_which_shard_was_quarantined(run):
    shard = _shard(run, "train", 0)
    _truncate(shard)
    page = build_report(RunStore(run.root)).read_text()
    assert "corrupt_output" in page and shard.name in page


# ---- unreadable run files ------------------------------------------------------------------------------
def test_a_garbage_attempts_file_is_quarantined_with_a_warning(run, caplog, capsys):
    garbage = run.root / "attempts" / "20990101T000000-1-deadbeef.parquet"
    garbage.write_bytes(b"garbage")
    assert main(["status", str(run.root)]) == 0
    assert f"unreadable attempts file {garbage}" in caplog.text and "moved to" in caplog.text
    assert not garbage.exists() and list((run.root / "quarantine" / "attempts").iterdir())
    assert all(s.done == s.total for s in _rerun(run).values())
    assert build_report(RunStore(run.root)).exists()


def test_a_corrupt_manifest_is_rebuilt_from_the_run_folder(run, caplog):
    run.manifest_path.write_text('{"study": "corr')
    page = build_report(RunStore(run.root)).read_text()
    assert "perfscale report: corrupt" in page
    manifest = json.loads(run.manifest_path.read_text())
    assert (manifest["study"], manifest["site"], manifest["tasks"]) == ("corrupt", "local", 8)
    assert (
        f"{run.manifest_path}: not valid JSON" in caplog.text and "rebuilt from plan.parquet" in caplog.text
    )
    assert [p.name.split(".json.")[0] for p in (run.root / "quarantine").iterdir()] == ["manifest"]
    with pytest.raises(
        PerfscaleError, match=r"manifest\.json: was rebuilt and does not know the study's folder"
    ):
        _ = RunStore(run.root).study_dir


def test_run_rewrites_a_rebuilt_manifest(run):
    study_dir = Path(json.loads(run.manifest_path.read_text())["study_dir"])
    run.manifest_path.write_text("[]")
    store = prepare_run(study_dir / "study.yaml", load_site("local"), run.root)
    assert Path(store.manifest()["study_dir"]) == study_dir and "rebuilt_at" in store.manifest()
    assert _rerun(store)["square"].done == 3


def test_a_garbage_site_json_is_rebuilt_from_the_site_config(run, caplog):
    site_json = run.root / "site.json"
    site_json.write_text("garbage")
    assert main(["status", str(run.root)]) == 0
    assert json.loads(site_json.read_text()) == load_site("local").model_dump(mode="json")
    assert (
        f"{site_json}: not a valid site" in caplog.text
        and "rebuilt from the site config 'local'" in caplog.text
    )


def test_a_site_json_that_cannot_be_rebuilt_is_a_one_line_error(run, capsys):
    (run.root / "site.json").write_bytes(b"\xff\xfe not utf-8")
    manifest = json.loads(run.manifest_path.read_text())
    run.manifest_path.write_text(json.dumps({**manifest, "site": "nosuch"}))
    assert main(["status", str(run.root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"perfscale: error: {run.root / 'site.json'}: ") and "unknown site 'nosuch'" in err
    assert f"--run-dir {run.root}` to write it again" in err


# ---- missing upstream artifacts ------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_an_upstream_whose_artifacts_are_gone_is_redone_and_downstream_runs(run, damage):
    trained = run.plan.of_stage("train")[0]
    model = run.artifact_dir("train", trained.key) / "model.txt"
    if damage == "deleted":
        shutil.rmtree(model.parent)
    else:
        model.write_text("half")
    for t in run.plan.of_stage("sample"):  # the downstream tasks have not run yet
        run.shard_path("sample", t.key).unlink()

    summary = _rerun(run)
    assert (summary["train"].ran, summary["train"].failed) == (1, 0)
    assert (summary["sample"].ran, summary["sample"].failed) == (2, 0)
    (message,) = _corrupt_rows(run).message
    assert f"its artifact {model} " in message
    assert model.read_text() == "model of x=1"
    assert sorted(run.read_stage("sample").to_pandas()["model"]) == ["model of x=1", "model of x=2"]


REAL_TRAIN = """\
name: realtrain
seed: 1
stages:
  data: {kind: ingest, params: {kind: sklearn, source: iris}}
  split: {kind: split, inputs: [data], params: {source: data, holdout_fraction: 0.3}}
  train:
    kind: train
    inputs: [split]
    params: {source: split}
    grid: {product: {generator: [smote]}}
  sample:
    kind: sample
    foreach: train
    params: {rows: 20}
"""


def test_a_real_train_task_whose_model_folder_was_deleted_is_trained_again(write_study, tmp_path):
    store = prepare_run(write_study(REAL_TRAIN), load_site("local"), tmp_path / "run")
    assert all(s.failed == 0 for s in run_plan(store, "local", workers=1, progress=False).values())
    # the train shard says where the fit ran (SMOTE: always the CPU)
    assert store.read_stage("train").to_pandas()[
        ["device", "precision"]
    ].drop_duplicates().values.tolist() == [["cpu", "fp32"]]
    (train,) = store.plan.of_stage("train")
    shutil.rmtree(store.artifact_dir("train", train.key))
    (sample,) = store.plan.of_stage("sample")
    store.shard_path("sample", sample.key).unlink()  # the sample task had not run yet

    summary = _rerun(store)
    assert (summary["train"].ran, summary["sample"].ran, summary["sample"].failed) == (1, 1, 0)
    assert (store.artifact_dir("train", train.key) / "model" / "generator.json").exists()
    assert store.read_stage("sample").num_rows == 20


# ---- lost attempt records ------------------------------------------------------------------------------
def _raw_ok_keys(store: RunStore) -> set[str]:
    """Task keys with an ok row in the attempts files themselves (no recovery)."""
    files = sorted((store.root / "attempts").glob("*.parquet"))
    tables = [pq.read_table(f, columns=["task_key", "ok"]).to_pandas() for f in files]
    return {k for t in tables for k in t.loc[t["ok"], "task_key"]}


def test_deleted_attempt_rows_are_read_back_from_the_shards(run, capsys):
    before = run.attempts().set_index("task_key").sort_index()
    shutil.rmtree(run.root / "attempts")
    after = RunStore(run.root).attempts().set_index("task_key").sort_index()
    assert after.index.tolist() == before.index.tolist()
    same = ["stage", "index", "attempt", "host", "pid", "started_at", "duration_s", "ok", "exit_status"]
    assert after[same].equals(before[same])
    assert (after["message"] == RECOVERED_MESSAGE).all()
    assert main(["status", str(run.root)]) == 0
    assert "8 finished task(s) had lost their attempt row" in capsys.readouterr().out


def test_sigkill_of_perfscale_run_leaves_every_finished_task_explained(write_study, tmp_path, capsys):
    study = write_study(slow_squares(30, 0.3))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "perfscale.cli", "run", str(study), "--run-dir", str(run)]
    cmd += ["--engine", "local", "--workers", "1", "--no-report", "--quiet"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    store = RunStore(run)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # kill while a finished task's row is buffered
        if run.joinpath("plan.parquet").exists() and store.listed_keys("square") - _raw_ok_keys(store):
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    done = RunStore(run).done_keys("square")
    assert done - _raw_ok_keys(store), "the kill came after every row was written: nothing was lost"
    attempts = RunStore(run).attempts()
    explained = set(attempts.loc[attempts["ok"], "task_key"])
    assert done <= explained
    recovered = attempts[attempts["message"] == RECOVERED_MESSAGE]
    assert set(recovered.task_key) == done - _raw_ok_keys(store)
    assert (recovered.host.notna() & (recovered.duration_s >= 0.3)).all()  # the real attempt's record
    assert main(["status", str(run)]) == 0
    assert f"{len(recovered)} finished task(s) had lost their attempt row" in capsys.readouterr().out
