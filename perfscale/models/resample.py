"""SMOTETomek (imbalanced-learn) on a training split.

Resampling is applied to the training rows of each split only, after the split. Applied before the split
(as the VU thesis did), SMOTE's synthetic rows are interpolations between real rows, so test rows end up
with near copies of themselves (and of their neighbours) in the training set, and Tomek-link cleaning
removes hard border rows from what becomes the test set: the test set is then neither real nor unseen,
and the scores are optimistic.

The resampling runs on one thread, so its result does not depend on the machine (see below).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

from perfscale.errors import BadInput
from perfscale.extras import require

log = logging.getLogger(__name__)
Resample = Literal["none", "smotetomek"]


def resample_training(
    x: np.ndarray, y: np.ndarray, method: Resample, seed: int, k_neighbors: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """The training rows after `method` (class indices in `y`); `none` returns them unchanged."""
    if method == "none":
        return x, y
    if method != "smotetomek":
        raise BadInput(f"unknown resampling {method!r}; choose none or smotetomek")
    combine = require("synth", "imblearn.combine", "resample: smotetomek (imbalanced-learn)")
    from imblearn.over_sampling import SMOTE

    smallest = int(np.bincount(y).min())
    if smallest < 2:
        raise BadInput(f"resample: a training class has {smallest} row; SMOTE needs two or more")
    k = min(k_neighbors, smallest - 1)
    from threadpoolctl import threadpool_limits

    sampler = combine.SMOTETomek(smote=SMOTE(k_neighbors=k, random_state=seed), random_state=seed)
    # one thread: with several, the neighbour search breaks distance ties (repeated rows are common in job
    # traces) in a thread-dependent order, and Tomek cleaning removes different rows (34,098 vs 34,102
    # training rows on Mira with 2 threads vs 1)
    with threadpool_limits(1):
        xr, yr = sampler.fit_resample(x, y)
    log.info("SMOTETomek: %d training rows -> %d", len(y), len(yr))
    return np.asarray(xr, dtype=np.float64), np.asarray(yr, dtype=np.int64)
