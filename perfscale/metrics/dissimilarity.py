"""PERFGEN's Dissimilarity score: principal angles between the PCA subspaces of the real and synthetic
tables, weighted by the real eigenvalues, combined with a KL divergence between the two distributions.

The paper leaves several steps open; the exact choices made here (also in docs/metrics.md):

1. Encoding: `perfscale.tabular.encode.encode` fitted on the real table and applied to both: numeric/datetime
   columns standardised with the real mean/std (std 0 -> 1), a missing value put at the real mean plus a 0/1
   missing-indicator column when any table has a missing value there; categorical/boolean columns one-hot over
   the union of categories (missing is a category), scaled by 1/sqrt(2). Encoded columns that take a single
   value over both tables together carry no information and are dropped.
2. PCA of each table separately: SVD of the table centred on its own mean. Explained-variance ratios of the
   real PCA give d* = the smallest d whose cumulative ratio reaches `variance` (default 0.9), or `dims` when
   given; d* is capped by min(real rows - 1, synthetic rows - 1, encoded columns, real rank), and the same d*
   is used for both tables.
3. Principal angles theta_1 <= ... <= theta_d* (radians, in [0, pi/2]; sign-insensitive by construction)
   between the real top-d* subspace and the synthetic one (scipy.linalg.subspace_angles). When the synthetic
   table spans fewer than d* directions (its numerical rank r_s < d*, e.g. it is constant), the d* - r_s
   missing directions count as orthogonal: theta = pi/2.
4. Weights lambda_i = the real PCA's top-d* eigenvalues normalised to sum 1 (descending), paired with the
   ascending angles index by index; ``angle_term = exp(sum_i theta_i * lambda_i)`` is in [1, e^(pi/2)].
5. ``kl_term``: with ``kl="gaussian"`` (default) the symmetric KL, 0.5 * (KL(P||Q) + KL(Q||P)) in nats, of
   Gaussians fitted (mean, covariance with ddof=1) to both tables projected on the REAL top-d* axes after
   centring on the real mean, so a mean shift counts. Both covariances get a ridge of 1e-6 times the mean real
   eigenvalue on the diagonal, so a degenerate synthetic table gives a large but finite value (of order 1e6).
   With ``kl="columns"`` it is the mean of the `kl_divergence` metric's per-column symmetric KL instead.
6. ``score = angle_term * (1 + kl_term)``: 1 for identical tables, larger = more dissimilar.

Components: score, angle_term, kl_term, d_star, real_variance_explained (cumulative ratio at d*),
angle_1 .. angle_<d*>.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np
import pandas as pd
from scipy.linalg import cho_factor, cho_solve, subspace_angles

from perfscale.errors import BadInput
from perfscale.metrics.columns import is_int
from perfscale.metrics.divergence import kl_divergence
from perfscale.metrics.registry import metric
from perfscale.tabular.encode import encode
from perfscale.tabular.meta import TableMeta

DEFAULT_VARIANCE = 0.9
RIDGE = 1e-6  # relative to the mean real eigenvalue of the kept components
KL = Literal["gaussian", "columns"]
KL_KINDS: tuple[str, ...] = get_args(KL)


def informative(real: np.ndarray, synth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop encoded columns that take one single value over both tables together."""
    both = np.vstack([real, synth])
    keep = (both != both[0]).any(axis=0)
    return real[:, keep], synth[:, keep]


