"""Classifiers that try to tell real rows from synthetic ones: pMSE and cross-validated detection ROC AUC.

Features (`encode_features`, fitted on the real table, applied to both):

* numeric and datetime columns: the DCR encoding (`perfscale.metrics.dcr`): standardised with the real mean
  and std (ddof=1; std 0 or undefined -> 1), a missing value at the real mean plus a 0/1 missing-indicator
  column when any table has a missing value in that column;
* categorical and boolean columns: codes over the union of both tables' categories (missing is a category),
  numbered in a canonical order (sorted by the value's text) so that nothing depends on row order. Linear
  models see them one-hot (a sparse matrix: memory stays O(rows x columns) whatever the cardinality); tree
  models see the codes (gradient boosting treats a column with at most 255 categories as categorical).

`pmse` (propensity score mean squared error; Woo et al. 2009, Snoke et al. 2018): an L2-regularised
(scikit-learn default C = 1) logistic regression on the stacked [real; synthetic] table with the indicator
"is synthetic", fitted and predicted in sample. Components:

* ``pmse`` = mean((p_i - c)^2) over all N rows, c = n_synth / N: 0 when the model cannot tell the tables
  apart, at most c * (1 - c) (0.25 for equal sizes) when it separates them perfectly;
* ``pmse_null`` = (k - 1) (1 - c)^2 c / N, the expected pMSE when both tables come from the same
  distribution, k - 1 being the degrees of freedom of the features: one per non-constant numeric or
  indicator column, categories - 1 per categorical column (over both tables together);
* ``pmse_ratio`` = pmse / pmse_null (about 1 for indistinguishable tables, larger is worse). With no
  informative feature (k - 1 = 0, every column constant) pmse and its null are both 0 and the ratio is 1.

`detection_auc`: a classifier (``model``: ``logistic`` (as above), ``gradient_boosting``
(HistGradientBoostingClassifier, defaults, seeded) or ``random_forest`` (50 trees, min_samples_leaf 5,
seeded); `n_jobs` threads, default 1) is trained on `folds` - 1 folds of a seeded stratified k-fold split of
the stacked rows and scored on the remaining fold. Components: ``auc`` = mean ROC AUC over the folds
(0.5 = indistinguishable, 1 = always told apart) and ``detection_score`` = 1 - mean over folds of
(max(auc, 0.5) * 2 - 1), SDMetrics' LogisticDetection formula (which uses 3 unseeded folds; `folds`
defaults to 3 too): 1 = indistinguishable.

Determinism: both metrics put each table's rows in a canonical order (sorted by their encoded values) before
anything that could depend on it, so results do not depend on row order; `max_rows` (default: every row)
keeps a seeded random sample of at most that many rows of each table (`seed`), which also drives the folds
and the models' own randomness.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from scipy import sparse

from perfscale.errors import BadInput
from perfscale.metrics.columns import is_int
from perfscale.metrics.registry import metric
from perfscale.tabular.encode import CONTINUOUS_TYPES, category_codes, continuous_blocks, float_values
from perfscale.tabular.meta import TableMeta

Model = Literal["logistic", "gradient_boosting", "random_forest"]
MODELS: tuple[str, ...] = get_args(Model)
DEFAULT_FOLDS = 3  # SDMetrics' DetectionMetric uses StratifiedKFold(n_splits=3)
HGB_MAX_CATEGORIES = 255  # HistGradientBoostingClassifier's limit for a categorical feature
LOGISTIC_MAX_ITER = 1000


@dataclass(frozen=True)
class Features:
    """One table's encoded columns: see the module docstring."""

    continuous: np.ndarray  # (n, p) float64, standardised, missing -> 0, plus missing indicators
    codes: np.ndarray  # (n, q) int64, canonical category codes
    n_categories: tuple[int, ...]  # number of categories of each code column (shared by all tables)

    def __len__(self) -> int:
        return self.continuous.shape[0]

    def take(self, rows: np.ndarray) -> Features:
        return Features(self.continuous[rows], self.codes[rows], self.n_categories)

    def one_hot(self) -> sparse.csr_matrix:
        """Continuous block followed by the one-hot blocks, as one sparse matrix (for linear models)."""
        n = len(self)
        blocks = [sparse.csr_matrix(self.continuous)]
        for j, k in enumerate(self.n_categories):
            blocks.append(sparse.csr_matrix((np.ones(n), self.codes[:, j], np.arange(n + 1)), shape=(n, k)))
        return sparse.hstack(blocks, format="csr")

    def ordinal(self) -> np.ndarray:
        """Continuous columns followed by the category codes as floats (for tree models)."""
        return np.hstack([self.continuous, self.codes.astype("float64")])


