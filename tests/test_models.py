"""perfscale.models on slices of the real Mira trace (../shared/data/jobs/mira): save/load round trips,
submit-time features and their leakage checks, SMOTETomek on training rows only, splits, the fit_predict
stage and its report section."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from pydantic import ValidationError

from perfscale.errors import BadInput, SpecError
from perfscale.execute import execute_task
from perfscale.models import MODELS, build_model, load_model
from perfscale.models.features import FutureHistory, PostSubmitFeature, history_features
from perfscale.models.fit import FitSpec, fit_predict
from perfscale.models.resample import resample_training
from perfscale.models.splits import make_splits
from perfscale.report import build_report
from perfscale.runner import prepare_run, run_plan
from perfscale.spec import load_site
from perfscale.stages.fit_predict import FitPredictParams

DATA = Path(os.environ.get("PERFSCALE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MIRA = DATA / "jobs" / "mira" / "data_mira.csv"
if not MIRA.is_file():
    raise RuntimeError(
        f"no {MIRA}: the tests need ../shared/data beside the project (or PERFSCALE_SHARED_DATA)"
    )

FEATURES = ["node_num", "cpu_num", "wall_time"]
END = ["submit_time", "wait_time", "run_time"]
ENDSTATE = {
    "targets": ["new_status"],
    "features": FEATURES,
    "time_column": "submit_time",
    "calendar": True,
    "history_by": ["user", "project"],
    "history_outcome": "new_status",
    "end_columns": END,
}
SMALL = {
    "mean": {},
    "linear": {},
    "random_forest": {"n_estimators": 20, "max_depth": 6},
    "xgboost": {"n_estimators": 20, "max_depth": 4},
    "mlp": {"hidden": [16], "epochs": 5},
    "vae_dnn": {"latent": 3, "vae_hidden": [8], "vae_epochs": 3, "dnn_hidden": [8], "dnn_epochs": 3},
    "llm_classifier": {"epochs": 1, "batch_size": 64},
}


@pytest.fixture(scope="module")
def mira() -> pd.DataFrame:
    return pd.read_csv(MIRA).drop(columns=["Unnamed: 0"])


@pytest.fixture(scope="module")
def block(mira: pd.DataFrame) -> pd.DataFrame:
    """3,000 consecutive jobs (about three weeks): histories have earlier jobs to draw on."""
    return mira.iloc[6000:9000].reset_index(drop=True)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_round_trip(name: str, task: str, block: pd.DataFrame, tmp_path: Path) -> None:
    table = block.iloc[:600]
    targets = ["new_status"] if task == "classification" else ["run_time", "wait_time"]  # multi-output
    if task not in MODELS[name].tasks:  # llm_classifier: classes only, said in a named error
        with pytest.raises(BadInput, match=f"{name}: does not do {task}"):
            build_model(name, SMALL[name], seed=3).fit(table, targets, FEATURES)
        return
    model = build_model(name, SMALL[name], seed=3).fit(table, targets, FEATURES)
    before = model.predict(block.iloc[600:700])
    model.save(tmp_path / "m")
    assert not any(p.suffix in (".pkl", ".pickle", ".joblib") for p in (tmp_path / "m").iterdir())
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.task == task and loaded.targets == targets
    pd.testing.assert_frame_equal(loaded.predict(block.iloc[600:700]), before)
    if task == "classification":
        np.testing.assert_array_equal(
            loaded.predict_proba(block.iloc[600:700]), model.predict_proba(block.iloc[600:700])
        )
        assert loaded.classes == ["Failed", "Killed", "Pass"]
    else:
        assert list(before.columns) == targets


def test_hyperparameters_are_typed_and_checked_at_plan_time(write_study, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="n_trees"):
        build_model("xgboost", {"n_trees": 5})
    with pytest.raises(ValidationError, match="max_depth"):
        FitPredictParams(source="t", targets=["new_status"], features=FEATURES, model="xgboost",
                         hyperparameters={"max_depth": 0})  # fmt: skip
    study = write_study(_study("model: random_forest\n              hyperparameters: {n_trees: 5}"))
    with pytest.raises(SpecError, match="n_trees"):
        prepare_run(study, load_site("local"), tmp_path / "run")


def test_post_submit_features_refused(write_study, tmp_path: Path) -> None:
    """The leakage test: run_time (known once the job ended) as an end-state input is a named error."""
    with pytest.raises(PostSubmitFeature, match=r"\['run_time'\] are known only after a job ends"):
        spec = FitSpec(targets=["new_status"], features=["node_num", "run_time"], model="mean")
        fit_predict(pd.read_csv(MIRA, nrows=50), spec, 0)
    study = write_study(
        _study("model: linear").replace("[node_num, cpu_num, wall_time]", "[node_num, run_time]")
    )
    with pytest.raises(SpecError, match=r"known only after a job ends.*allow_post_submit_features"):
        prepare_run(study, load_site("local"), tmp_path / "run")
    allowed = FitPredictParams(source="t", targets=["new_status"], features=["run_time"], model="mean",
                               allow_post_submit_features=True)  # fmt: skip
    assert allowed.features == ["run_time"]


def test_history_features_never_look_ahead(block: pd.DataFrame) -> None:
    table = block.iloc[:400].reset_index(drop=True)
    hist = history_features(table, ["user"], "submit_time", END, "new_status")
    submit = table["submit_time"].to_numpy()
    end = table[END].sum(axis=1).to_numpy()
    classes = sorted(table["new_status"].unique())
    for i in range(len(table)):  # brute force, row by row
        same = (table["user"] == table["user"][i]).to_numpy()
        earlier = same & (submit < submit[i])
        ended = same & (end < submit[i])
        assert not earlier[i] and not ended[i]  # a row never sees itself
        assert hist["user_prior_jobs"][i] == earlier.sum()
        assert hist["user_prior_ended"][i] == ended.sum()
        for c in classes:
            want = ((table["new_status"] == c).to_numpy() & ended).sum() + 1
            assert hist[f"user_prior_{c}"][i] == pytest.approx(want / (ended.sum() + len(classes)))
    # rewriting the later half's outcomes and end times changes nothing for rows that were done by then
    cut = submit[200]
    later = table.copy()
    flip = later["submit_time"] >= cut
    later.loc[flip, "new_status"] = "Failed"
    later.loc[flip, "run_time"] = 1.0
    again = history_features(later, ["user"], "submit_time", END, "new_status")
    unaffected = (submit < cut) & (end < cut)  # also: no earlier row sees a job that ended after the cut
    pd.testing.assert_frame_equal(hist[submit < cut], again[submit < cut])
    assert unaffected.sum() > 50
    # jobs submitted in the same second do not see each other
    ties = pd.DataFrame({"user": ["a"] * 3, "submit_time": [5.0, 5.0, 6.0], "wait_time": 0, "run_time": 0,
                         "new_status": ["Pass", "Failed", "Pass"]})  # fmt: skip
    tied = history_features(ties, ["user"], "submit_time", END, "new_status")
    assert tied["user_prior_jobs"].tolist() == [0, 0, 2]
    assert tied["user_prior_ended"].tolist() == [0, 0, 2]


def test_history_that_would_look_into_the_future_is_refused(block: pd.DataFrame) -> None:
    with pytest.raises(FutureHistory, match="needs end_columns"):
        history_features(block, ["user"], "submit_time", None, "new_status")
    bad = block.iloc[:20].assign(wait_time=-(10**7))
    with pytest.raises(FutureHistory, match="before the submit time"):
        history_features(bad, ["user"], "submit_time", END, "new_status")
    with pytest.raises(ValidationError, match="history_outcome needs end_columns"):  # at plan time
        FitPredictParams(source="t", targets=["new_status"], features=FEATURES, model="mean",
                         time_column="submit_time", history_by=["user"],
                         history_outcome="new_status")  # fmt: skip


def test_smotetomek_changes_training_rows_never_test_rows(block: pd.DataFrame) -> None:
    x = block[FEATURES].to_numpy(float)[:800]
    y = block["new_status"].astype("category").cat.codes.to_numpy(np.int64)[:800]
    _, yr = resample_training(x, y, "smotetomek", seed=0)
    assert len(yr) != len(y) and np.bincount(yr).min() > np.bincount(y).min()
    spec = {**ENDSTATE, "model": "linear", "split": "random"}
    plain = fit_predict(block, FitSpec(**spec), seed=5)
    resampled = fit_predict(block, FitSpec(**spec, resample="smotetomek"), seed=5)
    assert (plain["train_rows_fitted"] == plain["train_rows"]).all()
    assert (resampled["train_rows_fitted"] != resampled["train_rows"]).all()
    # the same test rows, with the same truth, in the same order
    pd.testing.assert_frame_equal(
        plain[["row", "truth_label", "test_rows"]], resampled[["row", "truth_label", "test_rows"]]
    )
    assert len(plain) == round(len(block) * 0.25)


def test_endstate_beats_the_majority_baseline(block: pd.DataFrame) -> None:
    scores = {}
    for model in ("mean", "linear", "xgboost"):
        out = fit_predict(block, FitSpec(**ENDSTATE, model=model, hyperparameters=SMALL[model]), seed=1)
        scores[model] = out["auc_macro"].iloc[0]
    assert scores["mean"] == 0.5
    assert scores["xgboost"] > 0.75 and scores["linear"] > 0.6, scores


def test_splits(block: pd.DataFrame) -> None:
    table = block.iloc[:300]
    ((train, test),) = make_splits(table, "time", time_column="submit_time", test_fraction=0.3)
    assert table["submit_time"].iloc[train].max() < table["submit_time"].iloc[test].min()
    folds = make_splits(table, "kfold", k=4, stratify="new_status", seed=1)
    tested = np.sort(np.concatenate([t for _, t in folds]))
    np.testing.assert_array_equal(tested, np.arange(len(table)))
    groups = make_splits(table, "group", group_column="project")
    assert len(groups) == table["project"].nunique()
    for tr, te in groups:
        assert table["project"].iloc[te].nunique() == 1
        assert not set(table["project"].iloc[tr]) & set(table["project"].iloc[te])


def test_bad_input(block: pd.DataFrame) -> None:
    with pytest.raises(BadInput, match=r"target columns \['end_state'\] are not in the input"):
        fit_predict(block, FitSpec(targets=["end_state"], features=FEATURES, model="mean"), 0)
    one = block.iloc[:200].copy()
    one.loc[one.index[0], "new_status"] = "Timeout"
    with pytest.raises(BadInput, match=r"classes \{'Timeout': 1\} have fewer than 2 rows"):
        fit_predict(one, FitSpec(targets=["new_status"], features=FEATURES, model="mean"), 0)
    holes = block.iloc[:200].copy()
    holes.loc[holes.index[:3], "wall_time"] = np.nan
    with pytest.raises(BadInput, match=r"NaN.*\{'wall_time': 3\}.*nan: drop"):
        fit_predict(holes, FitSpec(targets=["new_status"], features=FEATURES, model="mean"), 0)
    dropped = fit_predict(
        holes, FitSpec(targets=["new_status"], features=FEATURES, model="mean", nan="drop"), 0
    )
    assert dropped["test_rows"].iloc[0] == math.ceil(197 * 0.25)  # sklearn rounds the test share up
    with pytest.raises(BadInput, match="for class targets"):
        fit_predict(
            block, FitSpec(targets=["run_time"], features=FEATURES, model="mean", resample="smotetomek"), 0
        )


def _study(model_line: str, rows: int = 10_000, grid: str = "{}") -> str:
    return f"""
        name: endstate-test
        stages:
          trace: {{kind: ingest, params: {{kind: csv, source: {MIRA}}}}}
          fit:
            kind: fit_predict
            inputs: [trace]
            grid: {grid}
            params:
              source: trace
              targets: [new_status]
              features: [node_num, cpu_num, wall_time]
              time_column: submit_time
              calendar: true
              history_by: [user]
              history_outcome: new_status
              end_columns: [submit_time, wait_time, run_time]
              rows: {rows}
              {model_line}
        """


def test_stage_and_report(write_study, tmp_path: Path) -> None:
    text = _study("split: time", rows=1500, grid="{product: {model: [mean, linear]}}")
    store = prepare_run(write_study(text), load_site("local"), tmp_path / "run")
    for task in store.plan.tasks:
        outcome = execute_task(store.root, task.index)
        assert outcome.ok, outcome.message
    out = store.read_stage("fit", provenance=False).to_pandas()
    assert set(out["model"]) == {"mean", "linear"} and set(out["split"]) == {"time"}
    assert len(out) == 2 * round(1500 * 0.25)
    fit_task = next(t for t in store.plan.tasks if t.stage == "fit")
    saved = load_model(store.artifact_dir("fit", fit_task.key) / "model")
    assert "user_prior_Failed" in saved.features and "submit_hour" in saved.features
    page = build_report(store).read_text()
    assert "Model predictions: fit" in page and "auc_macro" in page and "data:image/png" in page
    assert "section not drawn" not in page


@pytest.mark.slow
def test_endstate_workflow_reduced(tmp_path: Path) -> None:
    """workflows/endstate.yaml through the local engine on 1,500 Mira jobs, two models."""
    study = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflows" / "endstate.yaml").read_text())
    study["stages"]["trace"]["params"]["source"] = str(MIRA)
    fit = study["stages"]["fit"]
    fit["params"]["rows"] = 1500
    fit["grid"]["product"]["model"] = ["mean", "xgboost"]
    path = tmp_path / "endstate-small.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    store = prepare_run(path, load_site("local"), tmp_path / "run")
    summary = run_plan(store, "local", workers=2, progress=False)
    assert {s: (v.done, v.failed) for s, v in summary.items()} == {"trace": (1, 0), "fit": (6, 0)}
    scores = store.read_stage("fit", provenance=False).to_pandas().groupby(["model", "split", "resample"])
    auc = scores["auc_macro"].first()
    assert (auc.loc["mean"] == 0.5).all() and (auc.loc["xgboost"] > 0.7).all(), auc
    assert "Model predictions: fit" in build_report(store).read_text()


def test_sacct_end_states() -> None:
    """Real sacct output (tests/data/sacct): timestamps as times, sacct's post-submit columns refused."""
    from perfscale.ingest.sacct import read_sacct

    data = Path(__file__).parent / "data" / "sacct"
    jobs = read_sacct([data / "cluster-jobs-allocations.txt", data / "cgroup-oom-nodefail-requeue.txt"])
    table = jobs.to_pandas().dropna(subset=["submit", "end"]).reset_index(drop=True)
    hist = history_features(table, ["account"], "submit", ["end"], "state")
    submit = table["submit"].map(lambda t: t.timestamp())
    end = table["end"].map(lambda t: t.timestamp())
    for i in range(len(table)):
        same = table["account"] == table["account"][i]
        assert hist["account_prior_jobs"][i] == (same & (submit < submit[i])).sum()
        assert hist["account_prior_ended"][i] == (same & (end < submit[i])).sum()
    assert hist["account_prior_ended"].max() > 0
    for column in ("elapsed_s", "queue_wait_s", "exit_code", "max_rss_bytes", "alloc_cpus"):
        with pytest.raises(ValidationError, match=f"{column}.*known only after"):
            FitPredictParams(source="t", targets=["state"], features=["req_cpus", column], model="mean")


