"""The GReaT generator (perfscale.generators.great, perfscale.llm): row serialisation, and a tiny GPT-2
trained on a real iris table.

Nothing is mocked or downloaded: the model is a 2-layer GPT-2 built from a config with a tokenizer learnt from
the training text, fine-tuned for 400 steps (measured: 93% of generated texts are then valid rows, 72% after
200 steps, 8% after 100; the fit takes about 6 s with one thread).
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_iris

from perfscale.errors import BadInput
from perfscale.generators import get_generator, list_generators, load_generator
from perfscale.generators.great import LM_FOLDER, GReaTGenerator
from perfscale.llm.serialize import MISSING, ColumnCodec, RowCodec, RowError, escape, split_fields
from perfscale.tabular.meta import TableMeta, infer_meta
from perfscale.tabular.values import json_value

THREADS = [1, 2, 4, 8]
SPECIES = ["setosa", "versicolor", "virginica"]
TRAINED = {"steps": 400, "lr": 3e-3, "batch_size": 16, "max_attempts": 20}
FIT_SEED, SAMPLE_SEED = 0, 11
NASTY = [
    "a, b",
    " is ",
    "x is y",
    "is",
    "say \"hi\" 'there'",
    "日本語 ünïcödé ✓",
    " leading",
    "trailing ",
    "   ",
    "two\nlines\r\n",
    "tab\there",
    "",
    "007",
    "7",
    "-1.5e3",
    "\\",
    "\\N",
    "\\E",
    "a\\,b\\",
    ",",
    ", is ,",
    "<eos>",
    "None",
    "nan",
]


# ---- serialisation ---------------------------------------------------------------------------------------


def _round_trip(table: pd.DataFrame, meta: TableMeta, permutations: int = 3) -> None:
    codec = RowCodec.from_table(table, meta)
    texts = codec.texts(table, permutations, np.random.default_rng(0))
    assert len(texts) == permutations * len(table)
    for k, text in enumerate(texts):
        row = codec.parse(text)
        for name in table.columns:
            got, want = row[name], json_value(table[name].iloc[k // permutations])  # NaN -> None
            assert got == want and type(got) is type(want), (text, name, got, want)


def test_escape_examples() -> None:
    assert escape("a, b") == "a\\, b"
    assert escape(" x ") == "\\ x\\ "
    assert escape("") == "\\E"
    assert escape("a\\b\nc") == "a\\\\b\\nc"
    assert escape("this is it", name=True) == "this \\is it"
    assert escape("this is it") == "this is it"  # values split at the first " is ": no escape needed
    assert escape("island is", name=True) == "island \\is"


def test_round_trip_nasty_values_and_names() -> None:
    n = len(NASTY)
    table = pd.DataFrame(
        {
            "col, with comma": NASTY,
            "name is odd": list(range(n)),
            " spaced is ": [0.1 * i for i in range(n)],
            "is": NASTY[::-1],
            "": [i % 2 == 0 for i in range(n)],
            "日本": [None if i % 3 == 0 else i + 0.25 for i in range(n)],
        }
    )
    meta = infer_meta(table)
    _round_trip(table, meta)
    codec = RowCodec.from_table(table, meta)
    assert codec.column("col, with comma").parse("007") == "007"  # number-like categories stay text
    with pytest.raises(RowError, match="unknown category"):
        codec.column("col, with comma").parse("07")


def test_round_trip_random_rows() -> None:
    """Property-style: many random rows of hostile characters, numbers of any size, missing values."""
    rng = random.Random(3)
    alphabet = [
        ",",
        " ",
        "\\",
        "is",
        " is ",
        "\n",
        "\r",
        "\t",
        "N",
        "E",
        '"',
        "'",
        "é",
        "☃",
        "1",
        ".",
        "i",
        "s",
    ]

    def word() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))

    names = list(dict.fromkeys(word() for _ in range(40)))[:6]
    rows = 300
    table = pd.DataFrame(
        {
            names[0]: [word() for _ in range(rows)],
            names[1]: [rng.choice([None, word()]) for _ in range(rows)],
            names[2]: [rng.uniform(-1, 1) * 10 ** rng.randint(-30, 30) for _ in range(rows)],
            names[3]: [rng.randint(-(10**15), 10**15) for _ in range(rows)],
            names[4]: [rng.random() < 0.5 for _ in range(rows)],
            names[5]: [rng.choice([math.nan, rng.gauss(0, 1), math.inf]) for _ in range(rows)],
        }
    )
    types = ["categorical", "categorical", "numerical", "integer", "boolean", "numerical"]
    meta = TableMeta.model_validate({"columns": {n: {"type": t} for n, t in zip(names, types, strict=True)}})
    _round_trip(table, meta, permutations=2)


def test_invalid_rows_are_rejected_with_a_reason() -> None:
    table = pd.DataFrame({"a": [1, 2], "b": ["x", "y"], "c": [0.5, None]})
    codec = RowCodec.from_table(table, infer_meta(table))
    assert codec.parse("b is y, c is \\N, a is 2") == {"a": 2, "b": "y", "c": None}
    assert codec.parse("a is 1,b is x ,   c is 1e-3") == {"a": 1, "b": "x", "c": 0.001}  # loose spacing
    cases = {
        "a is 1, b is x": "missing column",
        "a is 1, b is x, c is 0.5, a is 2": "duplicate column",
        "a is 1, b is x, d is 0.5": "unknown column",
        "a is 1, b is z, c is 0.5": "unknown category",
        "a is one, b is x, c is 0.5": "bad number",
        "a is 1, b is x, c is nan": "bad number",
        "a is \\N, b is x, c is 0.5": "unexpected missing value",
        "a is 1, b is x, c 0.5": "unparseable",
        "a is 1, b is \\q, c is 0.5": "unparseable",
        "a is 1, b is x\\N, c is 0.5": "unparseable",
        "a is 1, b is x, c is 0.5\\": "unparseable",
    }
    for text, reason in cases.items():
        with pytest.raises(RowError) as info:
            codec.parse(text)
        assert info.value.reason == reason, text
    assert split_fields("x is \\N") == [("x", None)]
    assert ColumnCodec("t", "integer").format(np.int64(7), None) == "7"
    assert ColumnCodec("f", "numerical").format(np.float32(5.1), None) == "5.1"  # not 5.099999904632568
    assert ColumnCodec("f", "numerical").format(1234.5678, 3) == "1.23e+03"
    assert ColumnCodec("f", "numerical").format(None, 3) == MISSING


# ---- the generator on iris -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    iris = load_iris(as_frame=True)
    df = iris.data[["sepal length (cm)", "petal length (cm)"]].copy()
    df["species"] = [str(iris.target_names[t]) for t in iris.target]
    df["threads"] = np.array(THREADS)[np.arange(len(df)) % len(THREADS)]
    return df.iloc[::3].reset_index(drop=True)  # 50 rows, all species and thread counts


@pytest.fixture(scope="module")
def meta(table: pd.DataFrame) -> TableMeta:
    return infer_meta(table)


@pytest.fixture(scope="module")
def fitted(table: pd.DataFrame, meta: TableMeta) -> GReaTGenerator:
    generator = GReaTGenerator(**TRAINED)
    generator.fit(table, meta, seed=FIT_SEED)
    return generator


def test_registered() -> None:
    assert "great" in list_generators()
    assert get_generator("great") is GReaTGenerator
    assert GReaTGenerator.pickled_files == ()


def test_hyperparameters_are_checked() -> None:
    with pytest.raises(BadInput, match="'epoch': unknown hyperparameter for great; choose one of"):
        GReaTGenerator(epoch=3)
    for key, value in [("temperature", 0), ("top_p", 1.5), ("max_attempts", 0), ("float_digits", 30)]:
        with pytest.raises(BadInput, match=f"'{key}'"):
            GReaTGenerator(**{key: value})


def test_fit_and_sample_respect_the_table(fitted: GReaTGenerator, table: pd.DataFrame) -> None:
    log = fitted.training_log
    assert log is not None
    assert list(log.telemetry["loss"].unique()) == ["lm"]
    assert log.telemetry["step"].tolist() == list(range(TRAINED["steps"]))
    assert log.telemetry["value"].iloc[-10:].mean() < log.telemetry["value"].iloc[:10].mean() / 2
    out = fitted.sample(60, seed=SAMPLE_SEED)
    assert list(out.columns) == list(table.columns)
    assert (out.dtypes == table.dtypes).all()
    assert set(out["species"]) <= set(SPECIES) and len(set(out["species"])) >= 2
    assert set(out["threads"]) <= set(THREADS)
    assert (
        out["sepal length (cm)"]
        .between(table["sepal length (cm)"].min(), table["sepal length (cm)"].max())
        .all()
    )
    rate = fitted.last_valid_rate
    assert rate is not None and 0.5 <= rate <= 1  # measured 0.93
    assert out.attrs["valid_row_rate"] == rate
    assert (rate < 1) == (sum(fitted.last_invalid.values()) > 0)


def test_same_seed_same_rows(fitted: GReaTGenerator) -> None:
    a = fitted.sample(20, seed=5)
    b = fitted.sample(20, seed=5)
    c = fitted.sample(20, seed=6)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_fit_is_deterministic(table: pd.DataFrame, meta: TableMeta) -> None:
    logs = [GReaTGenerator(steps=4).fit(table, meta, seed=3).telemetry for _ in range(2)]
    pd.testing.assert_frame_equal(logs[0], logs[1])


def test_equality_condition_is_the_prompt(fitted: GReaTGenerator) -> None:
    out = fitted.sample(30, seed=SAMPLE_SEED, conditions={"species": "setosa"})
    assert (out["species"] == "setosa").all()
    assert fitted.last_sampling.method == "native"
    assert (
        out["petal length (cm)"].mean() < 3
    )  # the model learnt the link: setosa 1.46 in training, others 4.3+
    # an exact value of a continuous column: rejection sampling refuses it, the prompt does it
    out = fitted.sample(10, seed=SAMPLE_SEED, conditions={"sepal length (cm)": 6.1, "threads": 8})
    assert (out["sepal length (cm)"] == 6.1).all() and (out["threads"] == 8).all()
    assert 0 < out.attrs["valid_row_rate"] <= 1


def test_impute_generates_the_missing_cells(fitted: GReaTGenerator, table: pd.DataFrame) -> None:
    known = table.iloc[:6].copy().astype(object)
    known.loc[:2, "species"] = None
    known.loc[3:, "petal length (cm)"] = None
    out = fitted.impute(known, seed=SAMPLE_SEED)
    assert out.notna().all().all()
    assert set(out["species"]) <= set(SPECIES)
    pd.testing.assert_series_equal(out["threads"], table["threads"].iloc[:6], check_names=False)
    assert out.loc[:2, "petal length (cm)"].tolist() == table.loc[:2, "petal length (cm)"].tolist()
    assert 0 < fitted.last_valid_rate <= 1
    # predict_by_generation's call: a category never seen in training is no condition, the row a fallback
    known.loc[0, "species"], known.loc[3, "species"] = None, "unseen-species"
    relaxed = fitted.impute(known, seed=SAMPLE_SEED, relax_unseen=True)
    assert relaxed["petal length (cm)"].notna().all() and 3 in fitted.last_imputation.fallback_rows


def test_save_load_gives_identical_samples(fitted: GReaTGenerator, tmp_path: Path) -> None:
    fitted.save(tmp_path / "gen")
    files = {p.name for p in (tmp_path / "gen" / LM_FOLDER).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not [p for p in (tmp_path / "gen").rglob("*") if p.suffix in (".pkl", ".pickle", ".bin", ".pt")]
    loaded = load_generator(tmp_path / "gen")
    assert isinstance(loaded, GReaTGenerator)
    pd.testing.assert_frame_equal(loaded.sample(15, seed=9), fitted.sample(15, seed=9))

    (tmp_path / "gen" / LM_FOLDER / "tokenizer.json").unlink()
    with pytest.raises(BadInput, match=re.escape(str(tmp_path / "gen" / LM_FOLDER / "tokenizer.json"))):
        load_generator(tmp_path / "gen")
    fitted.save(tmp_path / "gen")
    (tmp_path / "gen" / LM_FOLDER / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(BadInput, match=r"model\.safetensors is corrupted"):
        load_generator(tmp_path / "gen")


def test_local_model_folder_as_base_model(
    fitted: GReaTGenerator, table: pd.DataFrame, meta: TableMeta, tmp_path: Path
) -> None:
    fitted.save(tmp_path / "gen")
    tuned = GReaTGenerator(
        base_model=str(tmp_path / "gen" / LM_FOLDER), steps=2, max_attempts=20, torch_threads=1
    )
    tuned.fit(table, meta, seed=1)
    assert len(tuned.sample(5, seed=2)) == 5  # starts from the trained weights: valid rows at once
    with pytest.raises(BadInput, match="does not exist"):
        GReaTGenerator(base_model=str(tmp_path / "nothing")).fit(table, meta, seed=1)


def test_budget_exhaustion_reports_the_valid_row_rate(table: pd.DataFrame, meta: TableMeta) -> None:
    untrained = GReaTGenerator(steps=1, max_attempts=1, sample_batch_size=16)
    untrained.fit(table, meta, seed=0)
    with pytest.raises(BadInput, match=r"valid-row rate \d+\.\d%.*raise max_attempts") as info:
        untrained.sample(16, seed=0)
    assert "max_attempts=1 x 16" in str(info.value)
    assert untrained.last_valid_rate is not None and untrained.last_valid_rate < 1
    assert sum(untrained.last_invalid.values()) >= 1


def test_max_train_seconds_stops_training(table: pd.DataFrame, meta: TableMeta, tmp_path: Path) -> None:
    generator = GReaTGenerator(steps=10**6, max_train_seconds=0.2)
    log = generator.fit(table, meta, seed=0)
    state = generator._model_state()
    assert state["stopped_by"] == "max_train_seconds"
    assert state["steps"] == len(log.telemetry) < 10**6


def test_too_wide_table(table: pd.DataFrame, meta: TableMeta) -> None:
    data = load_breast_cancer(as_frame=True).data.iloc[:30]
    wide = ((data - data.mean()) / data.std()).reset_index(drop=True)  # 30 columns of long floats
    wide_meta = infer_meta(wide)
    small = {"tiny_config": {"n_positions": 300}, "steps": 1}
    with pytest.raises(BadInput) as info:
        GReaTGenerator(**small).fit(wide, wide_meta, seed=0)
    message = str(info.value)
    assert "30 columns" in message and "300-token limit" in message
    assert int(re.search(r"up to (\d+) tokens", message).group(1)) > 300
    fix = re.search(r"float_digits: (\d) \(rows then take up to (\d+) tokens\)", message)
    assert fix is not None and int(fix.group(2)) <= 300
    fits = GReaTGenerator(**small, float_digits=int(fix.group(1)))  # the fix the message gives
    fits.fit(wide, wide_meta, seed=0)
    assert fits._model_state()["longest_row_tokens"] <= 300
    with pytest.raises(BadInput, match="'max_length' is 5000, beyond the 1024-token context"):
        GReaTGenerator(max_length=5000, steps=1).fit(table, meta, seed=0)
