"""The TabDDPM denoiser: an MLP on [numbers, log one-hot categories] plus a sinusoidal timestep embedding.

As in the reference code (MLPDiffusion): the input is projected to `dim_t` features, the timestep embedding
(sinusoidal, then Linear-SiLU-Linear) is added, and an MLP with ReLU hidden layers outputs one value per
input feature: the predicted noise for numbers, x_0 logits for the one-hot positions.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from perfscale.generators.tabddpm import rows as row_draws
from perfscale.generators.tabddpm.rows import RowPart

if TYPE_CHECKING:
    from perfscale.generators.tabddpm.config import TabDDPMConfig


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embeddings [len(t), dim] of integer timesteps: cosines then sines (Vaswani et al.)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float().unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class Denoiser(nn.Module):
    """eps / x_0-logits predictor. Dropout masks come from the generator passed to `forward`, not torch's
    global RNG, so a fit is a function of its seed (dropout is off in eval mode or without a generator)."""

    def __init__(self, d_in: int, d_layers: list[int], dim_t: int, dropout: float) -> None:
        super().__init__()
        self.dim_t, self.dropout = dim_t, dropout
        self.proj = nn.Linear(d_in, dim_t)
        self.time_embed = nn.Sequential(nn.Linear(dim_t, dim_t), nn.SiLU(), nn.Linear(dim_t, dim_t))
        widths = [dim_t, *d_layers]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.head = nn.Linear(widths[-1], d_in)

    def forward(
        self,
        x_num: torch.Tensor,
        log_x_cat: torch.Tensor,
        t: torch.Tensor,
        generator: torch.Generator | None = None,
        part: RowPart | None = None,
    ) -> torch.Tensor:
        """[noise prediction for x_num, x_0 logits for log_x_cat] for noisy inputs at timesteps `t` (`part`:
        these rows' place in a global batch, so dropout masks do not depend on the rank count)."""
        x = self.encode_input(x_num, log_x_cat)
        h = self.proj(x) + self.time_embed(timestep_embedding(t, self.dim_t))
        for layer in self.hidden:
            h = torch.relu(layer(h))
            if self.training and self.dropout > 0 and generator is not None:
                keep = row_draws.rand(tuple(h.shape), generator, h.device, part) >= self.dropout
                h = h * keep / (1 - self.dropout)
        return self.head(h)

    def encode_input(self, x_num: torch.Tensor, log_x_cat: torch.Tensor) -> torch.Tensor:
        """The MLP's input: numbers and the categories' one-hot rows (probabilities, not their logs).

        The reference code feeds the log one-hot rows, whose zeros are log(1e-30) = -69: inputs that large
        swamp the numbers early in training. On iris (600 steps, T = 50) the one-hot input lowered the final
        Gaussian loss from 0.89 to 0.38, brought the samples' spread (normal space) from 2.5-3.5x the data's
        to 0.85-0.95x, and raised class-imputation accuracy from 0.53 to 0.87. The diffusion itself stays in
        log space.
        """
        return torch.cat([x_num, log_x_cat.exp()], dim=1)


def build_denoiser(config: TabDDPMConfig, d_in: int, seed: int) -> Denoiser:
    """A freshly initialised denoiser for `d_in` model features; its weights depend on `seed` only.

    torch's layer initialisers draw from the global CPU generator, so they run under
    `torch.random.fork_rng` (the caller's global state is put back afterwards). The model is built on the CPU.
    """
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)  # CPU only: CUDA generators stay untouched
        return Denoiser(d_in, list(config.d_layers), config.dim_t, config.dropout)
