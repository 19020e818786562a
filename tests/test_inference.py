"""The batched generation engine (perfscale.llm.inference) and the `infer` stage, on tiny GPT-2 models
built here (float32, CPU): per-prompt seeds make outputs independent of batch size, batch composition,
parts and worker count; models load once per worker process; bad input gives named errors.

For real: the engine on a tiny GPT-2 and a GReaT model trained in a study; `infer` studies on the local
process pool, Parsl (HTEX, LocalProvider), a local Ray session and a Dask LocalCluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from perfscale.errors import BadInput
from perfscale.llm import inference, training
from perfscale.runner import prepare_run, run_plan
from perfscale.spec import load_site
from perfscale.stages.infer import prompt_seed
from perfscale.tabular.columns import split_part

TEXTS = ["alpha is 1, beta is 2", "gamma is xyz, delta is 3.5", "hello world, this is a test"]
PROMPTS = [t[: 3 + (5 * i) % len(t)] for i, t in enumerate(TEXTS * 8)]  # 24 prompts of mixed lengths


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and immune to busy cores (restored after the module)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lm() -> training.LanguageModel:
    import torch

    torch.manual_seed(0)
    tokenizer = training.tiny_tokenizer(TEXTS, 20)
    return training.tiny_model(tokenizer, {"n_positions": 48})


@pytest.fixture(scope="module")
def model_folder(lm: training.LanguageModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-lm")
    lm.save(folder)
    return folder


def ids(lm: training.LanguageModel, texts: list[str]) -> list[list[int]]:
    return [[lm.bos_id, *lm.encode(t)] for t in texts]


SAMPLING = inference.Sampling(max_new_tokens=12, temperature=1.0, top_k=40, top_p=0.9)


def test_outputs_do_not_depend_on_batch_size_or_composition(lm):
    prompts, seeds = ids(lm, PROMPTS), [prompt_seed(7, i, 0) for i in range(len(PROMPTS))]
    runs = {
        rows: [
            g.tokens
            for g in inference.generate(lm, prompts, seeds, SAMPLING, inference.Batching(10**6, rows))
        ]
        for rows in (1, 4, 16)
    }
    assert runs[1] == runs[4] == runs[16]
    # another composition: the odd prompts alone, in reverse order, in one batch
    odd = list(range(len(prompts)))[1::2][::-1]
    alone = inference.generate(lm, [prompts[i] for i in odd], [seeds[i] for i in odd], SAMPLING)
    assert [g.tokens for g in alone] == [runs[1][i] for i in odd]
    # the same seeds again: the same texts; other seeds: other texts
    again = inference.generate(lm, prompts, seeds, SAMPLING)
    assert [g.tokens for g in again] == runs[1]
    other = inference.generate(lm, prompts, [s + 1 for s in seeds], SAMPLING)
    assert [g.tokens for g in other] != runs[1]
    # left padding: prompts of different lengths shared batches
    assert len({len(p) for p in prompts}) > 3


def test_greedy_stop_strings_and_limits(lm):
    prompts = ids(lm, PROMPTS[:6])
    greedy = inference.Sampling(max_new_tokens=10, temperature=0)
    plain = inference.generate(lm, prompts, [0] * 6, greedy)
    assert all(g.finish in ("eos", "length") and g.tokens_out <= 10 for g in plain)
    assert [g.tokens for g in inference.generate(lm, prompts, [9] * 6, greedy)] == [g.tokens for g in plain]
    # a stop string taken from a continuation ends it there, cut off; one that never appears stops nothing
    word = next(g.text[2:4] for g in plain if len(g.text) >= 4)
    stopped = inference.generate(lm, prompts, [0] * 6, inference.Sampling(10, 0, stop=(word, "\x00never")))
    for g, s in zip(plain, stopped, strict=True):
        if word in g.text:
            assert s.finish == "stop" and s.text == g.text[: g.text.index(word)]
        else:
            assert (s.finish, s.text) == (g.finish, g.text)
    # stop strings that never appear: no error, the rows end as without them (EOS or max_new_tokens)
    never = inference.generate(lm, prompts, [0] * 6, inference.Sampling(10, 0, stop=("\x00never", "\x01")))
    assert [(n.finish, n.tokens) for n in never] == [(g.finish, g.tokens) for g in plain]
    # a prompt near the end of the 48-token context stops there
    long = [[lm.bos_id] + [lm.encode("a")[0]] * 44]
    (edge,) = inference.generate(lm, long, [0], inference.Sampling(10, 0))
    assert edge.finish in ("context", "eos") and edge.tokens_out <= 3


def test_bad_input_is_named(lm, model_folder, tmp_path):
    with pytest.raises(inference.PromptTooLong, match=r"prompt row 0 of x takes 60 tokens, more than the 47"):
        inference.generate(lm, [[lm.bos_id] * 60], [0], SAMPLING, names=["row 0 of x"])
    with pytest.raises(BadInput, match=r"max_new_tokens must be at least 1 .got 0"):
        inference.Sampling(max_new_tokens=0)
    with pytest.raises(BadInput, match="is not a folder holding a Hugging Face model"):
        inference.cached_model(tmp_path / "nothing", "model 'x'")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(BadInput, match=r"broken/config.json is corrupted"):
        inference.cached_model(tmp_path / "broken", "model 'x'")
    # corrupt weights are named; pickled weights alone are refused, not unpickled
    import shutil

    shutil.copytree(model_folder, tmp_path / "torn")
    weights = tmp_path / "torn" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(BadInput, match=r"torn/model.safetensors is corrupted"):
        inference.cached_model(tmp_path / "torn", "model 'x'")
    weights.rename(tmp_path / "torn" / "pytorch_model.bin")
    with pytest.raises(
        BadInput, match=r"model.safetensors is missing .*found pytorch_model.bin, which is not read"
    ):
        inference.cached_model(tmp_path / "torn", "model 'x'")


def test_the_model_cache_loads_once_per_folder_content(model_folder, tmp_path):
    inference.clear_cache()
    first, cached = inference.cached_model(model_folder, "m")
    second, again = inference.cached_model(model_folder, "m")
    assert (cached, again, second is first) == (False, True, True)
    # a copy elsewhere has the same digest: served from the cache too
    import shutil

    shutil.copytree(model_folder, tmp_path / "copy")
    third, hit = inference.cached_model(tmp_path / "copy", "m")
    assert hit and third is first and inference.CACHE_STATS == {"loads": 1, "hits": 2}


# ---- the infer stage --------------------------------------------------------------------------------------

PROMPT_STUDY = """\
name: infer
seed: 5
stages:
  data: {{kind: ingest, params: {{kind: csv, source: prompts.csv}}}}
  gen:
    kind: infer
    inputs: [data]
    params: {{source: data, prompt_column: prompt, model: "{model}", samples: 2, max_new_tokens: 8,
             top_k: 40, parts: 8, max_batch_rows: 3}}
    grid: {{product: {{part: [0, 1, 2, 3, 4, 5, 6, 7]}}}}
