"""`llm_classifier`: a causal language model with a sequence-classification head, fine-tuned on rows written
as text (perfscale.llm.classifier: the VU thesis's GPT-2 design), beside the classical models. The model
folder holds model.json and the Hugging Face folder `lm/` (config.json, model.safetensors, tokenizer files):
nothing is pickled. Classification only; CPU by default (deterministic given the seed and thread count)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from perfscale.extras import require
from perfscale.models.base import Hyperparameters, Predictor

LM_FOLDER = "lm"


class LLMClassifierHyper(Hyperparameters):
    base_model: str = Field("tiny", min_length=1, description="'tiny', 'smollm2' or a local HF folder")
    epochs: int = Field(8, ge=1, le=1000)
    batch_size: int = Field(16, ge=1)
    lr: float | None = Field(None, gt=0, le=1, description="AdamW rate (default 1e-3 tiny, 5e-5 pretrained)")
    max_length: int = Field(256, ge=8, description="the longest row, in tokens")
    float_digits: int = Field(4, ge=1, le=17)
    tiny_config: dict[str, Any] = Field(default_factory=dict)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    threads: int = Field(1, ge=1, le=256)


class LLMClassifierModel(Predictor):
    name = "llm_classifier"
    Hyper = LLMClassifierHyper
    hp: LLMClassifierHyper
    tasks = ("classification",)
    multi_output = False

    def _device(self) -> str:
        from perfscale.llm.inference import resolve_device

        return resolve_device(self.hp.device)

    def _texts(self, x: np.ndarray) -> list[str]:
        from perfscale.llm.classifier import row_texts

        return row_texts(self.features, x, self.hp.float_digits)

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        torch = require("llm", "torch", "the llm_classifier model")
        require("llm", "transformers", "the llm_classifier model")
        from perfscale.llm import classifier

        torch.set_num_threads(self.hp.threads)
        torch.manual_seed(self.seed)
        texts = self._texts(x)
        self.clf = classifier.build(self.hp.base_model, texts, len(self.classes), self.hp.tiny_config)
        lr = self.hp.lr or (1e-3 if self.hp.base_model == "tiny" else 5e-5)
        self.losses = classifier.fine_tune(
            self.clf,
            texts,
            y,
            epochs=self.hp.epochs,
            batch_size=self.hp.batch_size,
            lr=lr,
            max_length=self.hp.max_length,
            seed=self.seed,
            device=self._device(),
        )

    def _raw(self, x: np.ndarray) -> np.ndarray:
        import torch

        torch.set_num_threads(self.hp.threads)
        return self.clf.probabilities(self._texts(x), self.hp.max_length, self._device())

    def _save(self, folder: Path) -> dict[str, Any]:
        self.clf.save(folder / LM_FOLDER)
        return {"native": LM_FOLDER, "final_loss": self.losses[-1] if getattr(self, "losses", None) else None}

    def _load(self, folder: Path, state: dict[str, Any]) -> None:
        from perfscale.llm import classifier

        self.clf = classifier.load(folder / state["native"], f"the saved {self.name} model")
