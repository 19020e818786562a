"""Batched generation from a causal language model: one model load per worker process, per-prompt seeds.

`generate(lm, prompts, seeds, sampling)` continues token prompts in batches:

* prompts are sorted by length (longest first) and cut into batches bounded by tokens (`max_batch_tokens`:
  rows x (longest prompt + max_new_tokens)) and by rows (`max_batch_rows`);
* each batch is left-padded; the attention mask hides the padding and the position ids count each row's own
  tokens from 0, so a row's logits do not depend on how much padding it got;
* the KV cache is on: the prompt is run once, then one token per step; rows that have finished (EOS, a stop
  string, max_new_tokens or the end of the context) leave the batch and its cache;
* sampling: temperature (0: greedy), top-k, top-p, then one uniform draw per row and step from the row's own
  `torch.Generator`, seeded with the prompt's seed. A prompt's output therefore depends on its tokens, its
  seed and the model only, never on the batch size, the other prompts in its batch or the worker count (on the
  CPU in float32 up to rounding of the logits: a draw landing within ~1e-7 of a token boundary could flip;
  the tests check exact equality across batch sizes 1/4/16);
* stop strings: a row stops when its decoded text holds one; the text is cut before it (`finish` "stop").
  A stop string that never appears is no error: the row runs to EOS or max_new_tokens (`finish` "eos" or
  "length").

A prompt that leaves no room in the context (n_positions / max_position_embeddings) raises `PromptTooLong`
(a BadInput) naming the prompt, its token count and the context. Rows whose prompt plus max_new_tokens
overrun the context stop at its end (`finish` "context").

Model residency (`cached_model`): models load once per worker process, cached by the digest of the model
folder's files (names, sizes and content, hashed once per process per folder state) plus device and dtype;
`CACHE_STATS` counts loads and hits, and `cached_model` says whether a call was served from the cache. Only
safetensors and JSON files are read (perfscale.llm.training.load_pretrained): nothing is unpickled.

Devices: "auto" is CUDA where torch sees a GPU, else the CPU; dtype "auto" is bfloat16 on a GPU that has it
(float16 otherwise) and float32 on the CPU. The CUDA paths have not run on the machine this was written on.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perfscale.errors import BadInput

if TYPE_CHECKING:
    from perfscale.llm.training import LanguageModel

DTYPES = ("auto", "float32", "bfloat16", "float16")
FINISH_REASONS = ("eos", "stop", "length", "context")
DEFAULT_BATCH_TOKENS = 16384
CACHE_SIZE_ENV = "PERFSCALE_MODEL_CACHE"  # models kept per worker process (default 2)


class PromptTooLong(BadInput):
    """A prompt that leaves no room to generate in the model's context."""


@dataclass(frozen=True)
class Sampling:
    """How tokens are drawn. temperature 0 is greedy; top_k None is no top-k cut; stop: strings that end a
    row (cut from its text)."""

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise BadInput(f"max_new_tokens must be at least 1 (got {self.max_new_tokens})")
        if not self.temperature >= 0:
            raise BadInput(f"temperature must be 0 (greedy) or more (got {self.temperature})")
        if self.top_k is not None and self.top_k < 1:
            raise BadInput(f"top_k must be at least 1 or unset (got {self.top_k})")
        if not 0 < self.top_p <= 1:
            raise BadInput(f"top_p must be in (0, 1] (got {self.top_p})")
        if any(s == "" for s in self.stop):
            raise BadInput("stop strings must not be empty")


