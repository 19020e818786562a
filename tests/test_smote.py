"""SMOTE generator on real tables (iris + a discrete column, diabetes regression); nothing mocked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes

from perfscale.errors import BadInput
from perfscale.generators import GENERATOR_JSON, get_generator, list_generators, load_generator
from perfscale.generators.conditions import Conditions
from perfscale.generators.smote import ARRAYS_FILE, SmoteGenerator
from perfscale.tabular.encode import encode
from perfscale.tabular.meta import TableMeta, infer_meta
from tests.tables import assert_shaped_like, iris_table

THREADS = [1, 2, 4, 8]
FLOATS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
K, N, FIT_SEED, SAMPLE_SEED = 5, 400, 3, 17


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return iris_table(THREADS)


@pytest.fixture(scope="module")
def meta(table: pd.DataFrame) -> TableMeta:
    return infer_meta(table)


@pytest.fixture(scope="module")
def fitted(table: pd.DataFrame, meta: TableMeta) -> SmoteGenerator:
    generator = SmoteGenerator(k_neighbors=K)
    generator.fit(table, meta, seed=FIT_SEED)
    return generator


def distances(table: pd.DataFrame, meta: TableMeta) -> np.ndarray:
    """Pairwise distances in the documented space (the dcr encoding), computed independently."""
    x = encode([table], meta)[0]
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2))


def assert_among_k_nearest(dist: np.ndarray, base: np.ndarray, neighbour: np.ndarray, k: int) -> None:
    """Each neighbour is no farther from its base than the base's k-th nearest other row (ties allowed)."""
    others = dist[base].copy()
    others[np.arange(len(base)), base] = np.inf
    kth = np.sort(others, axis=1)[:, k - 1]
    assert (neighbour != base).all()
    assert (dist[base, neighbour] <= kth + 1e-9).all()


def test_registered_under_smote() -> None:
    assert "smote" in list_generators() and get_generator("smote") is SmoteGenerator
    assert SmoteGenerator.pickled_files == ()


def test_sample_has_training_columns_dtypes_and_allowed_values(fitted, table, meta) -> None:
    rows = fitted.sample(N, seed=SAMPLE_SEED)
    assert_shaped_like(rows, table, meta, N)
    assert set(rows["threads"]) <= set(THREADS)
    assert len(rows.drop_duplicates()) > 0.9 * N  # interpolated, not resampled rows


def test_every_row_lies_between_a_training_row_and_one_of_its_k_nearest(fitted, table, meta) -> None:
    draws = fitted.draws(N, seed=SAMPLE_SEED)
    rows = fitted.sample(N, seed=SAMPLE_SEED)
    assert_among_k_nearest(distances(table, meta), draws.base, draws.neighbour, K)
    assert ((draws.u >= 0) & (draws.u < 1)).all()
    x0, x1 = table.iloc[draws.base], table.iloc[draws.neighbour]
    for column in FLOATS:
        a, b = x0[column].to_numpy(), x1[column].to_numpy()
        np.testing.assert_allclose(rows[column].to_numpy(), a + draws.u * (b - a), rtol=0, atol=1e-12)
    lo = np.minimum(x0["threads"].to_numpy(), x1["threads"].to_numpy())
    hi = np.maximum(x0["threads"].to_numpy(), x1["threads"].to_numpy())
    assert ((rows["threads"] >= lo) & (rows["threads"] <= hi)).all()  # snapped, still between the endpoints
    picked = np.where(draws.pick, x1["species"], x0["species"])  # categories from one endpoint
    assert (rows["species"].to_numpy() == picked).all()
    assert 0.3 < draws.pick.mean() < 0.7  # the neighbour is picked with probability E[u] = 1/2


