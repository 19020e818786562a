"""SDMetrics-quality (Column Pair Trends + QualityReport score) and TabSynDex, computed for real.

Agreement is checked against the installed sdmetrics on real scikit-learn datasets and on a mixed table with
categoricals, booleans, missing values and a datetime; synthetic tables are perturbed bootstraps of the real
ones (fast, and far enough from the real table for every score to be informative).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats.contingency import association
from sklearn.datasets import load_diabetes, load_iris, load_wine

from perfscale.errors import BadInput
from perfscale.metrics import combine_parts, evaluate
from perfscale.metrics.pair_trends import column_pair_trends, contingency_cells, cramers_v
from perfscale.metrics.quality import sdmetrics_quality
from perfscale.metrics.tabsyndex import log_transform, tabsyndex
from perfscale.tabular.meta import TableMeta, infer_meta

ALL_PAIRS = {"correlation_threshold": 0.0, "association_threshold": 0.0}


def sdmetrics_metadata(meta: TableMeta) -> dict:
    """SDMetrics single-table metadata for perfscale column types (integer -> numerical)."""
    sdtype = {"numerical": "numerical", "integer": "numerical"}
    return {"columns": {n: {"sdtype": sdtype.get(c.type, c.type)} for n, c in meta.columns.items()}}


def perturbed(real: pd.DataFrame, seed: int, noise: float = 0.05) -> pd.DataFrame:
    """A bootstrap of `real` with multiplicative noise on its float columns and one column shuffled."""
    rng = np.random.default_rng(seed)
    synth = real.sample(frac=1.0, replace=True, random_state=seed).reset_index(drop=True)
    floats = [c for c in synth.columns if pd.api.types.is_float_dtype(synth[c])]
    synth[floats] = synth[floats] * (1 + rng.normal(0, noise, (len(synth), len(floats))))
    shuffled = floats[len(floats) // 2]
    synth[shuffled] = rng.permutation(synth[shuffled].to_numpy())
    return synth


def sklearn_frame(loader) -> pd.DataFrame:
    frame = loader(as_frame=True).frame
    if loader is not load_diabetes:  # classification targets as categories
        frame["target"] = frame["target"].map(lambda v: "abc"[int(v)])
    return frame


def mixed_table(n: int, seed: int) -> pd.DataFrame:
    """HPC-like runs with associations strong enough for QualityReport's thresholds, and missing values."""
    rng = np.random.default_rng(seed)
    threads = rng.choice([1, 2, 4, 8, 16], n)
    runtime = 100 / threads * rng.lognormal(0, 0.3, n)
    offsets = rng.permutation(np.cumsum(rng.integers(0, 1000, n)))
    table = pd.DataFrame(
        {
            "runtime": runtime,
            "threads": threads,
            "size": rng.integers(1_000, 100_000, n),
            "energy": runtime * rng.normal(3, 0.2, n),
            "compiler": np.where(threads > 4, rng.choice(["gcc", "clang"], n), rng.choice(["icx", "gcc"], n)),
            "vectorised": (threads >= 4) ^ (rng.random(n) < 0.1),
            "started": pd.Timestamp("2024-01-01") + pd.to_timedelta(offsets, unit="s"),
            "memory": offsets * rng.normal(1, 0.1, n),
        }
    )
    table.loc[::11, "runtime"] = np.nan
    table.loc[::7, "compiler"] = None
    table.loc[::13, "started"] = pd.NaT
    return table


def mixed_pair() -> tuple[pd.DataFrame, pd.DataFrame]:
    real, synth = mixed_table(300, 0), mixed_table(250, 1)
    synth.loc[:3, "compiler"] = "nvc"  # a category the real table does not have
    synth["vectorised"] = synth["vectorised"].astype(object)
    synth.loc[4:6, "vectorised"] = None
    return real, synth


def quality_report(real: pd.DataFrame, synth: pd.DataFrame, meta: TableMeta):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the single-table report is deprecated, and pandas warnings
        from sdmetrics.reports.single_table import QualityReport

        report = QualityReport()
        report.generate(real, synth, sdmetrics_metadata(meta), verbose=False)
    return report