@dataclass
class Generation:
    """One prompt's continuation: `tokens` generated (EOS excluded), `text` decoded (cut before a stop
    string), why it ended, and the wall time from its batch's start to its last token."""

    tokens: list[int]
    text: str
    finish: str  # one of FINISH_REASONS
    tokens_in: int
    latency_s: float
    batch_rows: int

    @property
    def tokens_out(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class Batching:
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS
    max_batch_rows: int = 64

    def __post_init__(self) -> None:
        if self.max_batch_tokens < 1 or self.max_batch_rows < 1:
            raise BadInput("max_batch_tokens and max_batch_rows must be at least 1")


# ---- devices ----


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" where torch sees a GPU, else "cpu"; other names unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """ "auto" -> bfloat16 (or float16) on a GPU, float32 on the CPU; BadInput for an unknown name."""
    if dtype not in DTYPES:
        raise BadInput(f"dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    if dtype != "auto":
        return dtype
    if not device.startswith("cuda"):
        return "float32"
    import torch

    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


# ---- the per-worker model cache ----

_MODELS: OrderedDict[str, LanguageModel] = OrderedDict()
_DIGESTS: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}
CACHE_STATS = {"loads": 0, "hits": 0}


def _stat_signature(folder: Path) -> tuple[tuple[str, int, int], ...]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return tuple((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def folder_digest(folder: Path) -> str:
    """sha256 of a model folder's file names, sizes and contents; hashed once per process while the files'
    sizes and mtimes stay the same."""
    folder = folder.resolve()
    signature = _stat_signature(folder)
    key = (str(folder), signature)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        for name, size, _ in signature:
            digest.update(f"{name}\0{size}\0".encode())
            with open(folder / name, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def cached_model(
    folder: Path, what: str, device: str = "cpu", dtype: str = "auto"
) -> tuple[LanguageModel, bool]:
    """The model and tokenizer of a Hugging Face folder, loaded once per process (keyed by the folder's
    digest, device and dtype); and whether this call was served from the cache. BadInput for a missing or
    corrupt folder."""
    from perfscale.llm import training

    if not folder.is_dir():
        raise BadInput(f"{what}: {folder} is not a folder holding a Hugging Face model")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    key = f"{folder_digest(folder)}:{device}:{dtype}"
    if key in _MODELS:
        _MODELS.move_to_end(key)
        CACHE_STATS["hits"] += 1
        return _MODELS[key], True
    lm = training.load_pretrained(folder, what)
    place(lm, device, dtype)
    CACHE_STATS["loads"] += 1
    _MODELS[key] = lm
    while len(_MODELS) > max(1, int(os.environ.get(CACHE_SIZE_ENV, "2"))):
        _MODELS.popitem(last=False)
    return lm, False


def place(lm: LanguageModel, device: str, dtype: str) -> None:
    """Move the model to `device` in `dtype` ("auto" resolved), in eval mode."""
    import torch

    device = resolve_device(device)
    lm.model.to(device=device, dtype=getattr(torch, resolve_dtype(dtype, device)))
    lm.model.eval()


def clear_cache() -> None:
    _MODELS.clear()
    CACHE_STATS.update(loads=0, hits=0)


# ---- batches ----


def check_prompts(
    lm: LanguageModel, prompts: Sequence[Sequence[int]], names: Sequence[str] | None = None
) -> None:
    """PromptTooLong for the first prompt leaving no room to generate in the context."""
    context = lm.context
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise BadInput(f"prompt {names[i] if names else i} has no tokens: start it with the BOS token")
        if len(prompt) >= context:
            name = names[i] if names else i
            raise PromptTooLong(
                f"prompt {name} takes {len(prompt)} tokens, more than the {context - 1} the model's "
                f"{context}-token context leaves for generating at least one token; shorten the prompt "
                "or use a model with a longer context"
            )


def plan_batches(lengths: Sequence[int], max_new_tokens: int, batching: Batching) -> list[list[int]]:
    """Prompt indices sorted by length (longest first, ties by index) and cut into batches: rows x (longest
    prompt + max_new_tokens) within max_batch_tokens (a prompt alone may exceed it), rows within
    max_batch_rows."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = (lengths[current[0]] if current else lengths[i]) + max_new_tokens
        if current and (
            len(current) >= batching.max_batch_rows or (len(current) + 1) * width > batching.max_batch_tokens
        ):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def generate(
    lm: LanguageModel,
    prompts: Sequence[Sequence[int]],
    seeds: Sequence[int],
    sampling: Sampling,
    batching: Batching | None = None,
    names: Sequence[str] | None = None,
) -> list[Generation]:
    """One `Generation` per prompt, in the prompts' order (see the module doc). The model must already sit
    on its device (`place`); `names` label prompts in errors."""
    import torch

    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    check_prompts(lm, prompts, names)
    batching = batching or Batching()
    out: list[Generation | None] = [None] * len(prompts)
    with torch.inference_mode():
        for batch in plan_batches([len(p) for p in prompts], sampling.max_new_tokens, batching):
            results = _generate_batch(lm, [prompts[i] for i in batch], [seeds[i] for i in batch], sampling)
            for i, result in zip(batch, results, strict=True):
                out[i] = result
    return [g for g in out if g is not None]


def _eos_ids(lm: LanguageModel) -> set[int]:
    ids = {lm.eos_id}
    configured = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, (list, tuple)):
        ids.update(int(i) for i in configured)
    return ids


