"""TabDDPM generator on a real table (iris + a 4-valued integer column): fit, sample, save/load, SIGKILL and
resume, imputation and conditional sampling. Real tiny models (T = 50, 300 steps, a 128x128 MLP); nothing
mocked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from perfscale.errors import BadInput
from perfscale.generators import GENERATOR_JSON, get_generator, load_generator
from perfscale.generators.base import Generator
from perfscale.tabular.meta import TableMeta, infer_meta
from tests.tables import assert_shaped_like, iris_table

ROOT = Path(__file__).resolve().parents[1]
THREADS = [1, 2, 4, 8]
# threads=1: tiny models are fastest on one thread, and results are repeatable for a given thread count
HYPERPARAMETERS = {
    "num_timesteps": 50,
    "steps": 300,
    "batch_size": 64,
    "d_layers": [128, 128],
    "dim_t": 64,
    "threads": 1,
}
FIT_SEED, SAMPLE_SEED, N = 7, 11, 400


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return iris_table()


@pytest.fixture(scope="module")
def meta(table: pd.DataFrame) -> TableMeta:
    return infer_meta(table)


@pytest.fixture(scope="module")
def fitted(table: pd.DataFrame, meta: TableMeta) -> Generator:
    generator = get_generator("tabddpm")(**HYPERPARAMETERS)
    generator.fit(table, meta, seed=FIT_SEED)
    return generator


@pytest.fixture(scope="module")
def rows(fitted: Generator) -> pd.DataFrame:
    return fitted.sample(N, seed=SAMPLE_SEED)


# ---- fit and sample ----------------------------------------------------------------------------------------


def test_sample_has_training_columns_dtypes_and_allowed_values(rows, table, meta) -> None:
    assert_shaped_like(rows, table, meta, N)
    assert set(rows["threads"]) <= set(THREADS)


def test_telemetry_has_every_step_and_the_loss_goes_down(fitted) -> None:
    telemetry = fitted.training_log.telemetry
    assert list(telemetry.columns) == ["epoch", "step", "loss", "value"]
    assert set(telemetry["loss"]) == {"gaussian", "multinomial", "total"}
    steps = HYPERPARAMETERS["steps"]
    for name in ("gaussian", "multinomial", "total"):
        part = telemetry[telemetry["loss"] == name]
        assert part["step"].tolist() == list(range(steps))
        assert np.isfinite(part["value"]).all()
        fifth = steps // 5
        first, last = part["value"].iloc[:fifth].mean(), part["value"].iloc[-fifth:].mean()
        assert last < 0.85 * first, (name, first, last)
    # 150 rows in batches of 64: 3 steps per epoch
    assert telemetry["epoch"].max() == (steps - 1) // 3


def test_sample_marginals_resemble_the_data(rows, table) -> None:
    for column in ["species", "threads"]:
        share = rows[column].value_counts(normalize=True)
        expected = table[column].value_counts(normalize=True)
        assert set(share.index) == set(expected.index), column  # no class dropped
        assert (share - expected).abs().max() < 0.15, (column, share.to_dict())
    for column in table.columns[:4]:
        real, synth = table[column], rows[column]
        assert abs(synth.mean() - real.mean()) < 0.5 * real.std(), column
        assert 0.6 < synth.std() / real.std() < 1.5, column
    # the joint structure is learned: setosa's petals are short in the samples as in the data
    petal = "petal length (cm)"
    assert (
        rows.loc[rows["species"] == "setosa", petal].mean()
        < rows.loc[rows["species"] != "setosa", petal].mean()
    )


def test_same_seed_same_rows_other_seed_other_rows(fitted, rows) -> None:
    """(A refit with the same seed gives the same model: the SIGKILL test checks it, telemetry included.)"""
    pd.testing.assert_frame_equal(fitted.sample(N, seed=SAMPLE_SEED), rows)
    other = fitted.sample(N, seed=SAMPLE_SEED + 1)
    assert (other["petal length (cm)"] != rows["petal length (cm)"]).mean() > 0.9


# ---- save and load -----------------------------------------------------------------------------------------


def test_save_load_round_trip_needs_no_trust_and_gives_identical_samples(fitted, rows, tmp_path) -> None:
    fitted.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {GENERATOR_JSON, "model.safetensors", "tabddpm.json"}
    loaded = load_generator(tmp_path)  # no trust=True: nothing is pickled
    pd.testing.assert_frame_equal(loaded.sample(N, seed=SAMPLE_SEED), rows)
    manifest = json.loads((tmp_path / GENERATOR_JSON).read_text())
    assert manifest["generator"] == "tabddpm"
    assert manifest["model"]["effective_batch_size"] == 64


def test_corrupted_or_missing_model_files_are_named(fitted, tmp_path) -> None:
    fitted.save(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(BadInput, match=r"model\.safetensors is corrupted"):
        load_generator(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(BadInput, match=r"model\.safetensors is missing"):
        load_generator(tmp_path)
    fitted.save(tmp_path)
    (tmp_path / "tabddpm.json").write_text("{not json")
    with pytest.raises(BadInput, match=r"tabddpm\.json .*is corrupted"):
        load_generator(tmp_path)


# ---- checkpoints: SIGKILL and resume ----------------------------------------------------------------------

_FIT_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from perfscale.generators import get_generator
from perfscale.tabular.meta import infer_meta
from tests.tables import assert_shaped_like, iris_table
from tests.test_tabddpm import HYPERPARAMETERS, FIT_SEED
table = iris_table()
get_generator("tabddpm")(**HYPERPARAMETERS, checkpoint_dir={folder!r}, checkpoint_every=10).fit(
    table, infer_meta(table), seed=FIT_SEED
)
"""