def pca(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(principal axes as rows, eigenvalues (ddof=1), numerical rank) of x centred on its own mean."""
    centred = np.where(np.ptp(x, axis=0) > 0, x - x.mean(axis=0), 0.0)  # exact 0 for constant columns
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    tol = s[0] * max(centred.shape) * np.finfo("float64").eps if s.size else 0.0
    rank = int((s > tol).sum()) if s.size and s[0] > 0 else 0
    return vt, s**2 / max(len(x) - 1, 1), rank


def choose_dims(eigen: np.ndarray, cap: int, variance: float, dims: int | None) -> int:
    """d*: `dims` if given, else the smallest d whose cumulative explained variance reaches `variance`."""
    if dims is not None:
        return min(int(dims), cap)
    ratios = np.cumsum(eigen) / eigen.sum()
    d = int(np.searchsorted(ratios, variance - 1e-12) + 1)
    return min(d, cap)


def principal_angles(real_axes: np.ndarray, synth_axes: np.ndarray, d: int) -> np.ndarray:
    """d ascending angles between the spans of the rows of real_axes (d rows) and synth_axes (<= d rows);
    directions missing from the synthetic span are orthogonal (pi/2)."""
    angles = np.full(d, math.pi / 2)
    if len(synth_axes):
        found = np.sort(subspace_angles(real_axes.T, synth_axes.T))
        angles[: found.size] = np.clip(found, 0.0, math.pi / 2)
    return angles


def gaussian_symmetric_kl(a: np.ndarray, b: np.ndarray, ridge: float) -> float:
    """0.5 * (KL(N_a||N_b) + KL(N_b||N_a)) of Gaussians fitted to the rows of a and b, covariances + ridge*I.

    The log-determinants cancel in the symmetric sum: 0.25 * (tr(B^-1 A) + tr(A^-1 B) + dm' (A^-1 + B^-1) dm
    - 2d).
    """
    d = a.shape[1]
    cov_a = np.atleast_2d(np.cov(a, rowvar=False)) + ridge * np.eye(d)
    cov_b = np.atleast_2d(np.cov(b, rowvar=False)) + ridge * np.eye(d)
    delta = (b.mean(axis=0) - a.mean(axis=0))[:, None]
    fa, fb = cho_factor(cov_a), cho_factor(cov_b)
    inv_a_b, inv_b_a = cho_solve(fa, cov_b), cho_solve(fb, cov_a)
    mahalanobis = float((delta.T @ (cho_solve(fa, delta) + cho_solve(fb, delta))).item())
    value = 0.25 * (np.trace(inv_b_a) + np.trace(inv_a_b) + mahalanobis - 2 * d)
    return max(0.0, float(value))


def _check_options(variance: float, dims: int | None, kl: str) -> None:
    if isinstance(variance, bool) or not isinstance(variance, (int, float)) or not 0 < variance <= 1:
        raise BadInput(f"dissimilarity: variance must be a number in (0, 1], not {variance!r}")
    if dims is not None and (not is_int(dims) or dims < 1):
        raise BadInput(f"dissimilarity: dims must be a positive integer or null, not {dims!r}")
    if kl not in KL_KINDS:
        raise BadInput(f"dissimilarity: kl must be one of {list(KL_KINDS)}, not {kl!r}")


@metric(
    "dissimilarity",
    higher_is_better=False,
    description="PERFGEN Dissimilarity: exp(sum of principal angles between the real and synthetic PCA "
    "subspaces weighted by real eigenvalues) * (1 + symmetric Gaussian KL on the real principal axes); "
    "1 = identical.",
)
def dissimilarity(
    real: pd.DataFrame,
    synth: pd.DataFrame,
    meta: TableMeta,
    *,
    variance: float = DEFAULT_VARIANCE,
    dims: int | None = None,
    kl: KL = "gaussian",
) -> dict[str, float]:
    _check_options(variance, dims, kl)
    for label, table in (("real", real), ("synthetic", synth)):
        if len(table) < 2:
            raise BadInput(
                f"dissimilarity: the {label} table has {len(table)} row; PCA subspaces need at least 2 rows"
            )
    x_real, x_synth = informative(*encode([real, synth], meta))
    if x_real.shape[1] == 0:
        raise BadInput(
            "dissimilarity: every column is constant (one value over both tables); nothing to compare"
        )
    real_axes, real_eigen, real_rank = pca(x_real)
    if real_rank == 0:
        raise BadInput(
            "dissimilarity: every real row is the same, so the real table has no principal subspace; "
            "give a real table whose rows vary"
        )
    synth_axes, _, synth_rank = pca(x_synth)
    cap = min(len(x_real) - 1, len(x_synth) - 1, x_real.shape[1], real_rank)
    d = choose_dims(real_eigen[:real_rank], cap, float(variance), dims)
    angles = principal_angles(real_axes[:d], synth_axes[: min(d, synth_rank)], d)
    weights = real_eigen[:d] / real_eigen[:d].sum()
    angle_term = math.exp(float(angles @ weights))
    if kl == "gaussian":
        mean = x_real.mean(axis=0)
        project = real_axes[:d].T
        ridge = RIDGE * float(real_eigen[:d].mean())
        kl_term = gaussian_symmetric_kl((x_real - mean) @ project, (x_synth - mean) @ project, ridge)
    else:
        kl_term = kl_divergence(real, synth, meta)["mean"]
    out = {
        "score": angle_term * (1.0 + kl_term),
        "angle_term": angle_term,
        "kl_term": kl_term,
        "d_star": float(d),
        "real_variance_explained": min(1.0, float(real_eigen[:d].sum() / real_eigen.sum())),
    }
    out.update({f"angle_{i + 1}": float(a) for i, a in enumerate(angles)})
    return out
