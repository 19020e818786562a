"""Conditions, conditional sampling, imputation and the prediction stages, on real iris data and models."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from perfscale.errors import BadInput
from perfscale.execute import execute_task
from perfscale.generators import Generator, get_generator, register_generator
from perfscale.generators.conditional import ConditionsUnmet, recommend
from perfscale.generators.conditions import Condition, Conditions
from perfscale.report import build_report
from perfscale.runner import prepare_run, run_plan
from perfscale.spec import load_site
from perfscale.tabular.meta import infer_meta
from tests.tables import iris_table

THREADS = [1, 2, 4, 8, 16]


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    df = iris_table(THREADS)
    df.columns = [c.replace(" (cm)", "").replace(" ", "_") for c in df.columns]
    df["machine"] = "quartz"  # a constant column
    return df


@register_generator
class Bootstrap(Generator):
    """Resamples training rows: a generator with no native conditioning (exercises rejection sampling)."""

    name = "test_bootstrap"

    def _fit(self, table: pd.DataFrame, meta: Any, seed: int) -> None:
        self.rows = table

    def _sample(self, n: int, seed: int) -> pd.DataFrame:
        return self.rows.sample(n, replace=True, random_state=seed).reset_index(drop=True)

    def _save_model(self, folder: Path) -> None:
        self.rows.to_parquet(folder / "rows.parquet")

    def _load_model(self, folder: Path) -> None:
        self.rows = pd.read_parquet(folder / "rows.parquet")


@pytest.fixture(scope="module")
def copula(table: pd.DataFrame) -> Generator:
    gen = get_generator("gaussian_copula")()
    gen.fit(table, infer_meta(table), seed=1)
    return gen


@pytest.fixture(scope="module")
def bootstrap(table: pd.DataFrame) -> Generator:
    gen = Bootstrap()
    gen.fit(table, infer_meta(table), seed=1)
    return gen


# ---- parsing ------------------------------------------------------------------------------------------


def test_text_and_mapping_spellings_parse_to_the_same_conditions() -> None:
    text = Conditions.parse("threads in [4, 8, 16] and 5 <= sepal_length <= 6 and species == setosa")
    mapping = Conditions.parse(
        {"threads": [4, 8, 16], "sepal_length": {"between": [5, 6]}, "species": "setosa"}
    )
    assert text == mapping
    assert text.items == (
        Condition("threads", "in", (4, 8, 16)),
        Condition("sepal_length", "between", (5, 6)),
        Condition("species", "eq", "setosa"),
    )
    assert Conditions.parse(str(text)) == text  # str() reads back


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("runtime_s < 10", [Condition("runtime_s", "lt", 10)]),
        ("10 > runtime_s", [Condition("runtime_s", "lt", 10)]),
        ("1 < x <= 2.5", [Condition("x", "gt", 1), Condition("x", "le", 2.5)]),
        ("`wall time` >= 2", [Condition("wall time", "ge", 2)]),
        ("name = 'a, and b'", [Condition("name", "eq", "a, and b")]),
        ("flag == true", [Condition("flag", "eq", True)]),
        ('k in ["x y", z, 3]', [Condition("k", "in", ("x y", "z", 3))]),
    ],
)
def test_text_conditions(text: str, expected: list[Condition]) -> None:
    assert list(Conditions.parse(text).items) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "threads in 4",
        "and x < 3",
        "x < 3 and",
        "x <",
        "1 > x > 0",
        "k in [a b]",
        {"x": {"near": 3}},
        {"x": {}},
        {"x": {"between": [1]}},
        {"x": {"in": []}},
        42,
    ],
)
def test_malformed_conditions_are_rejected(bad: Any) -> None:
    with pytest.raises(BadInput):
        Conditions.parse(bad)


# ---- checks against the fitted table ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("nope < 3", "unknown column"),
        ("species == dog", "never occur in column 'species'"),
        ("species < 3", "categorical"),
        ("threads == 3", "only takes the values [1, 2, 4, 8, 16]"),
        ("threads in [3, 5]", "only takes the values"),
        ("sepal_length > 100", "training range [4.3, 7.9]"),
        ("sepal_length > 6 and sepal_length < 5", "no value in 'sepal_length'"),
        ("6 <= sepal_length <= 5", "low end 6 is above the high end 5"),
        ("sepal_length < fast", "must be a finite number"),
        ("machine == frontier", "never occur in column 'machine'"),
    ],
)
def test_impossible_or_unseen_conditions_are_errors(copula: Generator, condition: str, message: str) -> None:
    with pytest.raises(BadInput, match=message.replace("[", r"\[").replace("]", r"\]")):
        copula.sample(10, seed=0, conditions=condition)


# ---- sampling under conditions ------------------------------------------------------------------------

PAPER_STYLE = "threads in [4, 8, 16] and 5 <= sepal_length <= 6.5 and machine == quartz"


@pytest.mark.parametrize("name", ["copula", "bootstrap"])
def test_every_row_meets_the_conditions(name: str, request: pytest.FixtureRequest, table) -> None:
    gen = request.getfixturevalue(name)
    rows = gen.sample(200, seed=3, conditions=PAPER_STYLE)
    assert len(rows) == 200 and list(rows.columns) == list(table.columns)
    assert set(rows["threads"]) <= {4, 8, 16}
    assert rows["sepal_length"].between(5, 6.5).all()
    assert (rows["machine"] == "quartz").all()
    assert rows.dtypes.equals(table.dtypes)
    report = gen.last_sampling
    assert report.requested == 200 and report.accepted == 200
    assert 0 < report.acceptance_rate <= 1 and report.drawn >= 200
    assert report.method == "rejection"  # nothing to pin natively: machine is a constant column


def test_equality_uses_sdv_native_conditioning(copula: Generator) -> None:
    rows = copula.sample(100, seed=3, conditions={"species": "virginica", "threads": 8})
    assert (rows["species"] == "virginica").all() and (rows["threads"] == 8).all()
    assert copula.last_sampling.method.startswith("native")


def test_conditional_samples_repeat_with_the_seed(copula: Generator, bootstrap: Generator) -> None:
    wanted = "species == setosa and petal_width < 0.3"
    for gen in (copula, bootstrap):
        first = gen.sample(50, seed=9, conditions=wanted)
        pd.testing.assert_frame_equal(first, gen.sample(50, seed=9, conditions=wanted))
        assert not first.equals(gen.sample(50, seed=10, conditions=wanted))


def test_unlikely_conditions_stop_at_the_budget_with_the_acceptance_rate(bootstrap: Generator) -> None:
    # 1 of the 150 iris rows has sepal_length 7.9: about 0.7% of draws are accepted
    with pytest.raises(BadInput, match=r"only \d+ of 100 rows after drawing 500 \(acceptance rate"):
        bootstrap.sample(100, seed=0, conditions="sepal_length >= 7.85", max_draws=500)
    assert bootstrap.last_sampling.drawn == 500


def test_conditions_no_row_meets_fail_with_rate_zero(bootstrap: Generator) -> None:
    # each part is possible, the combination never occurs in the data the bootstrap resamples
    with pytest.raises(BadInput, match="acceptance rate 0"):
        bootstrap.sample(10, seed=0, conditions="species == setosa and petal_length > 6", max_draws=3000)


def test_exact_value_of_a_continuous_column_needs_native_conditioning(bootstrap: Generator) -> None:
    with pytest.raises(BadInput, match=r"continuous.*use a range"):
        bootstrap.sample(10, seed=0, conditions="sepal_length == 5.1")


def test_bad_budget_is_rejected(bootstrap: Generator) -> None:
    with pytest.raises(BadInput, match="max_draws"):
        bootstrap.sample(100, seed=0, conditions="threads == 4", max_draws=10)


# ---- imputation and recommendations -------------------------------------------------------------------


def test_impute_keeps_set_cells_and_fills_the_rest_with_allowed_values(copula: Generator, table) -> None:
    holes = table.sample(40, random_state=0)
    masked = holes.copy()
    masked.loc[masked.index[::2], "species"] = None
    masked.loc[masked.index[1::2], ["threads", "petal_width"]] = np.nan
    filled = copula.impute(masked, seed=4)
    assert filled.index.equals(masked.index) and list(filled.columns) == list(table.columns)
    assert filled.notna().all().all()
    set_cells = masked.notna()
    pd.testing.assert_frame_equal(filled[set_cells].astype(object), masked[set_cells].astype(object))
    assert set(filled["species"]) <= {"setosa", "versicolor", "virginica"}
    assert set(filled["threads"]) <= set(THREADS)
    assert filled["threads"].dtype == table["threads"].dtype


@pytest.mark.parametrize("name", ["copula", "bootstrap"])
def test_imputed_class_beats_the_majority_rate(name: str, request: pytest.FixtureRequest, table) -> None:
    gen = request.getfixturevalue(name)
    masked = table.assign(species=None)
    predicted = gen.impute(masked, seed=2, draws=5)["species"]
    accuracy = (predicted == table["species"]).mean()
    assert accuracy > 0.6  # the majority class is 1/3 of iris: the features carry the class


def test_impute_with_several_draws_is_a_point_prediction(bootstrap: Generator, table) -> None:
    masked = table.assign(petal_width=np.nan)
    one = bootstrap.impute(masked, seed=1, draws=1)["petal_width"]
    many = bootstrap.impute(masked, seed=1, draws=9)["petal_width"]
    truth = table["petal_width"]
    assert ((many - truth) ** 2).mean() < ((truth - truth.mean()) ** 2).mean()
    assert not one.equals(many)


@pytest.fixture(scope="module")
def no_lassen_setosa(table: pd.DataFrame) -> pd.DataFrame:
    """iris where machine is lassen on virginica rows only: resampling it never makes a lassen setosa."""
    return table.assign(machine=np.where(table["species"] == "virginica", "lassen", "quartz"))


def test_rows_the_model_never_makes_fall_back_to_a_relaxed_match(no_lassen_setosa: pd.DataFrame) -> None:
    gen = Bootstrap()
    gen.fit(no_lassen_setosa, infer_meta(no_lassen_setosa), seed=1)
    rows = no_lassen_setosa.iloc[[0, 60, 120, 1]].reset_index(
        drop=True
    )  # setosa, versicolor, virginica, setosa
    rows.loc[3, "machine"] = "lassen"  # each value was seen in training, never together
    filled = gen.impute(rows.assign(petal_width=np.nan), seed=0, draws=3)
    report = gen.last_imputation
    assert report.rows == 4 and report.fallback_rows == (3,) and report.fallback_share == 0.25
    assert filled["petal_width"].notna().all()
    # the relaxed match agrees on species or machine and is nearest on the setosa's measurements
    assert filled.loc[3, "petal_width"] < 1.0
    assert filled.loc[3, ["species", "machine"]].tolist() == ["setosa", "lassen"]  # set cells are kept
    with pytest.raises(ConditionsUnmet, match="acceptance rate 0"):  # what used to fail the whole imputation
        gen.sample(10, seed=0, conditions={"species": "setosa", "machine": "lassen"})
    gen.impute(rows.head(3).assign(petal_width=np.nan), seed=0)
    assert gen.last_imputation.fallback_rows == ()
    # a value never seen in training: an error, or with relax_unseen no condition and a fallback row
    frontier = rows.assign(petal_width=np.nan, machine=["quartz", "frontier", "lassen", "quartz"])
    with pytest.raises(BadInput, match=r"'machine' holds \['frontier'\], never seen"):
        gen.impute(frontier, seed=0)
    filled = gen.impute(frontier, seed=0, relax_unseen=True)
    assert (
        gen.last_imputation.fallback_rows == (1,)
        and filled["machine"].tolist() == frontier["machine"].tolist()
    )
    assert 1.0 <= filled.loc[1, "petal_width"] <= 1.8  # a versicolor's width, matched on its measurements


def test_prediction_falls_back_for_the_rows_it_cannot_generate(
    no_lassen_setosa: pd.DataFrame, write_study, study_dir: Path, tmp_path: Path
) -> None:
    data = no_lassen_setosa.assign(split="train")
    holdout = data.iloc[[0, 1, 60, 120, 61]].assign(split="holdout")
    holdout.loc[holdout.index[1], "machine"] = "lassen"  # the second holdout row: a lassen setosa
    holdout.loc[holdout.index[4], "machine"] = "frontier"  # the last: a machine training never saw
    pd.concat([data, holdout]).to_csv(study_dir / "data.csv", index=False)
    study = write_study(
        """
        name: fallback
        stages:
          data: {kind: ingest, params: {kind: csv, source: data.csv}}
          train: {kind: train, inputs: [data], params: {source: data, generator: test_bootstrap}}
          predict:
            kind: predict_by_generation
            foreach: train
            inputs: [data]
            params: {source: data, target: petal_width, draws: 2}
        """
    )
    store = prepare_run(study, load_site("local"), tmp_path / "run")
    for task in store.plan.tasks:  # in this process, where the test generator is registered
        outcome = execute_task(store.root, task.index)
        assert outcome.ok, outcome.message
    predictions = store.read_stage("predict", provenance=False).to_pandas().sort_values("row")
    assert predictions["method"].tolist() == [
        "generation",
        "fallback",
        "generation",
        "generation",
        "fallback",
    ]
    assert (predictions["fallback_share"] == 0.4).all()
    assert predictions["prediction"].notna().all() and predictions["mse"].notna().all()


def test_impute_errors(copula: Generator, table) -> None:
    with pytest.raises(BadInput, match="'species' holds \\['dog'\\]"):
        copula.impute(table.head(3).assign(species="dog", threads=np.nan), seed=0)
    with pytest.raises(BadInput, match="not the generator's"):
        copula.impute(table.head(3).assign(extra=1), seed=0)
    with pytest.raises(BadInput, match="empty"):
        copula.impute(table.head(0), seed=0)
    with pytest.raises(BadInput, match="draws"):
        copula.impute(table.head(3), seed=0, draws=0)


def test_recommend_ranks_configurations_meeting_the_bound(copula: Generator) -> None:
    table = recommend(copula, "sepal_length < 5.5", ["species", "threads"], n=400, seed=0)
    assert list(table.columns) == ["species", "threads", "count", "share"]
    assert table["count"].sum() == 400 and np.isclose(table["share"].sum(), 1)
    assert table["count"].is_monotonic_decreasing
    assert table.iloc[0]["species"] == "setosa"  # short sepals are setosa's


@pytest.mark.parametrize("rows", [50, 2000])
def test_recommend_reports_the_measured_acceptance_rate(bootstrap: Generator, table, rows: int) -> None:
    # the bootstrap resamples the 150 training rows, 50 of them setosa: the true rate is 1/3
    truth = float((table["species"] == "setosa").mean())
    recommend(bootstrap, "species == setosa", ["threads"], n=rows, seed=0)
    report = bootstrap.last_sampling
    assert report.method == "rejection" and report.accepted == rows and report.met >= rows
    assert report.drawn >= 1000  # rejection draws at least 1,000 rows a batch: most of them met, unused
    assert report.acceptance_rate == report.met / report.drawn
    sampling_error = np.sqrt(truth * (1 - truth) / report.drawn)
    assert abs(report.acceptance_rate - truth) < 4 * sampling_error, (report, truth)


# ---- the stages ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_prediction_stages_end_to_end(
    table: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table.to_csv(tmp_path / "iris.csv", index=False)
    (tmp_path / "study.yaml").write_text(
        textwrap.dedent(
            """
            name: predict
            seed: 5
            stages:
              data: {kind: ingest, params: {kind: csv, source: iris.csv}}
              split: {kind: split, inputs: [data], params: {source: data, holdout_fraction: 0.3}}
              train:
                kind: train
                inputs: [split]
                params: {source: split}
                grid: {product: {generator: [gaussian_copula]}}
              predict:
                kind: predict_by_generation
                foreach: train
                inputs: [split]
                params: {source: split, draws: 3}
                grid: {product: {target: [species, petal_width]}}
              sample:
                kind: sample
                foreach: train
                params: {rows: 60, conditions: "threads in [4, 8] and species == versicolor"}
              recommend:
                kind: recommend
                foreach: train
                params: {conditions: "sepal_length <= 5", columns: [species], rows: 300}
            """
        )
    )
    store = prepare_run(tmp_path / "study.yaml", load_site("local"), tmp_path / "run")
    summary = run_plan(store, "local", workers=1, progress=False)
    assert all(s.failed == 0 for s in summary.values()), summary
    predictions = store.read_stage("predict", provenance=False).to_pandas()
    assert len(predictions) == 2 * 45  # targets x holdout rows
    species = predictions[predictions["target"] == "species"]
    assert species["accuracy"].between(0.6, 1).all()
    widths = predictions[predictions["target"] == "petal_width"]
    assert (widths["mse"] < widths["truth"].astype(float).var()).all()
    samples = store.read_stage("sample", provenance=False).to_pandas()
    assert set(samples["threads"]) <= {4, 8} and (samples["species"] == "versicolor").all()
    for task in store.plan.tasks:
        if task.stage == "sample":
            report = json.loads((store.artifact_dir("sample", task.key) / "sampling.json").read_text())
            assert report["accepted"] == 60 and 0 < report["acceptance_rate"] <= 1
    picks = store.read_stage("recommend", provenance=False).to_pandas()
    assert set(picks["generator"]) == {"gaussian_copula"}
    assert (picks.groupby("generator")["count"].sum() == 300).all()
    monkeypatch.setenv("PERFSCALE_REPORT_UMAP", "0")  # UMAP is tested with the metric study
    page = build_report(store).read_text()
    assert "Prediction by generation: predict" in page and "Recommended configurations: recommend" in page