def test_majority_mode_takes_the_most_frequent_class_among_the_neighbours(table, meta) -> None:
    generator = SmoteGenerator(k_neighbors=K, categorical="majority")
    generator.fit(table, meta, seed=0)
    draws, rows = generator.draws(N, seed=1), generator.sample(N, seed=1)
    species, neighbours = table["species"].to_numpy(), generator.neighbours
    for i, base in enumerate(draws.base):
        votes = list(species[neighbours[base]])
        top = max(votes.count(v) for v in votes)
        assert rows["species"].iloc[i] == next(v for v in votes if votes.count(v) == top)  # tie: the nearest


def test_neighbours_exclude_the_row_itself_even_among_duplicates(table) -> None:
    doubled = pd.concat([table, table], ignore_index=True)
    generator = SmoteGenerator(k_neighbors=3)
    generator.fit(doubled, infer_meta(doubled), seed=0)
    neighbours = generator.neighbours
    assert neighbours.shape == (300, 3)
    assert (neighbours != np.arange(300)[:, None]).all() and (neighbours >= 0).all()


def test_k_neighbors_is_capped_at_rows_minus_one(table) -> None:
    small = table.iloc[[0, 60, 120, 121]].reset_index(drop=True)
    generator = SmoteGenerator(k_neighbors=50)
    generator.fit(small, infer_meta(small), seed=0)
    assert generator.neighbours.shape == (4, 3)
    assert len(generator.sample(10, seed=0)) == 10


def test_same_seed_same_rows_and_fit_is_deterministic(fitted, table, meta) -> None:
    first = fitted.sample(N, seed=SAMPLE_SEED)
    pd.testing.assert_frame_equal(fitted.sample(N, seed=SAMPLE_SEED), first)
    again = SmoteGenerator(k_neighbors=K)
    again.fit(table, meta, seed=FIT_SEED + 1)  # SMOTE has no training randomness
    pd.testing.assert_frame_equal(again.sample(N, seed=SAMPLE_SEED), first)
    assert not fitted.sample(N, seed=SAMPLE_SEED + 1).equals(first)


# ---- label mode ------------------------------------------------------------------------------------------


def test_label_mode_keeps_classes_pure(table, meta) -> None:
    generator = SmoteGenerator(k_neighbors=K, label="species")
    generator.fit(table, meta, seed=0)
    draws, rows = generator.draws(N, seed=2), generator.sample(N, seed=2)
    species = table["species"].to_numpy()
    assert (species[draws.base] == species[draws.neighbour]).all()
    assert (rows["species"].to_numpy() == species[draws.base]).all()
    dist = distances(table, meta)  # scaled by the whole table; neighbours searched within the class
    for cls in np.unique(species):
        members = np.flatnonzero(species == cls)
        local = {row: i for i, row in enumerate(members)}
        in_class = np.isin(draws.base, members)
        base = np.array([local[b] for b in draws.base[in_class]])
        neighbour = np.array([local[b] for b in draws.neighbour[in_class]])
        assert_among_k_nearest(dist[np.ix_(members, members)], base, neighbour, K)


def test_balance_oversamples_the_minority_class(table) -> None:
    skewed = table.iloc[40:].reset_index(drop=True)  # 10 setosa, 50 versicolor, 50 virginica
    meta = infer_meta(skewed)
    kept = SmoteGenerator(label="species")
    kept.fit(skewed, meta, seed=0)
    balanced = SmoteGenerator(label="species", balance=True)
    balanced.fit(skewed, meta, seed=0)
    n = 3000
    assert (kept.sample(n, seed=1)["species"] == "setosa").mean() == pytest.approx(10 / 110, abs=0.03)
    shares = balanced.sample(n, seed=1)["species"].value_counts(normalize=True)
    assert shares.to_numpy() == pytest.approx([1 / 3] * 3, abs=0.04)


# ---- other tables ----------------------------------------------------------------------------------------


