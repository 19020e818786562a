"""SDMetrics-compatible Column Pair Trends: CorrelationSimilarity / ContingencySimilarity per column pair.

Reproduces `sdmetrics.reports.single_table.QualityReport`'s "Column Pair Trends" property (SDMetrics 0.32)
when numerical and integer columns are declared sdtype "numerical" (datetime: "datetime", categorical and
boolean: the same sdtype). Every pair of columns (meta order, ``itertools.combinations``) is scored:

* numeric/datetime x numeric/datetime: CorrelationSimilarity, ``1 - |r_real - r_synth| / 2`` with Pearson r
  (``coefficient="spearman"``: Spearman rho) on the rows where both values are present (pairwise complete);
  datetimes as nanoseconds;
* categorical/boolean x categorical/boolean: ContingencySimilarity, ``1 - TVD`` of the two normalised 2-D
  contingency tables (``1 - 0.5 * sum |p_real - p_synth|`` over the union of the cells); a missing value is
  a category of its own (SDMetrics groups with ``dropna=False``);
* mixed pairs: ContingencySimilarity after discretising the numeric column the way ColumnPairTrends does:
  ``np.digitize`` on ``np.histogram_bin_edges`` (10 equal-width bins) of the column's non-missing values,
  fitted on EACH TABLE SEPARATELY (the real and synthetic bins have different edges; bin labels 1..11 are
  compared as they are). np.digitize puts the maximum and missing values both in label 11. This is
  SDMetrics' behaviour, reproduced on purpose so that the scores agree.

Which pairs count (QualityReport's thresholds, ``DEFAULT_REAL_CORRELATION_THRESHOLD`` = 0.5 and
``DEFAULT_REAL_ASSOCIATION_THRESHOLD`` = 0.3, options `correlation_threshold` / `association_threshold`):

* a correlation pair counts only if ``|r_real| > correlation_threshold`` (strictly: with threshold 0 an
  exactly uncorrelated real pair is left out, as SDMetrics returns NaN for it);
* a contingency pair counts only if the real table's Cramer's V (scipy's ``association(method="cramer")``,
  no continuity correction, on the real contingency table with empty rows/columns removed) is
  ``> association_threshold``; with threshold 0 every contingency pair counts (V is not computed). A real
  contingency table with fewer than 2 distinct values on a side has no V and the pair is left out.
* undefined correlations are left out: a column that is constant (one distinct non-missing value) in
  either table (SDMetrics raises ConstantInputError), or r undefined on the pairwise-complete rows (fewer
  than 2 rows, zero variance there).

Components: ``"<a>|<b>"`` for each pair that counts, and ``score`` = their mean (QualityReport averages the
same pairs). When no pair counts (single column, only weakly associated columns), the metric returns no
component; SDMetrics reports NaN there.

Subsampling: SDMetrics' reports subsample ContingencySimilarity pairs to ``num_rows_subsample`` = 50,000 rows
per table (unseeded, a fresh sample per pair) when either table is larger. Here the default is no
subsampling (exact, deterministic); ``num_rows_subsample=N`` draws one seeded sample of N rows per table
(`seed`) used by every contingency pair, after discretising on the full tables as SDMetrics does. The
correlation pairs always use every row, as in SDMetrics.

Cost: one correlation matrix per table for all numeric pairs (BLAS when no value is missing, else pandas'
pairwise-complete ``DataFrame.corr``) and one ``np.bincount`` over combined codes per other pair, O(rows)
memory each (contingency tables with more cells than ``max(2**20, 4 * rows)`` are counted with ``np.unique``
instead of a dense bincount).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from perfscale.errors import BadInput
from perfscale.metrics.columns import is_int, with_aggregate
from perfscale.metrics.registry import metric
from perfscale.tabular.encode import CONTINUOUS_TYPES, category_codes, float_values
from perfscale.tabular.meta import TableMeta

CORRELATION_THRESHOLD = 0.5  # sdmetrics.reports.utils.DEFAULT_REAL_CORRELATION_THRESHOLD
ASSOCIATION_THRESHOLD = 0.3  # sdmetrics.reports.utils.DEFAULT_REAL_ASSOCIATION_THRESHOLD
SDMETRICS_NUM_ROWS_SUBSAMPLE = 50_000  # sdmetrics.reports.utils.DEFAULT_NUM_ROWS_SUBSAMPLE (for reference)
Coefficient = Literal["pearson", "spearman"]
COEFFICIENTS: tuple[str, ...] = get_args(Coefficient)
DENSE_CELLS = 2**20  # contingency tables up to max(this, 4 * rows) cells are counted with a dense bincount


def correlation_matrix(x: np.ndarray, coefficient: str = "pearson") -> np.ndarray:
    """Correlations between the columns of x (n, p; NaN = missing), pairwise complete; NaN where undefined."""
    if x.shape[1] == 0:
        return np.empty((0, 0))
    if np.isnan(x).any():
        return pd.DataFrame(x).corr(method=coefficient, min_periods=2).to_numpy()
    if coefficient == "spearman":
        x = rankdata(x, axis=0)
    centred = x - x.mean(axis=0)
    norms = np.sqrt(np.einsum("ij,ij->j", centred, centred))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (centred.T @ centred) / np.outer(norms, norms)
    return np.clip(r, -1.0, 1.0)


def constant_columns(x: np.ndarray) -> np.ndarray:
    """True for columns with exactly one distinct non-missing value (pandas' nunique() == 1)."""
    if x.shape[0] == 0:
        return np.zeros(x.shape[1], dtype=bool)
    return np.fmin.reduce(x, axis=0) == np.fmax.reduce(x, axis=0)  # NaN-skipping; all-NaN: NaN != NaN


def sdmetrics_bins(values: np.ndarray) -> np.ndarray:
    """ColumnPairTrends' discretisation of one table's column (float, NaN = missing): labels 1..11."""
    return np.digitize(values, np.histogram_bin_edges(values[~np.isnan(values)]))


@dataclass(frozen=True)
class Cells:
    """The non-empty cells of a real/synthetic pair of 2-D contingency tables."""

    real: np.ndarray  # counts in the real table
    synth: np.ndarray
    rows: np.ndarray  # row (first column's code) of each cell
    cols: np.ndarray


def contingency_cells(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], ka: int, kb: int
) -> Cells:
    """Counts of each (a, b) code combination in the real (index 0) and synthetic (index 1) tables."""
    key_r = a[0].astype(np.int64) * kb + b[0]
    key_s = a[1].astype(np.int64) * kb + b[1]
    cells = ka * kb
    if cells <= max(DENSE_CELLS, 4 * (key_r.size + key_s.size)):
        count_r = np.bincount(key_r, minlength=cells)
        count_s = np.bincount(key_s, minlength=cells)
        keys = np.flatnonzero((count_r > 0) | (count_s > 0))
        count_r, count_s = count_r[keys], count_s[keys]
    else:  # too many cells for a dense table: count the combinations that occur
        keys, inverse = np.unique(np.concatenate([key_r, key_s]), return_inverse=True)
        count_r = np.bincount(inverse[: key_r.size], minlength=keys.size)
        count_s = np.bincount(inverse[key_r.size :], minlength=keys.size)
    return Cells(count_r.astype("float64"), count_s.astype("float64"), keys // kb, keys % kb)


def contingency_similarity(cells: Cells) -> float:
    """1 - total variation distance between the normalised real and synthetic contingency tables."""
    return 1.0 - 0.5 * float(np.abs(cells.real / cells.real.sum() - cells.synth / cells.synth.sum()).sum())


def cramers_v(cells: Cells) -> float | None:
    """Cramer's V of the real table (no continuity correction); None with < 2 distinct values on a side."""
    present = cells.real > 0
    counts, rows, cols = cells.real[present], cells.rows[present], cells.cols[present]
    _, row_idx = np.unique(rows, return_inverse=True)
    _, col_idx = np.unique(cols, return_inverse=True)
    row_tot, col_tot = np.bincount(row_idx, weights=counts), np.bincount(col_idx, weights=counts)
    smaller = min(row_tot.size, col_tot.size)
    if smaller < 2:
        return None
    # chi2 / n = sum O^2 / (row * col) - 1 (the empty cells contribute nothing to the sum)
    phi2 = float((counts**2 / (row_tot[row_idx] * col_tot[col_idx])).sum()) - 1.0
    return math.sqrt(max(phi2, 0.0) / (smaller - 1))


@dataclass(frozen=True)
class PairOptions:
    correlation_threshold: float = CORRELATION_THRESHOLD
    association_threshold: float = ASSOCIATION_THRESHOLD
    coefficient: str = "pearson"
    num_rows_subsample: int | None = None
    seed: int = 0


def check_pair_options(name: str, options: PairOptions) -> PairOptions:
    """Validate the options (`name`: the metric, for messages); the coefficient is lower-cased."""
    for field in ("correlation_threshold", "association_threshold"):
        value = getattr(options, field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise BadInput(f"{name}: {field} must be a number in [0, 1], not {value!r}")
    coefficient = options.coefficient.lower() if isinstance(options.coefficient, str) else options.coefficient
    if coefficient not in COEFFICIENTS:
        raise BadInput(
            f"{name}: coefficient must be one of {list(COEFFICIENTS)}, not {options.coefficient!r}"
        )
    n = options.num_rows_subsample
    if n is not None and (not is_int(n) or n < 1):
        raise BadInput(f"{name}: num_rows_subsample must be a positive integer or null, not {n!r}")
    if not is_int(options.seed):
        raise BadInput(f"{name}: seed must be an integer, not {options.seed!r}")
    return PairOptions(
        float(options.correlation_threshold),
        float(options.association_threshold),
        coefficient,
        n,
        int(options.seed),
    )


def _subsample(n_real: int, n_synth: int, options: PairOptions) -> tuple[np.ndarray, np.ndarray] | None:
    """Seeded row subsets for the contingency pairs, or None when SDMetrics would not subsample."""
    n = options.num_rows_subsample
    if n is None or max(n_real, n_synth) <= n:
        return None
    rng = np.random.default_rng(options.seed)
    return (
        np.sort(rng.choice(n_real, min(n, n_real), replace=False)),
        np.sort(rng.choice(n_synth, min(n, n_synth), replace=False)),
    )


def pair_scores(
    real: pd.DataFrame, synth: pd.DataFrame, meta: TableMeta, options: PairOptions
) -> dict[str, float]:
    """The score of every column pair that counts (see the module docstring), keyed "<a>|<b>"."""
    continuous = [n for n, c in meta.columns.items() if c.type in CONTINUOUS_TYPES]
    values = {
        n: (float_values(real[n], meta.columns[n].type), float_values(synth[n], meta.columns[n].type))
        for n in continuous
    }
    position = {n: i for i, n in enumerate(continuous)}
    if continuous:
        x_r = np.column_stack([values[n][0] for n in continuous])
        x_s = np.column_stack([values[n][1] for n in continuous])
        corr_r, corr_s = (
            correlation_matrix(x_r, options.coefficient),
            correlation_matrix(x_s, options.coefficient),
        )
        constant = constant_columns(x_r) | constant_columns(x_s)
        del x_r, x_s

    subsets = _subsample(len(real), len(synth), options)
    codes: dict[str, tuple[tuple[np.ndarray, np.ndarray], int]] = {}

    def codes_of(name: str) -> tuple[tuple[np.ndarray, np.ndarray], int]:
        if name not in codes:
            if name in position:
                pair, k = (sdmetrics_bins(values[name][0]), sdmetrics_bins(values[name][1])), 12
            else:
                (r, s), k = category_codes(real[name], synth[name], keep_missing=True)
                pair = (r, s)
            if subsets is not None:
                pair = (pair[0][subsets[0]], pair[1][subsets[1]])
            if k < 2**31:  # halves the memory of the cached codes
                pair = (pair[0].astype(np.int32), pair[1].astype(np.int32))
            codes[name] = (pair, k)
        return codes[name]

    scores = {}
    for a, b in itertools.combinations(meta.columns, 2):
        if a in position and b in position:
            i, j = position[a], position[b]
            r, s = corr_r[i, j], corr_s[i, j]
            if constant[i] or constant[j] or not (np.isfinite(r) and np.isfinite(s)):
                continue
            if abs(r) > options.correlation_threshold:
                scores[f"{a}|{b}"] = 1.0 - abs(r - s) / 2.0
            continue
        (codes_a, ka), (codes_b, kb) = codes_of(a), codes_of(b)
        cells = contingency_cells(codes_a, codes_b, ka, kb)
        if options.association_threshold > 0:
            v = cramers_v(cells)
            if v is None or not v > options.association_threshold:
                continue
        scores[f"{a}|{b}"] = contingency_similarity(cells)
    return scores


@metric(
    "column_pair_trends",
    higher_is_better=True,
    per="pair",
    aggregate="score",
    description="SDMetrics Column Pair Trends: CorrelationSimilarity (numeric pairs) or "
    "ContingencySimilarity (other pairs) per pair whose real association passes QualityReport's "
    "thresholds; 'score' = mean.",
)
def column_pair_trends(
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
        "column_pair_trends",
        PairOptions(correlation_threshold, association_threshold, coefficient, num_rows_subsample, seed),
    )
    return with_aggregate(pair_scores(real, synth, meta, options), "score")
