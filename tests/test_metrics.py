"""Metrics layer: registry, evaluate, column shapes (vs SDMetrics), divergences and DCR, computed for real."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon
from sklearn.datasets import load_wine

from perfscale.errors import BadInput, FailureKind, TaskFailure
from perfscale.metrics import evaluate, list_metrics, metric
from perfscale.metrics import registry as registry_module
from perfscale.metrics.column_shapes import column_shapes
from perfscale.metrics.dcr import dcr
from perfscale.metrics.divergence import jsd, kl_divergence, wasserstein
from perfscale.tabular.meta import TableMeta, infer_meta

BUILTIN = ["column_shapes", "kl_divergence", "wasserstein", "jsd", "dcr"]


def perf_table(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """A small HPC-like table: skewed runtimes, discrete thread counts, categories, a flag, a timestamp."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "runtime": rng.lognormal(1.0, 0.8, n),
            "threads": rng.choice([1, 2, 4, 8, 16], n),
            "size": rng.integers(1_000, 100_000, n),
            "compiler": rng.choice(["gcc", "clang", "icx"], n, p=[0.5, 0.3, 0.2]),
            "vectorised": rng.random(n) < 0.4,
            "started": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 10**7, n), unit="s"),
        }
    )


def wine_pair() -> tuple[pd.DataFrame, pd.DataFrame]:
    """sklearn's wine data plus categorical/boolean/datetime columns and missing values; a perturbed copy."""
    rng = np.random.default_rng(0)
    real = load_wine(as_frame=True).frame
    real["grade"] = rng.choice(["a", "b", "c"], len(real), p=[0.5, 0.3, 0.2])
    real["flag"] = rng.random(len(real)) < 0.3
    real["when"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 10**6, len(real)), unit="s")
    real.loc[::17, "alcohol"] = np.nan
    real.loc[::13, "grade"] = None
    synth = real.sample(frac=1.2, replace=True, random_state=1).reset_index(drop=True)
    numeric = real.columns[:13]
    synth[numeric] = synth[numeric] * (1 + rng.normal(0, 0.05, (len(synth), len(numeric))))
    synth.loc[:5, "grade"] = "z"  # a category the real table does not have
    synth["flag"] = synth["flag"].astype(object)
    synth.loc[6:9, "flag"] = None
    return real, synth


def values(table: pd.DataFrame, name: str) -> dict[str, float]:
    part = table[table.metric == name]
    return dict(zip(part.component, part.value, strict=True))


@pytest.fixture
def scratch_metric():
    """Register throwaway metrics for one test and remove them afterwards (the registry is global)."""
    before = dict(registry_module._REGISTRY)
    yield metric
    registry_module._REGISTRY.clear()
    registry_module._REGISTRY.update(before)


# ---------------------------------------------------------------- registry and evaluate


def test_builtin_metrics_are_registered_with_options():
    specs = {s.name: s for s in list_metrics()}
    assert set(BUILTIN) <= set(specs)
    assert specs["column_shapes"].higher_is_better is True
    assert specs["kl_divergence"].higher_is_better is False
    assert specs["kl_divergence"].options == ["bins", "binning", "epsilon"]
    assert specs["dcr"].options == ["holdout", "chunk_size", "workers"]
    assert all(s.description for s in specs.values())


def test_evaluate_returns_long_table_of_finite_values():
    real, synth = perf_table(seed=0), perf_table(seed=1)
    meta, options = infer_meta(real), {"dcr": {"holdout": perf_table(seed=2)}}
    table = evaluate(real, synth, meta, metrics=BUILTIN[::-1], options=options)
    assert list(table.columns) == ["metric", "component", "value", "elapsed_s"]
    assert list(dict.fromkeys(table.metric)) == BUILTIN[::-1]  # in the order asked for
    assert set(evaluate(real, synth, meta, options=options).metric) >= set(BUILTIN)  # default: all
    assert np.isfinite(table.value).all() and (table.elapsed_s >= 0).all()
    assert not table.duplicated(["metric", "component"]).any()
    assert values(table, "jsd").keys() == {"compiler", "vectorised", "mean"}
    assert values(table, "wasserstein").keys() == {"runtime", "threads", "size", "started", "mean"}
    assert set(values(table, "dcr")) == {
        "synth_to_train_median",
        "synth_to_train_mean",
        "synth_to_train_p05",
        "holdout_to_train_median",
        "share_closer_to_train",
    }


