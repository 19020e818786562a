"""PERFGEN's Dissimilarity score: principal angles between the PCA subspaces of the real and synthetic
tables, weighted, combined with a divergence between the two distributions.

The paper defines Dissimilarity = exp(sum_i theta_i * lambda_i) over d* principal angles and says a KL term
is combined with it, but leaves open how d* is chosen, what lambda_i are, how the tables are scaled, which
KL is meant and how it is combined. Each open step is an option here (docs/metrics.md gives the rationale of
each choice and the study that picked the defaults):

* ``scaling`` (before PCA; every variant starts from `perfscale.tabular.encode.encode` fitted on the real
  table, the DCR encoding): ``dcr`` keeps it (numeric columns standardised, categorical one-hot / sqrt(2));
  ``standard`` also standardises every one-hot and missing-indicator column with its real mean/std;
  ``minmax`` maps every encoded column to [0, 1] by its real min/max. A real std or range of 0 counts as 1.
  Encoded columns constant over both tables together are dropped (they carry no information).
* ``d_star``: ``variance`` (smallest d whose real cumulative explained-variance ratio reaches `variance`),
  ``fixed`` (`dims`), ``elbow`` (the knee of the real cumulative explained-variance curve: the d farthest
  above the chord from (0, 0) to (rank, 1)), ``max`` (the larger of the real and synthetic `variance` d*).
  Always capped by min(real rows - 1, synthetic rows - 1, encoded columns, real rank).
* principal angles theta_1 <= ... <= theta_d* between the real and synthetic top-d* subspaces; directions
  missing from the synthetic span (its rank < d*) count as pi/2.
* ``weights``: ``none`` (distance = sqrt(sum theta^2), the plain geodesic distance on the Grassmannian),
  ``raw`` (sum theta_i * lambda_i, real eigenvalues as they are), ``normalised`` (real eigenvalues / their
  sum over d*), ``mean`` (mean of the normalised real and synthetic top-d* eigenvalues; a synthetic table
  with no variance counts as uniform). ``angle_term = exp(distance)``, the exponent capped at 700.
* ``kl`` (nats, >= 0): ``none`` (0); ``full`` (symmetric KL of Gaussians fitted to the whole encoded tables,
  both centred on the real mean); ``projected`` (the same on the tables projected on the real top-d* axes);
  ``columns`` (the `kl_divergence` metric's per-column mean over the columns not constant over both
  tables). Gaussian covariances get a ridge of 1e-6 times the mean real eigenvalue of the axes used.
* ``combination``: ``product`` = angle_term * (1 + kl_term); ``sum`` = angle_term + kl_term; ``angles`` =
  angle_term alone. Every rule gives 1 for identical tables.

Defaults (standard / variance 0.9 / mean / columns / product) are the variant with the best mean rank of
Spearman rho with ML efficacy over seven real tables (workflows/dissimilarity_study.yaml; numbers in
docs/metrics.md and benchmarks/results/dissimilarity_study.json).

Components: score, angle_term, kl_term, d_star, real_variance_explained, angle_1 .. angle_<d*>. With
``variants=True`` also ``variant/<scaling>/<d*>/<weights>/<kl>/<combination>``: the score of every variant of
`VARIANT_GRID` from one evaluation (one encoding and two SVDs per scaling, shared by all d*, weights and KL
choices).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Annotated, Literal, get_args

import numpy as np
import pandas as pd
from pydantic import Field

from perfscale.errors import BadInput
from perfscale.metrics.divergence import kl_divergence
from perfscale.metrics.registry import metric
from perfscale.tabular.encode import encode
from perfscale.tabular.meta import TableMeta

RIDGE = 1e-6  # relative to the mean real eigenvalue of the axes a Gaussian KL uses
MAX_EXPONENT = 700.0  # exp(700) ~ 1e304: raw eigenvalue weights on wide tables stay finite
VARIANT_PREFIX = "variant/"

Scaling = Literal["dcr", "standard", "minmax"]
DStar = Literal["variance", "fixed", "elbow", "max"]
Weights = Literal["none", "raw", "normalised", "mean"]
KL = Literal["none", "full", "projected", "columns"]
Combination = Literal["product", "sum", "angles"]
Fraction = Annotated[float, Field(gt=0, le=1)]
Dims = Annotated[int, Field(ge=1)]

SCALINGS: tuple[str, ...] = get_args(Scaling)
WEIGHTS: tuple[str, ...] = get_args(Weights)
KL_KINDS: tuple[str, ...] = get_args(KL)
COMBINATIONS: tuple[str, ...] = get_args(Combination)


@dataclass(frozen=True)
class Variant:
    """One way of computing the score; `name` is its component name without the prefix."""

    scaling: str
    d_star: str
    variance: float
    dims: int
    weights: str
    kl: str
    combination: str

    @property
    def d_label(self) -> str:
        return {
            "variance": f"var{self.variance:g}",
            "fixed": f"k{self.dims}",
            "elbow": "elbow",
            "max": f"max{self.variance:g}",
        }[self.d_star]

    @property
    def name(self) -> str:
        return f"{self.scaling}/{self.d_label}/{self.weights}/{self.kl}/{self.combination}"


def variant_grid(variance: float, dims: int) -> list[Variant]:
    """Every variant the study compares: 3 scalings x 6 d* rules (fixed `dims`; variance 0.8, 0.9, 0.95;
    elbow; max of both tables at `variance`) x 4 weightings x 7 (kl, combination) pairs. `angles` ignores
    the KL term and `product`/`sum` with no KL equal it, so kl `none` comes with `angles` only."""
    d_rules = [
        ("fixed", variance),
        ("variance", 0.8),
        ("variance", 0.9),
        ("variance", 0.95),
        ("elbow", variance),
    ]
    d_rules.append(("max", variance))
    pairs = [("none", "angles")] + [(k, c) for k in KL_KINDS[1:] for c in ("product", "sum")]
    return [
        Variant(scaling, rule, v, dims, weights, kl, combination)
        for scaling, (rule, v), weights, (kl, combination) in itertools.product(
            SCALINGS, d_rules, WEIGHTS, pairs
        )
    ]


# ---------------------------------------------------------------- linear algebra


def informative(real: np.ndarray, synth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop encoded columns that take one single value over both tables together."""
    both = np.vstack([real, synth])
    keep = (both != both[0]).any(axis=0)
    return real[:, keep], synth[:, keep]


