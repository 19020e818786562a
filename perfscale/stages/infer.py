"""The `infer` stage: generate continuations of many prompts with a language model, in parts over workers.

Prompts come from the table of the stage named by `source` (in `inputs`), in one of two ways:

* `prompt_column`: each row's text in that column is a prompt (the model's BOS token is put before it);
  the model is `model` ("smollm2" or the path of a local Hugging Face folder) or, with `foreach: <train
  stage>` of the `great` generator, that task's fine-tuned model;
* `prefix_columns` (with `foreach: <train stage>` of the `great` generator): each row's values in those
  columns are written by the generator's row codec as the prompt prefix (``col is value, ...``), the model
  writes the other columns, and the text is parsed back into a row (`valid`, `invalid_reason` and one
  column per table column; the prefix columns keep the row's exact values).

Parts: with ``params: {parts: k}`` and ``grid: {product: {part: [0, ..., k-1]}}`` task i takes the i-th of k
contiguous blocks of the prompt rows, so the rows fan out over the engine's workers (local, Parsl, Dask,
Ray) or over array elements like any tasks. Each (row, sample) has its own seed, derived from the task's seed,
the row's index in the whole table and the sample number: the output of a row is the same whatever `parts`,
the batch size or the worker count.

Output: one row per prompt x sample: `row`, `sample`, `prompt`, `text`, `finish` (eos, stop, length, context),
`tokens_in`, `tokens_out`, `latency_s` (from its batch's start to its last token), `batch_rows`, `worker`
(host:pid) and `model_cached` (whether the worker already held the model: the model loads once per worker
process, perfscale.llm.inference), plus the parsed columns in `prefix_columns` mode.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import AfterValidator, Field, model_validator

from perfscale.devices import check_device
from perfscale.errors import BadInput
from perfscale.stages.base import PartedParams, StageContext, stage_kind
from perfscale.stages.train import MODEL_FOLDER
from perfscale.tabular.columns import SPLIT_COLUMN, split_part

if TYPE_CHECKING:
    from perfscale.llm.serialize import RowCodec
    from perfscale.llm.training import LanguageModel
    from perfscale.plan.named import PlanCheck

OUTPUT_COLUMNS = [
    "row",
    "sample",
    "prompt",
    "text",
    "finish",
    "tokens_in",
    "tokens_out",
    "latency_s",
    "batch_rows",
    "worker",
    "model_cached",
]
PARSED_COLUMNS = ["valid", "invalid_reason"]


class InferParams(PartedParams):
    source: str = Field(description="the stage whose table holds the prompts (list it in `inputs`)")
    prompt_column: str | None = Field(None, description="the column holding each row's prompt text")
    prefix_columns: list[str] | None = Field(
        None, min_length=1, description="columns written as a GReaT prompt prefix (foreach: a great train)"
    )
    split: Literal["train", "holdout"] | None = Field(
        None, description="use only this part of a `split` stage's table (default: every row)"
    )
    model: str | None = Field(
        None,
        min_length=1,
        description="'smollm2' or a local Hugging Face folder (default: the foreach model)",
    )
    samples: int = Field(1, ge=1, description="continuations per prompt")
    max_new_tokens: int = Field(64, ge=1, description="the longest continuation, in tokens")
    temperature: float = Field(0.7, ge=0, description="0: greedy")
    top_k: int | None = Field(None, ge=1)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: list[str] = Field(default_factory=list, description="strings that end a continuation (cut off)")
    max_batch_tokens: int = Field(16384, ge=1, description="rows x (longest prompt + max_new_tokens)")
    max_batch_rows: int = Field(64, ge=1)
    device: Annotated[str, AfterValidator(check_device)] = Field(
        "auto", description="cpu, cuda, cuda:<i> or auto (cuda where a GPU exists)"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    cache_dir: str | None = Field(
        None, description="where 'smollm2' is converted to (see docs/generators.md)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> InferParams:
        if (self.prompt_column is None) == (self.prefix_columns is None):
            raise ValueError(
                "set exactly one of prompt_column (a text column) and prefix_columns (GReaT rows)"
            )
        if any(s == "" for s in self.stop):
            raise ValueError("stop strings must not be empty")
        return self

    def plan_check(self, check: PlanCheck) -> None:
        check.source("source", self.source)
        if self.prefix_columns is not None:
            check.upstream("train")
        elif self.model is None:
            if check.foreach is None:
                check.problem(
                    "set `model` ('smollm2' or a model folder) or `foreach: <a train stage>`", "model"
                )
            else:
                check.upstream("train")


def prompt_seed(seed: int, row: int, sample: int) -> int:
    """The seed of one (row, sample): independent of parts, batches and workers."""
    digest = hashlib.sha256(f"infer:{seed}:{row}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _model_folder(ctx: StageContext, params: InferParams) -> tuple[Path, str]:
    from perfscale.llm import smollm2

    if params.model == "smollm2":
        return smollm2.smollm2_folder(params.cache_dir), "model 'smollm2'"
    if params.model is not None:
        return Path(params.model).expanduser(), f"model {params.model!r}"
    return _generator_folder(ctx) / "lm", f"the model of train task {ctx.upstream.key}"


def _generator_folder(ctx: StageContext) -> Path:
    from perfscale.generators.base import read_manifest

    folder = ctx.upstream_artifacts() / MODEL_FOLDER
    name = read_manifest(folder)["generator"]
    if name != "great":
        raise BadInput(
            f"infer reads a language model, but train task {ctx.upstream.key} of stage "
            f"{ctx.upstream.stage!r} fitted the {name!r} generator; use a great train stage"
        )
    return folder


def _codec(ctx: StageContext) -> RowCodec:
    from perfscale.generators.base import read_manifest
    from perfscale.llm.serialize import RowCodec

    return RowCodec.from_json(read_manifest(_generator_folder(ctx))["model"]["codec"])


def _prompt_table(ctx: StageContext, params: InferParams) -> pd.DataFrame:
    table = ctx.input(params.source)
    if params.split is not None:
        if SPLIT_COLUMN not in table.columns:
            raise BadInput(f"infer.split {params.split!r}: stage {params.source!r} is not a split stage")
        table = split_part(table, params.split)
    table = table.drop(columns=[SPLIT_COLUMN], errors="ignore").reset_index(drop=True)
    if table.empty:
        raise BadInput(f"infer: the prompt table of stage {params.source!r} has no rows")
    wanted = [params.prompt_column] if params.prompt_column else list(params.prefix_columns or [])
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        field = "prompt_column" if params.prompt_column else "prefix_columns"
        raise BadInput(
            f"infer.{field}: {missing} not in the table of stage {params.source!r}; columns: "
            f"{sorted(table.columns)}"
        )
    return table


@stage_kind("infer", InferParams)
def infer(ctx: StageContext, params: InferParams) -> pd.DataFrame:
    """One row per prompt x sample of this task's part (see the module doc)."""
    from perfscale.extras import require
    from perfscale.llm import inference

    require("llm", "transformers", "the infer stage")
    require("llm", "torch", "the infer stage")
    table = _prompt_table(ctx, params)
    codec = _codec(ctx) if params.prefix_columns else None
    if codec is not None:
        unknown = [c for c in params.prefix_columns or [] if c not in codec.names]
        if unknown:
            raise BadInput(f"infer.prefix_columns: {unknown} are not columns the model was trained on")
        clash = sorted(set(codec.names) & {*OUTPUT_COLUMNS, *PARSED_COLUMNS})
        if clash:
            raise BadInput(f"infer: table columns {clash} clash with the output's own columns; rename them")
    rows = np.array_split(np.arange(len(table)), params.parts)[params.part]
    if len(rows) == 0:  # more parts than rows: this one has nothing to generate (and loads no model)
        return pd.DataFrame(columns=[*OUTPUT_COLUMNS, *([*PARSED_COLUMNS, *codec.names] if codec else [])])
    folder, what = _model_folder(ctx, params)
    lm, cached = inference.cached_model(folder, what, params.device, params.dtype)
    prefixes = _prefixes(table, rows, params, codec)
    bos = [lm.bos_id]
    prompts, seeds, keys = [], [], []
    for row, prefix in zip(rows.tolist(), prefixes, strict=True):
        ids = bos + lm.encode(prefix)
        for sample in range(params.samples):
            prompts.append(ids)
            seeds.append(prompt_seed(ctx.seed, row, sample))
            keys.append((row, sample, prefix))
    sampling = inference.Sampling(
        params.max_new_tokens, params.temperature, params.top_k, params.top_p, tuple(params.stop)
    )
    batching = inference.Batching(params.max_batch_tokens, params.max_batch_rows)
    names = [f"row {row} of stage {params.source!r}" for row, _, _ in keys]
    generations = inference.generate(lm, prompts, seeds, sampling, batching, names)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    out = pd.DataFrame(
        {
            "row": [k[0] for k in keys],
            "sample": [k[1] for k in keys],
            "prompt": [k[2] for k in keys],
            "text": [g.text for g in generations],
            "finish": [g.finish for g in generations],
            "tokens_in": [g.tokens_in for g in generations],
            "tokens_out": [g.tokens_out for g in generations],
            "latency_s": [g.latency_s for g in generations],
            "batch_rows": [g.batch_rows for g in generations],
            "worker": worker,
            "model_cached": cached,
        },
        columns=OUTPUT_COLUMNS,
    )
    if codec is not None:
        parsed = _parsed(lm, codec, table, keys, generations, list(params.prefix_columns or []))
        out = pd.concat([out, parsed], axis=1)
    return out


