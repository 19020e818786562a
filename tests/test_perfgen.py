"""workflows/perfgen.yaml end to end, reduced: real kernels, real SDV models, real metrics, a real report."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from perfscale.report import build_report
from perfscale.runner import prepare_run, run_plan
from perfscale.spec import load_site

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def reduced_perfgen(tmp_path: Path) -> Path:
    study = yaml.safe_load((ROOT / "workflows" / "perfgen.yaml").read_text())
    profile = study["stages"]["profile"]
    profile["grid"]["zip"] = {
        "kernel": ["triad", "triad", "matmul", "matmul"],
        "size": [100000, 400000, 64, 96],
        "iters": [2, 2, 1, 1],
    }
    profile["repetitions"] = 3
    study["stages"]["train"]["grid"]["zip"] = {
        "generator": ["gaussian_copula", "ctgan", "smote"],
        "hyperparameters": [{}, {"epochs": 5, "batch_size": 10}, {}],
    }
    study["stages"]["sample"]["params"]["rows"] = 50
    study["stages"]["evaluate"]["params"]["options"]["ml_efficacy"]["models"] = ["linear"]
    study["stages"]["regress"]["grid"]["zip"] = {
        "model": ["mean", "xgboost"],
        "hyperparameters": [{}, {"n_estimators": 20, "max_depth": 3}],
    }
    path = tmp_path / "perfgen-small.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def study_metrics(path: Path) -> list[str]:
    return yaml.safe_load(path.read_text())["stages"]["evaluate"]["params"]["metrics"]


@pytest.mark.slow
def test_perfgen_end_to_end(reduced_perfgen: Path, tmp_path: Path):
    store = prepare_run(reduced_perfgen, load_site("local"), tmp_path / "run")
    summary = run_plan(store, "local", workers=2, progress=False)
    assert {s: (v.done, v.failed) for s, v in summary.items()} == {
        "profile": (24, 0),
        "split": (1, 0),
        "train": (3, 0),
        "sample": (3, 0),
        "evaluate": (3, 0),
        "predict": (3, 0),
        "recommend": (3, 0),
        "regress": (2, 0),
    }

    profiles = store.read_stage("profile").to_pandas()
    assert (profiles["exit_status"] == 0).all() and (profiles["wall_time_s"] > 0).all()
    assert profiles["gflops"].notna().all()

    split = store.read_stage("split", provenance=False).to_pandas()
    assert sorted(split["split"].value_counts().tolist()) == [6, 18]

    synth = store.read_stage("sample", provenance=False).to_pandas()
    assert sorted(synth["generator"].unique()) == ["ctgan", "gaussian_copula", "smote"]
    assert set(synth["threads"]) <= {1, 2}  # discrete columns only take values seen in the real data
    assert set(synth["kernel"]) <= {"triad", "matmul"}
    assert set(synth["size"]) <= {100000, 400000, 64, 96}

    metrics = store.read_stage("evaluate", provenance=False).to_pandas()
    shapes = metrics.query("metric == 'column_shapes' and component == 'score'")
    assert len(shapes) == 3 and shapes["value"].between(0, 1).all()
    assert metrics["value"].notna().all()
    assert set(study_metrics(reduced_perfgen)) == set(metrics["metric"])

    predictions = store.read_stage("predict", provenance=False).to_pandas()
    assert len(predictions) == 3 * 6 and (predictions["target"] == "wall_time_s").all()
    assert (predictions["prediction"] > 0).all() and predictions["mse"].notna().all()
    # the thread-count question: the holdout's configuration columns and the hit rate over its configurations
    assert {"kernel", "size", "threads", "choice_hit_rate", "choice_groups"} <= set(predictions.columns)
    assert predictions["choice_groups"].between(0, 4).all()
    # direct regressors on the same partition: trained on the 18 train rows, scored on the 6 holdout rows
    direct = store.read_stage("regress", provenance=False).to_pandas()
    assert direct.groupby("model").size().to_dict() == {"mean": 6, "xgboost": 6}
    assert set(direct["split"]) == {"given"} and (direct["train_rows"] == 18).all()
    holdout = split[split["split"] == "holdout"].reset_index(drop=True)
    assert sorted(direct.loc[direct.model == "mean", "truth_wall_time_s"]) == sorted(holdout["wall_time_s"])
    assert {"kernel=matmul", "kernel=triad"} <= set(direct["features"].iloc[0].split(","))
    picks = store.read_stage("recommend", provenance=False).to_pandas()
    assert (picks.groupby("generator")["count"].sum() == 500).all()
    assert set(picks["kernel"]) <= {"triad", "matmul"}

    telemetry = store.read_stage("train", provenance=False).to_pandas()
    ctgan = telemetry[telemetry.generator == "ctgan"]
    assert set(ctgan["loss"]) == {"generator", "discriminator"} and ctgan["epoch"].max() == 4

    page = build_report(store).read_text()
    for title in (
        "Run status",
        "Profiles: profile",
        "Training: train",
        "Real vs synthetic",
        "Synthetic quality",
    ):
        assert title in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) >= 5
    assert "xgboost (direct, regress)" in page and "gaussian_copula (generation)" in page
    assert "choice_hit_rate: per configuration (kernel, size) the threads value" in page