def rescale(real: np.ndarray, synth: np.ndarray, scaling: str) -> tuple[np.ndarray, np.ndarray]:
    """The DCR-encoded tables rescaled column by column with statistics of the real table only."""
    if scaling == "dcr":
        return real, synth
    if scaling == "standard":
        shift = real.mean(axis=0)
        spread = real.std(axis=0, ddof=1) if len(real) > 1 else np.zeros(real.shape[1])
    else:
        shift = real.min(axis=0)
        spread = real.max(axis=0) - shift
    spread = np.where(np.isfinite(spread) & (spread > 0), spread, 1.0)
    return (real - shift) / spread, (synth - shift) / spread


def pca(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(principal axes as rows, eigenvalues (ddof=1), numerical rank) of x centred on its own mean."""
    centred = np.where(np.ptp(x, axis=0) > 0, x - x.mean(axis=0), 0.0)  # exact 0 for constant columns
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    tol = s[0] * max(centred.shape) * np.finfo("float64").eps if s.size else 0.0
    rank = int((s > tol).sum()) if s.size and s[0] > 0 else 0
    eigen = s**2 / max(len(x) - 1, 1)
    eigen[rank:] = 0.0
    return vt, eigen, rank


def variance_dims(eigen: np.ndarray, variance: float) -> int:
    """The smallest d whose cumulative explained-variance ratio reaches `variance` (eigen not all 0)."""
    ratios = np.cumsum(eigen) / eigen.sum()
    return int(np.searchsorted(ratios, variance - 1e-12) + 1)


def elbow_dims(eigen: np.ndarray) -> int:
    """The knee of the cumulative explained-variance curve over the rank r: the d maximising
    cumulative_ratio(d) - d / r (the point farthest above the chord from (0, 0) to (r, 1))."""
    r = int((eigen > 0).sum())
    if r <= 1:
        return 1
    ratios = np.cumsum(eigen[:r]) / eigen[:r].sum()
    return int(np.argmax(ratios - np.arange(1, r + 1) / r)) + 1


def principal_angles(real_axes: np.ndarray, synth_axes: np.ndarray, d: int) -> np.ndarray:
    """d ascending angles between the spans of the rows of real_axes (d rows) and synth_axes (<= d rows);
    directions missing from the synthetic span are orthogonal (pi/2)."""
    from scipy.linalg import (
        subspace_angles,  # scipy is imported where a metric runs, not when a study is planned
    )

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
    from scipy.linalg import (  # scipy is imported where a metric runs, not when a study is planned
        cho_factor,
        cho_solve,
    )

    d = a.shape[1]
    cov_a = np.atleast_2d(np.cov(a, rowvar=False)) + ridge * np.eye(d)
    cov_b = np.atleast_2d(np.cov(b, rowvar=False)) + ridge * np.eye(d)
    delta = (b.mean(axis=0) - a.mean(axis=0))[:, None]
    fa, fb = cho_factor(cov_a), cho_factor(cov_b)
    inv_a_b, inv_b_a = cho_solve(fa, cov_b), cho_solve(fb, cov_a)
    mahalanobis = float((delta.T @ (cho_solve(fa, delta) + cho_solve(fb, delta))).item())
    value = 0.25 * (np.trace(inv_b_a) + np.trace(inv_a_b) + mahalanobis - 2 * d)
    return max(0.0, float(value))


# ---------------------------------------------------------------- one scaling, every variant


@dataclass
class Subspaces:
    """The PCA of both tables under one scaling, and what the variants computed from it so far."""

    real: np.ndarray
    synth: np.ndarray
    real_axes: np.ndarray
    real_eigen: np.ndarray
    real_rank: int
    synth_axes: np.ndarray
    synth_eigen: np.ndarray
    synth_rank: int
    cap: int

    def dims(self, v: Variant) -> int:
        eigen = self.real_eigen[: self.real_rank]
        if v.d_star == "fixed":
            d = v.dims
        elif v.d_star == "elbow":
            d = elbow_dims(eigen)
        else:
            d = variance_dims(eigen, v.variance)
            if v.d_star == "max" and self.synth_rank:
                d = max(d, variance_dims(self.synth_eigen[: self.synth_rank], v.variance))
        return min(d, self.cap)

    def angles(self, d: int) -> np.ndarray:
        return principal_angles(self.real_axes[:d], self.synth_axes[: min(d, self.synth_rank)], d)

    def distance(self, angles: np.ndarray, weights: str) -> float:
        d = len(angles)
        real = self.real_eigen[:d]
        if weights == "none":
            return float(np.sqrt(np.sum(angles**2)))
        if weights == "raw":
            return float(angles @ real)
        normalised = real / real.sum()
        if weights == "normalised":
            return float(angles @ normalised)
        synth = self.synth_eigen[:d]
        synth = synth / synth.sum() if synth.sum() > 0 else np.full(d, 1.0 / d)
        return float(angles @ (normalised + synth) / 2)

    def gaussian_kl(self, d: int | None) -> float:
        """Symmetric Gaussian KL of both tables centred on the real mean, projected on the real top-d axes
        (None: the full encoded tables)."""
        mean = self.real.mean(axis=0)
        real, synth = self.real - mean, self.synth - mean
        if d is None:
            positive = self.real_eigen[: self.real_rank]
            return gaussian_symmetric_kl(real, synth, RIDGE * float(positive.mean()))
        project = self.real_axes[:d].T
        return gaussian_symmetric_kl(
            real @ project, synth @ project, RIDGE * float(self.real_eigen[:d].mean())
        )


def subspaces(x_real: np.ndarray, x_synth: np.ndarray, scaling: str) -> Subspaces:
    real, synth = informative(*rescale(x_real, x_synth, scaling))
    if real.shape[1] == 0:
        raise BadInput(
            "dissimilarity: every column is constant (one value over both tables); nothing to compare"
        )
    real_axes, real_eigen, real_rank = pca(real)
    if real_rank == 0:
        raise BadInput(
            "dissimilarity: every real row is the same, so the real table has no principal subspace; "
            "give a real table whose rows vary"
        )
    synth_axes, synth_eigen, synth_rank = pca(synth)
    cap = min(len(real) - 1, len(synth) - 1, real.shape[1], real_rank)
    return Subspaces(real, synth, real_axes, real_eigen, real_rank, synth_axes, synth_eigen, synth_rank, cap)


def columns_kl_term(real: pd.DataFrame, synth: pd.DataFrame, meta: TableMeta) -> float:
    """The `kl_divergence` metric's mean over the columns that are not constant over both tables together
    (a constant column has KL 0 and would only dilute the mean, as it would not move the angles)."""
    both = pd.concat([real[list(meta.columns)], synth[list(meta.columns)]], ignore_index=True)
    varying = [c for c in meta.columns if both[c].astype(object).nunique(dropna=False) > 1]
    if not varying:
        return 0.0
    sub = TableMeta(columns={c: meta.columns[c] for c in varying})
    return kl_divergence(real[varying], synth[varying], sub)["mean"]


def combine(angle_term: float, kl_term: float, combination: str) -> float:
    if combination == "product":
        return angle_term * (1.0 + kl_term)
    if combination == "sum":
        return angle_term + kl_term
    return angle_term


class _Cache:
    """Angles, distances and KL terms shared between variants of one evaluation."""

    def __init__(self, x_real: np.ndarray, x_synth: np.ndarray, columns_kl: float | None) -> None:
        self.x_real, self.x_synth, self.columns_kl = x_real, x_synth, columns_kl
        self.spaces: dict[str, Subspaces] = {}
        self.angle_sets: dict[tuple[str, int], np.ndarray] = {}
        self.kls: dict[tuple[str, str, int], float] = {}

    def space(self, scaling: str) -> Subspaces:
        if scaling not in self.spaces:
            self.spaces[scaling] = subspaces(self.x_real, self.x_synth, scaling)
        return self.spaces[scaling]

    def angles(self, scaling: str, d: int) -> np.ndarray:
        if (scaling, d) not in self.angle_sets:
            self.angle_sets[(scaling, d)] = self.space(scaling).angles(d)
        return self.angle_sets[(scaling, d)]

    def kl(self, scaling: str, kind: str, d: int) -> float:
        if kind == "none":
            return 0.0
        if kind == "columns":
            assert self.columns_kl is not None
            return self.columns_kl
        key = (scaling, kind, d if kind == "projected" else 0)
        if key not in self.kls:
            self.kls[key] = self.space(scaling).gaussian_kl(d if kind == "projected" else None)
        return self.kls[key]

    def terms(self, v: Variant) -> tuple[int, np.ndarray, float, float]:
        """(d*, angles, angle_term, kl_term) of variant v."""
        space = self.space(v.scaling)
        d = space.dims(v)
        angles = self.angles(v.scaling, d)
        angle_term = math.exp(min(space.distance(angles, v.weights), MAX_EXPONENT))
        return d, angles, angle_term, self.kl(v.scaling, v.kl, d)


@metric(
    "dissimilarity",
    higher_is_better=False,
    description="PERFGEN Dissimilarity: exp(weighted principal angles between the real and synthetic PCA "
    "subspaces) combined with a KL divergence; 1 = identical. Options pick each step the paper leaves open; "
    "variants=true adds every variant's score.",
)
def dissimilarity(
    real: pd.DataFrame,
    synth: pd.DataFrame,
    meta: TableMeta,
    *,
    scaling: Scaling = "standard",
    d_star: DStar = "variance",
    variance: Fraction = 0.9,
    dims: Dims = 3,
    weights: Weights = "mean",
    kl: KL = "columns",
    combination: Combination = "product",
    variants: bool = False,
) -> dict[str, float]:
    for label, table in (("real", real), ("synthetic", synth)):
        if len(table) < 2:
            raise BadInput(
                f"dissimilarity: the {label} table has {len(table)} row; PCA subspaces need at least 2 rows"
            )
    chosen = Variant(scaling, d_star, float(variance), int(dims), weights, kl, combination)
    grid = variant_grid(float(variance), int(dims)) if variants else []
    needs_columns = any(v.kl == "columns" for v in [chosen, *grid])
    columns_kl = columns_kl_term(real, synth, meta) if needs_columns else None
    cache = _Cache(*encode([real, synth], meta), columns_kl)
    d, angles, angle_term, kl_term = cache.terms(chosen)
    space = cache.space(scaling)
    out = {
        "score": combine(angle_term, kl_term, combination),
        "angle_term": angle_term,
        "kl_term": kl_term,
        "d_star": float(d),
        "real_variance_explained": min(1.0, float(space.real_eigen[:d].sum() / space.real_eigen.sum())),
    }
    out.update({f"angle_{i + 1}": float(a) for i, a in enumerate(angles)})
    for v in grid:
        _, _, v_angle, v_kl = cache.terms(v)
        out[VARIANT_PREFIX + v.name] = combine(v_angle, v_kl, v.combination)
    return out
