"""DCR, distance to closest record: how near synthetic rows are to real training rows (a privacy check).

Encoding: `perfscale.tabular.encode.encode` (its docstring states the rules), fitted on the real train table
only and shared by train, synthetic and holdout.

Distances are Euclidean in that space, nearest neighbours exact (scipy cKDTree), queried in chunks of
`chunk_size` rows so memory stays bounded; the result does not depend on row order, chunking or workers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from perfscale.errors import BadInput
from perfscale.metrics.columns import check_tables, is_int
from perfscale.metrics.registry import metric
from perfscale.tabular.encode import encode
from perfscale.tabular.meta import TableMeta

DEFAULT_CHUNK_SIZE = 8192


def nearest_distances(
    reference: np.ndarray, queries: np.ndarray, chunk_size: int, workers: int = 1
) -> np.ndarray:
    """Euclidean distance from each query row to its nearest reference row, `chunk_size` queries at a time."""
    tree = cKDTree(reference)
    parts = [
        tree.query(queries[i : i + chunk_size], k=1, workers=workers)[0]
        for i in range(0, len(queries), chunk_size)
    ]
    return np.concatenate(parts)


def share_closer(to_train: np.ndarray, to_holdout: np.ndarray) -> float:
    """Share of rows strictly closer to train than to holdout; exact ties count one half."""
    return float(np.mean((to_train < to_holdout) + 0.5 * (to_train == to_holdout)))


def _check_dcr_options(
    real: pd.DataFrame, holdout: pd.DataFrame | None, meta: TableMeta, chunk_size: int, workers: int
) -> None:
    if holdout is not None:
        check_tables(real, holdout, meta, what="holdout")
    if not is_int(chunk_size) or chunk_size < 1:
        raise BadInput(f"dcr: chunk_size must be a positive integer, not {chunk_size!r}")
    if not is_int(workers) or workers == 0 or workers < -1:
        raise BadInput(f"dcr: workers must be a positive integer or -1 (all cores), not {workers!r}")


@metric(
    "dcr",
    higher_is_better=None,
    description="Distance to closest record (train std units; 1 = one categorical mismatch). Larger "
    "synth_to_train distances mean less copying; with a holdout, share_closer_to_train is ideally 0.5 and "
    "1.0 for copies.",
    per="table",  # nearest neighbours use every column at once
)
def dcr(
    real: pd.DataFrame,
    synth: pd.DataFrame,
    meta: TableMeta,
    *,
    holdout: pd.DataFrame | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int = 1,
) -> dict[str, float]:
    """Components: synth_to_train_{median,mean,p05}; with a real `holdout` table also holdout_to_train_median
    (the distance a genuinely new real row has to train: the reference) and share_closer_to_train (ties half).
    The 0.5 ideal of share_closer_to_train assumes train and holdout are equally large samples.
    """
    _check_dcr_options(real, holdout, meta, chunk_size, workers)
    tables = [real, synth] if holdout is None else [real, synth, holdout.rename(columns=str)]
    encoded = encode(tables, meta)
    to_train = nearest_distances(encoded[0], encoded[1], int(chunk_size), int(workers))
    out = {
        "synth_to_train_median": float(np.median(to_train)),
        "synth_to_train_mean": float(np.mean(to_train)),
        "synth_to_train_p05": float(np.percentile(to_train, 5)),
    }
    if holdout is not None:
        holdout_to_train = nearest_distances(encoded[0], encoded[2], int(chunk_size), int(workers))
        to_holdout = nearest_distances(encoded[2], encoded[1], int(chunk_size), int(workers))
        out["holdout_to_train_median"] = float(np.median(holdout_to_train))
        out["share_closer_to_train"] = share_closer(to_train, to_holdout)
    return out