def _generate_batch(
    lm: LanguageModel, prompts: list[Sequence[int]], seeds: list[int], sampling: Sampling
) -> list[Generation]:
    import torch

    start = time.perf_counter()
    model = lm.model
    device = next(model.parameters()).device
    rows, width, context = len(prompts), max(len(p) for p in prompts), lm.context
    ids = torch.full((rows, width), lm.pad_id, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for r, prompt in enumerate(prompts):
        ids[r, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[r, width - len(prompt) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    generators = [torch.Generator().manual_seed(int(s) % 2**63) for s in seeds]
    limits = [min(sampling.max_new_tokens, context - len(p)) for p in prompts]
    eos = _eos_ids(lm)
    tokens: list[list[int]] = [[] for _ in range(rows)]
    done: list[Generation | None] = [None] * rows
    active = list(range(rows))  # batch row -> prompt row
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = out.cache
    logits = out.logits[:, -1, :]
    while True:
        chosen = _draw(logits, [generators[r] for r in active], sampling)
        keep: list[int] = []
        for b, r in enumerate(active):
            token = chosen[b]
            finish = None
            if token in eos:
                finish = "eos"
            else:
                tokens[r].append(token)
                text = lm.decode(tokens[r]) if sampling.stop else ""
                if any(s in text for s in sampling.stop):
                    finish = "stop"
                elif len(tokens[r]) >= limits[r]:
                    finish = "length" if limits[r] == sampling.max_new_tokens else "context"
            if finish is None:
                keep.append(b)
                continue
            text = lm.decode(tokens[r])
            if finish == "stop":
                text = text[: min(text.find(s) for s in sampling.stop if s in text)]
            done[r] = Generation(tokens[r], text, finish, len(prompts[r]), time.perf_counter() - start, rows)
        if not keep:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, positions = mask[index], positions[index]
            active = [active[b] for b in keep]
            chosen = [chosen[b] for b in keep]
        step = torch.tensor([[t] for t in chosen], dtype=torch.long, device=device)
        mask = torch.cat([mask, torch.ones_like(step)], dim=1)
        positions = positions[:, -1:] + 1
        out = model(input_ids=step, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
        cache = out.cache
        logits = out.logits[:, -1, :]
    return [g for g in done if g is not None]


def _draw(logits: Any, generators: list[Any], sampling: Sampling) -> list[int]:
    """One token per row: greedy at temperature 0, else temperature / top-k / top-p and an inverse-CDF draw
    with one uniform from each row's own generator (per-row arithmetic only: batch-independent)."""
    import torch

    logits = logits.float()
    if sampling.temperature == 0:
        return [int(t) for t in logits.argmax(dim=-1).tolist()]
    logits = logits / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p < 1:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the tokens ranked above each one
        sorted_probs = sorted_probs.masked_fill(before >= sampling.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    probs = probs.double().cpu()
    cdf = probs.cumsum(dim=-1)
    uniforms = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
    targets = (uniforms * cdf[:, -1]).unsqueeze(1)
    picked = torch.searchsorted(cdf, targets, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)
    for row in range(len(generators)):  # a draw rounded onto the end: the last token with any mass
        while probs[row, picked[row]] == 0 and picked[row] > 0:
            picked[row] -= 1
    return [int(t) for t in picked.tolist()]
