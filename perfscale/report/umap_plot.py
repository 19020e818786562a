"""UMAP projections of real vs synthetic rows for the report (PERFGEN's Figure 5).

For each synthetic set: the real train table and the set are each subsampled to at most MAX_ROWS (2000) rows
(seeded, the same real rows for every set), encoded together with the DCR encoding
(`perfscale.tabular.encode.encode`, fitted on the real rows: numeric columns standardised, categorical ones
one-hot), and embedded in 2-D by one UMAP fit on the union (n_neighbors 15, 200 epochs, fixed random_state).
Real and synthetic are drawn side by side on the same axes, coloured by class when there is a class column
(the `corrupt` stage's `target`, else the evaluate stage's ml_efficacy target, else a column named `target`,
if it has at most MAX_CLASSES values). A joint fit, not a fit on the real rows with the synthetic ones
transformed in: `transform` places new points next to their nearest real neighbours, which would hide
exactly the defects (shuffled, noisy rows) the figure is meant to show.

Speed. For fewer than 4096 rows umap-learn computes exact neighbours through a Python callback (~20 s for
2,700 rows); the neighbours are computed here with scikit-learn (exact, vectorised, ~0.1 s) and passed in as
`precomputed_knn`. umap-learn is imported, and numba compiles its kernels, only when a report embeds
something (once per process, ~10 s); each Digits-sized embedding (2 x 1,348 rows) then takes ~1.5 s, and is
cached under RUN/report/umap-cache/ keyed by a hash of the encoded rows and settings, so rebuilding a report
recomputes nothing. ``PERFSCALE_REPORT_UMAP=0`` leaves the projections out of reports.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from perfscale.extras import require
from perfscale.tabular.columns import TASK_KEY_COLUMN

if TYPE_CHECKING:
    from perfscale.plan.planner import Plan, Task
    from perfscale.store.run import RunStore

N_NEIGHBORS = 15
N_EPOCHS = 200  # umap-learn's default for large data; its 500 for < 10,000 rows triples the time
MAX_ROWS = 2000
SEED = 0
MIN_ROWS = 5  # fewer real or synthetic rows than this: no projection
MAX_CLASSES = 20  # a class column with more distinct values is not used for colour
ENV_SWITCH = "PERFSCALE_REPORT_UMAP"
CACHE_FOLDER = "umap-cache"


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass
class Projection:
    """One set's embedding: the real and synthetic rows' 2-D coordinates and classes (None: no colour)."""

    title: str
    real: np.ndarray
    synth: np.ndarray
    real_classes: np.ndarray | None
    synth_classes: np.ndarray | None


def subsample(table: pd.DataFrame, max_rows: int = MAX_ROWS, seed: int = SEED) -> pd.DataFrame:
    """At most `max_rows` rows, drawn with a fixed seed and kept in their original order."""
    if len(table) <= max_rows:
        return table.reset_index(drop=True)
    rows = np.sort(np.random.default_rng(seed).choice(len(table), size=max_rows, replace=False))
    return table.iloc[rows].reset_index(drop=True)


def class_column(real: pd.DataFrame, wanted: str | None) -> str | None:
    """`wanted` (or 'target') when it is a column with at most MAX_CLASSES values, else None."""
    for name in (wanted, "target"):
        if name and name in real.columns and 1 < real[name].nunique() <= MAX_CLASSES:
            return name
    return None


def encoded(real: pd.DataFrame, synth: pd.DataFrame) -> np.ndarray:
    """Both tables in one standardised / one-hot space (fitted on `real`), stacked real first."""
    from perfscale.tabular.encode import encode
    from perfscale.tabular.meta import infer_meta

    meta = infer_meta(real)
    x_real, x_synth = encode([real, synth[list(real.columns)]], meta)
    return np.vstack([x_real, x_synth])


def _cache_key(x: np.ndarray, n_neighbors: int, seed: int) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:  # not `umap.__version__`: a cache hit must not import umap
        umap_version = version("umap-learn")
    except PackageNotFoundError:
        require("synth", "umap", "the report's UMAP plots")
        raise
    digest = hashlib.sha256(np.ascontiguousarray(x, dtype="float64").tobytes())
    digest.update(f"{x.shape}|{n_neighbors}|{N_EPOCHS}|{seed}|{umap_version}".encode())
    return digest.hexdigest()[:32]


def embed(
    x: np.ndarray, n_neighbors: int = N_NEIGHBORS, seed: int = SEED, cache: Path | None = None
) -> np.ndarray:
    """2-D UMAP embedding of the rows of `x` (exact neighbours precomputed), cached in `cache` if given."""
    path = cache / f"{_cache_key(x, n_neighbors, seed)}.npy" if cache is not None else None
    if path is not None and path.exists():
        return np.load(path)
    umap = require("synth", "umap", "the report's UMAP plots")  # slow to import (numba): only when needed
    from sklearn.neighbors import NearestNeighbors

    k = min(n_neighbors, len(x) - 1)
    distances, indices = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)
    with warnings.catch_warnings():  # random_state disables parallelism; duplicates make a few warnings
        warnings.simplefilter("ignore")
        knn = (indices, distances, None)
        model = umap.UMAP(n_neighbors=k, n_epochs=N_EPOCHS, random_state=seed, precomputed_knn=knn)
        out = np.asarray(model.fit_transform(x), dtype="float64")
    if path is not None:
        from perfscale.store.atomic import atomic_write

        atomic_write(path, lambda tmp: _save_npy(out, tmp))
    return out


def _save_npy(array: np.ndarray, path: Path) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def project(
    real: pd.DataFrame, synth: pd.DataFrame, title: str, target: str | None, cache: Path | None = None
) -> Projection | None:
    """The projection of one synthetic set against the real table (None when either has too few rows)."""
    real, synth = subsample(real), subsample(synth)
    if min(len(real), len(synth)) < MIN_ROWS:
        return None
    x = encoded(real, synth)
    xy = embed(x, cache=cache)
    classes = class_column(real, target)
    real_classes = real[classes].astype(str).to_numpy() if classes else None
    synth_classes = synth[classes].astype(str).to_numpy() if classes else None
    return Projection(title, xy[: len(real)], xy[len(real) :], real_classes, synth_classes)


def figure(projections: list[Projection], pairs_per_row: int = 2) -> bytes:
    """Real | synthetic panels side by side for each set, on shared axes, coloured by class."""
    from perfscale.report.plots import REAL_COLOUR, SYNTH_COLOUR, _grid, plt, to_png

    fig, axes = _grid(2 * len(projections), cols=2 * min(pairs_per_row, len(projections)), size=3.0)
    classes = sorted({c for p in projections for c in (p.real_classes if p.real_classes is not None else [])})
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    colour = {c: cmap(i % cmap.N) for i, c in enumerate(classes)}
    flat = list(axes.flat)
    for i, p in enumerate(projections):
        both = np.vstack([p.real, p.synth])
        lo, hi = both.min(axis=0), both.max(axis=0)
        pad = 0.05 * (hi - lo + 1e-9)
        for ax, xy, labels, who, default in (
            (flat[2 * i], p.real, p.real_classes, "real", REAL_COLOUR),
            (flat[2 * i + 1], p.synth, p.synth_classes, "synthetic", SYNTH_COLOUR),
        ):
            colours = [colour.get(c, "#999999") for c in labels] if labels is not None else default
            ax.scatter(xy[:, 0], xy[:, 1], s=3, c=colours, alpha=0.7, linewidths=0)
            ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
            ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{p.title}: {who} ({len(xy)})", fontsize=8)
    if classes:
        handles = [plt.Line2D([], [], ls="", marker="o", color=colour[c], label=c) for c in classes]
        flat[0].legend(handles=handles, fontsize=6, markerscale=0.8, ncol=2, loc="best", title_fontsize=6)
    return to_png(fig)


def _real_source(plan: Plan, task: Task) -> str | None:
    """The stage holding the real table behind a synthetic set: the nearest `source` param upstream."""
    by_key = {t.key: t for t in plan.tasks}
    current: Task | None = task
    while current is not None:
        if isinstance(current.params.get("source"), str):
            return str(current.params["source"])
        current = by_key.get(current.upstream_key) if current.upstream_key else None
    return None


def _class_param(plan: Plan, task: Task) -> str | None:
    """The class column a study names for a stage: its own `target` param, else the ml_efficacy target of
    an evaluate stage that runs on it."""
    if isinstance(task.params.get("target"), str):
        return str(task.params["target"])
    for t in plan.tasks:
        if t.upstream_stage == task.stage and t.kind == "evaluate":
            target = (t.params.get("options") or {}).get("ml_efficacy", {}).get("target")
            if isinstance(target, str):
                return target
    return None


def stage_projections(store: RunStore, stage: str) -> list[Projection]:
    """One projection per task (synthetic set) of a `sample` or `corrupt` stage, in plan order."""
    from perfscale.results.labels import describe_task, unique_labels
    from perfscale.tabular.columns import SPLIT_COLUMN, split_part

    plan = store.plan
    tasks = plan.of_stage(stage)
    synth = store.read_stage(stage, provenance=True).to_pandas()
    source = _real_source(plan, tasks[0])
    if synth.empty or source is None:
        return []
    real = store.read_stage(source, provenance=False).to_pandas()
    real = split_part(real, "train") if SPLIT_COLUMN in real else real
    target = _class_param(plan, tasks[0])
    cache = store.report_dir / CACHE_FOLDER
    sets = [(t, synth[synth[TASK_KEY_COLUMN] == t.key]) for t in tasks]
    sets = [(t, rows) for t, rows in sets if not rows.empty]
    titles = []
    for t, rows in sets:
        generator = str(rows["generator"].iloc[0]) if "generator" in rows else stage
        described = describe_task(plan, t.key)
        titles.append(f"{generator} ({described})" if described else generator)
    out = []
    for (_, rows), title in zip(sets, unique_labels(titles), strict=True):
        table = rows[[c for c in real.columns if c in rows.columns]]
        projection = project(real, table, title, target, cache)
        if projection is not None:
            out.append(projection)
    return out
