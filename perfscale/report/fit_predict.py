"""Report section of `fit_predict` stages: scores per model, split and resampling, one-vs-rest ROC curves
per class, and confusion matrices (classes); MAE and R^2 per target (regression)."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from perfscale.report.plots import _grid, to_png

KEYS = ["model", "split", "resample"]


def label(df: pd.DataFrame) -> pd.Series:
    return df["model"] + " / " + df["split"] + " / " + df["resample"]


def score_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over folds of each task's scores, one row per model x split x resampling."""
    scores = [
        c
        for c in df.columns
        if c in ("auc_macro", "accuracy", "f1_macro") or c.startswith(("f1_", "mae_", "r2_"))
    ]
    per_fold = df.groupby([*KEYS, "fold"])[[*scores, "train_rows", "train_rows_fitted", "test_rows"]].first()
    return per_fold.groupby(KEYS).mean().reset_index().sort_values(KEYS)


def roc_curves(df: pd.DataFrame) -> bytes:
    """One panel per class: each model x split x resampling's ROC curve of that class against the rest."""
    from perfscale.models.scoring import roc_points

    classes = sorted(c[len("prob_") :] for c in df.columns if c.startswith("prob_"))
    fig, axes = _grid(len(classes), cols=3, size=4.0)
    df = df.assign(_label=label(df))
    models = sorted(df["model"].unique())
    for ax, cls in zip(axes.flat, classes, strict=False):
        for name, part in df.groupby("_label"):
            # colour: the model; line: solid random, dashed time-ordered; thin with resampling
            first = part.iloc[0]
            style = {
                "color": f"C{models.index(first['model']) % 10}",
                "ls": "--" if first["split"] == "time" else "-",
                "lw": 0.7 if first["resample"] != "none" else 1.3,
            }
            probs = part[f"prob_{cls}"]
            keep = probs.notna()
            truth = (part["truth_label"] == cls)[keep]
            if truth.all() or not truth.any():
                continue
            fpr, tpr = roc_points(truth.to_numpy(), probs[keep].to_numpy())
            ax.plot(fpr, tpr, label=str(name), **style)
        ax.plot([0, 1], [0, 1], color="#999", lw=0.6, ls="--")
        ax.set_title(f"{cls} vs rest")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
    axes.flat[0].legend(fontsize=6, loc="lower right")
    return to_png(fig)


def confusion_table(df: pd.DataFrame) -> pd.DataFrame:
    """Summed confusion matrices over folds: rows (task, true class), columns the predicted classes."""
    rows = []
    for keys, part in df.groupby(KEYS):
        total = None
        classes: list[str] = []
        for text in part.groupby("fold")["confusion"].first():
            item = json.loads(text)
            classes = item["classes"]
            matrix = np.asarray(item["matrix"])
            total = matrix if total is None else total + matrix
        for i, c in enumerate(classes):
            rows.append(
                {"task": " / ".join(keys), "true class": c, **dict(zip(classes, total[i], strict=True))}
            )
    return pd.DataFrame(rows)


def predicted_vs_true(df: pd.DataFrame) -> bytes:
    targets = [c[len("truth_") :] for c in df.columns if c.startswith("truth_") and c != "truth_label"]
    fig, axes = _grid(len(targets), cols=3, size=4.0)
    df = df.assign(_label=label(df))
    for ax, t in zip(axes.flat, targets, strict=False):
        for name, part in df.groupby("_label"):
            ax.scatter(part[f"truth_{t}"], part[f"pred_{t}"], s=3, alpha=0.5, label=str(name))
        ax.set_title(t)
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
    axes.flat[0].legend(fontsize=6)
    plt.close("all")
    return to_png(fig)
