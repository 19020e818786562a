"""Gaussian + multinomial diffusion of TabDDPM (Kotelnikov et al. 2023), written after the paper and its
reference code (itself after Ho et al. 2020 and Hoogeboom et al. 2021).

Numbers: Gaussian diffusion with a cosine schedule; the denoiser predicts the noise (eps) and the loss is its
mean squared error. Categories: multinomial diffusion in log space (log one-hot rows; each step keeps the
category with probability alpha_t or redraws it uniformly); the denoiser predicts logits of x_0 and the
loss is the KL between the true posterior q(x_{t-1}|x_t,x_0) and the model's, up-weighted by 1/p(t) = T
(decoder NLL at t = 0), plus the prior KL, divided by the number of categorical columns.

Every random draw takes an explicit `torch.Generator`: no global random state is read or changed.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from perfscale.generators.tabddpm import rows as row_draws
from perfscale.generators.tabddpm.rows import RowPart

# |x_0| <= X0_BOUND in model space: scikit-learn's normal-output quantile transform clips to
# norm.ppf(1 - 1e-7) = 5.199. Predicted x_0 is clipped to it while sampling (`clip_denoised` of
# guided-diffusion; the reference TabDDPM code leaves it off): near t = T the eps -> x_0 conversion multiplies
# the model's error by 1 / sqrt(alpha_bar_T) (~1700 with the cosine schedule), which, unclipped, blows the
# samples up unless the model predicts the noise almost exactly (short fits never do).
X0_BOUND = 5.2
LOG_ZERO_CLAMP = 1e-30  # log one-hot rows hold log(1e-30) where the one-hot is 0, as in the reference code


def cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """The cosine schedule of Nichol & Dhariwal (2021): alpha_bar(t) = cos((t + 0.008) / 1.008 * pi/2)^2."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    steps = np.arange(num_timesteps, dtype=np.float64)
    return np.array(
        [min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta) for i in steps]
    )


def _log_1_min_exp(a: torch.Tensor) -> torch.Tensor:
    return torch.log(1 - a.exp() + 1e-40)


