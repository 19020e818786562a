"""ML efficacy: real models trained on real (sub-sampled) Digits/Diabetes/Wine tables, scored on a holdout."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes, load_digits, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from threadpoolctl import threadpool_limits

from perfscale.errors import BadInput
from perfscale.metrics import evaluate, get_metric
from perfscale.metrics.ml_efficacy import (
    MODELS,
    class_probabilities,
    classification_scores,
    make_model,
    ml_efficacy,
)
from perfscale.tabular.meta import infer_meta

SMALL = {"n_estimators": 20}  # small forests / boosting rounds keep the file fast


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread() -> Iterator[None]:
    """Small matrices: one BLAS thread is faster, and idle-spinning BLAS threads slow a busy machine."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def digits() -> tuple[pd.DataFrame, pd.DataFrame]:
    table = load_digits(as_frame=True).frame.sample(750, random_state=0).reset_index(drop=True)
    return table.iloc[:500].reset_index(drop=True), table.iloc[500:].reset_index(drop=True)


@pytest.fixture(scope="module")
def small(digits) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A few Digits columns and rows, for the input checks (which read every column of every table)."""
    train, holdout = digits
    columns = [*train.columns[18:30], "target"]
    return train.loc[:99, columns], holdout.loc[:59, columns]


@pytest.fixture(scope="module")
def digits_same(digits) -> dict[str, float]:
    train, holdout = digits
    return ml_efficacy(train, train.copy(), infer_meta(train), target="target", holdout=holdout, **SMALL)


def shuffled_columns(table: pd.DataFrame, target: str, seed: int = 0) -> pd.DataFrame:
    """Every feature permuted on its own: marginals kept, the link to the target destroyed."""
    rng = np.random.default_rng(seed)
    out = table.copy()
    for name in table.columns.drop(target):
        out[name] = rng.permutation(out[name].to_numpy())
    return out


def test_registered():
    spec = get_metric("ml_efficacy")
    assert spec.higher_is_better is None
    assert spec.options == [
        "target",
        "holdout",
        "task",
        "models",
        "repeats",
        "seed",
        "n_estimators",
        "n_jobs",
    ]


def test_synthetic_equal_to_real_train_matches_the_reference(digits_same):
    got = digits_same
    for model in MODELS:
        for score in ("accuracy", "macro_f1", "roc_auc"):
            assert got[f"synthetic/{model}/{score}"] == got[f"real/{model}/{score}"], (model, score)
    for score in ("accuracy", "macro_f1", "roc_auc"):
        assert got[f"gap/{score}"] == 0.0 and got[f"relative/{score}"] == 1.0
        means = np.mean([got[f"real/{m}/{score}"] for m in MODELS])
        assert got[f"real/{score}"] == pytest.approx(means)
    assert (
        got["real/linear/accuracy"] > 0.9 and got["real/random_forest/accuracy"] > 0.85
    )  # real models learnt
    assert got["real/roc_auc"] > 0.9
    assert all(math.isfinite(v) for v in got.values())


def test_column_shuffled_synthetic_data_loses_accuracy(digits, digits_same):
    train, holdout = digits
    synth = shuffled_columns(train, "target")
    models = ["linear", "random_forest"]
    got = ml_efficacy(
        train, synth, infer_meta(train), target="target", holdout=holdout, models=models, **SMALL
    )
    assert got["synthetic/accuracy"] < 0.3 < 0.8 < got["real/accuracy"]  # chance level is 0.1
    assert got["gap/accuracy"] > 0.5 and got["relative/accuracy"] < 0.4
    assert got["synthetic/roc_auc"] < got["real/roc_auc"] - 0.2
    for model in models:  # the reference ignores the synthetic table
        assert got[f"real/{model}/accuracy"] == digits_same[f"real/{model}/accuracy"]


def test_deterministic_and_repeats_average_the_seeds(digits):
    train, holdout = digits
    meta = infer_meta(train)
    options = {"target": "target", "holdout": holdout, "models": ["random_forest"], "n_estimators": 5}
    synth = train.sample(300, random_state=1).reset_index(drop=True)
    seed0 = ml_efficacy(train, synth, meta, **options)
    assert ml_efficacy(train, synth, meta, **options) == seed0
    seed1 = ml_efficacy(train, synth, meta, seed=1, **options)
    both = ml_efficacy(train, synth, meta, repeats=2, **options)
    key = "synthetic/random_forest/accuracy"
    assert seed0[key] != seed1[key]  # the seed reaches the model
    assert both[key] == pytest.approx((seed0[key] + seed1[key]) / 2, abs=1e-12)
    assert {k.split("/")[1] for k in both if k.count("/") == 2} == {"random_forest"}


def test_class_missing_from_synthetic_training_data(digits):
    train, holdout = digits
    synth = train[train.target != 9].reset_index(drop=True)
    got = ml_efficacy(train, synth, infer_meta(train), target="target", holdout=holdout, models=["linear"])
    assert all(math.isfinite(v) for v in got.values())
    nines = float(np.mean(holdout.target == 9))
    assert got["synthetic/accuracy"] <= 1 - nines  # the 9s can never be predicted
    assert got["synthetic/accuracy"] < got["real/accuracy"]


def test_class_probabilities_put_absent_classes_at_zero(digits):
    train, holdout = digits
    x_train, x_test = train.drop(columns="target").to_numpy(), holdout.drop(columns="target").to_numpy()
    y = train.target.to_numpy()
    keep = y % 2 == 0  # only the even digits to train on
    model = make_model("xgboost", "classification", seed=0, n_estimators=10, n_jobs=1)
    proba = class_probabilities(model, x_train[keep], y[keep], x_test, k=10)
    assert proba.shape == (len(x_test), 10)
    assert (proba[:, 1::2] == 0).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_classification_scores_match_scikit_learn(digits):
    train, holdout = digits
    x_train, x_test = train.drop(columns="target").to_numpy(), holdout.drop(columns="target").to_numpy()
    model = LogisticRegression(max_iter=200).fit(x_train / 16, train.target)
    proba = np.round(model.predict_proba(x_test / 16), 2)  # rounded: many ties, counted one half
    y = holdout.target.to_numpy()
    got = classification_scores(y, proba)
    assert got["roc_auc"] == pytest.approx(roc_auc_score(np.eye(10)[y], proba, average="macro"), abs=1e-12)
    assert got["macro_f1"] == pytest.approx(f1_score(y, proba.argmax(axis=1), average="macro"), abs=1e-12)
    binary = (y == 3).astype(int)
    two = np.column_stack([1 - proba[:, 3], proba[:, 3]])
    assert classification_scores(binary, two)["roc_auc"] == pytest.approx(roc_auc_score(binary, proba[:, 3]))


def test_single_class_synthetic_target_gives_a_constant_predictor(digits):
    train, holdout = digits
    synth = train[train.target == 3].reset_index(drop=True)
    got = ml_efficacy(train, synth, infer_meta(train), target="target", holdout=holdout, **SMALL)
    share = float(np.mean(holdout.target == 3))
    # every model predicts 3 with probability 1: accuracy = share of 3s; F1 of class 3 = 2s/(1+s), others 0
    for model in MODELS:
        assert got[f"synthetic/{model}/accuracy"] == pytest.approx(share)
        assert got[f"synthetic/{model}/macro_f1"] == pytest.approx(2 * share / (1 + share) / 10)
        assert got[f"synthetic/{model}/roc_auc"] == pytest.approx(0.5)


def test_regression_on_diabetes():
    table = load_diabetes(as_frame=True).frame
    train, holdout = table.iloc[:300].reset_index(drop=True), table.iloc[300:].reset_index(drop=True)
    meta = infer_meta(train)
    same = ml_efficacy(train, train, meta, target="target", holdout=holdout, **SMALL)
    assert {k for k in same if k.startswith("gap/")} == {"gap/mse", "gap/mae", "gap/r2"}
    assert "relative/r2" not in same and same["relative/mse"] == 1.0
    assert same["real/linear/r2"] > 0.35  # linear regression explains diabetes progression reasonably
    shuffled = ml_efficacy(
        train, shuffled_columns(train, "target"), meta, target="target", holdout=holdout, **SMALL
    )
    assert shuffled["synthetic/r2"] < same["real/r2"] - 0.3
    assert shuffled["gap/mse"] > 0 and shuffled["gap/r2"] > 0 and shuffled["relative/mse"] > 1


def test_mixed_features_missing_values_and_task_override_through_evaluate():
    rng = np.random.default_rng(0)
    wine = load_wine(as_frame=True).frame
    wine["grade"] = np.where(wine["alcohol"] > 13, "high", "low")
    wine["grade"] = wine["grade"].where(rng.random(len(wine)) > 0.1, None)  # missing category values
    wine["flag"] = wine["hue"] > 1
    wine.loc[::7, "proline"] = np.nan
    wine["target"] = wine["target"].astype(float)
    wine.loc[5, "target"] = np.nan  # dropped from training
    real, holdout = wine.iloc[::2].reset_index(drop=True), wine.iloc[1::2].reset_index(drop=True)
    synth = real.sample(frac=1.0, replace=True, random_state=1).reset_index(drop=True)
    meta = infer_meta(real)
    options = {"target": "target", "holdout": holdout, "models": ["linear", "xgboost"], **SMALL}
    table = evaluate(real, synth, meta, metrics=["ml_efficacy"], options={"ml_efficacy": options})
    values = dict(zip(table.component, table.value, strict=True))
    assert np.isfinite(table.value).all()
    assert values["real/accuracy"] > 0.85  # the wine classes: 'target' is a discrete integer column
    flag = ml_efficacy(real, synth, meta, target="flag", holdout=holdout, models=["linear"])
    assert "synthetic/roc_auc" in flag  # boolean target: classification
    as_regression = ml_efficacy(real, synth, meta, task="regression", **options)
    assert "synthetic/mse" in as_regression and "synthetic/accuracy" not in as_regression


def test_bad_inputs_are_rejected(small):
    train, holdout = small
    meta = infer_meta(train)

    def run(**options):
        return evaluate(train, train, meta, metrics=["ml_efficacy"], options={"ml_efficacy": options})

    base = {"target": "target", "holdout": holdout, "models": ["linear"]}
    assert ml_efficacy(train, train, meta) == {}  # not configured: no components, so evaluate() of all works
    assert run().empty
    with pytest.raises(BadInput, match="'target' is required"):
        run(holdout=holdout)
    with pytest.raises(BadInput, match="target 'label' is not a column"):
        run(**base | {"target": "label"})
    with pytest.raises(BadInput, match="'holdout' is required"):
        run(target="target")
    with pytest.raises(BadInput, match=r"holdout table's columns differ.*missing \['pixel_2_2'\]"):
        run(**base | {"holdout": holdout.drop(columns="pixel_2_2")})
    with pytest.raises(BadInput, match=r"'models.0': Input should be 'linear', .* \(got 'svm'\)"):
        run(**base | {"models": ["svm"]})
    with pytest.raises(BadInput, match=r"'models': Input should be a valid list \(got 'linear'\)"):
        run(**base | {"models": "linear"})
    with pytest.raises(BadInput, match="models must be a non-empty list"):
        run(**base | {"models": []})
    for option, value in (
        ("repeats", 0),
        ("n_estimators", 1.5),
        ("seed", -1),
        ("n_jobs", 0),
        ("task", "rank"),
    ):
        with pytest.raises(BadInput, match=option):
            run(**base | {option: value})
    with pytest.raises(BadInput, match="single class"):
        run(**base | {"holdout": holdout[holdout.target == 1]})
    with pytest.raises(BadInput, match="holdout has 1 row"):
        run(**base | {"holdout": holdout.head(1)})
    with_text = train.assign(kind=np.where(train.target > 4, "big", "small"))
    with pytest.raises(BadInput, match="needs a numeric target"):
        ml_efficacy(
            with_text, with_text, infer_meta(with_text), target="kind", holdout=with_text, task="regression"
        )
    only_target = train[["target"]]
    with pytest.raises(BadInput, match="no column besides the target"):
        ml_efficacy(only_target, only_target, infer_meta(only_target), target="target", holdout=only_target)
    dated = pd.DataFrame({"x": [1.0, 2.0, 3.0], "t": pd.date_range("2024-01-01", periods=3)})
    with pytest.raises(BadInput, match="datetime"):
        ml_efficacy(dated, dated, infer_meta(dated), target="t", holdout=dated)
    missing_target = train.assign(target=np.nan)
    with pytest.raises(BadInput, match="every synthetic row has a missing target"):
        ml_efficacy(train, missing_target, meta, target="target", holdout=holdout, models=["linear"])
