"""Nichols, Yeom and Bhatele's VAE latent + DNN predictor: a variational autoencoder learns a latent code of
the (standardised) features, and a deep network predicts the targets from the latent means.

Training, all seeded, on the CPU, mini-batch Adam:
1. **Decoder calibration.** If `calibrate_on` names one-hot feature columns (the CPU machines' rows, e.g.
   `[on_quartz_cpu, on_H100_cpu]`), the VAE first trains `calibrate_epochs` on the rows where any of them is
   1, so the decoder is fitted to those machines' profiles before it sees the others.
2. **VAE on every row**, `vae_epochs`: reconstruction (MSE) + beta x KL, beta rising linearly from 0 to
   `kl_weight` over the first `kl_warmup` epochs (the KL weight schedule). In the last `regression_epochs`
   epochs a linear head on the latent means adds `regression_weight` x the target loss (MSE on standardised
   targets, or cross-entropy for classes), so the latent space keeps what predicts the targets.
3. **DNN** on the frozen latent means: `dnn_hidden` ReLU layers (Nichols: three of 1024), `dnn_epochs`.

Prediction encodes the features to their latent means and runs the DNN. Saved as one safetensors file
(encoder, decoder, head and DNN weights, prefixed) plus the scaler statistics in model.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from perfscale.errors import BadInput
from perfscale.extras import require
from perfscale.models.base import Hyperparameters, Predictor
from perfscale.models.mlp import _stats

NATIVE_FILE = "vae_dnn.safetensors"
PARTS = ("encoder", "mu", "logvar", "decoder", "head", "dnn")


class VAEDNNHyper(Hyperparameters):
    latent: int = Field(8, ge=1, le=512)
    vae_hidden: list[int] = Field([64], min_length=1, max_length=4)
    vae_epochs: int = Field(200, ge=1, le=100_000)
    kl_weight: float = Field(1.0, ge=0)
    kl_warmup: int = Field(50, ge=0, description="epochs over which the KL weight rises from 0")
    regression_epochs: int = Field(50, ge=0, description="last VAE epochs with the target loss mixed in")
    regression_weight: float = Field(1.0, ge=0)
    calibrate_on: list[str] = Field(default_factory=list, description="one-hot features of the CPU rows")
    calibrate_epochs: int = Field(50, ge=0)
    dnn_hidden: list[int] = Field([1024, 1024, 1024], min_length=1, max_length=8)
    dnn_epochs: int = Field(200, ge=1, le=100_000)
    lr: float = Field(0.001, gt=0, le=1)
    batch_size: int = Field(256, ge=1)
    threads: int = Field(1, ge=1, le=256)


def _mlp(torch: Any, n_in: int, hidden: list[int], n_out: int) -> Any:
    layers: list[Any] = []
    for width in hidden:
        layers += [torch.nn.Linear(n_in, width), torch.nn.ReLU()]
        n_in = width
    layers.append(torch.nn.Linear(n_in, n_out))
    return torch.nn.Sequential(*layers)


class VAEDNNModel(Predictor):
    """VAE latent features + a deep network (Nichols et al.), regression (multi-output) or classes."""

    name = "vae_dnn"
    Hyper = VAEDNNHyper
    hp: VAEDNNHyper

    def _build(self, n_in: int) -> dict[str, Any]:
        torch = require("synth", "torch", "the vae_dnn model")
        hp = self.hp
        width = hp.vae_hidden[-1]
        return {
            "encoder": _mlp(torch, n_in, hp.vae_hidden[:-1], width).append(torch.nn.ReLU()),
            "mu": torch.nn.Linear(width, hp.latent),
            "logvar": torch.nn.Linear(width, hp.latent),
            "decoder": _mlp(torch, hp.latent, list(reversed(hp.vae_hidden)), n_in),
            "head": torch.nn.Linear(hp.latent, self.n_outputs),
            "dnn": _mlp(torch, hp.latent, hp.dnn_hidden, self.n_outputs),
        }

    def _encode(self, xt: Any) -> tuple[Any, Any]:
        h = self.nets["encoder"](xt)
        return self.nets["mu"](h), self.nets["logvar"](h)

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        torch = require("synth", "torch", "the vae_dnn model")
        hp = self.hp
        torch.set_num_threads(hp.threads)
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        self.x_mean, self.x_scale = _stats(x)
        xt = torch.tensor((x - self.x_mean) / self.x_scale, dtype=torch.float32)
        if self.task == "classification":
            self.y_mean, self.y_scale = np.zeros(1), np.ones(1)
            yt = torch.tensor(y, dtype=torch.int64)
            target_loss: Any = torch.nn.CrossEntropyLoss()
        else:
            self.y_mean, self.y_scale = _stats(y)
            yt = torch.tensor((y - self.y_mean) / self.y_scale, dtype=torch.float32)
            target_loss = torch.nn.MSELoss()
        self.nets = self._build(x.shape[1])
        vae = [self.nets[k] for k in ("encoder", "mu", "logvar", "decoder", "head")]
        opt = torch.optim.Adam([p for n in vae for p in n.parameters()], lr=hp.lr)

        def vae_epochs(rows: Any, epochs: int, schedule: bool) -> None:
            for epoch in range(epochs):
                beta = (
                    hp.kl_weight * min(1.0, epoch / hp.kl_warmup)
                    if schedule and hp.kl_warmup
                    else hp.kl_weight
                )
                mix = schedule and epoch >= epochs - hp.regression_epochs and hp.regression_weight > 0
                for idx in rows[torch.randperm(len(rows), generator=gen)].split(hp.batch_size):
                    opt.zero_grad()
                    mu, logvar = self._encode(xt[idx])
                    z = mu + torch.randn(mu.shape, generator=gen) * torch.exp(0.5 * logvar)
                    recon = torch.nn.functional.mse_loss(self.nets["decoder"](z), xt[idx])
                    kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1))
                    loss = recon + beta * kl
                    if mix:
                        loss = loss + hp.regression_weight * target_loss(self.nets["head"](mu), yt[idx])
                    loss.backward()
                    opt.step()

        every = torch.arange(len(xt))
        if hp.calibrate_on and hp.calibrate_epochs:
            missing = [c for c in hp.calibrate_on if c not in self.features]
            if missing:
                raise BadInput(
                    f"vae_dnn: calibrate_on names {missing}, which are not features {self.features}"
                )
            cols = [self.features.index(c) for c in hp.calibrate_on]
            cpu = torch.tensor(np.flatnonzero((x[:, cols] > 0.5).any(axis=1)))
            if len(cpu) == 0:
                raise BadInput(
                    f"vae_dnn: no training row has any of {hp.calibrate_on} set; nothing to calibrate on"
                )
            vae_epochs(cpu, hp.calibrate_epochs, schedule=False)
        vae_epochs(every, hp.vae_epochs, schedule=True)
        with torch.no_grad():
            latent = self._encode(xt)[0]
        dnn = self.nets["dnn"]
        opt = torch.optim.Adam(dnn.parameters(), lr=hp.lr)
        for _ in range(hp.dnn_epochs):
            for idx in every[torch.randperm(len(every), generator=gen)].split(hp.batch_size):
                opt.zero_grad()
                target_loss(dnn(latent[idx]), yt[idx]).backward()
                opt.step()
        for net in self.nets.values():
            net.eval()

    def _raw(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            mu, _ = self._encode(torch.tensor((x - self.x_mean) / self.x_scale, dtype=torch.float32))
            out = self.nets["dnn"](mu)
        if self.task == "classification":
            return torch.softmax(out, dim=1).double().numpy()
        return out.double().numpy() * self.y_scale + self.y_mean

    def _save(self, folder: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        tensors = {
            f"{part}.{k}": v.contiguous() for part in PARTS for k, v in self.nets[part].state_dict().items()
        }
        save_file(tensors, str(folder / NATIVE_FILE))
        stats = {k: getattr(self, k).tolist() for k in ("x_mean", "x_scale", "y_mean", "y_scale")}
        return {"native": NATIVE_FILE, "n_in": len(self.features), **stats}

    def _load(self, folder: Path, state: dict[str, Any]) -> None:
        from safetensors.torch import load_file

        for k in ("x_mean", "x_scale", "y_mean", "y_scale"):
            setattr(self, k, np.asarray(state[k], dtype=np.float64))
        self.nets = self._build(state["n_in"])
        tensors = load_file(str(folder / state["native"]))
        for part in PARTS:
            prefix = f"{part}."
            self.nets[part].load_state_dict(
                {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            )
            self.nets[part].eval()