def counted_pairs(details: pd.DataFrame) -> dict[str, float]:
    """The pairs a QualityReport's Column Pair Trends averages, as 'a|b' -> score."""
    counts = details["Meets Threshold?"].astype("boolean").fillna(False).astype(bool) & details.Score.notna()
    rows = details[counts]
    return {f"{a}|{b}": s for a, b, s in zip(rows["Column 1"], rows["Column 2"], rows.Score, strict=True)}


# ---------------------------------------------------------------- agreement with SDMetrics


@pytest.mark.parametrize("case", ["iris", "wine", "diabetes", "mixed"])
def test_sdmetrics_quality_agrees_with_quality_report(case):
    if case == "mixed":
        real, synth = mixed_pair()
    else:
        real = sklearn_frame({"iris": load_iris, "wine": load_wine, "diabetes": load_diabetes}[case])
        synth = perturbed(real, seed=1)
    meta = infer_meta(real)
    report = quality_report(real, synth, meta)
    properties = report.get_properties().set_index("Property")["Score"]
    expected_pairs = counted_pairs(report.get_details("Column Pair Trends"))

    ours = sdmetrics_quality(real, synth, meta)
    assert ours["column_shapes"] == pytest.approx(properties["Column Shapes"], abs=1e-9)
    assert ours["column_pair_trends"] == pytest.approx(properties["Column Pair Trends"], abs=1e-9)
    assert ours["score"] == pytest.approx(report.get_score(), abs=1e-9)
    pairs = column_pair_trends(real, synth, meta)
    assert len(expected_pairs) >= 5, "the case should exercise several pairs"
    assert set(pairs) - {"score"} == set(expected_pairs)
    for pair, score in expected_pairs.items():
        assert pairs[pair] == pytest.approx(score, abs=1e-9), pair


