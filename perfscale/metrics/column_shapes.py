"""SDMetrics-compatible Column Shapes: KSComplement / TVComplement per column and their mean.

Matches `sdmetrics.reports.single_table.QualityReport`'s "Column Shapes" property when numerical and integer
columns are declared sdtype "numerical" (datetime: "datetime", categorical/boolean: the same sdtype):

* missing values are dropped before comparing;
* numeric values are rounded to 14 decimals first (SDMetrics' `MAX_DECIMALS`), datetimes compared as int64 ns;
* TVComplement gives categories seen only in the synthetic column a real pseudo-count of 1e-6 (SDMetrics'
  regularisation), which also slightly renormalises the real frequencies;
* a column with no non-missing value in either table has no defined score: it is left out of the components
  and of the mean (SDMetrics reports NaN and its mean skips it). If every column is left out, BadInput.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from perfscale.errors import BadInput
from perfscale.metrics.columns import category_counts, continuous_values, with_aggregate
from perfscale.metrics.registry import metric
from perfscale.tabular.meta import ColumnType, TableMeta

SDMETRICS_DECIMALS = 14  # sys.float_info.dig - 1, SDMetrics' KSComplement rounding
SDMETRICS_PSEUDO_COUNT = 1e-6  # SDMetrics' get_frequencies regularisation of synthetic-only categories


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov D: max |ECDF_a - ECDF_b| over the pooled values (as scipy's ks_2samp)."""
    a, b = np.sort(a), np.sort(b)
    pooled = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, pooled, side="right") / a.size
    cdf_b = np.searchsorted(b, pooled, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def ks_complement(real: np.ndarray, synth: np.ndarray) -> float:
    """1 - KS D of two non-empty arrays of non-missing values; float values are rounded as SDMetrics does."""
    if real.dtype.kind == "f":
        real, synth = np.round(real, SDMETRICS_DECIMALS), np.round(synth, SDMETRICS_DECIMALS)
    return 1.0 - ks_statistic(real, synth)


def tv_complement(real_counts: np.ndarray, synth_counts: np.ndarray) -> float:
    """1 - total variation distance of category frequencies given aligned counts (non-empty on both sides)."""
    real_counts = real_counts + SDMETRICS_PSEUDO_COUNT * ((real_counts == 0) & (synth_counts > 0))
    f_real, f_synth = real_counts / real_counts.sum(), synth_counts / synth_counts.sum()
    return 1.0 - 0.5 * float(np.abs(f_synth - f_real).sum())


def column_shape(real: pd.Series, synth: pd.Series, ctype: ColumnType) -> float | None:
    """KSComplement (numerical, integer, datetime) or TVComplement (categorical, boolean); None: undefined."""
    if ctype in ("categorical", "boolean"):
        r, s = category_counts(real, synth, keep_missing=False)
        return tv_complement(r, s) if r.sum() > 0 and s.sum() > 0 else None
    r, s = continuous_values(real, ctype), continuous_values(synth, ctype)
    return ks_complement(r, s) if r.size and s.size else None


@metric(
    "column_shapes",
    higher_is_better=True,
    description="SDMetrics Column Shapes: KSComplement (numeric, datetime) or TVComplement (categorical) per "
    "column, 'score' = mean; 1 = identical marginals.",
    per="column",
    aggregate="score",
)
def column_shapes(real: pd.DataFrame, synth: pd.DataFrame, meta: TableMeta) -> dict[str, float]:
    scores = {name: column_shape(real[name], synth[name], col.type) for name, col in meta.columns.items()}
    defined = {name: s for name, s in scores.items() if s is not None}
    if not defined:
        raise BadInput("column_shapes: no column has non-missing values in both the real and synthetic table")
    return with_aggregate(defined, "score")