def test_regression_table_without_label() -> None:
    diabetes = load_diabetes(as_frame=True).frame  # 442 rows, all numeric, target included
    meta = infer_meta(diabetes)
    generator = SmoteGenerator()
    generator.fit(diabetes, meta, seed=0)
    draws, rows = generator.draws(N, seed=4), generator.sample(N, seed=4)
    assert rows.dtypes.to_dict() == diabetes.dtypes.to_dict()
    assert_among_k_nearest(distances(diabetes, meta), draws.base, draws.neighbour, 5)
    x0, x1 = diabetes.to_numpy()[draws.base], diabetes.to_numpy()[draws.neighbour]
    expected = x0 + draws.u[:, None] * (x1 - x0)
    np.testing.assert_allclose(rows.to_numpy()[:, :-1], expected[:, :-1], rtol=0, atol=1e-12)
    assert meta.columns["target"].type == "integer"  # whole numbers: the interpolation is rounded
    np.testing.assert_array_equal(rows["target"].to_numpy(), np.round(expected[:, -1]))


def test_missing_values_and_datetimes(table) -> None:
    rng = np.random.default_rng(0)
    messy = table.copy()
    messy["sepal width (cm)"] = messy["sepal width (cm)"].mask(rng.random(150) < 0.3)
    messy["species"] = messy["species"].mask(rng.random(150) < 0.2)
    messy["start"] = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(np.arange(150), unit="h")
    meta = infer_meta(messy)
    generator = SmoteGenerator()
    generator.fit(messy, meta, seed=0)
    rows = generator.sample(3000, seed=0)
    assert rows.dtypes.to_dict() == messy.dtypes.to_dict()
    assert rows["sepal width (cm)"].isna().mean() == pytest.approx(0.3, abs=0.08)
    assert rows["species"].isna().mean() == pytest.approx(messy["species"].isna().mean(), abs=0.08)
    assert rows["start"].between(messy["start"].min(), messy["start"].max()).all()
    assert rows.drop(columns=["sepal width (cm)", "species"]).notna().all().all()


# ---- imputation and conditions ---------------------------------------------------------------------------


def test_impute_predicts_a_held_out_column_better_than_its_mean(table) -> None:
    test_rows = np.arange(150) % 3 == 0
    train, test = table[~test_rows].reset_index(drop=True), table[test_rows]
    generator = SmoteGenerator()
    generator.fit(train, infer_meta(train), seed=0)
    known = test.copy()
    known["petal width (cm)"] = np.nan  # predicted from the other columns
    known.loc[known.index[::2], "species"] = None  # and the class, for half of the rows
    filled = generator._impute(known, seed=0)
    assert filled.index.equals(test.index) and list(filled.columns) == list(table.columns)
    truth = test["petal width (cm)"].to_numpy()
    error = np.abs(filled["petal width (cm)"].to_numpy(dtype=float) - truth).mean()
    baseline = np.abs(train["petal width (cm)"].mean() - truth).mean()
    assert error < 0.4 * baseline
    hidden = known["species"].isna()
    assert (filled.loc[hidden, "species"] == test.loc[hidden, "species"]).mean() > 0.6  # a third by chance
    assert (filled.loc[~hidden, "species"] == test.loc[~hidden, "species"]).all()  # set cells kept
    np.testing.assert_array_equal(filled[FLOATS[:3]].to_numpy(dtype=float), test[FLOATS[:3]].to_numpy())
    pd.testing.assert_frame_equal(generator._impute(known, seed=0), filled)  # seeded


def test_impute_fills_fully_missing_rows_from_the_training_rows(fitted, table) -> None:
    known = table.iloc[:4].copy().astype(object)
    known.iloc[:, :] = None
    filled = fitted._impute(known, seed=1)
    assert filled.notna().all().all()
    assert set(filled["species"]) <= set(table["species"])
    for column in FLOATS:
        assert filled[column].astype(float).between(table[column].min(), table[column].max()).all()