def test_every_pair_agrees_with_sdmetrics_property_and_metrics():
    """Thresholds 0: every pair counts, as in the ColumnPairTrends property used on its own; each kind of
    pair also matches the stand-alone SDMetrics metric (Pearson and Spearman, missing values included)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sdmetrics.column_pairs import ContingencySimilarity, CorrelationSimilarity
        from sdmetrics.reports.single_table._properties import ColumnPairTrends

    real, synth = mixed_pair()
    meta = infer_meta(real)
    prop = ColumnPairTrends()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prop.get_score(real.copy(), synth.copy(), sdmetrics_metadata(meta))
    expected = {
        f"{a}|{b}": s
        for a, b, s in zip(
            prop.details["Column 1"], prop.details["Column 2"], prop.details.Score, strict=True
        )
        if not math.isnan(s)
    }
    ours = column_pair_trends(real, synth, meta, **ALL_PAIRS)
    assert len(expected) == 28  # 8 columns, every pair defined
    assert set(ours) - {"score"} == set(expected)
    for pair, score in expected.items():
        assert ours[pair] == pytest.approx(score, abs=1e-9), pair

    cols = ["runtime", "energy"]  # runtime has missing values: pairwise-complete rows
    spearman = column_pair_trends(real[cols], synth[cols], infer_meta(real[cols]), coefficient="Spearman")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sd = CorrelationSimilarity.compute(real[cols], synth[cols], coefficient="Spearman")
        contingency = ContingencySimilarity.compute(
            real[["compiler", "vectorised"]], synth[["compiler", "vectorised"]]
        )
    assert spearman["runtime|energy"] == pytest.approx(sd, abs=1e-12)
    assert ours["compiler|vectorised"] == pytest.approx(contingency, abs=1e-12)


def test_cramers_v_agrees_with_scipy():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 4, 500)
    b = (a + rng.integers(0, 3, 500)) % 5
    cells = contingency_cells((a, a[:3]), (b, b[:3]), 4, 5)
    table = np.zeros((4, 5), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    assert cramers_v(cells) == pytest.approx(association(table, method="cramer"), rel=1e-12)


# ---------------------------------------------------------------- hand-checked values


def test_identical_tables_score_one():
    real, _ = mixed_pair()
    meta = infer_meta(real)
    ours = sdmetrics_quality(real, real.copy(), meta)
    assert ours == {"column_shapes": 1.0, "column_pair_trends": 1.0, "score": 1.0}
    assert all(v == 1.0 for v in column_pair_trends(real, real.copy(), meta, **ALL_PAIRS).values())


def test_known_correlation_and_contingency_values():
    x = np.arange(10.0)
    real = pd.DataFrame({"x": x, "y": 2 * x, "c": ["a"] * 5 + ["b"] * 5, "d": ["u"] * 5 + ["v"] * 5})
    # synthetic: y anti-correlated (r = -1), and half the rows have their (c, d) cell swapped to (a, v)
    synth = pd.DataFrame({"x": x, "y": -x, "c": ["a"] * 5 + ["b"] * 5, "d": ["u"] * 5 + ["v"] * 5})
    synth.loc[[0, 1, 2], "d"] = "v"
    meta = infer_meta(real)
    got = column_pair_trends(real, synth, meta, **ALL_PAIRS)
    assert got["x|y"] == pytest.approx(1 - abs(1 - (-1)) / 2)  # = 0
    # real cells: (a,u) 0.5, (b,v) 0.5; synthetic: (a,u) 0.2, (a,v) 0.3, (b,v) 0.5 -> TVD = 0.3
    assert got["c|d"] == pytest.approx(0.7)
    # mixed pair x|c: x binned on each table's own 10 bins, identical in both tables -> 1
    assert got["x|c"] == pytest.approx(1.0)


def test_thresholds_select_pairs():
    real, synth = mixed_pair()
    meta = infer_meta(real)
    default = column_pair_trends(real, synth, meta)
    every = column_pair_trends(real, synth, meta, **ALL_PAIRS)
    assert set(default) < set(every)
    assert "runtime|size" in every and "runtime|size" not in default  # size is independent of runtime
    assert default["score"] == pytest.approx(np.mean([v for k, v in default.items() if k != "score"]))


def test_subsampling_is_seeded_and_exact_when_not_needed():
    real, synth = mixed_pair()
    meta = infer_meta(real)
    exact = column_pair_trends(real, synth, meta)
    assert column_pair_trends(real, synth, meta, num_rows_subsample=300) == exact  # no table is larger
    first = column_pair_trends(real, synth, meta, num_rows_subsample=100, seed=3)
    assert column_pair_trends(real, synth, meta, num_rows_subsample=100, seed=3) == first
    assert first != exact
    numeric = [k for k in exact if k.startswith("runtime|energy")]
    assert all(first[k] == exact[k] for k in numeric)  # correlation pairs always use every row


def test_split_evaluation_combines_to_the_unsplit_result():
    real, synth = mixed_pair()
    meta = infer_meta(real)
    options = {"column_pair_trends": ALL_PAIRS}
    whole = evaluate(real, synth, meta, ["column_pair_trends"], options).set_index("component").value
    parts = [evaluate(real, synth, meta, ["column_pair_trends"], options, part=(i, 3)) for i in range(3)]
    combined = combine_parts(parts).set_index("component").value
    pd.testing.assert_series_equal(combined.sort_index(), whole.sort_index(), rtol=1e-12, check_names=False)


# ---------------------------------------------------------------- invariances and awkward input


def test_row_and_column_order_do_not_matter():
    real, synth = mixed_pair()
    meta = infer_meta(real)
    base = sdmetrics_quality(real, synth, meta)
    shuffled = sdmetrics_quality(
        real.sample(frac=1, random_state=1), synth.sample(frac=1, random_state=2), meta
    )
    for key, value in base.items():
        assert shuffled[key] == pytest.approx(value, abs=1e-12), key


def test_awkward_columns_never_give_nan():
    real, synth = mixed_pair()
    real["constant"], synth["constant"] = 5.0, 5.0
    real["empty"], synth["empty"] = np.nan, np.nan
    real["only_real"], synth["only_real"] = "x", "y"  # categories that never meet
    meta = infer_meta(real).with_overrides({"empty": {"type": "numerical"}})
    every = column_pair_trends(real, synth, meta, **ALL_PAIRS)
    assert all(math.isfinite(v) for v in every.values())
    # correlations with a constant or empty column are undefined: left out (SDMetrics: an error, NaN)
    assert "runtime|constant" not in every and "runtime|empty" not in every
    # mixed pairs discretise them into a single bin: defined
    assert every["compiler|constant"] == pytest.approx(every["compiler|empty"])
    assert every["compiler|only_real"] == pytest.approx(0.0)  # disjoint contingency tables
    table = evaluate(real, synth, meta, ["sdmetrics_quality", "column_pair_trends", "tabsyndex"])
    assert np.isfinite(table.value).all()
    assert set(table[table.metric == "tabsyndex"].component) == {
        "basic_stats",
        "log_corr",
        "pmse_score",
        "support_coverage",
        "score",
    }


def test_single_column_and_no_pairs():
    real = pd.DataFrame({"x": np.arange(20.0)})
    meta = infer_meta(real)
    assert column_pair_trends(real, real + 1, meta) == {}
    assert sdmetrics_quality(real, real + 1, meta) == {"column_shapes": 0.95, "score": 0.95}
    weak = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [1.0, -1.0, -1.0, 1.0]})  # r = 0: below threshold
    assert column_pair_trends(weak, weak, infer_meta(weak)) == {}
    categories = pd.DataFrame({"c": list("aabb"), "d": list("xxyy")})  # no numeric pair: contingency only
    assert column_pair_trends(categories, categories.iloc[[0, 3]], infer_meta(categories)) == {
        "c|d": 1.0,
        "score": 1.0,
    }


@pytest.mark.parametrize(
    "option, message",
    [
        ({"correlation_threshold": 1.5}, "correlation_threshold"),
        ({"association_threshold": "high"}, "association_threshold"),
        ({"coefficient": "kendall"}, "coefficient"),
        ({"num_rows_subsample": 0}, "num_rows_subsample"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_options_are_rejected(option, message):
    real, synth = mixed_pair()
    with pytest.raises(BadInput, match=message):
        sdmetrics_quality(real, synth, infer_meta(real), **option)


# ---------------------------------------------------------------- TabSynDex

TABSYNDEX_PARTS = {"basic_stats", "log_corr", "pmse_score", "support_coverage"}


def test_tabsyndex_identical_tables():
    real, _ = mixed_pair()
    meta = infer_meta(real)
    got = tabsyndex(real, real.copy(), meta, target="compiler")
    assert {k: got[k] for k in ("basic_stats", "log_corr", "support_coverage", "ml_efficacy")} == {
        "basic_stats": 1.0,
        "log_corr": 1.0,
        "support_coverage": 1.0,
        "ml_efficacy": 1.0,
    }
    # a copy has pMSE 0, ratio 0 instead of the ~1 of a fresh sample: the paper's 1.2^-|1 - ratio| = 1/1.2
    assert got["pmse_score"] == pytest.approx(1 / 1.2)
    assert got["score"] == pytest.approx((4 + 1 / 1.2) / 5)


def test_tabsyndex_basic_stats_and_support_coverage_by_hand():
    real = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0]})
    synth = pd.DataFrame({"x": [2.0, 3.0, 4.0, 5.0]})  # mean and median +1 (errors 1/2.5), same std
    got = tabsyndex(real, synth, infer_meta(real))
    assert got["basic_stats"] == pytest.approx(1 - (0.4 + 0.4 + 0) / 3, rel=1e-5)
    assert set(got) == {"basic_stats", "pmse_score", "support_coverage", "score"}  # one column: no log_corr

    cat = pd.DataFrame({"c": ["a"] * 75 + ["b"] * 25})
    # frequency ratios: a 1/0.75 = 1.33, b 0 -> mean 0.67 (the reference's formula)
    assert tabsyndex(cat, pd.DataFrame({"c": ["a"] * 50}), infer_meta(cat))["support_coverage"] == (
        pytest.approx(2 / 3)
    )
    uniform = pd.DataFrame({"x": np.arange(20.0)})  # one row in each of the 20 bins
    narrow = pd.DataFrame({"x": np.repeat(np.arange(5.0), 4)})  # 5 bins, 4x over-represented: capped at 2
    assert tabsyndex(uniform, narrow, infer_meta(uniform))["support_coverage"] == pytest.approx(5 * 2 / 20)


def test_tabsyndex_log_corr_by_hand():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    real = pd.DataFrame({"x": x, "y": x + rng.normal(size=200)})
    synth = pd.DataFrame({"x": x, "y": x + 2 * rng.normal(size=200)})
    r_real, r_synth = np.corrcoef(real.x, real.y)[0, 1], np.corrcoef(synth.x, synth.y)[0, 1]
    error = abs(np.log(r_real) - np.log(r_synth)) / (abs(np.log(r_real)) + 1e-6)
    got = tabsyndex(real, synth, infer_meta(real))
    assert got["log_corr"] == pytest.approx(1 - min(1.0, error), rel=1e-9)
    assert log_transform(np.array([0.5, -0.5, 0.0])) == pytest.approx(
        [np.log(0.5), -np.log(0.5), np.log(1e-6)]
    )


def test_tabsyndex_pmse_score_uses_the_pmse_ratio():
    real = sklearn_frame(load_wine)
    synth = perturbed(real, seed=2)
    meta = infer_meta(real)
    ratio = evaluate(real, synth, meta, ["pmse"]).set_index("component").value["pmse_ratio"]
    assert tabsyndex(real, synth, meta)["pmse_score"] == pytest.approx(1.2 ** -abs(1 - ratio), rel=1e-9)


@pytest.mark.parametrize("loader, target", [(load_iris, "target"), (load_diabetes, "target")])
def test_tabsyndex_ml_efficacy_sees_a_broken_target(loader, target):
    real = sklearn_frame(loader)
    meta = infer_meta(real)
    good = perturbed(real, seed=3, noise=0.02)
    broken = good.assign(**{target: np.random.default_rng(4).permutation(good[target].to_numpy())})
    without = tabsyndex(real, good, meta)
    assert set(without) == TABSYNDEX_PARTS | {"score"}  # no target: no ml_efficacy, never NaN
    with_good = tabsyndex(real, good, meta, target=target)
    with_broken = tabsyndex(real, broken, meta, target=target)
    assert 0 <= with_broken["ml_efficacy"] < with_good["ml_efficacy"] <= 1
    assert with_good["score"] == pytest.approx(
        np.mean([with_good[k] for k in TABSYNDEX_PARTS | {"ml_efficacy"}])
    )


def test_tabsyndex_is_deterministic_and_row_order_free():
    real, synth = mixed_pair()
    meta = infer_meta(real)
    first = tabsyndex(real, synth, meta, target="threads", max_rows=200, seed=5)
    assert tabsyndex(real, synth, meta, target="threads", max_rows=200, seed=5) == first
    shuffled = tabsyndex(
        real.sample(frac=1, random_state=7),
        synth.sample(frac=1, random_state=8),
        meta,
        target="threads",
        max_rows=200,
        seed=5,
    )
    for key, value in first.items():
        assert shuffled[key] == pytest.approx(value, abs=1e-9), key
    assert tabsyndex(real, synth, meta, target="threads", max_rows=200, seed=6) != first


def test_tabsyndex_single_class_synthetic_target():
    real = sklearn_frame(load_iris)
    synth = perturbed(real, seed=1).assign(target="a")
    got = tabsyndex(real, synth, infer_meta(real), target="target")
    assert all(math.isfinite(v) for v in got.values())
    assert got["ml_efficacy"] < 0.8


@pytest.mark.parametrize(
    "option, message",
    [
        ({"target": "nope"}, "target 'nope' is not a column"),
        ({"target": "started"}, "datetime"),
        ({"task": "regression"}, "task is given but target is not"),
        ({"target": "compiler", "task": "regression"}, "numeric target"),
        ({"bins": 0}, "bins"),
        ({"max_rows": 0}, "max_rows"),
    ],
)
def test_tabsyndex_bad_options(option, message):
    real, synth = mixed_pair()
    with pytest.raises(BadInput, match=message):
        tabsyndex(real, synth, infer_meta(real), **option)