def _prefixes(
    table: pd.DataFrame, rows: np.ndarray, params: InferParams, codec: RowCodec | None
) -> list[str]:
    if codec is None:
        column = table[params.prompt_column]
        return ["" if pd.isna(v) else str(v) for v in column.iloc[rows]]
    columns = list(params.prefix_columns or [])
    return [codec.prefix({c: table[c].iloc[i] for c in columns}) for i in rows.tolist()]


def _parsed(
    lm: LanguageModel,
    codec: RowCodec,
    table: pd.DataFrame,
    keys: list[tuple[int, int, str]],
    generations: list[Any],
    prefix_columns: list[str],
) -> pd.DataFrame:
    """valid, invalid_reason and the codec's columns of each generated text (missing where invalid; numbers
    as floats, other values as objects, so every part's shard has the same schema). Prefix columns keep
    the row's exact values, not their text."""
    from perfscale.llm.serialize import RowError

    valid, reasons, values = [], [], []
    for (row, _, prefix), generation in zip(keys, generations, strict=True):
        try:
            if generation.finish != "eos" or any(t in lm.special_ids for t in generation.tokens):
                raise RowError("truncated", "no end of row within max_new_tokens")
            parsed = codec.parse(prefix + generation.text)
        except RowError as exc:
            valid.append(False)
            reasons.append(exc.reason)
            values.append({})
            continue
        valid.append(True)
        reasons.append(None)
        values.append(parsed | {c: table[c].iloc[row] for c in prefix_columns})
    frame = pd.DataFrame({"valid": valid, "invalid_reason": reasons})
    for column in codec.columns:
        cells = [v.get(column.name) for v in values]
        if column.type in ("numerical", "integer"):
            frame[column.name] = pd.to_numeric(pd.Series(cells, dtype=object), errors="coerce").astype(float)
        else:
            frame[column.name] = pd.Series(cells, dtype=object)
    return frame
