"""diff-CORR: Pearson / correlation ratio / Theil's U against hand computations and independent libraries."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import entropy
from sklearn.datasets import load_diabetes, load_wine
from sklearn.metrics import mutual_info_score

from perfscale.errors import BadInput
from perfscale.metrics import evaluate, get_metric
from perfscale.metrics.associations import association_matrix, diff_corr
from perfscale.metrics.columns import discrete_columns
from perfscale.tabular.encode import category_codes
from perfscale.tabular.meta import TableMeta, infer_meta


def matrix(table: pd.DataFrame, meta: TableMeta | None = None) -> pd.DataFrame:
    """The association matrix of one table, labelled by column."""
    meta = meta or infer_meta(table)
    codes = {}
    for name in discrete_columns(meta):
        (c,), k = category_codes(table[name], keep_missing=True)
        codes[name] = (c, k)
    names = list(meta.columns)
    return pd.DataFrame(association_matrix(table, meta, codes), index=names, columns=names)


@pytest.fixture(scope="module")
def wine_mixed() -> pd.DataFrame:
    """Wine with categorical versions of some columns (quartiles as labels) and the class as a category."""
    wine = load_wine(as_frame=True).frame
    wine["cls"] = wine.pop("target").map({0: "a", 1: "b", 2: "c"})
    wine["alc_q"] = pd.qcut(wine["alcohol"], 4, labels=["q1", "q2", "q3", "q4"]).astype(str)
    wine["hue_q"] = pd.qcut(wine["hue"], 3, labels=["lo", "mid", "hi"]).astype(str)
    return wine


def test_registered():
    spec = get_metric("diff_corr")
    assert spec.higher_is_better is False
    assert spec.options == ["pairs"]


def test_pearson_matches_pandas(wine_mixed):
    numeric = wine_mixed.select_dtypes("number")
    got = matrix(wine_mixed).loc[numeric.columns, numeric.columns]
    pd.testing.assert_frame_equal(got, numeric.corr(), rtol=1e-12, atol=1e-12)


def test_pearson_with_missing_values_is_pairwise_complete(wine_mixed):
    numeric = wine_mixed.select_dtypes("number").copy()
    numeric.loc[::4, "alcohol"] = np.nan
    numeric.loc[::7, "hue"] = np.nan
    pd.testing.assert_frame_equal(matrix(numeric), numeric.corr(), rtol=1e-12, atol=1e-12)


def test_correlation_ratio_by_hand():
    table = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "c": ["a", "a", "b", "b", "c", "c"]})
    # group means 1.5, 3.5, 5.5 around 3.5: between = 2 * (4 + 0 + 4) = 16; total = 17.5
    m = matrix(table)
    assert m.loc["c", "x"] == m.loc["x", "c"] == pytest.approx(math.sqrt(16 / 17.5), rel=1e-12)


def test_correlation_ratio_is_the_anova_r2(wine_mixed):
    """eta^2 = R^2 of regressing the numeric column on the category dummies (least squares)."""
    m = matrix(wine_mixed)
    dummies = pd.get_dummies(wine_mixed["cls"]).to_numpy(float)  # the dummies span the intercept
    for name in ("alcohol", "proline", "hue", "color_intensity"):
        y = wine_mixed[name].to_numpy()
        fitted = dummies @ np.linalg.lstsq(dummies, y, rcond=None)[0]
        r2 = 1 - np.sum((y - fitted) ** 2) / np.sum((y - y.mean()) ** 2)
        assert m.loc["cls", name] == pytest.approx(math.sqrt(r2), rel=1e-9), name


def test_theils_u_by_hand_and_direction():
    # x determines y, not the other way round
    table = pd.DataFrame({"x": ["a", "b", "c", "d"] * 5, "y": ["p", "p", "q", "q"] * 5})
    m = matrix(table)
    assert m.loc["y", "x"] == pytest.approx(1.0)  # U(y|x): knowing x tells everything about y
    assert m.loc["x", "y"] == pytest.approx(math.log(2) / math.log(4))  # U(x|y) = H(y) / H(x) here


def test_theils_u_matches_mutual_information(wine_mixed):
    m = matrix(wine_mixed)
    for a, b in (("cls", "alc_q"), ("alc_q", "hue_q"), ("hue_q", "cls")):
        h_a = entropy(wine_mixed[a].value_counts().to_numpy())
        expected = mutual_info_score(wine_mixed[a], wine_mixed[b]) / h_a
        assert m.loc[a, b] == pytest.approx(expected, rel=1e-9), (a, b)


def test_constant_columns_are_associated_with_nothing():
    table = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "k": [5.0] * 4, "c": list("abab"), "one": ["z"] * 4})
    m = matrix(table)
    for const in ("k", "one"):
        others = [c for c in m.columns if c != const]
        assert (m.loc[const, others] == 0).all() and (m.loc[others, const] == 0).all(), const
        assert m.loc[const, const] == 1.0


def test_known_diff_values():
    a = np.arange(10.0)
    real = pd.DataFrame({"a": a, "b": 2 * a})  # r = +1
    synth = pd.DataFrame({"a": a, "b": -2 * a})  # r = -1
    got = diff_corr(real, synth, infer_meta(real), pairs=True)
    assert got["score"] == pytest.approx(math.sqrt(8))  # D holds 2 twice
    assert got["a"] == got["b"] == got["mean_column_l2"] == pytest.approx(2.0)
    assert got["max_abs_diff"] == pytest.approx(2.0)
    assert got["pair:a|b"] == pytest.approx(2.0) and "pair:b|a" not in got


def test_identical_tables_give_zero_and_pairs_cover_both_theil_directions(wine_mixed):
    got = diff_corr(wine_mixed, wine_mixed.copy(), infer_meta(wine_mixed), pairs=True)
    assert all(v == 0.0 for v in got.values())
    assert "pair:alc_q|hue_q" in got and "pair:hue_q|alc_q" in got  # asymmetric: both orders
    assert "pair:alcohol|malic_acid" in got and "pair:malic_acid|alcohol" not in got
    k = wine_mixed.shape[1]
    assert len([c for c in got if c.startswith("pair:")]) == k * (k - 1) // 2 + 3  # + 3 reversed cat pairs


def test_per_column_values_add_up_to_the_frobenius_norm(wine_mixed):
    rng = np.random.default_rng(0)
    synth = wine_mixed.sample(frac=1.0, replace=True, random_state=1).reset_index(drop=True)
    synth["alc_q"] = rng.permutation(synth["alc_q"].to_numpy())
    synth["proline"] = rng.permutation(synth["proline"].to_numpy())
    got = diff_corr(wine_mixed, synth, infer_meta(wine_mixed))
    per_column = np.array([got[c] for c in wine_mixed.columns])
    assert got["score"] == pytest.approx(math.sqrt(np.sum(per_column**2)), rel=1e-12)
    assert got["mean_column_l2"] == pytest.approx(per_column.mean(), rel=1e-12)
    assert got["proline"] > got["alcohol"] and got["alc_q"] > got["hue_q"]  # the shuffled columns stand out


def test_score_grows_with_shuffled_columns_on_diabetes():
    diabetes = load_diabetes(as_frame=True).frame
    meta = infer_meta(diabetes)
    rng = np.random.default_rng(2)
    scores = []
    for count in (1, 4, 11):
        synth = diabetes.copy()
        for name in diabetes.columns[:count]:
            synth[name] = rng.permutation(synth[name].to_numpy())
        scores.append(diff_corr(diabetes, synth, meta)["score"])
    assert 0 < scores[0] < scores[1] < scores[2], scores


def test_deterministic_and_independent_of_row_and_column_order(wine_mixed):
    meta = infer_meta(wine_mixed)
    synth = wine_mixed.sample(frac=0.8, random_state=3).reset_index(drop=True)
    base = diff_corr(wine_mixed, synth, meta, pairs=True)
    assert diff_corr(wine_mixed, synth, meta, pairs=True) == base
    shuffled = wine_mixed.sample(frac=1.0, random_state=4)[wine_mixed.columns[::-1]]
    other = diff_corr(shuffled, synth.sample(frac=1.0, random_state=5), meta, pairs=True)
    assert other == pytest.approx(base, rel=1e-9, abs=1e-12)


def test_mixed_types_with_missing_values_through_evaluate(wine_mixed):
    real = wine_mixed.copy()
    real["flag"] = real["alcohol"] > 13
    real["when"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(real["proline"] * 1000, unit="s")
    real.loc[::6, "alcohol"] = np.nan
    real.loc[::5, "cls"] = None
    synth = real.sample(frac=1.0, replace=True, random_state=6).reset_index(drop=True)
    table = evaluate(real, synth, infer_meta(real), metrics=["diff_corr"])
    assert np.isfinite(table.value).all()
    values = dict(zip(table.component, table.value, strict=True))
    assert 0 < values["score"] < 2 and "when" in values and "flag" in values


def test_column_named_like_an_aggregate_is_prefixed():
    real = pd.DataFrame({"score": [1.0, 2.0, 3.0], "x": [1.0, 3.0, 2.0]})
    got = diff_corr(real, real, infer_meta(real))
    assert set(got) == {"column:score", "x", "score", "mean_column_l2", "max_abs_diff"}


def test_bad_inputs_are_rejected(wine_mixed):
    meta = infer_meta(wine_mixed)
    with pytest.raises(BadInput, match="synthetic table has 1 row"):
        diff_corr(wine_mixed, wine_mixed.head(1), meta)
    with pytest.raises(BadInput, match="pairs"):
        evaluate(wine_mixed, wine_mixed, meta, metrics=["diff_corr"], options={"diff_corr": {"pairs": "yes"}})