"""


def reference(lm: training.LanguageModel, seed: int, samples: int) -> dict[tuple[int, int], list[str]]:
    """The texts of every (row, sample), generated in one call."""
    keys = [(row, s) for row in range(len(PROMPTS)) for s in range(samples)]
    prompts = [[lm.bos_id, *lm.encode(PROMPTS[row])] for row, _ in keys]
    sampling = inference.Sampling(8, 0.7, 40)
    out = inference.generate(lm, prompts, [prompt_seed(seed, r, s) for r, s in keys], sampling)
    return {key: g.text for key, g in zip(keys, out, strict=True)}


@pytest.mark.parametrize("engine", ["local", "parsl", "ray", "dask"])
def test_an_infer_study_in_parts_on_two_workers(engine, lm, model_folder, write_study, study_dir, tmp_path):
    pd.DataFrame({"prompt": PROMPTS}).to_csv(study_dir / "prompts.csv", index=False)
    study = write_study(PROMPT_STUDY.format(model=model_folder))
    store = prepare_run(study, load_site("local"), tmp_path / "run")
    summary = run_plan(store, engine, workers=2, progress=False)
    assert summary["gen"].done == 8
    out = store.read_stage("gen").to_pandas()
    assert len(out) == 2 * len(PROMPTS) and sorted(set(out["row"])) == list(range(len(PROMPTS)))
    # one load per worker process (Ray: per actor) over 8 tasks: the others found the model in its cache
    loads = (
        out.drop_duplicates("_task_key").groupby("worker")["model_cached"].apply(lambda c: int((~c).sum()))
    )
    assert 1 <= len(loads) <= 2 and set(loads) == {1}
    # the same texts as one call in this process: parts, batches and workers change nothing
    got = {(r, s): t for r, s, t in zip(out["row"], out["sample"], out["text"], strict=True)}
    assert got == reference(lm, 5, 2)
    assert (out["tokens_in"] > 0).all() and (out["tokens_out"] <= 8).all() and (out["latency_s"] > 0).all()


def test_infer_bad_input_is_named_at_plan_time(write_study, tmp_path):
    from perfscale.errors import SpecError
    from perfscale.plan import build_plan
    from perfscale.spec import load_study

    for n in (0, -3):
        bad = PROMPT_STUDY.format(model="x").replace("max_new_tokens: 8", f"max_new_tokens: {n}")
        with pytest.raises(SpecError, match=r"max_new_tokens"):
            build_plan(load_study(write_study(bad)), "study.yaml")
    neither = PROMPT_STUDY.format(model="x").replace("prompt_column: prompt, ", "")
    with pytest.raises(SpecError, match=r"exactly one of prompt_column"):
        build_plan(load_study(write_study(neither, "b.yaml")), "b.yaml")


TWO_TABLES = """\
name: infer-edges
stages:
  bad: {{kind: ingest, params: {{kind: csv, source: questions.csv}}}}
  good: {{kind: ingest, params: {{kind: csv, source: prompts.csv}}}}
  gen_bad:
    kind: infer
    inputs: [bad]
    params: {{source: bad, prompt_column: prompt, model: "{model}", max_new_tokens: 4}}
  long: {{kind: ingest, params: {{kind: csv, source: long.csv}}}}
  gen_long:
    kind: infer
    inputs: [long]
    params: {{source: long, prompt_column: prompt, model: "{model}", max_new_tokens: 4}}
  gen_thin:
    kind: infer
    inputs: [good]
    params: {{source: good, prompt_column: prompt, model: "{model}", max_new_tokens: 4, parts: 4}}
    grid: {{product: {{part: [0, 1, 2, 3]}}}}
  empty: {{kind: ingest, params: {{kind: csv, source: empty.csv}}}}
  gen_empty:
    kind: infer
    inputs: [empty]
    params: {{source: empty, prompt_column: prompt, model: "{model}", max_new_tokens: 4}}
