"""Relative performance vectors (perfscale.models.rpv, the `relperf` stage): RPV and Same Order Score on
hand-checked tables, what is dropped and what is refused, grouped splits, and the stage end to end on the real
Caliper (Quartz, Lassen) and RAJAPerf (H100, MI300A) profiles in ../shared/data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from perfscale.errors import BadInput
from perfscale.execute import execute_task
from perfscale.models.fit import FitSpec, fit_predict
from perfscale.models.rpv import Dropped, profile_points, rpv_table, same_order_score
from perfscale.models.splits import make_splits
from perfscale.report import build_report
from perfscale.runner import prepare_run
from perfscale.spec import load_site

DATA = Path(os.environ.get("PERFSCALE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
if not (DATA / "rajaperf-fcr2026").is_dir():
    raise RuntimeError(f"no {DATA}/rajaperf-fcr2026: tests need ../shared/data (or PERFSCALE_SHARED_DATA)")


def points(rows: list[tuple[str, str, float, float]]) -> pd.DataFrame:
    """(kernel, system, node work, time per element) -> a points table (bytes and flops made up)."""
    df = pd.DataFrame(rows, columns=["kernel", "system", "work", "time_per_element_s"])
    return df.assign(
        time_per_rep_s=df["work"] * df["time_per_element_s"],
        bytes_per_rep=df["work"] * 16,
        flops_per_rep=df["work"] * 4,
        iterations_per_rep=df["work"],
        variant="Base/default",
    )


HAND = points(
    [
        ("A", "X", 100, 1.0), ("A", "Y", 100, 2.0), ("A", "Z", 150, 4.0),
        ("B", "X", 1000, 3.0), ("B", "Y", 1000, 1.0), ("B", "Z", 5000, 6.0),  # Z's size is 5x the base's
        ("C", "X", 100, 1.0),  # one system only
    ]
)  # fmt: skip


def test_rpv_by_hand():
    dropped = Dropped()
    t = rpv_table(HAND, base="X", size_tolerance=2.0, dropped=dropped)
    assert dropped.counts == {
        "kernels measured on one system only": 1,  # C
        "base sizes with no size within size_tolerance on every system": 1,  # B: Z at 5x
    }
    assert len(t) == 3 and set(t["kernel"]) == {"A"} and list(t["profiled_on"]) == ["X", "Y", "Z"]
    row = t.iloc[0]
    assert [row[f"rpv_{s}"] for s in "XYZ"] == [1.0, 2.0, 4.0]  # t_s / t_X
    assert [row[f"rpvmin_{s}"] for s in "XYZ"] == [1.0, 2.0, 4.0]  # X is the fastest
    assert [row[f"speed_{s}"] for s in "XYZ"] == [1.0, 0.5, 0.25]
    assert row["fastest"] == "X"
    # features are each profiled system's own point; the one-hot says which
    assert list(t["log_time_per_element"]) == pytest.approx([0, np.log10(2), np.log10(4)])
    assert list(t["log_work"]) == pytest.approx([2, 2, np.log10(150)])
    assert t[["on_X", "on_Y", "on_Z"]].to_numpy().tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]

    wide = rpv_table(HAND, base="X", size_tolerance=6.0).drop_duplicates("vector").set_index("kernel")
    b = wide.loc["B"]
    assert [b[f"rpv_{s}"] for s in "XYZ"] == pytest.approx([1, 1 / 3, 2])
    assert [b[f"rpvmin_{s}"] for s in "XYZ"] == pytest.approx([3, 1, 6])
    assert [b[f"speed_{s}"] for s in "XYZ"] == pytest.approx([1 / 3, 1, 1 / 6])
    assert b["fastest"] == "Y"


def test_same_order_score_by_hand():
    truth = np.array([[1, 2, 3], [3, 2, 1], [1, 1, 2]], dtype=float)
    pred = np.array([[0.1, 0.2, 0.3], [1, 2, 3], [5, 4, 6]], dtype=float)
    # row 1 in order; row 2 reversed; row 3 puts the tied pair (1, 1) in either order: in order
    assert same_order_score(truth, pred) == pytest.approx(2 / 3)
    assert same_order_score(truth, truth) == 1.0


def test_refused_with_the_cause():
    with pytest.raises(BadInput, match=r"systems \['W', 'X'\] have no kernel in common"):
        rpv_table(points([("A", "X", 1, 1.0), ("B", "W", 1, 1.0)]), base="X")
    with pytest.raises(BadInput, match=r"systems \['Q'\] have no profiles"):
        rpv_table(HAND, base="Q")
    with pytest.raises(BadInput, match=r"no size of the base 'X' has a size within 1\.1x"):
        rpv_table(HAND[HAND.kernel == "B"], base="X", size_tolerance=1.1)
    with pytest.raises(BadInput, match=r"neither a Caliper table .* nor a RAJAPerf one"):
        profile_points([pd.DataFrame({"x": [1]})], Dropped())
    with pytest.raises(BadInput, match=r"a RAJAPerf table lacks columns \['kernel', 'machine'"):
        profile_points([pd.DataFrame({"time_per_rep_s": [1.0]})], Dropped())
    # a profile without bytes per rep (NaN): refused, naming the feature (nothing is imputed)
    holes = HAND.assign(bytes_per_rep=HAND["bytes_per_rep"].where(HAND["system"] != "Y"))
    with pytest.raises(BadInput, match=r"features \['log_bytes_per_rep', 'flops_per_byte'\] have NaN"):
        rpv_table(holes, base="X")


def test_points_from_rajaperf_rows():
    """The fastest passing variant per kernel x system x size; time per element of the node's work."""
    raw = pd.DataFrame(
        {
            "kernel": ["K"] * 4,
            "machine": ["M"] * 4,
            "device": ["gpu", "gpu", "gpu", "cpu"],
            "variant": ["Base_HIP", "RAJA_HIP", "RAJA_HIP", "Base_Seq"],
            "tuning": ["block_256", "block_64", "block_256", "default"],
            "problem_size": [1000.0] * 4,
            "mpi_ranks": [4] * 4,
            "checksum": ["PASSED", "PASSED", "FAILED", "PASSED"],
            "time_per_rep_s": [2e-3, 1e-3, 1e-4, 8e-2],  # the fastest GPU row failed its checksum
            "iterations_per_rep": [1000.0] * 4,
            "bytes_moved_per_rep": [8000.0] * 4,
            "flops_per_rep": [2000.0] * 4,
        }
    )
    dropped = Dropped()
    p = profile_points([raw], dropped).set_index("system")
    assert dropped.counts == {"measurements with a failed checksum": 1}
    assert p.loc["M_gpu", "variant"] == "RAJA_HIP/block_64"
    assert p.loc["M_gpu", "time_per_element_s"] == pytest.approx(1e-3 / (1000 * 4))
    assert p.loc["M_cpu", "work"] == 4000


