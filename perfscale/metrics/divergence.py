"""Distribution divergences per column: symmetric KL, standardised Wasserstein-1 and Jensen-Shannon.

Rules (all deterministic, none can produce NaN/inf on inputs that pass `check_tables`):

* `kl_divergence` (nats): 0.5 * (KL(P||Q) + KL(Q||P)) per column, P real, Q synthetic, over a shared support.
  Numeric/datetime columns are binned on the real column's quantiles (default 20 bins: interior edges at the
  real 5%, 10%, ... 95% quantiles, duplicates merged, outer bins open-ended so synthetic values outside the
  real range land in the end bins) or, with ``binning="uniform"``, on `bins` equal-width bins over the range
  of the union of real and synthetic values. Categorical/boolean columns use the union of categories.
  Missing values form one extra bin/category (when either side has any). Frequencies are smoothed
  additively in probability space, p_i = (f_i + epsilon) / (1 + K * epsilon), K = size of the shared support,
  epsilon = 1e-6 by default, so a bin empty on one side costs at most ~log(1/epsilon) instead of infinity.
* `wasserstein`: scipy.stats.wasserstein_distance per numeric/datetime column on values divided by the real
  column's standard deviation (ddof=1), i.e. in units of real std; a real std that is 0 or undefined (one
  row) is replaced by 1 (raw units). Missing values are dropped; a column with no non-missing value on a side
  is left out.
* `jsd`: Jensen-Shannon divergence (not the distance: scipy's `jensenshannon(p, q, base=2) ** 2`) per
  categorical/boolean column over the union of categories, missing values as a category; in [0, 1].
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import pandas as pd
from scipy.special import rel_entr
from scipy.stats import wasserstein_distance

from perfscale.errors import BadInput
from perfscale.metrics.columns import (
    category_counts,
    continuous_columns,
    discrete_columns,
    is_int,
    with_aggregate,
)
from perfscale.metrics.registry import metric
from perfscale.tabular.encode import CONTINUOUS_TYPES, float_values
from perfscale.tabular.meta import ColumnType, TableMeta

DEFAULT_BINS = 20
DEFAULT_EPSILON = 1e-6
Binning = Literal["quantile", "uniform"]
BINNINGS: tuple[str, ...] = get_args(Binning)


def interior_edges(real: np.ndarray, synth: np.ndarray, bins: int, binning: str) -> np.ndarray:
    """Sorted inner bin edges for non-missing values; k edges make k + 1 bins (the outer ones open-ended)."""
    if binning == "quantile":
        if real.size == 0:
            return np.empty(0)
        return np.unique(np.quantile(real, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    both = np.concatenate([real, synth])
    lo, hi = (both.min(), both.max()) if both.size else (0.0, 0.0)
    return np.linspace(lo, hi, bins + 1)[1:-1] if hi > lo else np.empty(0)


def binned_counts(
    real: np.ndarray, synth: np.ndarray, bins: int, binning: str
) -> tuple[np.ndarray, np.ndarray]:
    """Aligned counts of two float arrays (NaN = missing) on shared bins, plus a missing bin if needed."""
    r_missing, s_missing = np.isnan(real), np.isnan(synth)
    edges = interior_edges(real[~r_missing], synth[~s_missing], bins, binning)
    missing_bin = edges.size + 1
    k = missing_bin + int(r_missing.any() or s_missing.any())

    def counts(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
        idx = np.where(missing, missing_bin, np.searchsorted(edges, np.nan_to_num(values), side="right"))
        return np.bincount(idx, minlength=k).astype("float64")

    return counts(real, r_missing), counts(synth, s_missing)


def smoothed(counts: np.ndarray, epsilon: float) -> np.ndarray:
    return (counts / counts.sum() + epsilon) / (1.0 + counts.size * epsilon)


def symmetric_kl(real_counts: np.ndarray, synth_counts: np.ndarray, epsilon: float) -> float:
    """0.5 * (KL(P||Q) + KL(Q||P)) in nats of additively smoothed frequencies."""
    p, q = smoothed(real_counts, epsilon), smoothed(synth_counts, epsilon)
    return 0.5 * float(rel_entr(p, q).sum() + rel_entr(q, p).sum())


def js_divergence(real_counts: np.ndarray, synth_counts: np.ndarray) -> float:
    """Jensen-Shannon divergence, base 2 (= scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2)."""
    p, q = real_counts / real_counts.sum(), synth_counts / synth_counts.sum()
    m = 0.5 * (p + q)
    return min(1.0, 0.5 * float(rel_entr(p, m).sum() + rel_entr(q, m).sum()) / np.log(2.0))


def _check_kl_options(bins: int, binning: str, epsilon: float) -> None:
    if not is_int(bins) or bins < 1:
        raise BadInput(f"kl_divergence: bins must be a positive integer, not {bins!r}")
    if binning not in BINNINGS:
        raise BadInput(f"kl_divergence: binning must be one of {list(BINNINGS)}, not {binning!r}")
    if not (isinstance(epsilon, (int, float)) and 0 < epsilon < 1):
        raise BadInput(f"kl_divergence: epsilon must be a number in (0, 1), not {epsilon!r}")


@metric(
    "kl_divergence",
    higher_is_better=False,
    description="Symmetric KL divergence (nats) per column on shared bins/categories with additive "
    "smoothing; 'mean' over columns; 0 = identical.",
    per="column",
    aggregate="mean",
)
def kl_divergence(
    real: pd.DataFrame,
    synth: pd.DataFrame,
    meta: TableMeta,
    *,
    bins: int = DEFAULT_BINS,
    binning: Binning = "quantile",
    epsilon: float = DEFAULT_EPSILON,
) -> dict[str, float]:
    _check_kl_options(bins, binning, epsilon)
    per_column = {}
    for name, col in meta.columns.items():
        if col.type in CONTINUOUS_TYPES:
            r, s = float_values(real[name], col.type), float_values(synth[name], col.type)
            r_counts, s_counts = binned_counts(r, s, int(bins), binning)
        else:
            r_counts, s_counts = category_counts(real[name], synth[name], keep_missing=True)
        per_column[name] = symmetric_kl(r_counts, s_counts, epsilon)
    return with_aggregate(per_column, "mean")


def standardised_wasserstein(real: np.ndarray, synth: np.ndarray) -> float | None:
    """W1 of non-missing values in real-std units (std 0/undefined: 1); None if a side has no value."""
    real, synth = real[~np.isnan(real)], synth[~np.isnan(synth)]
    if not (real.size and synth.size):
        return None
    scale = float(np.std(real, ddof=1)) if real.size > 1 else 0.0
    scale = scale if np.isfinite(scale) and scale > 0 else 1.0
    return float(wasserstein_distance(real / scale, synth / scale))


@metric(
    "wasserstein",
    higher_is_better=False,
    description="Wasserstein-1 distance per numeric/datetime column in units of the real column's std; "
    "'mean' over columns; 0 = identical.",
    per="column",
    aggregate="mean",
)
def wasserstein(real: pd.DataFrame, synth: pd.DataFrame, meta: TableMeta) -> dict[str, float]:
    per_column = {}
    for name in continuous_columns(meta):
        ctype: ColumnType = meta.columns[name].type
        value = standardised_wasserstein(float_values(real[name], ctype), float_values(synth[name], ctype))
        if value is not None:
            per_column[name] = value
    return with_aggregate(per_column, "mean")


@metric(
    "jsd",
    higher_is_better=False,
    description="Jensen-Shannon divergence (base 2, in [0, 1]) per categorical/boolean column, missing as a "
    "category; 'mean' over columns; 0 = identical.",
    per="column",
    aggregate="mean",
)
def jsd(real: pd.DataFrame, synth: pd.DataFrame, meta: TableMeta) -> dict[str, float]:
    per_column = {
        name: js_divergence(*category_counts(real[name], synth[name], keep_missing=True))
        for name in discrete_columns(meta)
    }
    return with_aggregate(per_column, "mean")
