"""SDMetrics QualityReport score: the mean of Column Shapes and Column Pair Trends.

Agrees with ``sdmetrics.reports.single_table.QualityReport`` (0.32) on the same data and sdtypes (numerical
and integer columns as "numerical") to floating-point precision, as long as SDMetrics does not subsample:
it draws an unseeded 50,000-row sample per table for every ContingencySimilarity pair when a table has more
than 50,000 rows, so on larger tables its Column Pair Trends score carries sampling noise (of order
1/sqrt(50,000) per pair, a few 1e-3 at most, much less on the mean) that this metric does not have (its
default is no subsampling; `num_rows_subsample` mimics SDMetrics with a seeded sample).

Components: ``column_shapes`` and ``column_pair_trends`` (the two property scores, see
`perfscale.metrics.column_shapes` and `perfscale.metrics.pair_trends` for every rule) and ``score`` = their
mean. When no column pair passes the thresholds (or the table has a single column), Column Pair Trends is
undefined (SDMetrics: NaN) and, as QualityReport's ``nanmean``, ``score`` = ``column_shapes`` and the
``column_pair_trends`` component is left out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from perfscale.metrics.column_shapes import column_shapes
from perfscale.metrics.pair_trends import (
    ASSOCIATION_THRESHOLD,
    CORRELATION_THRESHOLD,
    Coefficient,
    PairOptions,
    check_pair_options,
    pair_scores,
)
from perfscale.metrics.registry import metric
from perfscale.tabular.meta import TableMeta


@metric(
    "sdmetrics_quality",
    higher_is_better=True,
    description="SDMetrics QualityReport: mean of the Column Shapes and Column Pair Trends scores "
    "(components column_shapes, column_pair_trends, score); 1 = identical.",
)
def sdmetrics_quality(
    real: pd.DataFrame,
    synth: pd.DataFrame,
    meta: TableMeta,
    *,
    correlation_threshold: float = CORRELATION_THRESHOLD,
    association_threshold: float = ASSOCIATION_THRESHOLD,
    coefficient: Coefficient = "pearson",
    num_rows_subsample: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    options = check_pair_options(
        "sdmetrics_quality",
        PairOptions(correlation_threshold, association_threshold, coefficient, num_rows_subsample, seed),
    )
    out = {"column_shapes": column_shapes(real, synth, meta)["score"]}
    pairs = pair_scores(real, synth, meta, options)
    if pairs:
        out["column_pair_trends"] = float(np.mean(list(pairs.values())))
    out["score"] = float(np.mean(list(out.values())))
    return out
