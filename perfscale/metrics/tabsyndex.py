"""TabSynDex (Chundawat et al. 2022, "TabSynDex: A Universal Metric for Robust Evaluation of Synthetic Tabular
Data", arXiv:2207.05295): the mean of five scores in [0, 1], 1 = synthetic indistinguishable from real.

Where the paper leaves a detail open, its authors' reference implementation (github.com/vikram2000b/tabsyndex,
``tabsyndex.py``) decides; every deviation from it is listed. ``rel(a, b) = min(1, |a - b| / (|a| + 1e-6))``
is the clipped relative error used throughout (the reference divides by ``|a + 1e-6|``, which is 0 for
a = -1e-6; identical otherwise up to 1e-6 relative).

* ``basic_stats``: ``1 - mean rel(stat_real, stat_synth)`` over mean, median and standard deviation (ddof 0)
  of every numerical/integer column on its raw values, and of every datetime column as nanoseconds since the
  REAL column's minimum (the epoch is an arbitrary origin that would make any datetime error ~0). Missing
  values are dropped; a column with no value on a side is left out. Categorical/boolean columns are left out
  (the reference expects label-encoded numbers; the mean of arbitrary codes means nothing); their
  distributions count in support_coverage, log_corr, pmse_score and ml_efficacy.
* ``log_corr``: association matrices of both tables as in `perfscale.metrics.associations` (Pearson for
  numeric pairs, correlation ratio for numeric-categorical, Theil's U (asymmetric) for categorical pairs, as
  dython's ``compute_associations`` used by the reference; undefined associations, e.g. of a constant column,
  are 0), mapped by the paper's log transform ``L(c) = sign(c) * ln|c|`` and compared as
  ``1 - mean rel(L(c_real), L(c_synth))`` over the n^2 - n off-diagonal entries. ``|c|`` is floored at 1e-6
  and c = 0 counts as +1e-6, so L is always finite (the reference gives NaN for a zero association).
* ``pmse_score``: ``1.2 ** -|1 - pmse_ratio|`` with `perfscale.metrics.detection`'s pMSE ratio (logistic
  regression pMSE over its null expectation (k - 1)(1 - c)^2 c / N, Snoke et al.), as the reference. The
  features differ from the reference's (min-max scaled, label-encoded): standardised numeric columns with
  missing indicators and one-hot categoricals. An exact copy of the real table has pMSE 0, ratio 0 and so
  pmse_score 1/1.2 (the paper rewards looking like a fresh sample, ratio ~1, not copying); every other
  component is 1 for a copy.
* ``support_coverage``: per column, over the real table's categories (categorical/boolean) or its `bins`
  (default 20) equal-width bins (``pd.cut`` on the real non-missing values: right-closed, the range widened
  by 0.1% on the left; synthetic values outside it are not counted), the ratio of the synthetic to the real
  frequency ``(n_synth_bin / n_real_bin) * (n_real / n_synth)`` (n = all rows, missing values included, as
  the reference), capped at 2 per bin; the column's value is the mean over the real non-empty bins capped at
  1, the component the mean over columns. Missing values are not a category here (the reference counts
  ``value_counts()``). A column with no real value is left out (the reference divides by zero).
* ``ml_efficacy`` (only with ``target=``): two models, a linear one (LogisticRegression, max_iter 1000 /
  Ridge, alpha 1) and a random forest of 20 trees of depth at most 5 (seeded), the reference's
  RandomForestRegressor settings; the reference uses four models per task (its unlimited-depth classifier
  forest fits the real table almost perfectly in sample, which made two samples of one law score ~0.6
  here). Task as `ml_efficacy`'s ``infer_task`` (categorical/boolean or a discrete integer target:
  classification, scored by accuracy = micro F1 as the reference; other numeric: regression, scored by
  RMSE); ``task=`` overrides. Each model is trained on the real table and on the synthetic table
  (rows with a missing target dropped; features as for pmse, without the target) and both are scored on
  the real and on the synthetic table, in sample as the reference; the component is ``1 - mean rel(score of
  the real-trained model, score of the synthetic-trained model)`` over 2 models x 2 evaluation tables. A
  training table whose target has a single class predicts that class. Without a target there is no
  ml_efficacy component and ``score`` is the mean of the other four (never NaN).

Components: the scores above that are defined (a table with no numeric column has no basic_stats, one with a
single column no log_corr) and ``score`` = their mean. ``max_rows`` (default: every row) subsamples each
table, seeded by ``seed``, for pmse_score and ml_efficacy, the two that train models; ``seed`` also seeds
the random forest.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from perfscale.errors import BadInput
from perfscale.metrics.associations import association_matrix
from perfscale.metrics.columns import continuous_columns, discrete_columns, is_int
from perfscale.metrics.detection import (
    Features,
    canonical_codes,
    canonical_order,
    check_sampling,
    encode_features,
    model_threads,
    pmse_components,
    stack,
)
from perfscale.metrics.ml_efficacy import infer_task
from perfscale.metrics.registry import metric
from perfscale.tabular.encode import CONTINUOUS_TYPES, category_codes, float_values
from perfscale.tabular.meta import TableMeta

EPSILON = 1e-6  # the reference's guard in relative errors
LOG_FLOOR = 1e-6  # smallest |association| before the log transform
PMSE_BASE = 1.2  # pmse_score = PMSE_BASE ** -|1 - ratio|
COVERAGE_CAP = 2.0  # per-bin cap of the synthetic/real frequency ratio
DEFAULT_BINS = 20
MLE_MODELS = ("linear", "random_forest")
MLE_TREES = 20
MLE_DEPTH = 5
Task = Literal["classification", "regression"]
TASKS: tuple[str, ...] = get_args(Task)


def relative_errors(real: np.ndarray, synth: np.ndarray) -> np.ndarray:
    """min(1, |real - synth| / (|real| + 1e-6)), elementwise."""
    return np.minimum(1.0, np.abs(real - synth) / (np.abs(real) + EPSILON))


# ---------------------------------------------------------------- basic statistics


def _stats(values: np.ndarray) -> np.ndarray:
    return np.array([values.mean(), np.median(values), values.std()])


def basic_stats(real: pd.DataFrame, synth: pd.DataFrame, meta: TableMeta) -> float | None:
    errors = []
    for name in continuous_columns(meta):
        ctype = meta.columns[name].type
        r, s = float_values(real[name], ctype), float_values(synth[name], ctype)
        r, s = r[~np.isnan(r)], s[~np.isnan(s)]
        if not (r.size and s.size):
            continue
        if ctype == "datetime":
            origin = r.min()
            r, s = r - origin, s - origin
        errors.append(relative_errors(_stats(r), _stats(s)))
    return 1.0 - float(np.mean(errors)) if errors else None


# ---------------------------------------------------------------- log-transformed correlation


def log_transform(c: np.ndarray) -> np.ndarray:
    """sign(c) * ln|c| with |c| floored at 1e-6 and c = 0 counted as positive."""
    return np.where(c < 0, -1.0, 1.0) * np.log(np.maximum(np.abs(c), LOG_FLOOR))


def log_corr(real: pd.DataFrame, synth: pd.DataFrame, meta: TableMeta) -> float | None:
    k = len(meta.columns)
    if k < 2:
        return None
    real_codes, synth_codes = {}, {}
    for name in discrete_columns(meta):
        (r, s), n = category_codes(real[name], synth[name], keep_missing=True)
        real_codes[name], synth_codes[name] = (r, n), (s, n)
    a_real = log_transform(association_matrix(real, meta, real_codes))
    a_synth = log_transform(association_matrix(synth, meta, synth_codes))
    off_diagonal = ~np.eye(k, dtype=bool)
    return 1.0 - float(relative_errors(a_real[off_diagonal], a_synth[off_diagonal]).mean())


# ---------------------------------------------------------------- support coverage


def column_coverage(real_bins: np.ndarray, synth_bins: np.ndarray, k: int, scale: float) -> float | None:
    """Mean capped frequency ratio over the real non-empty bins (codes < 0: not counted), capped at 1."""
    r = np.bincount(real_bins[real_bins >= 0], minlength=k)
    s = np.bincount(synth_bins[synth_bins >= 0], minlength=k)
    present = r > 0
    if not present.any():
        return None
    ratios = np.minimum(s[present] / r[present] * scale, COVERAGE_CAP)
    return min(1.0, float(ratios.mean()))


def _bin_codes(real: np.ndarray, synth: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """pd.cut bins of the real non-missing values applied to both (-1: missing or outside the real range)."""
    r, s = real[~np.isnan(real)], synth[~np.isnan(synth)]
    if not r.size:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    r_codes, edges = pd.cut(r, bins, labels=False, retbins=True)
    s_codes = pd.cut(s, edges, labels=False)
    return (np.nan_to_num(r_codes, nan=-1).astype(np.int64), np.nan_to_num(s_codes, nan=-1).astype(np.int64))


def support_coverage(real: pd.DataFrame, synth: pd.DataFrame, meta: TableMeta, bins: int) -> float | None:
    scale = len(real) / len(synth)
    per_column = []
    for name, col in meta.columns.items():
        if col.type in CONTINUOUS_TYPES:
            r, s = _bin_codes(float_values(real[name], col.type), float_values(synth[name], col.type), bins)
            k = bins
        else:
            (r, s), k = category_codes(real[name], synth[name], keep_missing=False)
        value = column_coverage(r, s, k, scale)
        if value is not None:
            per_column.append(value)
    return float(np.mean(per_column)) if per_column else None


# ---------------------------------------------------------------- ML efficacy


def _targets(
    real: pd.DataFrame, synth: pd.DataFrame, meta: TableMeta, target: str, task: str
) -> tuple[np.ndarray, np.ndarray]:
    """Target values (class codes, -1 = missing; or floats, NaN = missing) of both tables."""
    if task == "classification":
        (r, s), _ = canonical_codes(real[target], synth[target])
        missing = [real[target].isna().to_numpy(), synth[target].isna().to_numpy()]
        return np.where(missing[0], -1, r), np.where(missing[1], -1, s)
    ctype = meta.columns[target].type
    return float_values(real[target], ctype), float_values(synth[target], ctype)


def _score(task: str, y: np.ndarray, pred: np.ndarray) -> float:
    if task == "classification":
        return float(np.mean(y == pred))
    return float(np.sqrt(np.mean((y - pred) ** 2)))


def make_model(name: str, task: str, seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.linear_model import LogisticRegression, Ridge

    classify = task == "classification"
    if name == "linear":
        return LogisticRegression(max_iter=1000) if classify else Ridge(alpha=1.0)
    forest = RandomForestClassifier if classify else RandomForestRegressor
    return forest(n_estimators=MLE_TREES, max_depth=MLE_DEPTH, random_state=seed, n_jobs=1)


def _fit_predict(model: Any, task: str, x: Any, y: np.ndarray, tests: list[Any]) -> list[np.ndarray]:
    if task == "classification" and np.unique(y).size == 1:
        return [np.full(t.shape[0], y[0]) for t in tests]
    with model_threads():
        model.fit(x, y)
        return [model.predict(t) for t in tests]


def ml_efficacy(
    real: pd.DataFrame,
    synth: pd.DataFrame,
    meta: TableMeta,
    target: str,
    task: str,
    orders: tuple[np.ndarray, np.ndarray],
    seed: int,
) -> float:
    features = TableMeta(columns={n: c for n, c in meta.columns.items() if n != target})
    x_all = encode_features([real, synth], features)
    y_all = _targets(real, synth, meta, target, task)
    xs: list[Features] = []
    ys: list[np.ndarray] = []
    for label, x, y, order in zip(("real", "synthetic"), x_all, y_all, orders, strict=True):
        y = y[order]
        keep = y >= 0 if task == "classification" else ~np.isnan(y)
        if not keep.any():
            raise BadInput(
                f"tabsyndex: every {label} row has a missing target {target!r}; nothing to train on"
            )
        xs.append(x.take(order[keep]))
        ys.append(y[keep])
    errors = []
    for name in MLE_MODELS:
        matrices = [f.one_hot() if name == "linear" else f.ordinal() for f in xs]
        scores = []
        for x, y in zip(matrices, ys, strict=True):  # trained on real, then on synthetic
            model = make_model(name, task, seed)
            preds = _fit_predict(model, task, x, y, matrices)
            scores.append([_score(task, y_test, p) for y_test, p in zip(ys, preds, strict=True)])
        errors.append(relative_errors(np.array(scores[0]), np.array(scores[1])))
    return 1.0 - float(np.mean(errors))


# ---------------------------------------------------------------- the metric


def _check_options(meta: TableMeta, target: Any, task: Any, bins: Any, max_rows: Any, seed: Any) -> None:
    check_sampling("tabsyndex", max_rows, seed)
    if not is_int(bins) or bins < 1:
        raise BadInput(f"tabsyndex: bins must be a positive integer, not {bins!r}")
    if target is None:
        if task is not None:
            raise BadInput("tabsyndex: task is given but target is not; name the target column with target=")
        return
    if not isinstance(target, str) or target not in meta.columns:
        raise BadInput(f"tabsyndex: target {target!r} is not a column; columns are {list(meta.columns)}")
    if len(meta.columns) < 2:
        raise BadInput(f"tabsyndex: the table has no column besides the target {target!r} to predict from")
    if task is not None and task not in TASKS:
        raise BadInput(f"tabsyndex: task must be one of {list(TASKS)} or null, not {task!r}")
    ctype = meta.columns[target].type
    if ctype == "datetime":
        raise BadInput(f"tabsyndex: target {target!r} is a datetime column; convert it to a number first")
    if task == "regression" and ctype not in ("numerical", "integer"):
        raise BadInput(f"tabsyndex: task 'regression' needs a numeric target; {target!r} is {ctype}")


@metric(
    "tabsyndex",
    higher_is_better=True,
    description="TabSynDex (Chundawat et al. 2022): mean of basic_stats, log_corr, pmse_score, "
    "support_coverage and (with target=) ml_efficacy, each in [0, 1]; 1 = indistinguishable.",
)
def tabsyndex(
    real: pd.DataFrame,
    synth: pd.DataFrame,
    meta: TableMeta,
    *,
    target: str | None = None,
    task: Task | None = None,
    bins: int = DEFAULT_BINS,
    max_rows: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    _check_options(meta, target, task, bins, max_rows, seed)
    full = encode_features([real, synth], meta)
    rng = np.random.default_rng(seed)
    orders = (canonical_order(full[0], max_rows, rng), canonical_order(full[1], max_rows, rng))
    ratio = pmse_components(*stack(full[0].take(orders[0]), full[1].take(orders[1])))["pmse_ratio"]
    del full
    parts = {
        "basic_stats": basic_stats(real, synth, meta),
        "log_corr": log_corr(real, synth, meta),
        "pmse_score": PMSE_BASE ** -abs(1.0 - ratio),
        "support_coverage": support_coverage(real, synth, meta, int(bins)),
    }
    if target is not None:
        kind = task or infer_task(meta, target)
        parts["ml_efficacy"] = ml_efficacy(real, synth, meta, target, kind, orders, int(seed))
    out = {name: float(v) for name, v in parts.items() if v is not None}
    out["score"] = float(np.mean(list(out.values())))
    return out