def _kill_after_first_checkpoint(folder: Path) -> None:
    """Run a fit in a subprocess and SIGKILL it as soon as its first checkpoint is on disk."""
    script = _FIT_SCRIPT.format(root=str(ROOT), folder=str(folder))
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list(folder.glob("checkpoint-*.safetensors")):
            if proc.poll() is not None:
                raise AssertionError(
                    f"the fit exited ({proc.returncode}) before checkpointing: {proc.stderr.read()}"
                )
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()


def test_sigkill_then_resume_equals_an_uninterrupted_fit(fitted, rows, table, meta, tmp_path) -> None:
    folder = tmp_path / "checkpoints"
    _kill_after_first_checkpoint(folder)
    checkpoints = sorted(folder.glob("checkpoint-*.safetensors"))  # one, unless killed while replacing
    killed_at = int(checkpoints[-1].stem.split("-")[1])
    assert 10 <= killed_at < HYPERPARAMETERS["steps"]  # really interrupted mid-training

    resumed = get_generator("tabddpm")(**HYPERPARAMETERS, checkpoint_dir=str(folder), checkpoint_every=10)
    resumed.fit(table, meta, seed=FIT_SEED)
    pd.testing.assert_frame_equal(resumed.sample(N, seed=SAMPLE_SEED), rows)
    pd.testing.assert_frame_equal(resumed.training_log.telemetry, fitted.training_log.telemetry)
    assert [p.name for p in folder.iterdir()] == [f"checkpoint-{HYPERPARAMETERS['steps']:09d}.safetensors"]

    other_seed = get_generator("tabddpm")(**HYPERPARAMETERS, checkpoint_dir=str(folder))
    with pytest.raises(BadInput, match="belongs to another fit"):
        other_seed.fit(table, meta, seed=FIT_SEED + 1)


# ---- imputation and conditional sampling -------------------------------------------------------------------


def test_imputing_the_class_from_the_features_beats_the_majority_rate(fitted, table, meta) -> None:
    known = table.copy()
    known["species"] = None
    known.loc[::10, "threads"] = np.nan  # a few more cells to fill
    filled = fitted.impute(known, seed=5)
    assert filled.index.equals(table.index)
    kept = table.columns[:4]
    pd.testing.assert_frame_equal(filled[kept], table[kept])
    assert set(filled["species"]) <= set(meta.columns["species"].allowed)
    assert set(filled["threads"]) <= set(THREADS)
    pd.testing.assert_series_equal(filled["threads"].iloc[1::10], table["threads"].iloc[1::10])
    accuracy = (filled["species"] == table["species"]).mean()
    majority = table["species"].value_counts(normalize=True).max()
    assert accuracy > majority + 0.3, accuracy


def test_imputing_numbers_from_the_class_follows_the_class(fitted, table) -> None:
    known = pd.DataFrame({"species": ["setosa"] * 50 + ["virginica"] * 50})
    filled = fitted.impute(known, seed=6)
    assert filled[list(table.columns)].notna().all().all()
    petal = filled.groupby("species")["petal length (cm)"].mean()
    real = table.groupby("species")["petal length (cm)"].mean()
    assert petal["setosa"] < real["versicolor"] < petal["virginica"]


def test_equality_conditions_are_inpainted(fitted, table) -> None:
    out = fitted.sample(100, seed=3, conditions={"species": "virginica", "threads": 4})
    assert (out["species"] == "virginica").all() and (out["threads"] == 4).all()
    assert fitted.last_sampling.method == "native"
    petal = out["petal length (cm)"].mean()
    assert petal > table.loc[table["species"] == "versicolor", "petal length (cm)"].mean()
    exact = fitted.sample(50, seed=4, conditions={"sepal length (cm)": 5.0})  # continuous: no rejection
    assert (exact["sepal length (cm)"] == 5.0).all() and fitted.last_sampling.method == "native"
    ranged = fitted.sample(50, seed=3, conditions={"petal length (cm)": {"gt": 4}})  # no equality: rejection
    assert fitted.last_sampling.method == "rejection"
    assert (ranged["petal length (cm)"] > 4).all()


# ---- other tables and bad input ---------------------------------------------------------------------------