def test_evaluate_selects_metrics_and_passes_options():
    real, synth = perf_table(seed=0), perf_table(seed=1)
    meta = infer_meta(real)
    table = evaluate(real, synth, meta, metrics=["kl_divergence"], options={"kl_divergence": {"bins": 5}})
    assert set(table.metric) == {"kl_divergence"}
    default = evaluate(real, synth, meta, metrics=["kl_divergence"])
    assert values(table, "kl_divergence")["runtime"] != values(default, "kl_divergence")["runtime"]


def test_metric_that_applies_to_no_column_gives_no_rows():
    real = pd.DataFrame({"x": np.arange(10.0)})
    table = evaluate(real, real, infer_meta(real), metrics=["jsd", "column_shapes"])
    assert set(table.metric) == {"column_shapes"}


def test_registering_a_metric_and_nan_guard(scratch_metric):
    @scratch_metric("row_ratio", higher_is_better=None, description="synthetic rows per real row")
    def row_ratio(real, synth, meta, *, scale: float = 1.0):
        return {"ratio": scale * len(synth) / len(real)}

    @scratch_metric("broken", higher_is_better=True)
    def broken(real, synth, meta):
        """Always NaN: a bug evaluate must not let through."""
        return {"score": float("nan")}

    real = perf_table(20)
    meta = infer_meta(real)
    table = evaluate(real, real.head(10), meta, metrics=["row_ratio"], options={"row_ratio": {"scale": 2}})
    assert values(table, "row_ratio") == {"ratio": 1.0}
    with pytest.raises(ValueError, match="already registered"):
        scratch_metric("row_ratio", higher_is_better=None)(lambda real, synth, meta: {})
    with pytest.raises(TaskFailure, match="broken") as failure:
        evaluate(real, real, meta, metrics=["broken"])
    assert failure.value.kind is FailureKind.APP_ERROR


# ---------------------------------------------------------------- ideal values on identical tables


def test_identical_tables_give_ideal_scores():
    real = perf_table()
    holdout = perf_table(seed=7)
    table = evaluate(real, real.copy(), infer_meta(real), options={"dcr": {"holdout": holdout}})
    assert all(v == 1.0 for v in values(table, "column_shapes").values())
    for name in ("kl_divergence", "wasserstein", "jsd"):
        assert all(v == pytest.approx(0.0, abs=1e-12) for v in values(table, name).values()), name
    d = values(table, "dcr")
    assert d["synth_to_train_median"] == d["synth_to_train_mean"] == d["synth_to_train_p05"] == 0.0
    assert d["share_closer_to_train"] == 1.0
    assert d["holdout_to_train_median"] > 0


# ---------------------------------------------------------------- known values


def test_tv_complement_known_value():
    real = pd.DataFrame({"c": ["a", "b"] * 50})
    synth = pd.DataFrame({"c": ["a"] * 100})
    assert column_shapes(real, synth, infer_meta(real)) == {"c": 0.5, "score": 0.5}


def test_ks_complement_known_values():
    real = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0]})
    meta = infer_meta(real)
    assert column_shapes(real, pd.DataFrame({"x": [10.0, 11.0, 12.0]}), meta)["x"] == 0.0  # disjoint
    assert column_shapes(real, pd.DataFrame({"x": [3.0, 4.0, 5.0, 6.0]}), meta)["x"] == 0.5  # D = 1/2


def test_jsd_known_values_and_scipy_agreement():
    real = pd.DataFrame({"c": ["a"] * 10})
    meta = infer_meta(real)
    assert jsd(real, pd.DataFrame({"c": ["b"] * 10}), meta)["c"] == pytest.approx(1.0)
    rng = np.random.default_rng(3)
    r = pd.DataFrame({"c": rng.choice(list("abcd"), 300, p=[0.4, 0.3, 0.2, 0.1])})
    s = pd.DataFrame({"c": rng.choice(list("abcde"), 200)})
    p = r.c.value_counts().reindex(list("abcde"), fill_value=0).to_numpy()
    q = s.c.value_counts().reindex(list("abcde"), fill_value=0).to_numpy()
    assert jsd(r, s, infer_meta(r))["c"] == pytest.approx(jensenshannon(p, q, base=2) ** 2, abs=1e-12)


def test_wasserstein_is_in_units_of_real_std():
    rng = np.random.default_rng(1)
    real = pd.DataFrame({"x": rng.normal(50, 7, 500)})
    shifted = real + real.x.std()  # every value moved by one real std
    assert wasserstein(real, shifted, infer_meta(real))["x"] == pytest.approx(1.0, abs=1e-9)


