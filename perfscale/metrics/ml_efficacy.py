"""ML efficacy (train on synthetic, test on real): models trained on the synthetic table and, as the
reference, on the real train table, all scored on a real holdout.

Rules (also in docs/metrics.md):

* Task: classification when the target column is categorical/boolean or an integer column with a discrete
  set of values (`allowed` in its metadata), regression for other numeric columns; ``task=`` overrides. A
  datetime target is refused (convert it to a number first).
* Rows whose target is missing are dropped (train and holdout). Features: `perfscale.tabular.encode.encode` of
  [train, holdout], fitted on that train table (the synthetic one, or the real one for the reference):
  numeric/datetime standardised with the train mean/std, missing -> train mean + a missing indicator;
  categorical/boolean one-hot over the union of the train and holdout categories (missing is a category).
  Every model sees the same encoding (trees are unaffected by the standardisation).
* Models (`models=` picks a subset): ``linear`` (LogisticRegression lbfgs, max_iter 1000 / LinearRegression),
  ``decision_tree``, ``random_forest`` (`n_estimators` trees), ``xgboost`` (`n_estimators` rounds, hist).
  Each runs `repeats` times with seeds seed, seed+1, ... and its scores are averaged; ``linear`` has no
  randomness and runs once. `n_jobs` goes to random_forest and xgboost.
* Classification scores: accuracy; macro F1 over the classes present in the holdout (a predicted class the
  holdout lacks only counts as a miss; zero_division 0); ROC AUC = macro mean of one-vs-rest AUCs over the
  holdout's classes (for two classes the usual binary AUC). A class missing from a training table gets
  probability 0 (its one-vs-rest AUC is then 0.5, all scores tied), and a training table whose target has a
  single class gives a constant predictor (probability 1 for that class). The holdout needs >= 2 classes.
* Regression scores: mse, mae, r2 (scikit-learn's r2_score; a constant holdout target gives 1 for a perfect
  prediction, else 0).

Without both `target` and `holdout` the metric has no components (evaluating every registered metric with
no options still works); with only one of them it raises BadInput naming the other.

Components: ``<source>/<model>/<score>`` (source synthetic or real), ``<source>/<score>`` = mean over models,
``gap/<score>`` = utility lost, positive when the synthetic models are worse (real - synthetic for
accuracy, macro_f1, roc_auc, r2; synthetic - real for mse, mae), and ``relative/<score>`` = synthetic / real
for accuracy, macro_f1, roc_auc, mse, mae (left out when the real value is 0).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from perfscale.errors import BadInput
from perfscale.extras import require
from perfscale.metrics.columns import check_tables, is_int
from perfscale.metrics.registry import metric
from perfscale.tabular.encode import category_codes, encode, float_values
from perfscale.tabular.meta import TableMeta

Model = Literal["linear", "decision_tree", "random_forest", "xgboost"]
Task = Literal["classification", "regression"]
MODELS: tuple[str, ...] = get_args(Model)
TASKS: tuple[str, ...] = get_args(Task)
SCORES = {"classification": ("accuracy", "macro_f1", "roc_auc"), "regression": ("mse", "mae", "r2")}
LOWER_IS_BETTER = frozenset({"mse", "mae"})
RATIO_SCORES = frozenset({"accuracy", "macro_f1", "roc_auc", "mse", "mae"})
DEFAULT_N_ESTIMATORS = 100


def infer_task(meta: TableMeta, target: str) -> str:
    col = meta.columns[target]
    if col.type == "datetime":
        raise BadInput(f"ml_efficacy: target {target!r} is a datetime column; convert it to a number first")
    if col.type in ("categorical", "boolean") or (col.type == "integer" and col.allowed is not None):
        return "classification"
    return "regression"


def make_model(name: str, task: str, seed: int, n_estimators: int, n_jobs: int) -> Any:
    """An unfitted scikit-learn compatible model (imported here: sklearn/xgboost are slow to import)."""
    classify = task == "classification"
    if name == "linear":
        from sklearn.linear_model import LinearRegression, LogisticRegression

        return LogisticRegression(max_iter=1000) if classify else LinearRegression()
    if name == "decision_tree":
        from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

        return (DecisionTreeClassifier if classify else DecisionTreeRegressor)(random_state=seed)
    if name == "random_forest":
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        cls = RandomForestClassifier if classify else RandomForestRegressor
        return cls(n_estimators=n_estimators, random_state=seed, n_jobs=n_jobs)
    xgboost = require("synth", "xgboost", "ml_efficacy's xgboost model")
    cls = xgboost.XGBClassifier if classify else xgboost.XGBRegressor
    return cls(n_estimators=n_estimators, random_state=seed, n_jobs=n_jobs, tree_method="hist", verbosity=0)


def class_probabilities(
    model: Any, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, k: int
) -> np.ndarray:
    """(n_test, k) probabilities over all k classes; classes absent from y_train get 0, and a single training
    class gives a constant predictor. Labels are renumbered 0..m-1 for fitting (xgboost requires it)."""
    present = np.unique(y_train)
    proba = np.zeros((len(x_test), k))
    if present.size == 1:
        proba[:, present[0]] = 1.0
        return proba
    model.fit(x_train, np.searchsorted(present, y_train))
    proba[:, present] = np.asarray(model.predict_proba(x_test), dtype="float64")
    return proba


def one_vs_rest_auc(y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    """Macro mean over `classes` of the one-vs-rest ROC AUC of proba[:, c], ties counted one half.

    Mann-Whitney form, vectorised over classes: AUC_c = (rank sum of the positives - n+(n+ + 1)/2) / (n+ n-),
    with average ranks (equal to scikit-learn's roc_auc_score per class). Every class must have positives
    and negatives in y_true.
    """
    ranks = rankdata(proba[:, classes], axis=0)
    positive = y_true[:, None] == classes[None, :]
    n_pos = positive.sum(axis=0)
    n_neg = len(y_true) - n_pos
    auc = ((ranks * positive).sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return float(auc.mean())


def classification_scores(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score

    pred = proba.argmax(axis=1)
    classes = np.unique(y_true)
    return {
        "accuracy": float(np.mean(pred == y_true)),
        "macro_f1": float(f1_score(y_true, pred, labels=classes, average="macro", zero_division=0)),
        "roc_auc": one_vs_rest_auc(y_true, proba, classes),
    }


def regression_scores(y_true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    pred = np.asarray(pred, dtype="float64")
    return {
        "mse": float(mean_squared_error(y_true, pred)),
        "mae": float(mean_absolute_error(y_true, pred)),
        "r2": float(r2_score(y_true, pred)),
    }


def _targets(
    tables: list[pd.DataFrame], meta: TableMeta, target: str, task: str
) -> tuple[list[np.ndarray], int]:
    """Target arrays (class codes, -1 = missing; or floats, NaN = missing) and the number of classes."""
    if task == "classification":
        return category_codes(*(t[target] for t in tables), keep_missing=False)
    ctype = meta.columns[target].type
    return [float_values(t[target], ctype) for t in tables], 0


def _present(y: np.ndarray, task: str) -> np.ndarray:
    return y >= 0 if task == "classification" else ~np.isnan(y)


def _evaluate_source(
    train: pd.DataFrame,
    y_train: np.ndarray,
    holdout: pd.DataFrame,
    y_test: np.ndarray,
    features: TableMeta,
    task: str,
    k: int,
    new_model: Callable[[str, int], Any],
    models: list[str],
    seeds: list[int],
) -> dict[str, dict[str, float]]:
    """Scores per model (mean over `seeds`) of `new_model(name, seed)` fit on `train`, tested on `holdout`."""
    x_train, x_test = encode([train, holdout], features)
    per_model = {}
    for name in models:
        runs = []
        for seed in seeds[:1] if name == "linear" else seeds:
            model = new_model(name, seed)
            with warnings.catch_warnings():
                # convergence warnings of the linear models: their scores are still what they are
                warnings.simplefilter("ignore")
                if task == "classification":
                    runs.append(
                        classification_scores(y_test, class_probabilities(model, x_train, y_train, x_test, k))
                    )
                else:
                    model.fit(x_train, y_train)
                    runs.append(regression_scores(y_test, model.predict(x_test)))
        per_model[name] = {s: float(np.mean([r[s] for r in runs])) for s in runs[0]}
    return per_model


def _check_options(
    real: pd.DataFrame,
    meta: TableMeta,
    target: Any,
    holdout: Any,
    task: Any,
    models: Any,
    repeats: Any,
    seed: Any,
    n_estimators: Any,
    n_jobs: Any,
) -> list[str]:
    if target is None:
        raise BadInput(
            "ml_efficacy: option 'target' is required with 'holdout': the name of the column to predict"
        )
    if not isinstance(target, str) or target not in meta.columns:
        raise BadInput(f"ml_efficacy: target {target!r} is not a column; columns are {list(meta.columns)}")
    if len(meta.columns) < 2:
        raise BadInput(f"ml_efficacy: the table has no column besides the target {target!r} to predict from")
    if holdout is None:
        raise BadInput("ml_efficacy: option 'holdout' is required with 'target': a real table not trained on")
    check_tables(real, holdout, meta, what="holdout")
    if task is not None and task not in TASKS:
        raise BadInput(f"ml_efficacy: task must be one of {list(TASKS)} or null, not {task!r}")
    names = list(MODELS) if models is None else models
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
        raise BadInput(
            f"ml_efficacy: models must be a non-empty list drawn from {list(MODELS)}, not {models!r}"
        )
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        raise BadInput(f"ml_efficacy: unknown model(s) {unknown}; known models are {list(MODELS)}")
    for option, value, low in (("repeats", repeats, 1), ("n_estimators", n_estimators, 1), ("seed", seed, 0)):
        if not is_int(value) or value < low:
            raise BadInput(f"ml_efficacy: {option} must be an integer >= {low}, not {value!r}")
    if not is_int(n_jobs) or n_jobs == 0 or n_jobs < -1:
        raise BadInput(f"ml_efficacy: n_jobs must be a positive integer or -1 (all cores), not {n_jobs!r}")
    return list(dict.fromkeys(names))


def summarise(
    per_source: dict[str, dict[str, dict[str, float]]], scores: tuple[str, ...]
) -> dict[str, float]:
    """Per-model components, means over models per source, gap and relative (see the module docstring)."""
    out: dict[str, float] = {}
    for source, per_model in per_source.items():
        for model, values in per_model.items():
            out.update({f"{source}/{model}/{s}": v for s, v in values.items()})
    means = {
        src: {s: float(np.mean([v[s] for v in pm.values()])) for s in scores}
        for src, pm in per_source.items()
    }
    for source, values in means.items():
        out.update({f"{source}/{s}": v for s, v in values.items()})
    for s in scores:
        synth, real = means["synthetic"][s], means["real"][s]
        out[f"gap/{s}"] = synth - real if s in LOWER_IS_BETTER else real - synth
        if s in RATIO_SCORES and real != 0:
            out[f"relative/{s}"] = synth / real
    return out


@metric(
    "ml_efficacy",
    higher_is_better=None,
    description="ML efficacy: linear, decision tree, random forest and XGBoost trained on the synthetic and "
    "on the real train table, scored on a real holdout (accuracy/macro F1/ROC AUC or MSE/MAE/R2); "
    "gap/<score> > 0 = synthetic worse.",
)
def ml_efficacy(
    real: pd.DataFrame,
    synth: pd.DataFrame,
    meta: TableMeta,
    *,
    target: str | None = None,
    holdout: pd.DataFrame | None = None,
    task: Task | None = None,
    models: list[Model] | None = None,
    repeats: int = 1,
    seed: int = 0,
    n_estimators: int = DEFAULT_N_ESTIMATORS,
    n_jobs: int = 1,
) -> dict[str, float]:
    if target is None and holdout is None:
        return {}  # not configured: no components (so that evaluating every registered metric still works)
    names = _check_options(real, meta, target, holdout, task, models, repeats, seed, n_estimators, n_jobs)
    assert target is not None and holdout is not None  # checked above
    holdout = holdout.rename(columns=str)
    kind = task or infer_task(meta, target)
    if kind == "regression" and meta.columns[target].type not in ("numerical", "integer"):
        raise BadInput(
            f"ml_efficacy: task 'regression' needs a numeric target; {target!r} is "
            f"{meta.columns[target].type}"
        )
    (y_synth, y_real, y_holdout), k = _targets([synth, real, holdout], meta, target, kind)
    test_rows = _present(y_holdout, kind)
    if test_rows.sum() < 2:
        raise BadInput(
            f"ml_efficacy: the holdout has {int(test_rows.sum())} row(s) with a target value; need >= 2"
        )
    if kind == "classification" and np.unique(y_holdout[test_rows]).size < 2:
        raise BadInput(
            f"ml_efficacy: the holdout's target {target!r} has a single class; scores need >= 2 classes"
        )
    features = TableMeta(columns={n: c for n, c in meta.columns.items() if n != target})
    test = holdout[test_rows].reset_index(drop=True)
    seeds = [int(seed) + r for r in range(int(repeats))]

    def new_model(name: str, model_seed: int) -> Any:
        return make_model(name, kind, model_seed, int(n_estimators), int(n_jobs))

    per_source = {}
    for source, table, y in (("synthetic", synth, y_synth), ("real", real, y_real)):
        rows = _present(y, kind)
        if not rows.any():
            raise BadInput(
                f"ml_efficacy: every {source} row has a missing target {target!r}; nothing to train on"
            )
        train = table[rows].reset_index(drop=True)
        per_source[source] = _evaluate_source(
            train, y[rows], test, y_holdout[test_rows], features, kind, k, new_model, names, seeds
        )
    return summarise(per_source, SCORES[kind])
