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
        if c in ("auc_macro", "accuracy", "f1_macro", "vector_mae", "vector_r2", "sos")
        or c.startswith(("f1_", "mae_", "r2_"))
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


def pooled_vector_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Relative-performance scores over every fold's test rows pooled, one row per model x split x resampling:
    MAE over all elements and per target, mean R^2 over targets, Same Order Score, and how much lower the MAE
    is than the mean baseline's on the same split (Nichols' "better than mean"). Pooled, not a mean over
    folds: with leave-one-kernel-out a fold holds one kernel, whose R^2 alone says little."""
    from perfscale.models.scoring import regression_scores, vector_scores

    targets = [c[len("truth_") :] for c in df.columns if c.startswith("truth_") and c != "truth_label"]
    rows = []
    for keys, part in df.groupby(KEYS):
        truth = part[[f"truth_{t}" for t in targets]].to_numpy(np.float64)
        pred = part[[f"pred_{t}" for t in targets]].to_numpy(np.float64)
        per_target = regression_scores(truth, pred, targets)
        rows.append(
            {
                **dict(zip(KEYS, keys, strict=True)),
                **vector_scores(truth, pred),
                "rows": len(part),
                **{k: v for k, v in per_target.items() if k.startswith("mae_")},
            }
        )
    table = pd.DataFrame(rows)
    mean = table[table["model"] == "mean"].set_index(["split", "resample"])["vector_mae"]
    ref = [mean.get((sp, rs), np.nan) for sp, rs in zip(table["split"], table["resample"], strict=True)]
    table.insert(6, "mae_below_mean_pct", 100 * (1 - table["vector_mae"].to_numpy() / np.asarray(ref)))
    return table


def vector_table(df: pd.DataFrame) -> pd.DataFrame:
    return pooled_vector_scores(df)[[*KEYS, "vector_mae", "vector_r2", "sos", "mae_below_mean_pct", "rows"]]


def sos_bars(df: pd.DataFrame) -> bytes:
    """Same Order Score per model, one bar per split."""
    table = vector_table(df)
    splits = sorted(table["split"].unique())
    models = sorted(table["model"].unique())
    fig, ax = plt.subplots(figsize=(1.2 * len(models) + 3, 3.5))
    width = 0.8 / len(splits)
    for i, sp in enumerate(splits):
        part = table[table["split"] == sp].set_index("model").reindex(models)
        ax.bar(np.arange(len(models)) + i * width, part["sos"], width, label=sp)
    ax.set_xticks(np.arange(len(models)) + width * (len(splits) - 1) / 2, models)
    ax.set_ylabel("Same Order Score")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    return to_png(fig)


def mae_heatmap(df: pd.DataFrame) -> bytes:
    """MAE per target (machine) and model x split, over the pooled test rows."""
    table = pooled_vector_scores(df)
    cols = [c for c in table.columns if c.startswith("mae_") and c != "mae_below_mean_pct"]
    matrix = table[cols].to_numpy(np.float64)
    fig, ax = plt.subplots(figsize=(1.0 * len(cols) + 3, 0.4 * len(table) + 1.5))
    im = ax.imshow(matrix, cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(len(cols)), [c[len("mae_") :] for c in cols], rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(table)), label(table), fontsize=7)
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(im, ax=ax, label="MAE")
    return to_png(fig)


def policy_bars(df: pd.DataFrame) -> bytes:
    """Makespan and mean wait per placement policy (the `simulate` stage)."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, col in zip(axes, ["makespan", "mean_wait"], strict=True):
        ax.bar(df["policy"], df[col], color=[f"C{i}" for i in range(len(df))])
        ax.set_ylabel(col.replace("_", " "))
        ax.set_yscale("log")
    return to_png(fig)