@dataclass
class Diffusion:
    """Schedule tensors and the forward/reverse steps of both diffusions; build with `Diffusion.create`."""

    num_timesteps: int
    num_numeric: int
    num_classes: list[int]
    device: torch.device
    # Gaussian schedule (float32, one value per timestep)
    sqrt_alpha: torch.Tensor
    sqrt_beta: torch.Tensor
    sqrt_ab: torch.Tensor
    sqrt_1m_ab: torch.Tensor
    sqrt_recip_ab: torch.Tensor
    sqrt_recipm1_ab: torch.Tensor
    coef1: torch.Tensor
    coef2: torch.Tensor
    model_log_variance: torch.Tensor
    # multinomial schedule (float32, log space)
    log_alpha: torch.Tensor
    log_1_min_alpha: torch.Tensor
    log_cumprod_alpha: torch.Tensor
    log_1_min_cumprod_alpha: torch.Tensor
    log_k: torch.Tensor  # log(K) of each one-hot position's column
    slices: list[slice]

    @classmethod
    def create(
        cls, num_timesteps: int, num_numeric: int, num_classes: list[int], device: torch.device
    ) -> Diffusion:
        betas = torch.tensor(cosine_betas(num_timesteps), dtype=torch.float64)
        alphas = 1 - betas
        ab = torch.cumprod(alphas, 0)
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        posterior_variance = betas * (1 - ab_prev) / (1 - ab)
        # the model's variance: the posterior's at t = 0 (where it is 0 otherwise), beta_t after
        model_variance = torch.cat([posterior_variance[1:2], betas[1:]])
        log_alpha = alphas.log()
        log_cumprod_alpha = log_alpha.cumsum(0)
        offsets = np.cumsum([0, *num_classes])
        log_k = torch.tensor(np.repeat(num_classes, num_classes), dtype=torch.float64).log()

        def f32(x: torch.Tensor) -> torch.Tensor:
            return x.to(dtype=torch.float32, device=device)

        return cls(
            num_timesteps=num_timesteps,
            num_numeric=num_numeric,
            num_classes=list(num_classes),
            device=device,
            sqrt_alpha=f32(alphas.sqrt()),
            sqrt_beta=f32(betas.sqrt()),
            sqrt_ab=f32(ab.sqrt()),
            sqrt_1m_ab=f32((1 - ab).sqrt()),
            sqrt_recip_ab=f32((1 / ab).sqrt()),
            sqrt_recipm1_ab=f32((1 / ab - 1).sqrt()),
            coef1=f32(betas * ab_prev.sqrt() / (1 - ab)),
            coef2=f32((1 - ab_prev) * alphas.sqrt() / (1 - ab)),
            model_log_variance=f32(model_variance.log()),
            log_alpha=f32(log_alpha),
            log_1_min_alpha=f32(_log_1_min_exp(log_alpha)),
            log_cumprod_alpha=f32(log_cumprod_alpha),
            log_1_min_cumprod_alpha=f32(_log_1_min_exp(log_cumprod_alpha)),
            log_k=f32(log_k),
            slices=[slice(int(a), int(b)) for a, b in itertools.pairwise(offsets)],
        )

    @property
    def num_onehot(self) -> int:
        return int(sum(self.num_classes))

    # ---- Gaussian part -----------------------------------------------------------------------------------

    def gaussian_q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) for the given noise."""
        return _at(self.sqrt_ab, t) * x0 + _at(self.sqrt_1m_ab, t) * noise

    def gaussian_q_step(
        self, x_prev: torch.Tensor, t: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """x_t ~ q(x_t | x_{t-1}): one forward step (RePaint's resampling goes back up with it)."""
        noise = torch.randn(x_prev.shape, generator=generator, device=x_prev.device)
        return _at(self.sqrt_alpha, t) * x_prev + _at(self.sqrt_beta, t) * noise

    def gaussian_p_sample(
        self, eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """x_{t-1} ~ p(x_{t-1} | x_t) from the predicted noise (no noise added at t = 0)."""
        x0 = _at(self.sqrt_recip_ab, t) * x_t - _at(self.sqrt_recipm1_ab, t) * eps
        x0 = x0.clamp(-X0_BOUND, X0_BOUND)
        mean = _at(self.coef1, t) * x0 + _at(self.coef2, t) * x_t
        noise = torch.randn(x_t.shape, generator=generator, device=x_t.device)
        nonzero = (t != 0).float().unsqueeze(1)
        return mean + nonzero * (0.5 * _at(self.model_log_variance, t)).exp() * noise

    # ---- multinomial part --------------------------------------------------------------------------------

    def log_onehot(self, codes: torch.Tensor) -> torch.Tensor:
        """Category indices [rows, columns] -> log one-hot rows [rows, sum(K)]."""
        if not self.num_classes:
            return torch.zeros((codes.shape[0], 0), device=codes.device)
        onehot = torch.cat([F.one_hot(codes[:, i], k) for i, k in enumerate(self.num_classes)], dim=1)
        return onehot.float().clamp(min=LOG_ZERO_CLAMP).log()

    def codes(self, log_x: torch.Tensor) -> torch.Tensor:
        """Log one-hot rows -> category indices."""
        if not self.num_classes:
            return torch.zeros((log_x.shape[0], 0), dtype=torch.long, device=log_x.device)
        return torch.stack([log_x[:, s].argmax(dim=1) for s in self.slices], dim=1)

    def _q_pred(self, log_x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log q(x_t | x_0)."""
        return torch.logaddexp(
            log_x0 + _at(self.log_cumprod_alpha, t), _at(self.log_1_min_cumprod_alpha, t) - self.log_k
        )

    def _q_pred_one_step(self, log_x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log q(x_t | x_{t-1}) as a function of x_{t-1} (the transition is symmetric)."""
        return torch.logaddexp(log_x_t + _at(self.log_alpha, t), _at(self.log_1_min_alpha, t) - self.log_k)

    def _q_posterior(self, log_x0: torch.Tensor, log_x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log q(x_{t-1} | x_t, x_0), normalised per column; x_0 itself at t = 0."""
        log_ev = self._q_pred(log_x0, (t - 1).clamp(min=0))
        log_ev = torch.where((t == 0).unsqueeze(1), log_x0, log_ev)
        unnormed = log_ev + self._q_pred_one_step(log_x_t, t)
        return unnormed - self._sliced_logsumexp(unnormed)

    def _sliced_logsumexp(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [torch.logsumexp(x[:, s], dim=1, keepdim=True).expand(-1, s.stop - s.start) for s in self.slices],
            dim=1,
        )

    def _log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.log_softmax(logits[:, s], dim=1) for s in self.slices], dim=1)

    def _p_pred(self, logits: torch.Tensor, log_x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log p(x_{t-1} | x_t): the posterior given the model's x_0 distribution."""
        return self._q_posterior(self._log_softmax(logits), log_x_t, t)

    def sample_categorical(
        self, log_probs: torch.Tensor, generator: torch.Generator, part: RowPart | None = None
    ) -> torch.Tensor:
        """One draw per column (Gumbel-max), as log one-hot rows (`part`: see rows.py)."""
        uniform = row_draws.rand(tuple(log_probs.shape), generator, log_probs.device, part)
        gumbel = -torch.log(-torch.log(uniform + 1e-30) + 1e-30)
        return self.log_onehot(self.codes(gumbel + log_probs))

    def multinomial_q_sample(
        self, log_x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator, part: RowPart | None = None
    ) -> torch.Tensor:
        """x_t ~ q(x_t | x_0), as log one-hot rows."""
        return self.sample_categorical(self._q_pred(log_x0, t), generator, part)

    def multinomial_q_step(
        self, log_x_prev: torch.Tensor, t: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """x_t ~ q(x_t | x_{t-1}), as log one-hot rows."""
        return self.sample_categorical(self._q_pred_one_step(log_x_prev, t), generator)

    def multinomial_p_sample(
        self, logits: torch.Tensor, log_x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        return self.sample_categorical(self._p_pred(logits, log_x_t, t), generator)

    def uniform_log_x(self, rows: int, generator: torch.Generator) -> torch.Tensor:
        """x_T: a uniform draw of every category."""
        return self.sample_categorical(torch.zeros((rows, self.num_onehot), device=self.device), generator)

    # ---- losses ------------------------------------------------------------------------------------------

    def gaussian_loss(
        self, eps_pred: torch.Tensor, noise: torch.Tensor, rows_sum: bool = False
    ) -> torch.Tensor:
        """Batch mean (`rows_sum`: the sum over rows, for a rank's share of a global mean)."""
        per_row = ((eps_pred - noise) ** 2).mean(dim=1)
        return per_row.sum() if rows_sum else per_row.mean()

    def multinomial_loss(
        self,
        logits: torch.Tensor,
        log_x0: torch.Tensor,
        log_x_t: torch.Tensor,
        t: torch.Tensor,
        rows_sum: bool = False,
    ) -> torch.Tensor:
        """The vb_stochastic loss of the reference code: KL_t / p(t) + KL_prior, per column, batch mean
        (`rows_sum`: the sum over rows)."""
        log_true = self._q_posterior(log_x0, log_x_t, t)
        log_model = self._p_pred(logits, log_x_t, t)
        kl = (log_true.exp() * (log_true - log_model)).sum(dim=1)
        decoder_nll = -(log_x0.exp() * log_model).sum(dim=1)
        lt = torch.where(t == 0, decoder_nll, kl)
        last = torch.full_like(t, self.num_timesteps - 1)
        log_qT = self._q_pred(log_x0, last)
        kl_prior = (log_qT.exp() * (log_qT + self.log_k)).sum(dim=1)
        per_row = (lt * self.num_timesteps + kl_prior) / len(self.num_classes)
        return per_row.sum() if rows_sum else per_row.mean()


def _at(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """values[t] as a column, to broadcast over a batch's features."""
    return values[t].unsqueeze(1)