"""


def test_bad_tables_fail_with_no_shard_and_empty_parts_are_fine(
    model_folder, write_study, study_dir, tmp_path
):
    pd.DataFrame({"question": ["a", "b"]}).to_csv(study_dir / "questions.csv", index=False)
    pd.DataFrame({"prompt": ["a", "b"]}).to_csv(study_dir / "prompts.csv", index=False)
    pd.DataFrame({"prompt": ["a", "1234567890" * 6]}).to_csv(study_dir / "long.csv", index=False)
    (study_dir / "empty.csv").write_text("prompt\n")  # a header, no rows
    store = prepare_run(
        write_study(TWO_TABLES.format(model=model_folder)), load_site("local"), tmp_path / "r"
    )
    summary = run_plan(store, "local", workers=1, progress=False)
    assert (summary["gen_bad"].done, summary["gen_long"].done, summary["gen_thin"].done) == (0, 0, 4)
    assert summary["gen_empty"].done == 0
    messages = store.attempts()["message"].dropna().tolist()
    assert any("infer.prompt_column: ['prompt'] not in the table of stage 'bad'" in m for m in messages)
    too_long = "prompt row 1 of stage 'long' takes 61 tokens, more than the 47 the model's 48-token context"
    assert any(too_long in m for m in messages), messages
    assert not list((store.root / "stages" / "gen_bad").glob("*.parquet"))
    assert not list((store.root / "stages" / "gen_long").glob("*.parquet"))
    assert any("the prompt table of stage 'empty' has no rows" in m for m in messages), messages
    assert not list((store.root / "stages" / "gen_empty").glob("*.parquet"))
    # 2 rows in 4 parts: two parts generate one row each, two are empty; the stage reads as one table
    thin = store.read_stage("gen_thin").to_pandas()
    assert sorted(thin["row"]) == [0, 1] and (thin["tokens_in"] >= 2).all()


GREAT_STUDY = """\
name: great-infer
seed: 2
stages:
  data: {kind: ingest, params: {kind: sklearn, source: iris}}
  split: {kind: split, inputs: [data], params: {source: data, holdout_fraction: 0.3}}
  train:
    kind: train
    inputs: [split]
    params:
      source: split
      generator: great
      hyperparameters: {steps: 250, lr: 0.003, batch_size: 16, max_attempts: 40}
  fill:
    kind: infer
    foreach: train
    inputs: [split]
    params:
      {source: split, split: holdout, prefix_columns: [target], samples: 2, parts: 2, max_new_tokens: 60}
    grid: {product: {part: [0, 1]}}
  draw:
    kind: sample
    foreach: train
    params: {rows: 6, parts: 2}
    grid: {product: {part: [0, 1]}}
