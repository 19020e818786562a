"""A small torch MLP: standardised inputs, ReLU hidden layers, softmax (classes) or linear outputs
(regression, several targets at once, targets standardised too). Saved as a `state_dict` in safetensors;
the standardisation lives in model.json. Training is full-batch Adam for `epochs`, seeded, on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from perfscale.extras import require
from perfscale.models.base import Hyperparameters, Predictor

NATIVE_FILE = "mlp.safetensors"


class MLPHyper(Hyperparameters):
    hidden: list[int] = Field([64, 64], min_length=1, max_length=8)
    epochs: int = Field(300, ge=1, le=100_000)
    lr: float = Field(0.003, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(1024, ge=1)
    threads: int = Field(1, ge=1, le=256)


class MLPModel(Predictor):
    name = "mlp"
    Hyper = MLPHyper
    hp: MLPHyper

    def _network(self, n_in: int) -> Any:
        torch = require("synth", "torch", "the mlp model")

        layers: list[Any] = []
        for width in self.hp.hidden:
            layers += [torch.nn.Linear(n_in, width), torch.nn.ReLU()]
            n_in = width
        layers.append(torch.nn.Linear(n_in, self.n_outputs))
        return torch.nn.Sequential(*layers)

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        torch = require("synth", "torch", "the mlp model")

        torch.set_num_threads(self.hp.threads)
        torch.manual_seed(self.seed)
        self.x_mean, self.x_scale = _stats(x)
        xt = torch.tensor((x - self.x_mean) / self.x_scale, dtype=torch.float32)
        if self.task == "classification":
            yt = torch.tensor(y, dtype=torch.int64)
            loss_fn: Any = torch.nn.CrossEntropyLoss()
            self.y_mean, self.y_scale = np.zeros(1), np.ones(1)
        else:
            self.y_mean, self.y_scale = _stats(y)
            yt = torch.tensor((y - self.y_mean) / self.y_scale, dtype=torch.float32)
            loss_fn = torch.nn.MSELoss()
        self.net = self._network(x.shape[1])
        opt = torch.optim.Adam(self.net.parameters(), lr=self.hp.lr, weight_decay=self.hp.weight_decay)
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.hp.epochs):
            for idx in torch.randperm(len(xt), generator=gen).split(self.hp.batch_size):
                opt.zero_grad()
                loss_fn(self.net(xt[idx]), yt[idx]).backward()
                opt.step()
        self.net.eval()

    def _raw(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.net(torch.tensor((x - self.x_mean) / self.x_scale, dtype=torch.float32))
        if self.task == "classification":
            return torch.softmax(out, dim=1).double().numpy()
        return out.double().numpy() * self.y_scale + self.y_mean

    def _save(self, folder: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(folder / NATIVE_FILE))
        stats = {k: getattr(self, k).tolist() for k in ("x_mean", "x_scale", "y_mean", "y_scale")}
        return {"native": NATIVE_FILE, "n_in": len(self.features), **stats}

    def _load(self, folder: Path, state: dict[str, Any]) -> None:
        from safetensors.torch import load_file

        for k in ("x_mean", "x_scale", "y_mean", "y_scale"):
            setattr(self, k, np.asarray(state[k], dtype=np.float64))
        self.net = self._network(state["n_in"])
        self.net.load_state_dict(load_file(str(folder / state["native"])))
        self.net.eval()


def _stats(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = a.std(axis=0)
    return a.mean(axis=0), np.where(scale > 0, scale, 1.0)