def test_missing_numbers_datetimes_and_tiny_tables(tmp_path) -> None:
    rng = np.random.default_rng(0)
    n = 40
    df = pd.DataFrame(
        {
            "x": np.where(np.arange(n) % 4 == 0, np.nan, rng.normal(10, 2, n)),
            "when": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 86400 * 30, n), unit="s"),
            "ok": np.arange(n) % 3 == 0,
            "kind": ["a", "b", None, "a"] * (n // 4),
        }
    )
    meta = infer_meta(df)
    generator = get_generator("tabddpm")(num_timesteps=20, steps=60, d_layers=[32], dim_t=16, threads=1)
    generator.fit(df, meta, seed=1)
    assert generator.effective_batch_size == n  # 1024 capped at the row count
    out = generator.sample(300, seed=2)
    assert out.dtypes.to_dict() == df.dtypes.to_dict()
    assert 0.05 < out["x"].isna().mean() < 0.5  # the learned missing indicator restores NaN
    assert out["when"].between(df["when"].min(), df["when"].max()).all()
    assert set(out["kind"].dropna()) <= {"a", "b"} and out["kind"].isna().any()
    generator.save(tmp_path)
    pd.testing.assert_frame_equal(load_generator(tmp_path).sample(300, seed=2), out)

    tiny = get_generator("tabddpm")(num_timesteps=10, steps=5, d_layers=[8], dim_t=8, threads=1)
    tiny.fit(df.iloc[:3], infer_meta(df.iloc[:3]), seed=1)
    assert tiny.effective_batch_size == 3 and len(tiny.sample(7, seed=1)) == 7


@pytest.mark.parametrize("kind", ["numbers only", "categories only"])
def test_tables_of_one_kind_and_dropout(table, kind) -> None:
    part = table.iloc[:, :4] if kind == "numbers only" else table[["species", "threads"]]
    hyper = {"num_timesteps": 10, "steps": 20, "d_layers": [16], "dim_t": 8, "dropout": 0.2, "threads": 1}
    runs = []
    for _ in range(2):
        generator = get_generator("tabddpm")(**hyper)
        log = generator.fit(part, infer_meta(part), seed=3)
        runs.append((log.telemetry, generator.sample(30, seed=4)))
    expected = {"gaussian", "total"} if kind == "numbers only" else {"multinomial", "total"}
    assert set(runs[0][0]["loss"]) == expected
    pd.testing.assert_frame_equal(runs[0][0], runs[1][0])  # dropout masks come from the fit's generator
    pd.testing.assert_frame_equal(runs[0][1], runs[1][1])
    assert list(runs[0][1].columns) == list(part.columns)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"epochs": 3}, r"'epochs': unknown hyperparameter for tabddpm; choose one of .*num_timesteps"),
        ({"steps": 0}, r"'steps': Input should be greater than 0 \(got 0\)"),
        ({"num_timesteps": 1}, r"'num_timesteps': Input should be greater than or equal to 2"),
        ({"d_layers": []}, r"'d_layers': List should have at least 1 item"),
        ({"d_layers": [64, "wide"]}, r"'d_layers.1': Input should be a valid integer"),
        ({"lr": 0}, r"'lr': Input should be greater than 0"),
        ({"dropout": 1.0}, r"'dropout': Input should be less than 1"),
        ({"batch_size": True}, r"'batch_size': Input should be a valid integer"),
        ({"device": "tpu"}, r"'device': must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\""),
        ({"dim_t": 7}, r"'dim_t': must be even"),
        ({"checkpoint_dir": 3}, r"'checkpoint_dir': Input should be a valid string"),
    ],
)
def test_bad_hyperparameters_are_rejected(params, message) -> None:
    with pytest.raises(BadInput, match=message):
        get_generator("tabddpm")(**params)


def test_cuda_without_a_gpu_is_bad_input(table, meta) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CUDA path is exercised by fitting, not refused")
    with pytest.raises(BadInput, match=r"'device' is 'cuda' but CUDA is not available"):
        get_generator("tabddpm")(device="cuda", steps=1).fit(table, meta, seed=1)


def test_the_ema_is_saved_and_sample_with_ema_uses_it(fitted, rows, tmp_path) -> None:
    """The EMA of the weights (reference code: decay 0.999) is kept, saved with the model and sampled from
    with sample_with: ema; a model saved without one says so."""
    from safetensors.torch import load_file, save_file

    fitted.save(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    ema = {k.removeprefix("ema."): v for k, v in tensors.items() if k.startswith("ema.")}
    weights = fitted._denoiser.state_dict()
    assert ema.keys() == weights.keys()
    assert any(not np.allclose(ema[k].numpy(), weights[k].numpy()) for k in ema)  # an average, not a copy
    manifest = json.loads((tmp_path / GENERATOR_JSON).read_text())
    manifest["hyperparameters"]["sample_with"] = "ema"
    (tmp_path / GENERATOR_JSON).write_text(json.dumps(manifest))
    from_ema = load_generator(tmp_path).sample(N, seed=SAMPLE_SEED)
    assert from_ema.shape == rows.shape and not from_ema.equals(rows)
    save_file(
        {k: v for k, v in tensors.items() if not k.startswith("ema.")}, str(tmp_path / "model.safetensors")
    )
    with pytest.raises(BadInput, match="sample_with is 'ema' but this model holds no EMA"):
        load_generator(tmp_path).sample(10, seed=1)