def canonical_codes(*series: pd.Series) -> tuple[list[np.ndarray], int]:
    """`category_codes` (missing kept as a category) renumbered by sorted category text, then type name."""
    codes, k = category_codes(*series, keep_missing=True)
    values = pd.concat([s.astype(object) for s in series], ignore_index=True).to_numpy()
    _, first = np.unique(np.concatenate(codes), return_index=True)
    keys = [(str(v), type(v).__name__) for v in values[first]]  # one per category, not per row
    rank = np.empty(k, dtype=np.int64)
    rank[sorted(range(k), key=keys.__getitem__)] = np.arange(k)
    return [rank[c] for c in codes], k


def encode_features(tables: list[pd.DataFrame], meta: TableMeta) -> list[Features]:
    """Encode the tables in one shared space; tables[0] (the real table) fixes the scaling."""
    continuous: list[list[np.ndarray]] = [[] for _ in tables]
    codes: list[list[np.ndarray]] = [[] for _ in tables]
    n_categories = []
    for name, col in meta.columns.items():
        if col.type in CONTINUOUS_TYPES:
            blocks = continuous_blocks([float_values(t[name], col.type) for t in tables])
            for acc, block in zip(continuous, blocks, strict=True):
                acc.append(block)
        else:
            per_table, k = canonical_codes(*(t[name] for t in tables))
            n_categories.append(k)
            for acc, c in zip(codes, per_table, strict=True):
                acc.append(c[:, None])
    return [
        Features(
            np.hstack(cont) if cont else np.empty((len(t), 0)),
            np.hstack(cat).astype(np.int64) if cat else np.empty((len(t), 0), dtype=np.int64),
            tuple(n_categories),
        )
        for t, cont, cat in zip(tables, continuous, codes, strict=True)
    ]


def canonical_order(features: Features, max_rows: int | None, rng: np.random.Generator) -> np.ndarray:
    """Row indices sorted by the encoded values (row-order independence), at most `max_rows` of them."""
    keys = features.ordinal()
    order = np.lexsort(keys.T[::-1]) if keys.shape[1] else np.arange(len(features))
    if max_rows is not None and len(order) > max_rows:
        order = order[np.sort(rng.choice(len(order), max_rows, replace=False))]
    return order


def degrees_of_freedom(pooled: Features) -> int:
    """Informative parameters of a linear model on `pooled`: non-constant numeric columns + categories - 1."""
    cont = pooled.continuous
    df = int(np.count_nonzero(cont.min(axis=0, initial=np.inf) < cont.max(axis=0, initial=-np.inf)))
    for j in range(pooled.codes.shape[1]):
        df += np.unique(pooled.codes[:, j]).size - 1
    return df


def stack(real: Features, synth: Features) -> tuple[Features, np.ndarray]:
    """[real; synthetic] rows and the label (1 = synthetic)."""
    pooled = Features(
        np.vstack([real.continuous, synth.continuous]),
        np.vstack([real.codes, synth.codes]),
        real.n_categories,
    )
    return pooled, np.r_[np.zeros(len(real)), np.ones(len(synth))]


def stacked(
    real: pd.DataFrame, synth: pd.DataFrame, meta: TableMeta, max_rows: int | None, seed: int
) -> tuple[Features, np.ndarray]:
    """Encoded [real; synthetic] rows (canonical order, subsampled) and the label (1 = synthetic)."""
    rng = np.random.default_rng(seed)
    r, s = (f.take(canonical_order(f, max_rows, rng)) for f in encode_features([real, synth], meta))
    return stack(r, s)


def logistic_model() -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=LOGISTIC_MAX_ITER)


@contextlib.contextmanager
def model_threads(n_jobs: int = 1) -> Iterator[None]:
    """Cap OpenMP/BLAS threads at `n_jobs` (-1: no cap) and silence convergence warnings while models fit.

    On a shared machine, busy-waiting OpenMP/BLAS threads made gradient boosting 25x and L-BFGS 5x slower
    than with one thread. A model that has not converged still gives the predictions it gives.
    """
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=None if n_jobs == -1 else n_jobs), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def pmse_components(pooled: Features, y: np.ndarray) -> dict[str, float]:
    """pmse, pmse_null and pmse_ratio of stacked rows (see the module docstring)."""
    n, c = len(y), float(y.mean())
    df = degrees_of_freedom(pooled)
    if df == 0:
        return {"pmse": 0.0, "pmse_null": 0.0, "pmse_ratio": 1.0}
    x = pooled.one_hot()
    with model_threads():
        p = logistic_model().fit(x, y).predict_proba(x)[:, 1]
    value = float(np.mean((p - c) ** 2))
    null = df * (1.0 - c) ** 2 * c / n
    return {"pmse": value, "pmse_null": null, "pmse_ratio": value / null}