def test_grouped_random_split_keeps_vectors_whole():
    t = rpv_table(HAND, base="X", size_tolerance=6.0)
    ((train, test),) = make_splits(t, "random", seed=1, test_fraction=0.5, group_column="vector")
    assert set(t["vector"].iloc[train]).isdisjoint(t["vector"].iloc[test])
    assert len(train) == len(test) == 3


@pytest.fixture(scope="module")
def shared_points() -> pd.DataFrame:
    from perfscale.ingest import read_source

    tables = [
        read_source("caliper", DATA / "caliper" / "rajaperf").to_pandas(),
        read_source("rajaperf", DATA / "rajaperf-fcr2026").to_pandas(),
    ]
    return profile_points(tables, Dropped())


def test_shared_profiles_give_vectors_across_eight_systems(shared_points: pd.DataFrame):
    assert sorted(shared_points["system"].unique()) == [
        "H100_cpu", "H100_gpu", "MI300A-CPX_cpu", "MI300A-CPX_gpu", "MI300A-SPX_cpu", "MI300A-SPX_gpu",
        "lassen_gpu", "quartz_cpu",
    ]  # fmt: skip
    t = rpv_table(shared_points, base="H100_gpu")
    speed = t.drop_duplicates("vector")[[c for c in t.columns if c.startswith("speed_")]]
    assert ((speed > 0) & (speed <= 1)).all().all() and (speed.max(axis=1) == 1).all()
    assert t["kernel"].nunique() == 7 and t.groupby("vector").size().eq(8).all()
    # Quartz's one core is slower per element than every GPU on every kernel
    assert (speed["speed_quartz_cpu"] < speed["speed_H100_gpu"]).all()


def test_vector_scores_in_fit_predict(shared_points: pd.DataFrame):
    t = rpv_table(shared_points, base="H100_gpu", systems=["H100_gpu", "MI300A-SPX_gpu", "H100_cpu"])
    targets = [c for c in t.columns if c.startswith("speed_")]
    features = ["log_work", "log_bytes_per_rep", "log_flops_per_rep", "log_time_per_element"]
    out = fit_predict(t, FitSpec(targets, features, "mean", split="group", group_column="kernel"), seed=0)
    assert set(out["split"]) == {"group:kernel"} and out["fold"].nunique() == t["kernel"].nunique()
    assert {"vector_mae", "vector_r2", "sos"} <= set(out.columns)


