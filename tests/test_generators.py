"""Generators: protocol, registry, post-processing and SDV models on a real (iris) table; nothing mocked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from perfscale import __version__
from perfscale.errors import BadInput, SpecError
from perfscale.generators import (
    GENERATOR_JSON,
    Generator,
    get_generator,
    list_generators,
    load_generator,
    register_generator,
)
from perfscale.generators import registry as registry_module
from perfscale.generators._tables import snap
from perfscale.tabular.meta import TableMeta, infer_meta
from tests.tables import assert_shaped_like, iris_table

SDV_NAMES = ["gaussian_copula", "ctgan", "tvae", "copulagan"]
EPOCHS = 5
HYPERPARAMETERS = {
    "gaussian_copula": {},
    "ctgan": {"epochs": EPOCHS},
    "tvae": {"epochs": EPOCHS},
    "copulagan": {"epochs": EPOCHS},
}
THREADS = [1, 2, 4, 8]
FIT_SEED, SAMPLE_SEED, N = 7, 11, 300


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return iris_table(THREADS)


@pytest.fixture(scope="module")
def meta(table: pd.DataFrame) -> TableMeta:
    return infer_meta(table)


@pytest.fixture(scope="module")
def fitted(table: pd.DataFrame, meta: TableMeta) -> dict[str, tuple[Generator, object]]:
    """Each SDV generator fitted once (seed FIT_SEED), with its TrainingLog."""
    out = {}
    for name in SDV_NAMES:
        generator = get_generator(name)(**HYPERPARAMETERS[name])
        out[name] = (generator, generator.fit(table, meta, seed=FIT_SEED))
    return out


# ---- registry and import cost ------------------------------------------------------------------------------


def test_import_is_light() -> None:
    """Listing generators must not load the heavy libraries a generator needs only to train or sample."""
    code = (
        "import sys; import perfscale.generators; "
        "print(sorted(m for m in ('sdv', 'torch', 'pandas', 'pyarrow', 'transformers') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


@pytest.mark.parametrize("name", SDV_NAMES)
def test_sdv_hyperparameter_models_match_the_synthesizers(name: str) -> None:
    """Each SDV model declares exactly the synthesizer's keyword arguments, with SDV's defaults."""
    import inspect

    from perfscale.generators import hyperparameters_model

    cls = get_generator(name)
    signature = inspect.signature(cls.synthesizer_class().__init__).parameters
    sdv = {k: p.default for k, p in signature.items() if k not in ("self", "metadata")}
    fields = hyperparameters_model(name).model_fields
    assert set(fields) == set(sdv)
    for key, field in fields.items():
        default = field.get_default(call_default_factory=True)
        assert default == (list(sdv[key]) if isinstance(sdv[key], tuple) else sdv[key]), key


def test_registry_lists_sdv_generators() -> None:
    assert set(SDV_NAMES) <= set(list_generators())
    assert get_generator("ctgan").name == "ctgan"


def test_unknown_generator_is_a_spec_error_listing_known_names() -> None:
    with pytest.raises(SpecError, match=r"unknown generator 'nope'.*ctgan.*gaussian_copula"):
        get_generator("nope")


def test_register_rejects_a_taken_name() -> None:
    class Other(Generator):
        name = "ctgan"

    with pytest.raises(ValueError, match="taken"):
        register_generator(Other)


# ---- SDV generators: fit and sample ------------------------------------------------------------------------


@pytest.mark.parametrize("name", SDV_NAMES)
def test_sample_has_training_columns_dtypes_and_allowed_values(name, fitted, table, meta) -> None:
    generator, _ = fitted[name]
    rows = generator.sample(N, seed=SAMPLE_SEED)
    assert_shaped_like(rows, table, meta, N)
    assert set(rows["threads"]) <= set(THREADS)


@pytest.mark.parametrize("name", ["gaussian_copula", "ctgan"])
def test_same_seed_gives_identical_samples(name, fitted, table, meta) -> None:
    generator, _ = fitted[name]
    again = get_generator(name)(**HYPERPARAMETERS[name])
    again.fit(table, meta, seed=FIT_SEED)
    first = generator.sample(N, seed=SAMPLE_SEED)
    pd.testing.assert_frame_equal(again.sample(N, seed=SAMPLE_SEED), first)
    pd.testing.assert_frame_equal(generator.sample(N, seed=SAMPLE_SEED), first)  # sampling state is reset
    assert not generator.sample(N, seed=SAMPLE_SEED + 1).equals(first)


def test_ctgan_fit_seed_changes_the_model(fitted, table, meta) -> None:
    other = get_generator("ctgan")(**HYPERPARAMETERS["ctgan"])
    other.fit(table, meta, seed=FIT_SEED + 1)
    assert not other.sample(N, seed=SAMPLE_SEED).equals(fitted["ctgan"][0].sample(N, seed=SAMPLE_SEED))


@pytest.mark.parametrize("name", ["ctgan", "copulagan"])
def test_gan_telemetry_has_one_row_per_epoch_and_loss(name, fitted) -> None:
    log = fitted[name][1]
    telemetry = log.telemetry
    assert list(telemetry.columns) == ["epoch", "step", "loss", "value"]
    for loss in ("generator", "discriminator"):
        rows = telemetry[telemetry["loss"] == loss]
        assert rows["epoch"].tolist() == list(range(EPOCHS))
        assert np.isfinite(rows["value"]).all()
    assert len(telemetry) == 2 * EPOCHS
    assert log.elapsed_s > 0 and log.peak_rss_bytes > 0 and log.peak_rss_delta_bytes >= 0


def test_tvae_telemetry_and_copula_has_none(fitted) -> None:
    tvae = fitted["tvae"][1].telemetry
    assert set(tvae["loss"]) == {"loss"} and sorted(set(tvae["epoch"])) == list(range(EPOCHS))
    copula = fitted["gaussian_copula"][1].telemetry
    assert copula.empty and list(copula.columns) == ["epoch", "step", "loss", "value"]


def test_gan_batch_size_fits_tiny_tables(table, meta) -> None:
    generator = get_generator("ctgan")(epochs=1, batch_size=500)
    small = table.iloc[::10].reset_index(drop=True)  # 15 rows
    generator.fit(small, infer_meta(small), seed=0)
    assert generator.effective_hyperparameters["batch_size"] == 20  # multiple of pac=10 covering 15 rows
    assert len(generator.sample(5, seed=0)) == 5


def test_constant_column_is_reproduced(table) -> None:
    df = table.assign(nodes=4)
    generator = get_generator("gaussian_copula")()
    generator.fit(df, infer_meta(df), seed=0)
    rows = generator.sample(20, seed=0)
    assert (rows["nodes"] == 4).all() and rows["nodes"].dtype == df["nodes"].dtype


# ---- save / load -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SDV_NAMES)
def test_save_load_round_trip_gives_identical_samples(name, fitted, meta, tmp_path: Path) -> None:
    generator, _ = fitted[name]
    generator.save(tmp_path)
    loaded = load_generator(tmp_path, trust=True)
    assert type(loaded) is type(generator)
    pd.testing.assert_frame_equal(loaded.sample(N, seed=SAMPLE_SEED), generator.sample(N, seed=SAMPLE_SEED))
    manifest = json.loads((tmp_path / GENERATOR_JSON).read_text())
    assert manifest["generator"] == name and manifest["perfscale_version"] == __version__
    assert manifest["seed"] == FIT_SEED and manifest["training_rows"] == 150
    assert manifest["hyperparameters"] == HYPERPARAMETERS[name]
    assert {c["name"]: c["type"] for c in manifest["table"]["columns"]} == {
        n: c.type for n, c in meta.columns.items()
    }


def test_load_without_trust_refuses_the_pickle(fitted, tmp_path: Path) -> None:
    fitted["gaussian_copula"][0].save(tmp_path)
    with pytest.raises(BadInput, match=r"synthesizer\.pkl is a Python pickle.*trust=True"):
        load_generator(tmp_path)


def test_load_errors_name_the_file(fitted, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        load_generator(tmp_path / "missing")
    with pytest.raises(BadInput, match=r"generator\.json is missing"):
        load_generator(tmp_path)
    (tmp_path / GENERATOR_JSON).write_text("{not json")
    with pytest.raises(BadInput, match=r"generator\.json is corrupted"):
        load_generator(tmp_path)
    fitted["ctgan"][0].save(tmp_path)
    (tmp_path / "synthesizer.pkl").write_bytes(b"garbage")
    with pytest.raises(BadInput, match=r"synthesizer\.pkl is corrupted"):
        load_generator(tmp_path, trust=True)
    (tmp_path / "synthesizer.pkl").unlink()
    with pytest.raises(BadInput, match=r"synthesizer\.pkl is missing"):
        load_generator(tmp_path, trust=True)


# ---- bad inputs --------------------------------------------------------------------------------------------


def test_bad_tables_are_rejected(table, meta) -> None:
    generator = get_generator("gaussian_copula")()
    with pytest.raises(BadInput, match="empty"):
        generator.fit(table.iloc[:0], meta, seed=0)
    with pytest.raises(BadInput, match="single row"):
        generator.fit(table.iloc[:1], meta, seed=0)
    with pytest.raises(BadInput, match=r"'petal width \(cm\)' has only missing values"):
        generator.fit(table.assign(**{"petal width (cm)": np.nan}), meta, seed=0)
    mixed = table.assign(species=table["species"].astype(object))
    mixed.loc[0, "species"] = 3
    with pytest.raises(BadInput, match="'species' mixes value types"):
        generator.fit(mixed, meta, seed=0)
    with pytest.raises(BadInput, match=r"only in the table \['extra'\]"):
        generator.fit(table.assign(extra=1.0), meta, seed=0)
    with pytest.raises(BadInput, match="seed"):
        generator.fit(table, meta, seed=-1)
    assert not generator.is_fitted


def test_bad_sample_requests_are_rejected(fitted) -> None:
    generator = fitted["gaussian_copula"][0]
    for n in (0, -3, 2.5, True):
        with pytest.raises(BadInput, match="positive integer"):
            generator.sample(n, seed=0)
    with pytest.raises(BadInput, match="not fitted"):
        get_generator("ctgan")().sample(10, seed=0)
    with pytest.raises(BadInput, match="not fitted"):
        get_generator("ctgan")().save(Path("unused"))


def test_bad_hyperparameters_are_rejected(table, meta) -> None:
    with pytest.raises(BadInput, match=r"'epoch': unknown hyperparameter for ctgan; choose one of .*epochs"):
        get_generator("ctgan")(epoch=3)
    with pytest.raises(BadInput, match=r"ctgan hyperparameters: 'batch_size': .*greater than 0 \(got 0\)"):
        get_generator("ctgan")(batch_size=0)
    with pytest.raises(BadInput, match="JSON"):
        get_generator("tvae")(epochs=object())


# ---- shared post-processing, through a minimal non-SDV generator -------------------------------------------


class _Wild(Generator):
    """Returns out-of-range numbers and unknown categories so the base class has to fix them."""

    name = "test_wild"

    def _fit(self, table, meta, seed):
        self.columns = list(table.columns)

    def _sample(self, n, seed):
        rng = np.random.default_rng(seed)
        raw = pd.DataFrame({c: rng.normal(0, 50, n) for c in self.columns})
        raw["species"] = rng.choice(["setosa", "unicorn", None], n)
        return raw

    def _save_model(self, folder):
        (folder / "columns.json").write_text(json.dumps(self.columns))

    def _load_model(self, folder):
        self.columns = json.loads((folder / "columns.json").read_text())


@pytest.fixture
def wild_registered():
    register_generator(_Wild)
    yield
    registry_module._REGISTRY.pop(_Wild.name)


def test_postprocessing_fixes_any_generator_output(table, meta, tmp_path: Path, wild_registered) -> None:
    generator = get_generator("test_wild")()
    assert generator.fit(table, meta, seed=0).telemetry.empty
    rows = generator.sample(500, seed=1)
    assert rows.dtypes.to_dict() == table.dtypes.to_dict()
    assert set(rows["threads"]) == set(THREADS)  # snapped: large values to 8, negative ones to 1
    assert set(rows["species"]) <= set(meta.columns["species"].allowed) and rows["species"].notna().all()
    assert rows["sepal length (cm)"].between(4.3, 7.9).all()
    generator.save(tmp_path)
    pd.testing.assert_frame_equal(load_generator(tmp_path).sample(500, seed=1), rows)  # no pickle: no trust


def test_snap_picks_the_nearest_allowed_value() -> None:
    allowed = np.array([1.0, 2.0, 4.0, 8.0])
    got = snap(np.array([-5, 1.4, 1.5, 2.9, 3.1, 5.9, 6.1, 100, np.nan]), allowed)
    np.testing.assert_array_equal(got, [1, 1, 1, 2, 4, 4, 8, 8, np.nan])
