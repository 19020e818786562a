"""The metric validation study: the sklearn importer, the `corrupt` stage, the `metric_study` rank
correlations, and workflows/metric_study.yaml reduced to iris, run through the local engine to a report."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from pydantic import ValidationError

from perfscale.errors import BadInput
from perfscale.ingest import read_source
from perfscale.ingest.sklearn_datasets import data_file
from perfscale.results.metric_study import MetricStudyParams, collect_sets, study_points
from perfscale.stages.corrupt import CorruptParams, corrupt_table
from tests.studies import reduced_dissimilarity_study

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the sklearn importer


@pytest.mark.parametrize(
    ("source", "shape", "classes"),
    [
        ("DEFAULT", (1797, 65), 10),
        ("digits", (1797, 65), 10),
        ("iris", (150, 5), 3),
        ("wine", (178, 14), 3),
        ("breast_cancer", (569, 31), 2),
        ("diabetes", (442, 11), None),
    ],
)
def test_sklearn_sources(source, shape, classes):
    table = read_source("sklearn", source).to_pandas()
    assert table.shape == shape
    assert table.columns[-1] == "target"
    features = table.drop(columns="target")
    assert all(pd.api.types.is_numeric_dtype(features[c]) for c in features)
    if classes is None:  # regression: diabetes keeps its numeric target, unscaled features
        assert table["target"].dtype == "float64" and set(table["sex"]) == {1.0, 2.0}
    else:
        assert table["target"].map(type).eq(str).all() and table["target"].nunique() == classes
    if source in ("DEFAULT", "digits"):
        assert (features.dtypes == "int64").all() and features.to_numpy().max() == 16
        assert sorted(table["target"].unique()) == [str(d) for d in range(10)]
    assert read_source("sklearn", source).equals(read_source("sklearn", source))  # deterministic


def test_sklearn_bad_sources_and_files(tmp_path):
    with pytest.raises(
        BadInput,
        match=r"mnist: no such file or folder, nor a data set of importer 'sklearn' "
        r"\(DEFAULT, breast_cancer, diabetes, digits, iris, wine\)",
    ):
        read_source("sklearn", "mnist")
    stray = tmp_path / "iris_copy.csv"
    stray.write_text("a,b\n1,2\n")
    with pytest.raises(BadInput, match="not one of scikit-learn's bundled data files"):
        read_source("sklearn", stray)
    # the bundled file itself is a valid SOURCE too
    assert read_source("sklearn", data_file("iris")).equals(read_source("sklearn", "iris"))


# ---------------------------------------------------------------- corruptions


@pytest.fixture(scope="module")
def iris() -> pd.DataFrame:
    return read_source("sklearn", "iris").to_pandas()


def corrupted(train: pd.DataFrame, seed: int = 7, **params) -> pd.DataFrame:
    return corrupt_table(train, CorruptParams(source="split", **params), seed)


NUMERIC = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


def test_noise_level_zero_is_identity_and_noise_stays_in_range(iris):
    identity = corrupted(iris, corruption="identity")
    pd.testing.assert_frame_equal(identity, iris)
    pd.testing.assert_frame_equal(corrupted(iris, corruption="noise", level=0.0), identity)
    noisy = corrupted(iris, corruption="noise", level=1.0)
    assert list(noisy.dtypes) == list(iris.dtypes)
    for c in NUMERIC:
        assert (noisy[c] != iris[c]).mean() > 0.8
        assert noisy[c].between(iris[c].min(), iris[c].max()).all()
    flipped = (noisy["target"] != iris["target"]).mean()
    assert flipped == 1.0  # probability min(level, 1) = 1: every label moved to another class
    assert set(noisy["target"]) <= set(iris["target"])
    some = (corrupted(iris, corruption="noise", level=0.3)["target"] != iris["target"]).mean()
    assert 0.15 < some < 0.45
    kept = corrupted(iris, corruption="noise", level=1.0, include_target=False)
    assert kept["target"].equals(iris["target"])
    pd.testing.assert_frame_equal(
        corrupted(iris, corruption="noise", level=0.5), corrupted(iris, corruption="noise", level=0.5)
    )  # seeded


def test_shuffle_breaks_correlations_but_keeps_marginals(iris):
    real_corr = iris[NUMERIC].corr().to_numpy()
    assert abs(real_corr[2, 3]) > 0.9  # petal length vs width
    shuffled = corrupted(iris, corruption="shuffle", level=1.0, include_target=False)
    assert shuffled["target"].equals(iris["target"])
    for c in NUMERIC:
        assert sorted(shuffled[c]) == sorted(iris[c])
    off_diagonal = shuffled[NUMERIC].corr().to_numpy()[~np.eye(4, dtype=bool)]
    assert np.abs(off_diagonal).max() < 0.3
    # half of the 5 columns (round(2.5) = 2): exactly two columns moved, the others untouched
    half = corrupted(iris, corruption="shuffle", level=0.5)
    moved = [c for c in iris if not half[c].equals(iris[c])]
    assert len(moved) == 2
    assert all(sorted(half[c].astype(str)) == sorted(iris[c].astype(str)) for c in moved)


def test_copy_rows_are_exact_training_rows(iris):
    pd.testing.assert_frame_equal(corrupted(iris, corruption="copy", level=1.0), iris)
    half = corrupted(iris, corruption="copy", level=0.5, jitter=0.5)
    key = list(iris.columns)
    exact = half.merge(iris.drop_duplicates(), on=key, how="left", indicator=True)["_merge"] == "both"
    assert exact.sum() >= 75 and exact.sum() < 150
    drawn = corrupted(iris, corruption="copy", level=1.0, rows=40)
    assert len(drawn) == 40 and len(drawn.merge(iris.drop_duplicates(), on=key)) == 40


def test_mode_collapse_keeps_fewer_classes(iris):
    collapsed = corrupted(iris, corruption="mode_collapse", level=0.7)
    assert len(collapsed) == len(iris) and collapsed["target"].nunique() == 1  # round(0.3 x 3) = 1 class
    assert corrupted(iris, corruption="mode_collapse", level=0.0)["target"].nunique() == 3
    two = corrupted(iris, corruption="mode_collapse", level=0.5, rows=60)
    assert len(two) == 60 and two["target"].nunique() == 2  # round(0.5 x 3) = 2
    # no class column: k-means clusters of the numeric columns; the rows are training rows of few clusters
    features = iris[NUMERIC]
    clustered = corrupted(features, corruption="mode_collapse", level=0.9, clusters=5)
    assert len(clustered.merge(features.drop_duplicates(), on=NUMERIC)) == len(features)
    assert clustered.drop_duplicates().shape[0] < 0.6 * len(features)


def test_corrupt_params_are_checked(iris):
    with pytest.raises(ValidationError, match="is a fraction"):
        CorruptParams(source="split", corruption="shuffle", level=1.5)
    with pytest.raises(BadInput, match=r"corrupt\.target names 'species'"):
        corrupted(iris, corruption="mode_collapse", level=0.5, target="species")
    assert CorruptParams(source="s", corruption="noise", level=0.5).default_label() == "noise@0.5"
    assert CorruptParams(source="s", corruption="shuffle", level=1, include_target=False).default_label() == (
        "shuffle_features@1"
    )


# ---------------------------------------------------------------- rank correlations


def evaluate_table(values: dict[str, list[float]], generators: list[str]) -> pd.DataFrame:
    """A long table as the evaluate stage writes it: one evaluation per generator."""
    rows = []
    for key, series in values.items():
        metric, component = key.split(":")
        for gen, value in zip(generators, series, strict=True):
            rows.append(
                {
                    "generator": gen,
                    "metric": metric,
                    "component": component,
                    "value": value,
                    "elapsed_s": 0.1,
                    "part": 0,
                    "parts": 1,
                    "evaluation": f"ev-{gen}",
                }
            )
    return pd.DataFrame(rows)


ACCURACY = [0.2, 0.4, 0.5, 0.7, 0.9]


def test_rank_correlation_signs_and_orientation():
    first = evaluate_table(
        {
            "ml_efficacy:synthetic/accuracy": ACCURACY[:3],
            "column_shapes:score": [0.5, 0.6, 0.7],  # higher is better, same order: +1
            "kl_divergence:mean": [0.3, 0.2, 0.1],  # lower is better, falls as accuracy rises: +1
            "wasserstein:mean": [1.0, 2.0, 3.0],  # lower is better but rises with accuracy: -1
            "dcr:share_closer_to_train": [0.95, 0.8, 0.6],  # ideal 0.5: closer and closer to it: +1
            "jsd:mean": [0.1, 0.1, 0.1],
        },
        ["a", "b", "c"],
    )
    second = evaluate_table(  # a second evaluate stage holds the rest of the sets
        {
            "ml_efficacy:synthetic/accuracy": ACCURACY[3:],
            "column_shapes:score": [0.8, 0.9],
            "kl_divergence:mean": [0.05, 0.01],
            "wasserstein:mean": [4.0, 5.0],
            "dcr:share_closer_to_train": [0.55, 0.5],
            "jsd:mean": [0.1, 0.1],
        },
        ["noise@1", "noise@0.1"],
    )
    params = MetricStudyParams(
        metrics=["column_shapes", "kl_divergence", "wasserstein", "dcr", "jsd", "pmse"]
    )
    sets = collect_sets({"eval_a": first, "eval_b": second})
    assert sets["set"].nunique() == 5
    points, result = study_points(sets, params)
    by = result.set_index("metric")
    assert by.loc["column_shapes", "spearman_rho"] == pytest.approx(1.0)
    assert by.loc["kl_divergence", "spearman_rho"] == pytest.approx(1.0)
    assert by.loc["kl_divergence", "orientation"] == "lower"
    assert by.loc["wasserstein", "spearman_rho"] == pytest.approx(-1.0)
    assert by.loc["dcr", ["spearman_rho", "orientation"]].tolist() == [pytest.approx(1.0), "ideal=0.5"]
    assert (by.loc[["column_shapes", "kl_divergence", "wasserstein", "dcr"], "n_sets"] == 5).all()
    assert by.loc["column_shapes", "p_value"] < 0.05
    assert by.loc["jsd", "status"].startswith("constant") and math.isnan(by.loc["jsd", "spearman_rho"])
    assert by.loc["pmse", "status"].startswith("missing") and by.loc["pmse", "n_sets"] == 0
    assert result["metric"].tolist()[-2:] == ["jsd", "pmse"]  # no rho: listed last
    assert set(result["reference"]) == {"ml_efficacy/synthetic/accuracy"}
    kl = points[points["metric"] == "kl_divergence"].set_index("label")
    assert kl.loc["noise@0.1", "value"] == 0.01 and kl.loc["noise@0.1", "oriented"] == -0.01


def test_rank_correlation_overrides_and_reference_checks():
    table = evaluate_table(
        {
            "ml_efficacy:synthetic/mse": [5.0, 4.0, 3.0, 2.0],  # lower is better
            "column_shapes:score": [0.1, 0.2, 0.3, 0.4],
            "column_shapes:mean_other": [0.4, 0.3, 0.2, 0.1],
        },
        ["g1", "g2", "g3", "g4"],
    )
    sets = collect_sets({"e": table})
    mse = {"reference": "ml_efficacy/synthetic/mse", "reference_higher_is_better": False}
    _, result = study_points(sets, MetricStudyParams(**mse))
    assert result.set_index("metric").loc["column_shapes", "spearman_rho"] == pytest.approx(1.0)
    flipped = MetricStudyParams(**mse, headline={"column_shapes": {"component": "mean_other"}})
    _, result = study_points(sets, flipped)
    assert result.set_index("metric").loc["column_shapes", "spearman_rho"] == pytest.approx(-1.0)
    _, result = study_points(
        sets.iloc[:0].pipe(lambda s: pd.concat([s, sets[sets.set.isin(["e:ev-g1"])]])),
        MetricStudyParams(**mse),
    )
    assert result.set_index("metric").loc["column_shapes", "status"] == "too few sets (1 < 3)"
    with pytest.raises(
        BadInput,
        match=r"'ml_efficacy/synthetic/accuracy' is in no synthetic set; its "
        r"components are \['synthetic/mse'\]",
    ):
        study_points(sets, MetricStudyParams())
    with pytest.raises(BadInput, match="must look like 'metric/component'"):
        study_points(sets, MetricStudyParams(reference="ml_efficacy"))


# ---------------------------------------------------------------- the workflow, reduced, end to end


@pytest.fixture
def reduced_study(tmp_path: Path) -> Path:
    study = yaml.safe_load((ROOT / "workflows" / "metric_study.yaml").read_text())
    stages = study["stages"]
    stages["data"]["params"]["source"] = "iris"
    stages["train"]["grid"]["zip"] = {"generator": ["gaussian_copula"], "hyperparameters": [{}]}
    stages["corrupt"]["grid"]["zip"] = {
        "corruption": ["identity", "noise", "noise", "shuffle"],
        "level": [0, 0.3, 2.0, 1.0],
    }
    evaluate = {
        "source": "split",
        "metrics": ["column_shapes", "kl_divergence", "dcr", "ml_efficacy"],
        "options": {"ml_efficacy": {"target": "target", "models": ["decision_tree"]}},
    }
    stages["evaluate_generators"]["params"] = evaluate
    stages["evaluate_corruptions"]["params"] = evaluate
    stages["metric_study"]["params"]["metrics"] = ["column_shapes", "kl_divergence", "dcr", "tabsyndex"]
    path = tmp_path / "metric-study-small.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_metric_study_end_to_end(reduced_study: Path, tmp_path: Path):
    from perfscale.report import build_report, umap_plot
    from perfscale.runner import prepare_run, run_plan
    from perfscale.spec import load_site

    store = prepare_run(reduced_study, load_site("local"), tmp_path / "run")
    summary = run_plan(store, "local", workers=2, progress=False)
    assert {s: (v.done, v.failed) for s, v in summary.items()} == {
        "data": (1, 0),
        "split": (1, 0),
        "train": (1, 0),
        "sample": (1, 0),
        "corrupt": (4, 0),
        "evaluate_generators": (1, 0),
        "evaluate_corruptions": (4, 0),
        "metric_study": (1, 0),
    }
    corrupt = store.read_stage("corrupt", provenance=False).to_pandas()
    assert sorted(corrupt["generator"].unique()) == ["identity", "noise@0.3", "noise@2", "shuffle@1"]
    assert corrupt.groupby("generator").size().eq(112).all()  # iris train part: 150 - round(37.5)

    result = store.read_stage("metric_study", provenance=False).to_pandas().set_index("metric")
    assert (result.loc[["column_shapes", "kl_divergence", "dcr"], "n_sets"] == 5).all()
    assert result.loc[["column_shapes", "kl_divergence"], "spearman_rho"].between(-1, 1).all()
    assert result.loc["tabsyndex", "status"].startswith("missing")  # listed, not evaluated: reported

    page = build_report(store).read_text()
    assert "Metric validation: metric_study" in page and "spearman_rho" in page
    assert "UMAP, real vs synthetic: corrupt" in page and "UMAP, real vs synthetic: sample" in page
    assert "section not drawn" not in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) >= 6
    cache = store.report_dir / "umap-cache"
    written = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")}
    assert len(written) == 5  # one embedding per synthetic set
    again = umap_plot.stage_projections(store, "corrupt")  # a rebuild reads them back, computes nothing
    assert [p.title for p in again] == ["identity", "noise@0.3", "noise@2", "shuffle@1"]
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")} == written
    assert set(again[0].real_classes) == {"setosa", "versicolor", "virginica"}  # coloured by `target`


def test_variants_are_ranked_as_metrics_with_bootstrap_intervals():
    accuracy = [0.2, 0.4, 0.5, 0.7, 0.9, 0.95]
    table = evaluate_table(
        {
            "ml_efficacy:synthetic/accuracy": accuracy,
            "dissimilarity:score": [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],  # lower is better: agrees, +1
            "dissimilarity:variant/a": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # disagrees: -1
            "dissimilarity:variant/b": [3.0, 1.0, 2.0, 5.0, 4.0, 0.5],  # partly
            "sdmetrics_quality:score": [0.5, 0.6, 0.7, 0.8, 0.85, 0.9],
        },
        ["g1", "g2", "g3", "g4", "g5", "g6"],
    )
    params = MetricStudyParams(metrics=["dissimilarity", "sdmetrics_quality"], variants=["dissimilarity"])
    points, result = study_points(collect_sets({"e": table}), params)
    by = result.set_index("metric")
    assert list(by.index) == [
        "dissimilarity",
        "sdmetrics_quality",
        "dissimilarity[b]",
        "dissimilarity[a]",
    ]
    assert by.loc["dissimilarity[a]", ["spearman_rho", "orientation", "component"]].tolist() == [
        pytest.approx(-1.0),
        "lower",
        "score",
    ]
    assert by.loc["dissimilarity", "component"] == "score"  # the metric's own score stays its headline
    # a perfect monotone relation stays +1 in every resample; a partial one gets a real interval around rho
    assert by.loc["dissimilarity", ["rho_low", "rho_high"]].tolist() == [pytest.approx(1.0)] * 2
    low, rho, high = by.loc["dissimilarity[b]", ["rho_low", "spearman_rho", "rho_high"]]
    assert -1.0 <= low < rho < high <= 1.0
    again = study_points(collect_sets({"e": table}), params)[1]
    pd.testing.assert_frame_equal(again, result)  # seeded
    assert set(points["metric"]) == {
        "dissimilarity",
        "sdmetrics_quality",
        "dissimilarity[a]",
        "dissimilarity[b]",
    }


def test_summary_across_tables_ranks_metrics_and_variant_options():
    from perfscale.results.metric_study_summary import held_out_choice, option_effects, summarise

    def result(rhos: dict[str, float]) -> pd.DataFrame:
        return pd.DataFrame({"metric": list(rhos), "spearman_rho": list(rhos.values())})

    good, bad = "dissimilarity[dcr/var0.9/none/none/angles]", "dissimilarity[minmax/var0.9/none/none/angles]"
    summary = summarise(
        {
            "a": result({"sdmetrics_quality": 0.5, good: 0.9, bad: 0.1, "kl_divergence": math.nan}),
            "b": result({"sdmetrics_quality": 0.7, good: 0.6, bad: -0.2, "kl_divergence": 0.3}),
        }
    )
    by = summary.set_index("metric")
    assert list(by.index) == [good, "sdmetrics_quality", "kl_divergence", bad]
    assert by.loc[good, ["rank:a", "rank:b", "mean_rank", "worst_rank"]].tolist() == [1, 2, 1.5, 2]
    assert by.loc["kl_divergence", "rank:a"] == 4  # no rho on a table: ranked last there
    assert by.loc[good, "beats:sdmetrics_quality"] == 1 and by.loc[good, "mean_rho"] == pytest.approx(0.75)
    assert by.loc[bad, "base"] == "dissimilarity"
    effects = option_effects(summary).set_index(["option", "value"])
    assert effects.loc[("scaling", "dcr"), "mean_rank"] == 1.5
    assert effects.loc[("scaling", "minmax"), "mean_rho"] == pytest.approx(-0.05)
    assert effects.loc[("weights", "none"), "variants"] == 2
    tables = {
        "a": result({"sdmetrics_quality": 0.5, good: 0.9, bad: 0.1}),
        "b": result({"sdmetrics_quality": 0.7, good: 0.6, bad: -0.2}),
        "c": result({"sdmetrics_quality": 0.2, good: -0.5, bad: 0.4}),
    }
    held = held_out_choice(tables).set_index("held_out")
    assert held.loc["c", "chosen_on_others"] == good  # chosen on a and b, then worst on c
    assert held.loc["c", ["rho", "rank", "rho:sdmetrics_quality"]].tolist() == [-0.5, 3, 0.2]
    assert held.loc["a", "chosen_on_others"] == bad  # on b and c: bad ranks 3 and 1, good 2 and 3
    assert held.loc["a", ["rho", "rank:sdmetrics_quality"]].tolist() == [0.1, 2]


def test_dissimilarity_study_reduced_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """workflows/dissimilarity_study.yaml cut to two tables and four corruptions each: every variant is ranked
    per table, and the report shows the cross-table summary."""
    from perfscale.report import build_report, umap_plot
    from perfscale.runner import prepare_run, run_plan
    from perfscale.spec import load_site

    monkeypatch.setenv(umap_plot.ENV_SWITCH, "0")  # the UMAP sections are tested above
    path = reduced_dissimilarity_study(tmp_path)
    store = prepare_run(path, load_site("local"), tmp_path / "run")
    summary = run_plan(store, "local", workers=2, progress=False)
    assert all(v.failed == 0 and v.done == v.total for v in summary.values()), summary
    result = store.read_stage("wine_study", provenance=False).to_pandas()
    variants = result[result["metric"].str.startswith("dissimilarity[")]
    assert len(variants) == 504 and (variants["n_sets"] == 4).all()
    ok = result[result["status"] == "ok"]
    assert (ok["rho_low"] <= ok["spearman_rho"] + 1e-12).all() and (
        ok["spearman_rho"] <= ok["rho_high"] + 1e-12
    ).all()
    page = build_report(store).read_text()
    assert "Metric validation across tables" in page and "mean_rank" in page
    assert "section not drawn" not in page and "not drawn" not in page
