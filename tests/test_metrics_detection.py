"""pMSE and detection ROC AUC: real classifiers telling real rows from synthetic ones."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LogisticRegression

from perfscale.errors import BadInput
from perfscale.metrics import evaluate
from perfscale.metrics.detection import MODELS, detection_auc, pmse
from perfscale.tabular.meta import infer_meta


def halves(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two random halves of the diabetes data: samples of one distribution."""
    frame = load_diabetes(as_frame=True).frame.sample(frac=1, random_state=seed).reset_index(drop=True)
    return frame.iloc[:221].reset_index(drop=True), frame.iloc[221:].reset_index(drop=True)


def mixed(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "runtime": rng.lognormal(1.0, 0.5, n),
            "compiler": rng.choice(["gcc", "clang", "icx"], n),
            "flag": rng.random(n) < 0.3,
            "when": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 10**6, n), unit="s"),
        }
    )
    table.loc[::9, "runtime"] = np.nan
    table.loc[::7, "compiler"] = None
    return table


# ---------------------------------------------------------------- pMSE


def test_pmse_known_value_for_one_categorical_column():
    """Cell frequencies (a: 5000 real / 7500 synthetic, b: 5000 / 2500) fix the propensities: 0.6 and 1/3."""
    real = pd.DataFrame({"c": ["a"] * 5000 + ["b"] * 5000})
    synth = pd.DataFrame({"c": ["a"] * 7500 + ["b"] * 2500})
    got = pmse(real, synth, infer_meta(real))
    expected = (12_500 * 0.1**2 + 7_500 * (1 / 3 - 0.5) ** 2) / 20_000
    assert got["pmse"] == pytest.approx(expected, rel=1e-3)  # L2 (C=1) barely moves 20,000 rows
    assert got["pmse_null"] == pytest.approx(1 * 0.5**2 * 0.5 / 20_000)  # one degree of freedom
    assert got["pmse_ratio"] == pytest.approx(got["pmse"] / got["pmse_null"])


def test_pmse_matches_a_direct_logistic_regression():
    real = load_iris(as_frame=True).frame.drop(columns="target")
    synth = real.sample(frac=0.8, random_state=1).reset_index(drop=True) * 1.05
    mean, std = real.mean(), real.std(ddof=1)
    x = np.vstack([((real - mean) / std).to_numpy(), ((synth - mean) / std).to_numpy()])
    y = np.r_[np.zeros(len(real)), np.ones(len(synth))]
    p = LogisticRegression(max_iter=1000).fit(x, y).predict_proba(x)[:, 1]
    c = len(synth) / len(y)
    got = pmse(real, synth, infer_meta(real))
    assert got["pmse"] == pytest.approx(np.mean((p - c) ** 2), rel=1e-6)
    assert got["pmse_null"] == pytest.approx(4 * (1 - c) ** 2 * c / len(y))


def test_pmse_orders_similar_and_shifted_tables():
    real, other_half = halves()
    meta = infer_meta(real)
    same_law = pmse(real, other_half, meta)
    assert 0.2 < same_law["pmse_ratio"] < 3  # about 1 for samples of one distribution
    shifted = pmse(real, other_half.assign(bmi=other_half.bmi + 0.05), meta)
    assert shifted["pmse"] > 5 * same_law["pmse"]
    copy = pmse(real, real.copy(), meta)
    assert copy["pmse"] == pytest.approx(0.0, abs=1e-12)


def test_pmse_of_constant_tables_is_zero_with_ratio_one():
    real = pd.DataFrame({"x": [1.0] * 10, "c": ["a"] * 10})
    assert pmse(real, real.head(4), infer_meta(real)) == {"pmse": 0.0, "pmse_null": 0.0, "pmse_ratio": 1.0}


# ---------------------------------------------------------------- detection


@pytest.mark.parametrize("model", MODELS)
def test_detection_tells_shifted_tables_apart(model):
    real, other_half = halves()
    meta = infer_meta(real)
    same = detection_auc(real, other_half, meta, model=model)
    shifted = detection_auc(
        real, other_half.assign(bmi=other_half.bmi + 0.1, bp=other_half.bp - 0.1), meta, model=model
    )
    assert same["auc"] < 0.7 and same["detection_score"] > 0.6
    assert shifted["auc"] > 0.95 and shifted["detection_score"] < 0.1
    for result in (same, shifted):
        assert result["detection_score"] == pytest.approx(1 - (2 * max(result["auc"], 0.5) - 1), abs=0.1)


def test_detection_agrees_with_sdmetrics_logistic_detection():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sdmetrics.single_table import LogisticDetection

    real, other_half = halves(1)
    synth = other_half.assign(bmi=other_half.bmi * 1.5)
    meta = infer_meta(real)
    np.random.seed(0)  # SDMetrics' folds are drawn from numpy's global generator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = LogisticDetection.compute(real, synth)
    ours = detection_auc(real, synth, meta)["detection_score"]
    assert ours == pytest.approx(theirs, abs=0.05)  # other folds and scaling (RobustScaler), same model


def test_detection_is_seeded_and_row_order_free():
    real, synth = mixed(300, 0), mixed(300, 1)
    meta = infer_meta(real)
    for model in ("logistic", "gradient_boosting"):
        first = detection_auc(real, synth, meta, model=model, seed=3)
        assert detection_auc(real, synth, meta, model=model, seed=3) == first
        shuffled = detection_auc(
            real.sample(frac=1, random_state=1)[real.columns[::-1]],
            synth.sample(frac=1, random_state=2),
            meta,
            model=model,
            seed=3,
        )
        assert shuffled == first
    assert detection_auc(real, synth, meta, seed=4) != detection_auc(real, synth, meta, seed=3)


def test_max_rows_subsamples_with_the_seed():
    real, synth = mixed(400, 0), mixed(400, 1)
    meta = infer_meta(real)
    small = pmse(real, synth, meta, max_rows=100, seed=1)
    assert pmse(real, synth, meta, max_rows=100, seed=1) == small
    assert pmse(real.sample(frac=1, random_state=5), synth, meta, max_rows=100, seed=1) == pytest.approx(
        small
    )
    assert small != pmse(real, synth, meta, max_rows=100, seed=2)
    assert pmse(real, synth, meta, max_rows=400) == pmse(real, synth, meta)  # nothing to drop


def test_awkward_tables_never_give_nan():
    real, synth = mixed(60, 0), mixed(50, 1)
    real["constant"], synth["constant"] = 2.0, 2.0
    synth["compiler"] = "nvc"  # a category only the synthetic table has: perfectly separable
    table = evaluate(real, synth, infer_meta(real), ["pmse", "detection_auc"])
    assert np.isfinite(table.value).all()
    values = dict(zip(table.component, table.value, strict=True))
    assert values["auc"] > 0.95 and values["pmse_ratio"] > 10
    assert all(math.isfinite(v) for v in detection_auc(real, synth, infer_meta(real), folds=2).values())


@pytest.mark.parametrize(
    "option, message",
    [
        ({"model": "svm"}, "model must be one of"),
        ({"folds": 1}, "folds must be an integer >= 2"),
        ({"folds": 80}, "folds=80 needs at least 80 rows"),
        ({"max_rows": 0}, "max_rows"),
        ({"seed": -1}, "seed"),
        ({"n_jobs": 0}, "n_jobs"),
    ],
)
def test_detection_bad_options(option, message):
    real, synth = mixed(60, 0), mixed(50, 1)
    with pytest.raises(BadInput, match=message):
        detection_auc(real, synth, infer_meta(real), **option)