def test_relperf_workflow_end_to_end(write_study, tmp_path: Path):
    """ingest (Caliper, RAJAPerf) -> relperf -> fit_predict (mean, xgboost; leave one kernel out) -> simulate
    -> report"""
    study = write_study(
        f"""
        name: relperf-small
        seed: 5
        stages:
          caliper:
            kind: ingest
            params: {{kind: caliper, source: {DATA / "caliper" / "rajaperf"}}}
          fcr:
            kind: ingest
            params: {{kind: rajaperf, source: {DATA / "rajaperf-fcr2026"}}}
          rpv:
            kind: relperf
            inputs: [caliper, fcr]
            params: {{sources: [caliper, fcr], base: quartz_cpu, systems: [quartz_cpu, lassen_gpu, H100_gpu]}}
          fit:
            kind: fit_predict
            inputs: [rpv]
            params:
              source: rpv
              targets: [speed_quartz_cpu, speed_lassen_gpu, speed_H100_gpu]
              features: [log_work, log_flops_per_rep, log_time_per_element, on_quartz_cpu, on_lassen_gpu]
              split: group
              group_column: kernel
            grid:
              zip:
                model: [mean, xgboost]
                hyperparameters: [{{}}, {{n_estimators: 20, max_depth: 3}}]
          sim:
            kind: simulate
            inputs: [fit]
            params:
              source: fit
              model: xgboost
              split: group:kernel
              machines: [quartz_cpu, lassen_gpu, H100_gpu]
              nodes: {{H100_gpu: 4}}   # quartz_cpu and lassen_gpu: their site files' nodes
              jobs: 300
              mean_interarrival: 20
        """
    )
    store = prepare_run(study, load_site("local"), tmp_path / "run")
    for task in store.plan.tasks:
        outcome = execute_task(store.root, task.index)
        assert outcome.ok, outcome.message
    rpv_task = next(t for t in store.plan.tasks if t.stage == "rpv")
    summary = json.loads((store.artifact_dir("rpv", rpv_task.key) / "relperf.json").read_text())
    assert summary["systems"] == ["H100_gpu", "lassen_gpu", "quartz_cpu"]
    assert summary["dropped"]["measurements with a failed checksum"] == 3
    out = store.read_stage("fit", provenance=False).to_pandas()
    assert set(out["model"]) == {"mean", "xgboost"}
    assert out.groupby("model").size().eq(3 * summary["vectors"]).all()  # every row tested once
    sim = store.read_stage("sim", provenance=False).to_pandas().set_index("policy")
    assert list(sim.index) == ["predicted", "true", "random"] and (sim["jobs"] == 300).all()
    assert sim.loc["true", "mean_runtime"] < sim.loc["random", "mean_runtime"]
    nodes = {m: load_site(m.split("_")[0]).nodes for m in ("quartz_cpu", "lassen_gpu")}
    assert nodes == {"quartz_cpu": 3018, "lassen_gpu": 795}
    for m, n in {**nodes, "H100_gpu": 4}.items():
        assert (sim[f"nodes_{m}"] == n).all()
    page = build_report(store).read_text()
    assert "mae_below_mean_pct" in page and "Scheduling simulation: sim" in page
    assert "section not drawn" not in page
    assert page.count("data:image/png") == 4  # predicted vs true, SOS bars, MAE heat map, policies


def test_relperf_plan_checks_its_sources(write_study, tmp_path: Path):
    from perfscale.errors import SpecError

    study = write_study(
        """
        name: bad
        stages:
          fcr: {kind: ingest, params: {kind: rajaperf, source: x}}
          rpv: {kind: relperf, params: {sources: [fcr], base: H100_gpu}}
        """
    )
    with pytest.raises(SpecError, match="not in this stage's inputs"):
        prepare_run(study, load_site("local"), tmp_path / "run")


def test_vae_dnn_beats_the_mean_on_real_vectors(shared_points: pd.DataFrame):
    """Nichols' VAE latent + DNN, small, with its decoder calibrated on the CPU rows first: lower MAE than the
    mean baseline on vectors it has not seen (random split by whole vectors)."""
    systems = ["H100_cpu", "H100_gpu", "MI300A-SPX_cpu", "MI300A-SPX_gpu"]
    t = rpv_table(shared_points, base="H100_gpu", systems=systems)
    targets = [f"speed_{s}" for s in systems]
    features = ["log_work", "log_bytes_per_rep", "log_flops_per_rep", "flops_per_byte"]
    features += ["log_time_per_element"]
    features += [f"on_{s}" for s in systems]
    small = {
        "latent": 4, "vae_hidden": [32], "vae_epochs": 30, "kl_warmup": 10, "regression_epochs": 10,
        "calibrate_on": ["on_H100_cpu", "on_MI300A-SPX_cpu"], "calibrate_epochs": 10,
        "dnn_hidden": [32, 32, 32], "dnn_epochs": 60, "lr": 0.003, "batch_size": 128,
    }  # fmt: skip
    mae = {}
    for model, hp in (("mean", {}), ("vae_dnn", small)):
        spec = FitSpec(targets, features, model, hp, split="random", group_column="vector")
        mae[model] = fit_predict(t, spec, seed=3)["vector_mae"].iloc[0]
    assert mae["vae_dnn"] < 0.8 * mae["mean"], mae
