"""GReaT (Borisov et al. 2023, "Language Models are Realistic Tabular Data Generators") as a generator.

Each training row is written as text, ``col is value, col is value, ...`` in random column orders
(serialize.py), a causal language model is fine-tuned on those texts (training.py), and sampling generates
texts from a start token and parses them back into rows. Generated texts that are not valid rows (unparseable,
a column missing or repeated, an unknown category...) are counted and regenerated, within a budget of
`max_attempts * n` generated rows per call; when it is spent the call raises BadInput with the valid-row rate.

Valid-row rate: after every `sample` / `impute` call, `last_valid_rate` is the share of generated texts that
were valid rows (over the whole call, regenerations included), `last_invalid` counts the invalid ones by
reason, and the frame `sample` returns carries the rate as ``frame.attrs["valid_row_rate"]`` (and the counts
it comes from as ``attrs["generated_texts"]`` and ``attrs["valid_texts"]``, so parts combine exactly).

Generation goes through the batched engine (perfscale.llm.inference): each generated text has its own seed,
drawn from torch's global generator under `seeded(seed)`, and `impute` sends the prompts of all its groups in
one engine call per regeneration round. Loading a saved generator uses the engine's per-process model cache,
so tasks on one worker that load the same model files share one copy.

Conditioning is GReaT's own: equality conditions (`Conditions.equalities()`) become the prompt prefix
``col is value,`` and the model writes the other columns; `impute` does the same with each row's set cells
(rows with the same set cells share one prompt and are generated in one batch).

Context window: rows must fit the model (n_positions / max_position_embeddings) and `max_length`. `fit`
measures the token length of every training text and, for a table too wide, raises BadInput naming the
width, the longest row's token count and the limit, with the fixes (context.py): `float_digits` (fewer
digits per float, measured: the message gives the largest value that fits), a larger `max_length` up to the
model's context, a model with a longer context (tiny_config n_positions, "smollm2" with 8192), fewer columns.

Files: ``lm/`` holds the fine-tuned model (config.json, model.safetensors) and tokenizer (tokenizer.json...)
as written by transformers' save_pretrained; the column codec, training facts and library versions go into
generator.json's "model" entry. Nothing is pickled.

Distributed fine-tuning: in a multi-rank task (resources.ranks > 1) each rank takes its share of every
global batch under DDP, or under DeepSpeed ZeRO with the `zero_stage` hyperparameter (training.py,
parallel.py, zero.py); with the same global batch the losses and weights equal one process's.

Determinism: fit and sample run inside `seeded(seed, torch=True)`; on the CPU the same seed, data, thread
count and library versions give the same model and the same rows, also after save/load. Not with
`max_train_seconds` (where training stops depends on the machine's speed) nor on a GPU.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perfscale.errors import BadInput
from perfscale.extras import require
from perfscale.generators._seeding import seeded, torch_threads
from perfscale.generators.base import Generator, model_file
from perfscale.generators.registry import register_generator
from perfscale.llm.params import Params

if TYPE_CHECKING:
    import pandas as pd

    from perfscale.generators.conditions import Conditions
    from perfscale.llm.serialize import RowCodec
    from perfscale.llm.training import LanguageModel
    from perfscale.tabular.meta import TableMeta

LM_FOLDER = "lm"  # the sub-folder of a saved generator holding the model and tokenizer files


def _require_llm() -> None:
    require("llm", "transformers", "the great generator")
    require("llm", "torch", "the great generator")


# hyperparameters that do not change the trained model: left out of a checkpoint's fingerprint
NOT_IN_FINGERPRINT = {
    "checkpoint_dir", "checkpoint_every", "max_train_seconds", "torch_threads", "temperature", "top_k",
    "top_p", "max_new_tokens", "sample_batch_size", "max_attempts", "cache_dir",
}  # fmt: skip


def _fingerprint(params: Params, seed: int, sequences: list[list[int]]) -> str:
    """What a checkpoint must match to be resumed: the training hyperparameters, seed and token sequences."""
    import hashlib
    import json

    head = {"params": params.model_dump(exclude=NOT_IN_FINGERPRINT), "seed": seed}
    digest = hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode())
    digest.update(json.dumps(sequences).encode())
    return digest.hexdigest()


@contextlib.contextmanager
def _process_group(needed: bool) -> Iterator[None]:
    """DeepSpeed needs torch.distributed: a one-rank session when no multi-rank task opened one."""
    import torch.distributed as dist

    if not needed or (dist.is_available() and dist.is_initialized()):
        yield
        return
    import os

    from perfscale.distributed import session

    with session(f"great-{os.getpid()}"):
        yield


@register_generator
class GReaTGenerator(Generator):
    """A causal language model fine-tuned on rows written as text (see the module doc)."""

    name = "great"
    pickled_files = ()
    resumable = True  # takes checkpoint_dir (its own checkpoints; DeepSpeed's with zero_stage)
    hyperparameters_model = Params
    params: Params

    def __init__(self, **hyperparameters: Any) -> None:
        super().__init__(**hyperparameters)
        self.last_valid_rate: float | None = None
        self.last_invalid: dict[str, int] = {}
        self._lm: LanguageModel | None = None
        self._codec: RowCodec | None = None
        self._state: dict[str, Any] = {}
        self._drawn = self._valid = self._depth = 0

    # ---- public API: the valid-row rate of each call ----------------------------------------------------

    def sample(self, n: int, seed: int, conditions: Any = None, max_draws: int | None = None) -> pd.DataFrame:
        """`Generator.sample`; the frame's ``attrs["valid_row_rate"]`` is the call's valid-row rate."""
        with self._scope():
            out = super().sample(n, seed, conditions=conditions, max_draws=max_draws)
        if self.last_valid_rate is not None:
            out.attrs["valid_row_rate"] = self.last_valid_rate
            out.attrs["generated_texts"], out.attrs["valid_texts"] = self._drawn, self._valid
        return out

    def impute(
        self, table: pd.DataFrame, seed: int, draws: int = 1, relax_unseen: bool = False
    ) -> pd.DataFrame:
        """`Generator.impute`; the frame's ``attrs["valid_row_rate"]`` is the call's valid-row rate."""
        with self._scope():
            out = super().impute(table, seed, draws=draws, relax_unseen=relax_unseen)
        if self.last_valid_rate is not None:
            out.attrs["valid_row_rate"] = self.last_valid_rate
        return out

    @contextlib.contextmanager
    def _scope(self) -> Iterator[None]:
        """Count generated and valid rows over one outermost call (nested hook calls add up)."""
        if self._depth == 0:
            self._drawn = self._valid = 0
            self.last_valid_rate, self.last_invalid = None, {}
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    # ---- fit --------------------------------------------------------------------------------------------

    def _fit(self, table: pd.DataFrame, meta: TableMeta, seed: int) -> pd.DataFrame | None:
        import numpy as np
        import pandas as pd

        from perfscale.llm import context, training
        from perfscale.llm.serialize import RowCodec

        _require_llm()
        params = self.params
        codec = RowCodec.from_table(table, meta, params.float_digits)
        texts = codec.texts(table, params.permutations, np.random.default_rng(seed))
        with seeded(seed, torch=True), torch_threads(params.threads):
            lm = self._base_model(texts)
            limit = self._limit(lm)
            sequences = [lm.sequence(t) for t in texts]
            longest = max(len(s) for s in sequences)
            if longest > limit:
                raise BadInput(
                    context.too_wide(self.name, params.base_model, lm, codec, table, longest, limit)
                )
            parallelism = training.Parallelism(
                params.zero_stage,
                params.deepspeed,
                params.checkpoint_dir,
                params.checkpoint_every,
                _fingerprint(params, seed, sequences),
            )
            with _process_group(params.zero_stage is not None):
                result = training.fine_tune(
                    lm,
                    sequences,
                    epochs=params.epochs,
                    steps=params.steps,
                    batch_size=params.batch_size,
                    lr=params.learning_rate,
                    max_train_seconds=params.max_train_seconds,
                    seed=seed,
                    device=self._device(),
                    parallelism=parallelism,
                    bf16=params.precision == "bf16" and self._device().startswith("cuda"),
                )
        self.device_used = str(self._device()).split(":")[0]
        self.precision_used = "bf16" if params.precision == "bf16" and self.device_used == "cuda" else "fp32"
        self._lm, self._codec = lm, codec
        self._state = {
            "token_limit": limit,
            "longest_row_tokens": longest,
            "training_sequences": len(sequences),
            "learning_rate": params.learning_rate,
            "steps": result.steps,
            "epochs": result.epochs,
            "train_seconds": result.seconds,
            "stopped_by": result.stopped_by,
            "resumed_from": result.resumed_from,
            "final_loss": result.telemetry[-1][2] if result.telemetry else None,
        }
        epoch, step, value = zip(*result.telemetry, strict=True) if result.telemetry else ((), (), ())
        return pd.DataFrame({"epoch": epoch, "step": step, "loss": "lm", "value": value})

    def _base_model(self, texts: list[str]) -> LanguageModel:
        from perfscale.llm import smollm2, training

        base = self.params.base_model
        if base == "tiny":
            return training.tiny_model(
                training.tiny_tokenizer(texts, self.params.tiny_merges), self.params.tiny_config
            )
        if base == "smollm2":
            return training.load_pretrained(
                smollm2.smollm2_folder(self.params.cache_dir), "base_model 'smollm2'"
            )
        path = Path(base).expanduser()
        if not path.exists():
            raise BadInput(
                f"{self.name} hyperparameter 'base_model' must be 'tiny', 'smollm2' or the path of a local "
                f"Hugging Face model folder; {path} does not exist"
            )
        return training.load_pretrained(path, f"base_model {base!r}")

    def _limit(self, lm: LanguageModel) -> int:
        context, wanted = lm.context, self.params.max_length
        if wanted is not None and wanted > context:
            raise BadInput(
                f"{self.name} hyperparameter 'max_length' is {wanted}, beyond the {context}-token context of "
                f"base model {self.params.base_model!r}; use at most {context}"
            )
        return wanted or context

    def _device(self) -> str:
        if self.params.device != "auto":
            return self.params.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    # ---- sampling ---------------------------------------------------------------------------------------

    def _sample(self, n: int, seed: int) -> pd.DataFrame:
        import pandas as pd

        codec = self._require_codec()
        with self._scope(), seeded(seed, torch=True):
            rows = self._draw({}, n)
        self._check_enough(rows, n, {})
        return pd.DataFrame(rows, columns=codec.names)

    def _sample_conditioned(self, n: int, seed: int, conditions: Conditions) -> pd.DataFrame | None:
        import pandas as pd

        codec = self._require_codec()
        equal = {c: v for c, v in conditions.equalities().items() if c in codec.names}
        if not equal:
            return None
        with self._scope(), seeded(seed, torch=True):
            rows = self._draw(equal, n)
        if not rows:  # partial results are fine: the caller tops them up
            self._check_enough(rows, n, equal)
        return pd.DataFrame(rows, columns=codec.names)

    def _impute(self, known: pd.DataFrame, seed: int) -> pd.DataFrame | None:
        codec = self._require_codec()
        names = codec.names
        out = known.astype(object).copy()
        is_set = known[names].notna().to_numpy()
        groups: dict[tuple[tuple[str, str], ...], list[int]] = {}
        for i in range(len(known)):
            key = tuple(
                (c, codec.column(c).format(known[c].iloc[i], codec.float_digits))
                for j, c in enumerate(names)
                if is_set[i, j]
            )
            groups.setdefault(key, []).append(i)
        wanted = [(key, positions) for key, positions in groups.items() if len(key) < len(names)]
        requests = [
            ({c: known[c].iloc[positions[0]] for c, _ in key}, len(positions)) for key, positions in wanted
        ]
        with self._scope(), seeded(seed, torch=True):
            # every group's prompt in one batched engine call per regeneration round
            drawn = self._draw_many(requests)
        for (_, positions), rows in zip(wanted, drawn, strict=True):
            # rows the budget cannot fill stay missing: `impute` fills them by its pool method
            for i, row in zip(positions, rows, strict=False):
                out.iloc[i] = [row[c] for c in out.columns]
        return out

    def _draw(self, values: dict[str, Any], n: int) -> list[dict[str, Any]]:
        """Up to `n` valid rows generated after the prompt fixing `values`, within max_attempts * n texts."""
        return self._draw_many([(values, n)])[0]

    def _draw_many(self, requests: list[tuple[dict[str, Any], int]]) -> list[list[dict[str, Any]]]:
        """For each (values, n): up to n valid rows generated after the prompt fixing `values`, within
        max_attempts * n texts. Each round generates what every unfinished request still needs, all prompts
        in one call of the batched engine (perfscale.llm.inference); each text gets its own seed, drawn from
        torch's global generator (seeded by the caller), so rows do not depend on how texts are batched."""
        import torch

        from perfscale.llm import inference
        from perfscale.llm.serialize import RowError

        lm, codec, params = self._require_lm(), self._require_codec(), self.params
        limit = min(self._state.get("token_limit", lm.context), lm.context)
        prefixes = [codec.prefix(values) for values, _ in requests]
        prompts = [[lm.bos_id, *lm.encode(prefix)] for prefix in prefixes]
        for (values, _), prompt in zip(requests, prompts, strict=True):
            if limit - len(prompt) < 1:
                raise BadInput(
                    f"the prompt for {sorted(values)} takes {len(prompt)} tokens: no room left to generate"
                )
        longest = max((len(p) for p in prompts), default=0)
        sampling = inference.Sampling(
            self._new_tokens(limit - longest), params.temperature, params.top_k, params.top_p
        )
        batching = inference.Batching(max_batch_rows=params.sample_batch_size)
        rows: list[list[dict[str, Any]]] = [[] for _ in requests]
        drawn = [0] * len(requests)
        invalid: dict[str, int] = {}
        inference.place(lm, self._device(), "float32")
        while True:
            batch: list[int] = []  # request index of each text
            for r, (_, n) in enumerate(requests):
                budget = params.max_attempts * n
                if len(rows[r]) >= n or drawn[r] >= budget:
                    continue
                rate = len(rows[r]) / drawn[r] if drawn[r] else 1.0
                want = math.ceil((n - len(rows[r])) / max(rate, 1 / params.max_attempts))
                batch += [r] * min(params.sample_batch_size, budget - drawn[r], want)
            if not batch:
                break
            seeds = torch.randint(0, 2**62, (len(batch),)).tolist()
            with torch_threads(params.threads):
                texts = inference.generate(lm, [prompts[r] for r in batch], seeds, sampling, batching)
            for r, generation in zip(batch, texts, strict=True):
                drawn[r] += 1
                try:
                    if generation.finish != "eos" or any(t in lm.special_ids for t in generation.tokens):
                        raise RowError("truncated", "no end of row within max_new_tokens")
                    row = codec.parse(prefixes[r] + generation.text)
                except RowError as exc:
                    invalid[exc.reason] = invalid.get(exc.reason, 0) + 1
                    continue
                # the exact condition values, not their (float_digits) text
                rows[r].append(row | requests[r][0])
        self._count(sum(drawn), sum(len(r) for r in rows), invalid)
        return [found[:n] for found, (_, n) in zip(rows, requests, strict=True)]

    def _new_tokens(self, room: int) -> int:
        """max_new_tokens, by default a quarter (plus 8 tokens) more than the longest training row: a longer
        text is (almost) never a valid row, and an undertrained model may never stop on its own."""
        wanted = self.params.max_new_tokens
        if wanted is None:
            longest = self._state.get("longest_row_tokens")
            wanted = math.ceil(1.25 * longest) + 8 if isinstance(longest, int) else room
        return min(wanted, room)

    def _count(self, drawn: int, valid: int, invalid: dict[str, int]) -> None:
        self._drawn += drawn
        self._valid += valid
        for reason, k in invalid.items():
            self.last_invalid[reason] = self.last_invalid.get(reason, 0) + k
        self.last_valid_rate = self._valid / self._drawn if self._drawn else None

    def _check_enough(self, rows: list[dict[str, Any]], n: int, values: dict[str, Any]) -> None:
        from perfscale.llm.serialize import describe_counts

        if len(rows) >= n:
            return
        rate = self.last_valid_rate or 0.0
        given = f" with {values}" if values else ""
        invalid = describe_counts(self.last_invalid)
        raise BadInput(
            f"the {self.name} generator made only {len(rows)} valid rows of {n} wanted{given}: valid-row "
            f"rate {rate:.1%} over {self._drawn} generated rows (invalid: {invalid}), "
            f"and its budget of max_attempts={self.params.max_attempts} x {n} rows is spent; train more "
            "(epochs/steps, lr), lower the temperature, or raise max_attempts"
        )

    # ---- files ------------------------------------------------------------------------------------------

    def _save_model(self, folder: Path) -> None:
        self._require_lm().save(folder / LM_FOLDER)

    def _load_model(self, folder: Path) -> None:
        from perfscale.llm import inference, training

        _require_llm()
        lm_dir = folder / LM_FOLDER
        for name in training.LM_FILES:
            model_file(lm_dir, name)
        if not (lm_dir / "model.safetensors.index.json").is_file():  # a large model is saved in shards
            model_file(lm_dir, "model.safetensors")
        # once per worker process: later loads of the same model files reuse it (perfscale.llm.inference)
        self._lm, _ = inference.cached_model(lm_dir, "the saved great generator", self._device(), "float32")

    def _model_state(self) -> dict[str, Any]:
        from importlib.metadata import version

        codec = self._require_codec()
        versions = {lib: version(lib) for lib in ("torch", "transformers", "tokenizers")}
        return {"codec": codec.to_json(), **self._state, "versions": versions}

    def _restore_model_state(self, state: dict[str, Any]) -> None:
        from perfscale.llm.serialize import RowCodec

        try:
            self._codec = RowCodec.from_json(state["codec"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInput(
                f"generator.json is corrupted: its 'model.codec' entry is invalid ({exc!r})"
            ) from exc
        self._state = {k: v for k, v in state.items() if k not in ("codec", "versions")}

    def _require_lm(self) -> LanguageModel:
        if self._lm is None:
            raise BadInput(f"generator {self.name!r} has no language model: fit it or load a saved one")
        return self._lm

    def _require_codec(self) -> RowCodec:
        if self._codec is None:
            raise BadInput(f"generator {self.name!r} is not fitted: fit it or load a saved one")
        return self._codec
