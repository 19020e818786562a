"""Run one model over one split: build the features, split, resample the training rows, fit, predict the
test rows and score them. The `fit_predict` stage is this function plus the run store."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from perfscale.errors import BadInput
from perfscale.models.base import is_categorical
from perfscale.models.features import (
    apply_nan_rule,
    calendar_features,
    check_classes,
    check_submit_time,
    history_features,
)
from perfscale.models.registry import build_model
from perfscale.models.resample import Resample, resample_training
from perfscale.models.scoring import class_scores, regression_scores, vector_scores
from perfscale.models.splits import SplitKind, make_splits

log = logging.getLogger(__name__)


@dataclass
class FitSpec:
    targets: list[str]
    features: list[str]
    model: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    split: SplitKind = "random"
    test_fraction: float = 0.25
    folds: int = 5
    group_column: str | None = None
    time_column: str | None = None
    calendar: bool = False
    history_by: list[str] = field(default_factory=list)
    history_outcome: str | None = None
    end_columns: list[str] | None = None
    resample: Resample = "none"
    allow_post_submit_features: bool = False
    post_submit_columns: list[str] = field(default_factory=list)
    nan: Literal["error", "drop"] = "error"
    rows: int | None = None
    one_hot: list[str] = field(default_factory=list)
    classes: list[str] | None = None


def prepare(table: pd.DataFrame, spec: FitSpec, seed: int) -> tuple[pd.DataFrame, list[str]]:
    """The table with derived features added and the full feature list; checks inputs first."""
    inputs = [*spec.features, *spec.one_hot]
    check_submit_time(inputs, spec.allow_post_submit_features, spec.post_submit_columns)
    missing = [c for c in spec.targets if c not in table.columns]
    if missing:
        raise BadInput(f"target columns {missing} are not in the input; columns: {sorted(table.columns)}")
    missing = [c for c in spec.features if c not in table.columns]
    if missing:
        raise BadInput(f"feature columns {missing} are not in the input; columns: {sorted(table.columns)}")
    overlap = sorted(set(spec.targets) & set(inputs))
    if overlap:
        raise BadInput(f"columns {overlap} are both target and feature")
    # `row` is the position in the input, so numbered before rows of other classes are dropped
    table = table.reset_index(drop=True).assign(_row=np.arange(len(table)))
    if spec.classes is not None:
        table = keep_classes(table, spec.targets, spec.classes)
    features = list(spec.features)
    # history is computed on the whole trace before any subsampling: a job's history is every earlier job
    if spec.history_by:
        if spec.time_column is None:
            raise BadInput("history_by needs time_column (the submit time)")
        hist = history_features(
            table, spec.history_by, spec.time_column, spec.end_columns, spec.history_outcome
        )
        table = pd.concat([table, hist], axis=1)
        features += list(hist.columns)
    if spec.calendar:
        if spec.time_column is None:
            raise BadInput("calendar: true needs time_column (the submit time, Unix seconds)")
        cal = calendar_features(table[spec.time_column])
        table = pd.concat([table, cal], axis=1)
        features += list(cal.columns)
    for column in spec.one_hot:  # categories from the whole table: known inputs, no target in them
        if column not in table.columns:
            raise BadInput(f"one_hot column {column!r} is not in the input; columns: {sorted(table.columns)}")
        values = table[column].astype(str)
        dummies = {f"{column}={v}": (values == v).astype(np.float64) for v in sorted(values.unique())}
        table = table.assign(**dummies)
        features += list(dummies)
    table, dropped = apply_nan_rule(table, features, spec.nan)
    if dropped:
        log.warning("dropped %d rows with NaN features (nan: drop)", dropped)
    if spec.rows is not None and spec.rows < len(table):
        keep = np.sort(np.random.default_rng([seed, 7]).choice(len(table), spec.rows, replace=False))
        table = table.iloc[keep]
    return table.reset_index(drop=True), features


def keep_classes(table: pd.DataFrame, targets: list[str], classes: list[str]) -> pd.DataFrame:
    """Only the rows whose (single) target is one of `classes`; the others are dropped and counted (sacct's
    RUNNING, PENDING or REQUEUED records have no end state yet). Before any feature: a dropped job is not in
    the history of later jobs either."""
    if len(targets) != 1 or not is_categorical(table[targets[0]]):
        raise BadInput(f"classes filters one class target; targets {targets} are not one class column")
    labels = table[targets[0]].astype(str)
    absent = sorted(set(classes) - set(labels))
    if absent:
        raise BadInput(f"classes {absent} do not occur in {targets[0]!r}; it holds {sorted(labels.unique())}")
    keep = labels.isin(classes)
    dropped = labels[~keep].value_counts()
    if len(dropped):
        counts = {str(k): int(v) for k, v in dropped.items()}
        n = sum(counts.values())
        log.warning("dropped %d rows whose %s is not in classes: %s", n, targets[0], counts)
    return table[keep.to_numpy()]


def fit_predict(table: pd.DataFrame, spec: FitSpec, seed: int, model_dir: Path | None = None) -> pd.DataFrame:
    """One row per tested row (every fold's test rows): `row` (position in the input), `fold`, truth and
    prediction (`truth_label`/`prediction_label` and `prob_<class>` for classes, `truth_<t>`/`pred_<t>` for
    regression), the training size before and after resampling, and the fold's scores."""
    table, features = prepare(table, spec, seed)
    classify = len(spec.targets) == 1 and is_categorical(table[spec.targets[0]])
    if classify:
        check_classes(table[spec.targets[0]], spec.targets[0])
    elif spec.resample != "none":
        raise BadInput(f"resample {spec.resample!r} is for class targets; {spec.targets} are numeric")
    folds = make_splits(
        table,
        spec.split,
        seed=seed,
        test_fraction=spec.test_fraction,
        k=spec.folds,
        stratify=spec.targets[0] if classify else None,
        group_column=spec.group_column,
        time_column=spec.time_column,
    )
    parts = []
    for i, (train_idx, test_idx) in enumerate(folds):
        train, test = table.iloc[train_idx], table.iloc[test_idx]
        model = build_model(spec.model, spec.hyperparameters, seed=seed)
        if classify:
            target = spec.targets[0]
            classes = sorted(table[target].astype(str).unique())
            y = train[target].astype(str).map({c: j for j, c in enumerate(classes)}).to_numpy(np.int64)
            if len(np.unique(y)) < len(classes):
                raise BadInput(f"split {spec.split!r} fold {i}: a class is missing from the training rows")
            x, y = resample_training(train[features].to_numpy(np.float64), y, spec.resample, seed + i)
            fit_table = pd.DataFrame(x, columns=features).assign(**{target: np.asarray(classes)[y]})
            model.fit(fit_table, [target], features, task="classification")
            proba = model.predict_proba(test)
            truth = test[target].astype(str).map({c: j for j, c in enumerate(model.classes)}).to_numpy()
            scores: dict[str, Any] = class_scores(truth, proba, model.classes)
            out = pd.DataFrame(
                {
                    "truth_label": test[target].astype(str).to_numpy(),
                    "prediction_label": np.asarray(model.classes, dtype=object)[proba.argmax(axis=1)],
                    **{f"prob_{c}": proba[:, j] for j, c in enumerate(model.classes)},
                }
            )
        else:
            model.fit(train, spec.targets, features, task="regression")
            pred = model.predict(test)
            truth = test[spec.targets].to_numpy(np.float64)
            scores = regression_scores(truth, pred.to_numpy(np.float64), spec.targets)
            if len(spec.targets) > 1:
                scores |= vector_scores(truth, pred.to_numpy(np.float64))
            out = pd.DataFrame(
                {
                    **{f"truth_{t}": truth[:, j] for j, t in enumerate(spec.targets)},
                    **{f"pred_{t}": pred[t].to_numpy(np.float64) for t in spec.targets},
                }
            )
        if model_dir is not None and i == len(folds) - 1:
            model.save(model_dir)
        parts.append(
            out.assign(
                row=test["_row"].to_numpy(),
                fold=i,
                train_rows=len(train),
                train_rows_fitted=len(x) if classify else len(train),
                test_rows=len(test),
                **scores,
            )
        )
    grouped = spec.group_column and spec.split != "time"
    split = f"{spec.split}:{spec.group_column}" if grouped else spec.split  # how rows were grouped
    return pd.concat(parts, ignore_index=True).assign(
        model=spec.model, split=split, resample=spec.resample, features=",".join(features)
    )
