"""diff-CORR: how far the synthetic table's column associations are from the real table's.

The association matrix A (k x k over all columns, in `meta` order) follows dython's ``associations()``:

* numeric-numeric (numerical, integer, datetime as ns): Pearson r on the rows where both are present;
* numeric-categorical (categorical, boolean): correlation ratio eta of the numeric column given the categories
  (rows with the numeric value missing are dropped; a missing category is a category of its own), symmetric;
* categorical-categorical: Theil's U, asymmetric: ``A[i, j] = U(col_i | col_j) = I(col_i; col_j) / H(col_i)``,
  "the share of col_i's entropy explained by knowing col_j" (dython's ``theils_u(x=col_i, y=col_j)``); a
  missing value is a category. Both entries are kept, so both directions are compared.
* the diagonal is 1 in both tables (so it never contributes).

Undefined associations are 0 (dython gives NaN or, for Theil's U of a constant column, 1): a constant column
(or Pearson with fewer than 2 complete rows, or eta when all numeric values are missing) is associated with
nothing. A table with fewer than 2 rows raises BadInput (every column would be constant).

Components, D = A_real - A_synth: ``score`` = ||D||_F (Frobenius: every ordered pair, so a symmetric pair
counts twice, as the matrix holds it twice); per column ``c_j = sqrt((||D[j, :]||^2 + ||D[:, j]||^2) / 2)``
(= ||D[:, j]|| when D is symmetric; sum_j c_j^2 = ||D||_F^2), reported under the column's name;
``mean_column_l2`` = mean of c_j; ``max_abs_diff`` = max |D|. With ``pairs=True`` also ``pair:<a>|<b>`` =
|D[a, b]| for every unordered pair, and for the asymmetric categorical pairs both orders.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

from perfscale.errors import BadInput
from perfscale.metrics.columns import continuous_columns, discrete_columns
from perfscale.metrics.registry import metric
from perfscale.tabular.encode import category_codes, float_values
from perfscale.tabular.meta import TableMeta

AGGREGATES = ("score", "mean_column_l2", "max_abs_diff")


def pearson_matrix(x: np.ndarray) -> np.ndarray:
    """Pearson r between the columns of x (n, p), pairwise-complete when x has NaNs; undefined -> 0."""
    if x.shape[1] == 0:
        return np.empty((0, 0))
    if np.isnan(x).any():
        r = pd.DataFrame(x).corr(method="pearson", min_periods=2).to_numpy()
    else:
        centred = x - x.mean(axis=0)
        norms = np.sqrt((centred**2).sum(axis=0))
        with np.errstate(divide="ignore", invalid="ignore"):
            r = (centred.T @ centred) / np.outer(norms, norms)
    r = np.clip(np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0)
    np.fill_diagonal(r, 1.0)
    return r


def correlation_ratios(codes: np.ndarray, k: int, x: np.ndarray) -> np.ndarray:
    """eta of every column of x (n, p; NaN = missing) given one categorical column's codes in [0, k).

    eta^2 = sum_c n_c (mean_c - mean)^2 / sum_i (x_i - mean)^2 over the rows where x is present; 0 when the
    denominator is 0 (a constant numeric column) or no value is present.
    """
    present = ~np.isnan(x)
    values = np.where(present, x, 0.0)
    onehot = sparse.csr_matrix((np.ones(codes.size), (codes, np.arange(codes.size))), shape=(k, codes.size))
    counts = np.asarray(onehot @ present.astype("float64"))  # (k, p)
    sums = np.asarray(onehot @ values)
    n = counts.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = sums.sum(axis=0) / n
        group_means = sums / counts
        between = np.nansum(counts * (group_means - mean) ** 2, axis=0)
        total = np.where(present, (x - mean) ** 2, 0.0).sum(axis=0)
        eta = np.sqrt(between / total)
    eta = np.where((n > 0) & (total > 0), eta, 0.0)
    return np.clip(np.nan_to_num(eta, nan=0.0), 0.0, 1.0)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def theils_u(x: np.ndarray, kx: int, y: np.ndarray, ky: int) -> tuple[float, float]:
    """(U(x|y), U(y|x)) of two code arrays, U(x|y) = (H(x) - H(x|y)) / H(x); 0 where H is 0."""
    table = np.bincount(x * ky + y, minlength=kx * ky).reshape(kx, ky).astype("float64")
    h_x, h_y, h_xy = _entropy(table.sum(axis=1)), _entropy(table.sum(axis=0)), _entropy(table.ravel())
    mutual = max(0.0, h_x + h_y - h_xy)
    u_xy = min(1.0, mutual / h_x) if h_x > 0 else 0.0
    u_yx = min(1.0, mutual / h_y) if h_y > 0 else 0.0
    return u_xy, u_yx


def association_matrix(
    table: pd.DataFrame, meta: TableMeta, codes: dict[str, tuple[np.ndarray, int]]
) -> np.ndarray:
    """The k x k association matrix of `table` in `meta` column order (see the module docstring).

    `codes` maps each categorical column to its codes in this table and the number of categories.
    """
    names = list(meta.columns)
    index = {n: i for i, n in enumerate(names)}
    numeric, categorical = continuous_columns(meta), discrete_columns(meta)
    out = np.eye(len(names))
    x = np.column_stack([float_values(table[n], meta.columns[n].type) for n in numeric]) if numeric else None
    if x is not None:
        num_idx = [index[n] for n in numeric]
        out[np.ix_(num_idx, num_idx)] = pearson_matrix(x)
        for name in categorical:
            eta = correlation_ratios(*codes[name], x)
            out[index[name], num_idx] = eta
            out[num_idx, index[name]] = eta
    for a, name_a in enumerate(categorical):
        for name_b in categorical[a + 1 :]:
            (ca, ka), (cb, kb) = codes[name_a], codes[name_b]
            u_ab, u_ba = theils_u(ca, ka, cb, kb)
            out[index[name_a], index[name_b]] = u_ab
            out[index[name_b], index[name_a]] = u_ba
    return out


def _component_name(column: str) -> str:
    taken = column in AGGREGATES or column.startswith(("pair:", "column:"))
    return f"column:{column}" if taken else column


@metric(
    "diff_corr",
    higher_is_better=False,
    description="diff-CORR: Frobenius distance between the real and synthetic association matrices "
    "(Pearson / correlation ratio / Theil's U, as dython); per column L2 and their mean; 0 = identical.",
)
def diff_corr(
    real: pd.DataFrame, synth: pd.DataFrame, meta: TableMeta, *, pairs: bool = False
) -> dict[str, float]:
    for label, table in (("real", real), ("synthetic", synth)):
        if len(table) < 2:
            raise BadInput(f"diff_corr: the {label} table has {len(table)} row; associations need at least 2")
    if not isinstance(pairs, bool):
        raise BadInput(f"diff_corr: pairs must be true or false, not {pairs!r}")
    real_codes: dict[str, tuple[np.ndarray, int]] = {}
    synth_codes: dict[str, tuple[np.ndarray, int]] = {}
    for name in discrete_columns(meta):
        (r, s), k = category_codes(real[name], synth[name], keep_missing=True)
        real_codes[name], synth_codes[name] = (r, k), (s, k)
    diff = association_matrix(real, meta, real_codes) - association_matrix(synth, meta, synth_codes)
    per_column = np.sqrt(0.5 * ((diff**2).sum(axis=0) + (diff**2).sum(axis=1)))
    names = list(meta.columns)
    out = {_component_name(n): float(v) for n, v in zip(names, per_column, strict=True)}
    out["score"] = float(np.sqrt((diff**2).sum()))
    out["mean_column_l2"] = float(per_column.mean())
    out["max_abs_diff"] = float(np.abs(diff).max())
    if pairs:
        discrete = set(discrete_columns(meta))
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                if i < j or (i > j and a in discrete and b in discrete):
                    out[f"pair:{a}|{b}"] = float(abs(diff[i, j]))
    return out