"""


def test_great_rows_as_prompts_parse_back_and_a_sample_in_parts(write_study, tmp_path):
    from perfscale.results.sampling import combined_sampling, sampling_reports

    store = prepare_run(write_study(GREAT_STUDY), load_site("local"), tmp_path / "run")
    summary = run_plan(store, "local", workers=2, progress=False)
    assert summary["fill"].done == 2 and summary["draw"].done == 2
    # the sample in 2 parts: 3 rows each, a valid-row rate per part, combined over the counts
    assert len(store.read_stage("draw").to_pandas()) == 6
    parts = sampling_reports(store, "draw")
    (combined,) = combined_sampling(store, "draw")
    assert (combined["parts"], combined["rows"]) == (2, 6) and sorted(p["rows"] for p in parts) == [3, 3]
    assert combined["generated_texts"] == sum(p["generated_texts"] for p in parts)
    assert combined["valid_row_rate"] == combined["valid_texts"] / combined["generated_texts"]
    rates = [p["valid_row_rate"] for p in parts]
    assert min(rates) <= combined["valid_row_rate"] <= max(rates)
    out = store.read_stage("fill").to_pandas()
    holdout = split_part(store.read_stage("split", provenance=False).to_pandas(), "holdout")
    assert len(out) == 2 * len(holdout)
    assert set(out["invalid_reason"].dropna()) <= {
        "unparseable",
        "unknown column",
        "duplicate column",
        "missing column",
        "bad number",
        "unknown category",
        "unexpected missing value",
        "truncated",
    }
    valid = out[out["valid"]]
    assert len(valid) > 0  # a briefly trained model writes some rows that parse
    # the prefix column keeps the row's own value
    assert (valid["target"].to_numpy() == holdout["target"].iloc[valid["row"]].to_numpy()).all()
    assert valid["prompt"].str.startswith("target is ").all()