def test_kl_divergence_matches_hand_computation():
    real = pd.DataFrame({"c": ["a"] * 75 + ["b"] * 25})
    synth = pd.DataFrame({"c": ["a"] * 50 + ["b"] * 50})
    p, q = np.array([0.75, 0.25]), np.array([0.5, 0.5])
    expected = 0.5 * (np.sum(p * np.log(p / q)) + np.sum(q * np.log(q / p)))
    got = kl_divergence(real, synth, infer_meta(real), epsilon=1e-12)
    assert got["c"] == pytest.approx(expected, rel=1e-9)


def test_kl_divergence_is_finite_for_disjoint_supports():
    real = pd.DataFrame({"x": np.arange(100.0), "c": ["a"] * 100})
    synth = pd.DataFrame({"x": np.arange(1000.0, 1100.0), "c": ["b"] * 100})
    meta = infer_meta(real)
    for binning in ("quantile", "uniform"):
        got = kl_divergence(real, synth, meta, binning=binning)
        assert all(math.isfinite(v) and v > 5 for v in got.values()), got


def test_dcr_known_distances():
    train = pd.DataFrame({"x": [0.0, 2.0], "c": ["a", "a"]})  # x: mean 1, std sqrt(2)
    meta = infer_meta(train)
    one_category_off = dcr(train, pd.DataFrame({"x": [0.0], "c": ["b"]}), meta)
    assert one_category_off["synth_to_train_median"] == pytest.approx(1.0)
    halfway = dcr(train, pd.DataFrame({"x": [1.0], "c": ["a"]}), meta)
    assert halfway["synth_to_train_mean"] == pytest.approx(1 / math.sqrt(2))


def test_dcr_share_closer_to_train():
    train, holdout = perf_table(300, seed=0), perf_table(300, seed=1)
    meta = infer_meta(train)
    fresh = dcr(train, perf_table(300, seed=2), meta, holdout=holdout)
    assert 0.35 < fresh["share_closer_to_train"] < 0.65  # a sample of the same law: about 0.5
    assert dcr(train, holdout, meta, holdout=holdout)["share_closer_to_train"] == 0.0


def test_dcr_does_not_depend_on_chunking():
    train, synth = perf_table(200, seed=0), perf_table(150, seed=1)
    meta = infer_meta(train)
    assert dcr(train, synth, meta, chunk_size=7) == dcr(train, synth, meta)


# ---------------------------------------------------------------- SDMetrics agreement


def test_column_shapes_agrees_with_sdmetrics_quality_report():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the single-table report is deprecated, not gone
        from sdmetrics.reports.single_table import QualityReport

    real, synth = wine_pair()
    meta = infer_meta(real)
    sdtype = {"numerical": "numerical", "integer": "numerical"}
    sd_meta = {"columns": {n: {"sdtype": sdtype.get(c.type, c.type)} for n, c in meta.columns.items()}}
    report = QualityReport()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report.generate(real, synth, sd_meta, verbose=False)
    props = report.get_properties().set_index("Property")["Score"]
    details = report.get_details("Column Shapes").set_index("Column")["Score"]

    ours = values(evaluate(real, synth, meta, metrics=["column_shapes"]), "column_shapes")
    assert ours["score"] == pytest.approx(props["Column Shapes"], abs=1e-6)
    assert set(details.index) == set(ours) - {"score"}
    for column, score in details.items():
        assert ours[column] == pytest.approx(score, abs=1e-6), column


# ---------------------------------------------------------------- invariances and robustness


def test_metrics_do_not_depend_on_row_order():
    real, synth, holdout = perf_table(seed=0), perf_table(seed=1), perf_table(seed=2)
    meta = infer_meta(real)

    def run(r: pd.DataFrame, s: pd.DataFrame, h: pd.DataFrame) -> pd.Series:
        table = evaluate(r, s, meta, options={"dcr": {"holdout": h}})
        return table.set_index(["metric", "component"]).value

    def shuffled(t: pd.DataFrame, seed: int) -> pd.DataFrame:
        return t.sample(frac=1, random_state=seed)[t.columns[::-1]]  # rows and columns reordered

    base = run(real, synth, holdout)
    other = run(shuffled(real, 1), shuffled(synth, 2), shuffled(holdout, 3))
    pd.testing.assert_series_equal(base.sort_index(), other.sort_index(), rtol=1e-12, atol=1e-12)


