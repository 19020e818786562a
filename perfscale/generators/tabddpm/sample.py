"""TabDDPM's reverse process: plain sampling and RePaint-style inpainting of known cells.

Inpainting (Lugmayr et al. 2022, "RePaint"): before each reverse step t, the known cells of x_t are replaced
by a fresh draw of the forward process q(x_t | x_0) at their known values (Gaussian: sqrt(alpha_bar_t) x_0 +
sqrt(1 - alpha_bar_t) noise; categorical: a draw from the noised one-hot q(x_t | x_0)); the denoiser then
sees the known cells at the noise level it was trained on, and the unknown cells are generated conditioned
on them. After the last step the known cells are set to their exact values.

Resampling (RePaint's r, the `repaint_resample` hyperparameter; jump length 1 by default): each reverse
step t -> t-1 is done r times, going back up t-1 -> t with one forward step q(x_t | x_{t-1}) in between, so
the generated cells come to agree with the known ones. Without it the known cells barely steer the generated
ones when their information is destroyed early in the forward process (a known class is near-uniform noise at
the large t where the numbers take their shape). On iris (T = 50, 300 training steps) the mean generated
petal length given class "setosa" (real: 1.46; other classes 4.26 and 5.55) was 3.52 with r = 1 and 2.46 with
r = 10 (1.75 after 1500 training steps); jump lengths 5 and 10 did no better than 1.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from perfscale.generators.tabddpm.diffusion import Diffusion
from perfscale.generators.tabddpm.model import Denoiser


@dataclass
class Known:
    """Encoded known cells for inpainting: values and masks of both blocks (numpy, rows x columns)."""

    x_num: np.ndarray
    num_mask: np.ndarray
    x_cat: np.ndarray
    cat_mask: np.ndarray


@torch.no_grad()
def reverse_sample(
    denoiser: Denoiser,
    diffusion: Diffusion,
    rows: int,
    generator: torch.Generator,
    batch_size: int,
    known: Known | None = None,
    resample: int = 1,
    jump: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """`rows` draws as (numbers [rows, numeric], category indices [rows, categorical]) in model space.

    Rows are denoised `batch_size` at a time; the result is a function of the generator's state. With
    `known`, the known cells are pinned and the RePaint schedule `repaint_levels(T, resample, jump)` is run.
    """
    denoiser.eval()
    nums, cats = [], []
    for start in range(0, rows, batch_size):
        stop = min(start + batch_size, rows)
        part = None
        if known is not None:
            part = Known(*(a[start:stop] for a in (known.x_num, known.num_mask, known.x_cat, known.cat_mask)))
        x_num, x_cat = _reverse_chunk(denoiser, diffusion, stop - start, generator, part, resample, jump)
        nums.append(x_num)
        cats.append(x_cat)
    return np.concatenate(nums), np.concatenate(cats)


def _reverse_chunk(
    denoiser: Denoiser,
    diffusion: Diffusion,
    rows: int,
    generator: torch.Generator,
    known: Known | None,
    resample: int,
    jump: int,
) -> tuple[np.ndarray, np.ndarray]:
    device = diffusion.device
    x = torch.randn((rows, diffusion.num_numeric), generator=generator, device=device)
    log_c = diffusion.uniform_log_x(rows, generator)
    pin = None if known is None else _Pin(diffusion, known)
    levels = repaint_levels(diffusion.num_timesteps, resample if pin is not None else 1, jump)
    for level, following in itertools.pairwise(levels):
        if following > level:  # RePaint's resampling: back up one step, x_{level} -> x_{level+1}
            t = torch.full((rows,), level, dtype=torch.long, device=device)
            x, log_c = _forward_step(diffusion, x, log_c, t, generator)
            continue
        t = torch.full((rows,), level - 1, dtype=torch.long, device=device)
        if pin is not None:
            x, log_c = pin.noised(x, log_c, t, generator)
        x, log_c = _reverse_step(denoiser, diffusion, x, log_c, t, generator)
    if pin is not None:
        x, log_c = pin.exact(x, log_c)
    return x.cpu().numpy(), diffusion.codes(log_c).cpu().numpy()


def repaint_levels(num_timesteps: int, resample: int, jump: int) -> list[int]:
    """The noise levels visited, from T down to 0 (level L is x_L; model timestep index L - 1).

    RePaint's schedule: on the way down, at every `jump`-th level the process goes back up `jump` levels,
    `resample - 1` times per such level; with resample = 1 it is T, T-1, ..., 0.
    """
    jumps = {level: resample - 1 for level in range(0, num_timesteps - jump, jump)}
    level, levels = num_timesteps, [num_timesteps]
    while level >= 1:
        level -= 1
        levels.append(level)
        if jumps.get(level, 0) > 0:
            jumps[level] -= 1
            for _ in range(jump):
                level += 1
                levels.append(level)
    return levels


def _reverse_step(
    denoiser: Denoiser,
    diffusion: Diffusion,
    x: torch.Tensor,
    log_c: torch.Tensor,
    t: torch.Tensor,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_{t-1}, log c_{t-1}) ~ p( . | x_t, c_t)."""
    d = diffusion.num_numeric
    out = denoiser(x, log_c, t)
    x = diffusion.gaussian_p_sample(out[:, :d], x, t, generator)
    if diffusion.num_classes:
        log_c = diffusion.multinomial_p_sample(out[:, d:], log_c, t, generator)
    return x, log_c


def _forward_step(
    diffusion: Diffusion, x: torch.Tensor, log_c: torch.Tensor, t: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, log c_t) ~ q( . | x_{t-1}, c_{t-1})."""
    x = diffusion.gaussian_q_step(x, t, generator)
    if diffusion.num_classes:
        log_c = diffusion.multinomial_q_step(log_c, t, generator)
    return x, log_c


class _Pin:
    """The known cells of one chunk on the device, and how to put them into x_t."""

    def __init__(self, diffusion: Diffusion, known: Known) -> None:
        device = diffusion.device
        self.diffusion = diffusion
        self.x_num = torch.as_tensor(known.x_num, device=device)
        self.num_mask = torch.as_tensor(known.num_mask, device=device)
        self.log_cat = diffusion.log_onehot(torch.as_tensor(known.x_cat, device=device))
        repeats = torch.as_tensor(diffusion.num_classes, dtype=torch.long, device=device)
        self.cat_mask = torch.as_tensor(known.cat_mask, device=device).repeat_interleave(repeats, dim=1)

    def noised(
        self, x: torch.Tensor, log_c: torch.Tensor, t: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t with its known cells replaced by a draw of q(x_t | x_0) at their known values."""
        noise = torch.randn(self.x_num.shape, generator=generator, device=x.device)
        x = torch.where(self.num_mask, self.diffusion.gaussian_q_sample(self.x_num, t, noise), x)
        if self.diffusion.num_classes:
            log_known_t = self.diffusion.multinomial_q_sample(self.log_cat, t, generator)
            log_c = torch.where(self.cat_mask, log_known_t, log_c)
        return x, log_c

    def exact(self, x: torch.Tensor, log_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.where(self.num_mask, self.x_num, x), torch.where(self.cat_mask, self.log_cat, log_c)