def check_sampling(name: str, max_rows: Any, seed: Any) -> None:
    if max_rows is not None and (not is_int(max_rows) or max_rows < 1):
        raise BadInput(f"{name}: max_rows must be a positive integer or null (every row), not {max_rows!r}")
    if not is_int(seed) or seed < 0:
        raise BadInput(f"{name}: seed must be a non-negative integer, not {seed!r}")


@metric(
    "pmse",
    higher_is_better=False,
    description="Propensity score MSE of a logistic regression telling real from synthetic rows (pmse; 0 = "
    "indistinguishable), its null expectation and pmse_ratio = pmse / null (about 1 = indistinguishable).",
)
def pmse(
    real: pd.DataFrame, synth: pd.DataFrame, meta: TableMeta, *, max_rows: int | None = None, seed: int = 0
) -> dict[str, float]:
    check_sampling("pmse", max_rows, seed)
    return pmse_components(*stacked(real, synth, meta, max_rows, seed))


def make_classifier(model: str, pooled: Features, seed: int, n_jobs: int) -> tuple[Any, Any]:
    """An unfitted classifier and the feature matrix it reads."""
    if model == "logistic":
        return logistic_model(), pooled.one_hot()
    if model == "gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        p = pooled.continuous.shape[1]
        mask = [False] * p + [k <= HGB_MAX_CATEGORIES for k in pooled.n_categories]
        clf = HistGradientBoostingClassifier(random_state=seed, categorical_features=mask or None)
        return clf, pooled.ordinal()
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(n_estimators=50, min_samples_leaf=5, random_state=seed, n_jobs=n_jobs)
    return forest, pooled.ordinal()


def cross_validated_aucs(
    model: str, pooled: Features, y: np.ndarray, folds: int, seed: int, n_jobs: int
) -> list[float]:
    """ROC AUC on each test fold."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    aucs = []
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with model_threads(n_jobs):
        for train, test in split.split(np.zeros(len(y)), y):
            clf, x = make_classifier(model, pooled, seed, n_jobs)
            clf.fit(x[train], y[train])
            aucs.append(float(roc_auc_score(y[test], clf.predict_proba(x[test])[:, 1])))
    return aucs


@metric(
    "detection_auc",
    higher_is_better=None,
    description="Cross-validated ROC AUC of a classifier telling real from synthetic rows (auc: 0.5 = "
    "indistinguishable) and SDMetrics' detection_score = 1 - (2 max(auc, 0.5) - 1) (1 = indistinguishable).",
)
def detection_auc(
    real: pd.DataFrame,
    synth: pd.DataFrame,
    meta: TableMeta,
    *,
    model: Model = "logistic",
    folds: int = DEFAULT_FOLDS,
    max_rows: int | None = None,
    seed: int = 0,
    n_jobs: int = 1,
) -> dict[str, float]:
    check_sampling("detection_auc", max_rows, seed)
    if not is_int(n_jobs) or n_jobs == 0 or n_jobs < -1:
        raise BadInput(f"detection_auc: n_jobs must be a positive integer or -1 (all cores), not {n_jobs!r}")
    if model not in MODELS:
        raise BadInput(f"detection_auc: model must be one of {list(MODELS)}, not {model!r}")
    if not is_int(folds) or folds < 2:
        raise BadInput(f"detection_auc: folds must be an integer >= 2, not {folds!r}")
    smaller = min(len(real), len(synth), max_rows or len(real))
    if smaller < folds:
        raise BadInput(
            f"detection_auc: folds={folds} needs at least {folds} rows in each table (after max_rows); "
            f"the smaller has {smaller}: lower folds or pass more rows"
        )
    pooled, y = stacked(real, synth, meta, max_rows, seed)
    aucs = np.array(cross_validated_aucs(model, pooled, y, int(folds), int(seed), int(n_jobs)))
    return {"auc": float(aucs.mean()), "detection_score": float(1.0 - np.mean(np.maximum(aucs, 0.5) * 2 - 1))}