def test_conditioned_sampling_interpolates_among_matching_rows(fitted, table) -> None:
    conditions = Conditions.parse({"species": "virginica", "threads": 4})
    rows = fitted._sample_conditioned(200, 5, conditions)
    assert len(rows) == 200
    assert (rows["species"] == "virginica").all() and (rows["threads"] == 4).all()
    matching = table[(table["species"] == "virginica") & (table["threads"] == 4)]
    for column in FLOATS:
        assert rows[column].between(matching[column].min(), matching[column].max()).all()
    assert (
        fitted._sample_conditioned(10, 5, Conditions.parse("`petal length (cm)` < 3")) is None
    )  # no equality
    assert fitted._sample_conditioned(10, 5, Conditions.parse({"threads": 3})) is None  # no training row


def test_public_sample_and_impute_use_the_native_hooks(fitted, table) -> None:
    rows = fitted.sample(60, seed=6, conditions={"species": "setosa", "sepal length (cm)": 5.1})
    assert fitted.last_sampling.method == "native" and fitted.last_sampling.drawn == 60  # no rejection
    assert (rows["species"] == "setosa").all() and (rows["sepal length (cm)"] == 5.1).all()  # exact
    known = table.iloc[::10].copy()
    known["petal length (cm)"] = np.nan
    filled = fitted.impute(known, seed=0)
    assert filled.dtypes.to_dict() == table.dtypes.to_dict() and filled.notna().all().all()
    pd.testing.assert_frame_equal(
        filled.drop(columns="petal length (cm)"), known.drop(columns="petal length (cm)")
    )


# ---- save / load -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hyperparameters", [{"k_neighbors": K}, {"label": "species", "categorical": "majority"}]
)
def test_save_load_round_trip_without_pickle(hyperparameters, table, meta, tmp_path: Path) -> None:
    generator = SmoteGenerator(**hyperparameters)
    generator.fit(table, meta, seed=FIT_SEED)
    generator.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [GENERATOR_JSON, "smote.json", ARRAYS_FILE]
    loaded = load_generator(tmp_path)  # no trust needed: nothing is pickled
    assert isinstance(loaded, SmoteGenerator) and loaded.hyperparameters == hyperparameters
    pd.testing.assert_frame_equal(loaded.sample(N, seed=SAMPLE_SEED), generator.sample(N, seed=SAMPLE_SEED))
    np.testing.assert_array_equal(loaded.neighbours, generator.neighbours)
    with np.load(tmp_path / ARRAYS_FILE, allow_pickle=False) as arrays:  # the training rows, verbatim
        np.testing.assert_array_equal(arrays["values"][:, :4], table[FLOATS].to_numpy())
    manifest = json.loads((tmp_path / GENERATOR_JSON).read_text())
    assert manifest["model"]["k_neighbors"] == K


def test_corrupted_model_file_is_bad_input(fitted, tmp_path: Path) -> None:
    fitted.save(tmp_path)
    (tmp_path / ARRAYS_FILE).write_bytes(b"not a zip")
    with pytest.raises(BadInput, match="corrupted SMOTE model"):
        load_generator(tmp_path)
    (tmp_path / ARRAYS_FILE).unlink()
    with pytest.raises(BadInput, match=r"smote\.npz is missing"):
        load_generator(tmp_path)


# ---- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hyperparameters", "message"),
    [
        ({"k_neighbors": 0}, "k_neighbors"),
        ({"k_neighbors": -2}, "k_neighbors"),
        ({"k_neighbors": 2.5}, "k_neighbors"),
        ({"k_neighbors": True}, "k_neighbors"),
        ({"categorical": "mode"}, "categorical"),
        ({"balance": True}, "balance: true needs label"),
        ({"label": 3}, "label"),
        ({"neighbours": 5}, r"'neighbours': unknown hyperparameter for smote; choose one of balance, "),
    ],
)
def test_bad_hyperparameters_are_bad_input(hyperparameters, message) -> None:
    with pytest.raises(BadInput, match=message):
        SmoteGenerator(**hyperparameters)


def test_label_that_is_not_a_column_is_bad_input(table, meta) -> None:
    with pytest.raises(BadInput, match=r"label='kind' is not a column.*species"):
        SmoteGenerator(label="kind").fit(table, meta, seed=0)
