"""Scores of predictions: macro one-vs-rest AUC-ROC, per-class F1, accuracy and the confusion matrix for
classes; MAE, RMSE and R^2 per target for regression. ROC curve points for the report. The hit rate of a
choice (which thread count meets a time bound) picked from predicted vs measured times."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from perfscale.errors import BadInput


def class_scores(truth: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict[str, float | str]:
    """truth: class indices; proba: (n, classes). A class absent from the test rows gets no AUC term."""
    from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

    predicted = proba.argmax(axis=1)
    labels = list(range(len(classes)))
    present = [i for i in labels if (truth == i).any() and (truth != i).any()]
    aucs = [roc_auc_score(truth == i, proba[:, i]) for i in present]
    f1 = f1_score(truth, predicted, labels=labels, average=None, zero_division=0)
    scores: dict[str, float | str] = {
        "auc_macro": float(np.mean(aucs)) if aucs else float("nan"),
        "accuracy": float((predicted == truth).mean()),
        "f1_macro": float(np.mean(f1)),
    }
    for i, c in enumerate(classes):
        scores[f"f1_{c}"] = float(f1[i])
    matrix = confusion_matrix(truth, predicted, labels=labels)
    scores["confusion"] = json.dumps({"classes": list(classes), "matrix": matrix.tolist()})
    return scores


def regression_scores(truth: np.ndarray, prediction: np.ndarray, targets: Sequence[str]) -> dict[str, float]:
    truth, prediction = truth.reshape(len(truth), -1), prediction.reshape(len(prediction), -1)
    scores: dict[str, float] = {}
    for j, t in enumerate(targets):
        err = truth[:, j] - prediction[:, j]
        var = float(np.var(truth[:, j]))
        scores[f"mae_{t}"] = float(np.mean(np.abs(err)))
        scores[f"rmse_{t}"] = float(np.sqrt(np.mean(err**2)))
        scores[f"r2_{t}"] = 1 - float(np.mean(err**2)) / var if var else 0.0
    return scores


def vector_scores(truth: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """Scores of whole predicted vectors (several targets at once, e.g. relative performance across
    machines): MAE over every element, mean R^2 over the targets and the Same Order Score."""
    from perfscale.models.rpv import same_order_score

    per_target = regression_scores(truth, prediction, [str(j) for j in range(truth.shape[1])])
    return {
        "vector_mae": float(np.mean(np.abs(truth - prediction))),
        "vector_r2": float(np.mean([per_target[f"r2_{j}"] for j in range(truth.shape[1])])),
        "sos": same_order_score(truth, prediction),
    }


def roc_points(truth: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates of one class against the rest."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(truth, score)
    return fpr, tpr


def choice_hits(
    table: pd.DataFrame,
    choose: str,
    group_by: Sequence[str],
    truth: np.ndarray,
    prediction: np.ndarray,
    bound: float | None = None,
) -> pd.DataFrame:
    """PERFGEN's decision question scored against measurements: per configuration (`group_by` values), which
    value of `choose` (e.g. the thread count) to run with, picked once from the measured times (`truth`) and
    once from the predicted ones (`prediction`), each averaged per `choose` value. Without `bound`: the
    fastest value. With it: the smallest value whose mean time meets the bound (<= bound), else the fastest.
    One row per configuration with at least two values of `choose` (otherwise there is nothing to choose):
    the group's values, `measured`, `predicted` and `hit` (they agree). Hit rate: `hit.mean()`."""
    missing = [c for c in [choose, *group_by] if c not in table.columns]
    if missing:
        raise BadInput(f"choice columns {missing} are not in the table; columns: {sorted(table.columns)}")
    frame = (
        table[[*group_by, choose]]
        .reset_index(drop=True)
        .assign(_truth=np.asarray(truth, np.float64), _pred=np.asarray(prediction, np.float64))
    )
    rows = []
    for keys, part in frame.groupby(list(group_by), sort=True, dropna=False):
        means = part.groupby(choose, sort=True)[["_truth", "_pred"]].mean()
        if len(means) < 2:
            continue
        measured, predicted = _pick(means["_truth"], bound), _pick(means["_pred"], bound)
        keys = keys if isinstance(keys, tuple) else (keys,)
        rows.append({**dict(zip(group_by, keys, strict=True)), "measured": measured, "predicted": predicted})
    out = pd.DataFrame(rows, columns=[*group_by, "measured", "predicted"])
    return out.assign(hit=out["measured"] == out["predicted"])


def _pick(times: pd.Series, bound: float | None) -> object:
    """The smallest index value whose time meets the bound, else (or without a bound) the fastest one."""
    if bound is not None:
        meeting = times[times <= bound]
        if not meeting.empty:
            return meeting.index[0]
    return times.idxmin()
