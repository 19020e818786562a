"""Hyperparameters of the GReaT generator, checked when the generator is built (standard library only)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field, fields
from typing import Any

from perfscale.errors import BadInput

BASE_MODELS = ("tiny", "smollm2")
DEVICES = ("cpu", "cuda", "auto")
TINY_LR, PRETRAINED_LR = 1e-3, 5e-5


@dataclass(frozen=True)
class Params:
    """GReaT hyperparameters (defaults follow Borisov et al. where they apply: temperature 0.7).

    base_model: "tiny" (a GPT-2 built in code, char tokenizer), "smollm2" (SmolLM2-135M-Instruct, offline) or
        the path of a local Hugging Face causal-LM folder.
    epochs / steps: training length; `steps` (optimizer steps), when set, replaces `epochs`.
    batch_size, lr: training batch and AdamW learning rate (default 1e-3 for "tiny", which starts from
        random weights, 5e-5 for pretrained models), decayed linearly to 0.
    max_length: the longest token sequence (row plus start/end tokens) allowed; default the model's context.
    permutations: random column orders per training row (each a training sequence).
    temperature, top_k, top_p: sampling; top_k None means no top-k cut.
    max_new_tokens: the longest generated continuation; default 1.25 x the longest training row + 8 tokens
        (capped by what the prompt leaves of max_length): longer texts are not rows.
    sample_batch_size: rows generated per `generate` call.
    max_attempts: regeneration budget: a call wanting n rows generates at most max_attempts * n.
    float_digits: significant digits written for floats (default: the shortest exact repr); fewer digits
        give shorter rows, the fix for tables too wide for the context.
    max_train_seconds: stop training after this many seconds (a time-bounded campaign); the steps run are
        recorded in the model state.
    tiny_config: GPT-2 config overrides for base_model "tiny" (n_layer, n_head, n_embd, n_positions...).
    tiny_merges: BPE merges learnt from the training text for the "tiny" tokenizer (0: characters only).
    cache_dir: where "smollm2" is converted to (default $PERFSCALE_CACHE/models or ~/.cache/perfscale/models).
    device: "cpu" (default, deterministic), "cuda" or "auto" (cuda when available).
    torch_threads: torch's intra-op threads while fitting and sampling (restored after); default 1 for "tiny"
        (faster for a model that small, and immune to busy cores), torch's own setting otherwise.
    """

    base_model: str = "tiny"
    epochs: int = 20
    steps: int | None = None
    batch_size: int = 16
    lr: float | None = None
    max_length: int | None = None
    permutations: int = 1
    temperature: float = 0.7
    top_k: int | None = None
    top_p: float = 1.0
    max_new_tokens: int | None = None
    sample_batch_size: int = 64
    max_attempts: int = 10
    float_digits: int | None = None
    max_train_seconds: float | None = None
    tiny_config: dict[str, Any] = field(default_factory=dict)
    tiny_merges: int = 256
    cache_dir: str | None = None
    device: str = "cpu"
    torch_threads: int | None = None

    @classmethod
    def parse(cls, hyperparameters: dict[str, Any], generator: str) -> Params:
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(hyperparameters) - set(valid))
        if unknown:
            raise BadInput(f"unknown hyperparameters {unknown} for generator {generator!r}; valid: {valid}")
        params = cls(**hyperparameters)
        params._check(generator)
        return params

    @property
    def threads(self) -> int | None:
        if self.torch_threads is not None:
            return int(self.torch_threads)
        return 1 if self.base_model == "tiny" else None

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        return TINY_LR if self.base_model == "tiny" else PRETRAINED_LR

    def _check(self, generator: str) -> None:
        def bad(key: str, want: str) -> BadInput:
            return BadInput(f"{generator} hyperparameter {key!r} must be {want}, got {getattr(self, key)!r}")

        for key in ("epochs", "batch_size", "permutations", "sample_batch_size", "max_attempts"):
            if not _is_int(getattr(self, key), 1):
                raise bad(key, "a positive integer")
        for key in ("steps", "max_length", "top_k", "max_new_tokens", "torch_threads"):
            value = getattr(self, key)
            if value is not None and not _is_int(value, 1):
                raise bad(key, "a positive integer or null")
        if not _is_int(self.tiny_merges, 0):
            raise bad("tiny_merges", "a non-negative integer")
        if self.float_digits is not None and not (_is_int(self.float_digits, 1) and self.float_digits <= 17):
            raise bad("float_digits", "an integer in [1, 17] or null")
        for key in ("lr", "max_train_seconds"):
            if getattr(self, key) is not None and not _is_positive(getattr(self, key)):
                raise bad(key, "a positive number or null")
        if not _is_positive(self.temperature):
            raise bad("temperature", "a positive number")
        if not (_is_positive(self.top_p) and self.top_p <= 1):
            raise bad("top_p", "a number in (0, 1]")
        if not isinstance(self.base_model, str) or not self.base_model:
            raise bad("base_model", f"one of {BASE_MODELS} or the path of a local Hugging Face model folder")
        if not isinstance(self.tiny_config, dict):
            raise bad("tiny_config", "a mapping of GPT-2 config fields (n_layer, n_embd, n_positions...)")
        if self.cache_dir is not None and not isinstance(self.cache_dir, str):
            raise bad("cache_dir", "a folder path or null")
        if not isinstance(self.device, str) or not (
            self.device in DEVICES or self.device.startswith("cuda:")
        ):
            raise bad("device", f"one of {DEVICES} or cuda:<index>")


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


def _is_positive(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < value < float("inf")
