"""Train/test splits as lists of (train rows, test rows) index arrays (positions into the table).

* `holdout` / `random`: one seeded shuffle, `test_fraction` of the rows tested (stratified by class when the
  target is a class, so each class is on both sides); with `group_column`, whole groups go to one side
  (about `test_fraction` of the groups tested: rows of one relative-performance vector never straddle);
* `kfold`: k seeded folds (stratified for classes; with `group_column`, whole groups per fold); every row is
  tested once;
* `group`: leave one group out (one fold per distinct value of `group_column`: a user, a kernel, a machine);
* `given`: the `split` stage's own partition: rows labelled `train` in its `split` column are trained on,
  rows labelled `holdout` tested (so direct regressors and prediction by generation see the same rows);
* `time`: time-ordered: train on the earliest rows, test on the latest `test_fraction` by `time_column`;
  rows that share the cut's time all go to the test side, so no test row is earlier than a training row.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from perfscale.errors import BadInput

SplitKind = Literal["holdout", "random", "kfold", "group", "time", "given"]
Fold = tuple[np.ndarray, np.ndarray]


def make_splits(
    table: pd.DataFrame,
    kind: SplitKind,
    *,
    seed: int = 0,
    test_fraction: float = 0.25,
    k: int = 5,
    stratify: str | None = None,
    group_column: str | None = None,
    time_column: str | None = None,
) -> list[Fold]:
    n = len(table)
    if kind == "given":
        from perfscale.tabular.columns import SPLIT_COLUMN

        if SPLIT_COLUMN not in table.columns:
            raise BadInput(f"split 'given' needs a {SPLIT_COLUMN!r} column (train | holdout): read a split")
        part = table[SPLIT_COLUMN].astype(str).to_numpy()
        train, test = np.flatnonzero(part == "train"), np.flatnonzero(part == "holdout")
        if len(train) == 0 or len(test) == 0:
            raise BadInput(f"split 'given': {len(train)} train and {len(test)} holdout rows; need both")
        return [(train, test)]
    if group_column is not None and group_column not in table.columns:
        raise BadInput(f"split {kind!r}: group_column {group_column!r} is not a column of the table")
    if kind in ("holdout", "random", "kfold") and group_column is not None:
        from sklearn.model_selection import GroupKFold, GroupShuffleSplit

        groups = table[group_column].astype(str).to_numpy()
        if kind == "kfold":
            if len(np.unique(groups)) < k:
                raise BadInput(f"split 'kfold': {group_column!r} has fewer than k={k} groups")
            splitter = GroupKFold(k, shuffle=True, random_state=seed)
        else:
            if len(np.unique(groups)) < 2:
                raise BadInput(f"split {kind!r}: {group_column!r} has one group; whole groups need two")
            splitter = GroupShuffleSplit(1, test_size=test_fraction, random_state=seed)
        return [(np.sort(a), np.sort(b)) for a, b in splitter.split(np.zeros(n), groups=groups)]
    if kind in ("holdout", "random"):
        from sklearn.model_selection import train_test_split

        labels = table[stratify].astype(str).to_numpy() if stratify else None
        train, test = train_test_split(
            np.arange(n), test_size=test_fraction, random_state=seed, stratify=labels
        )
        return [(np.sort(train), np.sort(test))]
    if kind == "kfold":
        from sklearn.model_selection import KFold, StratifiedKFold

        if stratify:
            folds = StratifiedKFold(k, shuffle=True, random_state=seed).split(
                np.zeros(n), table[stratify].astype(str)
            )
        else:
            folds = KFold(k, shuffle=True, random_state=seed).split(np.zeros(n))
        return [(np.asarray(a), np.asarray(b)) for a, b in folds]
    if kind == "group":
        if group_column is None or group_column not in table.columns:
            raise BadInput(f"split 'group' needs group_column naming a column; got {group_column!r}")
        groups = table[group_column].astype(str).to_numpy()
        values = np.unique(groups)
        if len(values) < 2:
            raise BadInput(f"split 'group': column {group_column!r} has one value; leave-one-out needs two")
        return [(np.flatnonzero(groups != g), np.flatnonzero(groups == g)) for g in values]
    if kind == "time":
        if time_column is None or time_column not in table.columns:
            raise BadInput(f"split 'time' needs time_column naming a column; got {time_column!r}")
        from perfscale.models.features import unix_seconds

        t = unix_seconds(table[time_column])
        if not np.isfinite(t).all():
            raise BadInput(f"split 'time': column {time_column!r} has missing times; drop those rows first")
        cut = np.sort(t)[int(np.floor(n * (1 - test_fraction)))]
        train, test = np.flatnonzero(t < cut), np.flatnonzero(t >= cut)
        if len(train) == 0:
            raise BadInput(f"split 'time': every row has the cut's time {cut}; nothing earlier to train on")
        return [(train, test)]
    raise BadInput(f"unknown split {kind!r}; choose holdout, random, kfold, group, time or given")