def test_kfold_regression_and_its_report_parts(block: pd.DataFrame) -> None:
    """Multi-output regression over 3 folds: every row tested once; the report's table and plot draw."""
    from perfscale.report import fit_predict as fp

    table = block.iloc[:600]
    spec = FitSpec(
        targets=["run_time", "wait_time"],
        features=FEATURES,
        model="xgboost",
        hyperparameters=SMALL["xgboost"],
        split="kfold",
        folds=3,
    )
    out = fit_predict(table, spec, seed=2)
    assert sorted(out["row"]) == list(range(600)) and set(out["fold"]) == {0, 1, 2}
    np.testing.assert_array_equal(out.sort_values("row")["truth_run_time"], table["run_time"])
    scores = fp.score_table(out)
    assert len(scores) == 1 and {"mae_run_time", "r2_wait_time"} <= set(scores.columns)
    assert fp.predicted_vs_true(out)[:4] == b"\x89PNG"


def test_docs_list_every_hyperparameter() -> None:
    """docs/models.md's table names each model's hyperparameters, and nothing else."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    for name, model in MODELS.items():
        # the hyperparameter table's rows have two cells (the model table above it has four)
        (row,) = [ln for ln in text.splitlines() if ln.startswith(f"| `{name}` | ") and ln.count("|") == 3]
        documented = set(re.findall(r"`(\w+)` ", row.split("|")[2]))
        assert documented == set(model.Hyper.model_fields), (name, documented)


def test_given_split_and_one_hot(block: pd.DataFrame) -> None:
    """`split: given` trains on a split stage's train rows and tests its holdout rows; `one_hot` turns a
    categorical column into 0/1 features (categories from the whole table)."""
    table = block.iloc[:300].assign(split=["holdout" if i % 4 == 0 else "train" for i in range(300)])
    spec = FitSpec(["run_time"], ["node_num"], "linear", split="given", one_hot=["new_status"],
                   allow_post_submit_features=True)  # fmt: skip
    out = fit_predict(table, spec, seed=0)
    assert sorted(out["row"]) == list(range(0, 300, 4)) and (out["train_rows"] == 225).all()
    assert out["features"].iloc[0] == "node_num,new_status=Failed,new_status=Killed,new_status=Pass"
    with pytest.raises(BadInput, match="split 'given' needs a 'split' column"):
        fit_predict(table.drop(columns="split"), spec, seed=0)
    with pytest.raises(BadInput, match="one_hot column 'queue' is not in the input"):
        fit_predict(table, FitSpec(["run_time"], ["node_num"], "mean", split="given", one_hot=["queue"]), 0)
    with pytest.raises(PostSubmitFeature):
        fit_predict(table, FitSpec(["wall_time"], ["node_num"], "mean", split="given", one_hot=["state"]), 0)


def test_rows_kept_by_classes_are_numbered_in_the_input(block: pd.DataFrame) -> None:
    """`classes` drops the rows of other classes; `row` still points into the input table."""
    table = block.iloc[:300].reset_index(drop=True)
    table["new_status"] = table["new_status"].astype(str)
    keep = ["Pass", "Failed"]
    spec = FitSpec(["new_status"], ["node_num"], "mean", classes=keep)
    out = fit_predict(table, spec, seed=0)
    assert set(out["truth_label"]) <= set(keep)
    assert (table.loc[out["row"], "new_status"].to_numpy() == out["truth_label"].to_numpy()).all()
    assert table["new_status"].isin(["Killed"]).any()  # something was dropped, so positions could shift


def test_choice_hits_pick_the_fastest_or_the_smallest_thread_count_meeting_the_bound():
    from perfscale.models.scoring import choice_hits
    from perfscale.stages.predict import PredictParams

    # two configurations x threads 1, 2, 4, two repetitions each; config b has one thread count only
    table = pd.DataFrame(
        {
            "kernel": ["a"] * 6 + ["b"] * 2,
            "threads": [1, 1, 2, 2, 4, 4, 1, 1],
        }
    )
    truth = np.array([0.9, 1.1, 0.5, 0.5, 0.3, 0.4, 1.0, 1.0])  # means a: 1.0, 0.5, 0.35
    pred = np.array([1.0, 1.0, 0.7, 0.7, 0.8, 0.8, 2.0, 2.0])  # means a: 1.0, 0.7, 0.8
    fastest = choice_hits(table, "threads", ["kernel"], truth, pred)
    assert fastest[["kernel", "measured", "predicted", "hit"]].values.tolist() == [["a", 4, 2, False]]
    # bound 0.75: measured 2 threads (0.5) is the smallest meeting it, predicted 2 threads (0.7) too
    bounded = choice_hits(table, "threads", ["kernel"], truth, pred, bound=0.75)
    assert bounded[["measured", "predicted", "hit"]].values.tolist() == [[2, 2, True]]
    # a bound nobody meets falls back to the fastest
    assert choice_hits(table, "threads", ["kernel"], truth, pred, bound=0.1)["measured"].tolist() == [4]
    with pytest.raises(BadInput, match=r"choice columns \['size'\] are not in the table"):
        choice_hits(table, "threads", ["size"], truth, pred)
    # the question's params go together, checked when the study is planned
    base = {"source": "split", "target": "wall_time_s"}
    with pytest.raises(ValidationError, match="choose and group_by go together"):
        PredictParams(**base, choose="threads")
    with pytest.raises(ValidationError, match="time_bound needs choose"):
        PredictParams(**base, time_bound=1.0)
    with pytest.raises(ValidationError, match="also in group_by or the target"):
        PredictParams(**base, choose="kernel", group_by=["kernel"])