def test_constant_and_empty_columns_never_give_nan():
    real = perf_table(100)
    real["const"] = 3.0
    real["label"] = "same"
    real["sparse"] = np.where(np.arange(100) % 4 == 0, np.nan, 1.5)
    synth = perf_table(80, seed=1)
    synth["const"] = 4.0  # a different constant
    synth["label"] = "other"
    synth["sparse"] = np.nan  # every value missing
    table = evaluate(real, synth, infer_meta(real), options={"dcr": {"holdout": real.head(30)}})
    assert np.isfinite(table.value).all()
    shapes = values(table, "column_shapes")
    assert shapes["const"] == 0.0
    assert shapes["label"] == pytest.approx(0.0, abs=1e-6)  # SDMetrics' 1e-6 pseudo-count leaves ~1e-8
    assert "sparse" not in shapes  # undefined KS (no synthetic value) is left out, as SDMetrics does
    assert "sparse" in values(table, "kl_divergence")  # missingness itself is compared
    same = evaluate(real, real, infer_meta(real))
    assert np.isfinite(same.value).all()
    assert values(same, "wasserstein")["const"] == 0.0


def test_column_named_like_an_aggregate_keeps_both():
    real = pd.DataFrame({"score": [1.0, 2.0, 3.0], "mean": ["a", "b", "a"]})
    meta = infer_meta(real)
    shapes = column_shapes(real, real, meta)
    assert shapes == {"column:score": 1.0, "mean": 1.0, "score": 1.0}
    assert set(kl_divergence(real, real, meta)) == {"score", "column:mean", "mean"}


def test_nullable_and_string_dtypes_are_read():
    real = pd.DataFrame({"n": pd.array([1, 2, None, 4], dtype="Int64"), "s": pd.array(["x", "y", None, "x"])})
    synth = pd.DataFrame({"n": [1.0, 2.0, 3.0, np.nan], "s": ["x", "x", "y", None]})
    table = evaluate(real, synth, infer_meta(real), options={"dcr": {"holdout": real}})
    assert np.isfinite(table.value).all()


# ---------------------------------------------------------------- bad inputs


@pytest.fixture
def pair() -> tuple[pd.DataFrame, TableMeta]:
    real = perf_table(50)
    return real, infer_meta(real)


def test_missing_and_extra_columns_are_named(pair):
    real, meta = pair
    with pytest.raises(BadInput, match=r"missing \['threads'\], extra \['cores'\]"):
        evaluate(real, real.rename(columns={"threads": "cores"}), meta)
    with pytest.raises(BadInput, match=r"missing \['size'\]"):
        evaluate(real, real.drop(columns="size"), meta)


def test_empty_synthetic_table_is_rejected(pair):
    real, meta = pair
    with pytest.raises(BadInput, match="synthetic table has no rows"):
        evaluate(real, real.iloc[:0], meta)


def test_strings_in_numeric_column_are_rejected(pair):
    real, meta = pair
    synth = real.astype({"runtime": object})
    synth.loc[3, "runtime"] = "fast"
    with pytest.raises(BadInput, match=r"'runtime' is numerical but holds 1 non-numeric value.*'fast'"):
        evaluate(real, synth, meta)


def test_infinite_values_are_rejected(pair):
    real, meta = pair
    synth = real.copy()
    synth.loc[0, "runtime"] = np.inf
    with pytest.raises(BadInput, match="infinite"):
        evaluate(real, synth, meta)


def test_unknown_metric_and_option_are_rejected(pair):
    real, meta = pair
    with pytest.raises(BadInput, match="unknown metric 'no_such_metric'"):
        evaluate(real, real, meta, metrics=["no_such_metric"])
    with pytest.raises(BadInput, match=r"'nbins': unknown option for kl_divergence; choose one of binning,"):
        evaluate(real, real, meta, metrics=["kl_divergence"], options={"kl_divergence": {"nbins": 3}})
    with pytest.raises(BadInput, match=r"'binning': Input should be 'quantile' or 'uniform' \(got 'log'\)"):
        evaluate(real, real, meta, metrics=["kl_divergence"], options={"kl_divergence": {"binning": "log"}})


def test_bad_holdout_is_rejected(pair):
    real, meta = pair
    with pytest.raises(BadInput, match=r"holdout table's columns differ.*missing \['size'\]"):
        evaluate(real, real, meta, metrics=["dcr"], options={"dcr": {"holdout": real.drop(columns="size")}})
