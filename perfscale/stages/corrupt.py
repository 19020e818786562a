"""The `corrupt` stage: a synthetic-like table of known, graded badness, made from a split's real train part.

It stands in for a generator in metric validation studies (`workflows/metric_study.yaml`): its output is
shaped like the `sample` stage's (the train table's columns and dtypes plus a `generator` column, here naming
the corruption and level, e.g. ``noise@0.5``), so `evaluate` reads it the same way.

Rows: with `rows` unset, the train rows in their order; with `rows`, that many drawn from them (without
replacement when there are enough). Corruptions (`level` >= 0; fractions must be <= 1):

* ``identity``: those rows unchanged (the upper bound; also a total copy, which DCR should flag).
* ``noise``: every numeric column gets Gaussian noise of sd `level` x the column's train std (ddof 1), and the
  result is snapped back to the column's allowed values / rounded for integers / clipped to its train range
  (`perfscale.generators._tables.fix_numeric`, as generators do); every categorical/boolean value is replaced,
  with probability min(`level`, 1), by one of the column's other train categories drawn uniformly. Missing
  values stay missing; datetime columns are left alone. ``noise@0`` is ``identity``.
* ``shuffle``: round(`level` x m) of the m eligible columns, drawn at random, are each permuted independently:
  every marginal distribution is kept exactly, the correlations of a shuffled column with all others are
  broken.
* ``mode_collapse``: only max(1, round((1 - `level`) x K)) of the K classes, drawn at random, are kept, and
  the rows are training rows of those classes (the pool shuffled and cycled to the row count). Classes are
  the values of the `target` column when it is categorical/boolean or a discrete integer, else `clusters`
  k-means clusters of the DCR encoding (`perfscale.tabular.encode.encode`) of the train table.
* ``copy``: round(`level` x rows) rows, drawn at random, are exact training rows; the others get ``noise`` at
  level `jitter` (so ``copy@1`` is ``identity``). At least that many rows are exact copies (a jittered row of
  discrete columns may snap back onto its original).

`include_target: false` keeps the `target` column out of ``noise`` and ``shuffle`` (features only; the label
then gets a ``_features`` suffix). Every random draw comes from the task's seed, so a task is reproducible.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from perfscale.errors import BadInput
from perfscale.stages.base import StageContext, StageParams, stage_kind
from perfscale.stages.train import real_table
from perfscale.tabular.meta import TableMeta

if TYPE_CHECKING:
    from perfscale.plan.named import PlanCheck

Corruption = Literal["identity", "noise", "shuffle", "mode_collapse", "copy"]
FRACTIONS = ("shuffle", "mode_collapse", "copy")  # corruptions whose level is a fraction in [0, 1]
DEFAULT_TARGET = "target"
GENERATOR_COLUMN = "generator"


class CorruptParams(StageParams):
    source: str = Field(description="the `split` stage whose train part is corrupted (listed in `inputs`)")
    corruption: Corruption
    level: float = Field(0.0, ge=0, description="noise: std multiple; shuffle/mode_collapse/copy: fraction")
    rows: int | None = Field(None, gt=0, description="rows to make (default: as many as the train part)")
    target: str | None = Field(None, description=f"class column (default: {DEFAULT_TARGET!r} if present)")
    include_target: bool = Field(True, description="noise/shuffle also corrupt the target column")
    clusters: int = Field(10, ge=2, description="mode_collapse without a class column: k-means clusters")
    jitter: float = Field(0.1, ge=0, description="copy: noise level of the rows that are not copies")
    label: str | None = Field(None, description="the `generator` value (default e.g. 'noise@0.5')")

    @model_validator(mode="after")
    def _fraction(self) -> CorruptParams:
        if self.corruption in FRACTIONS and self.level > 1:
            raise ValueError(f"level {self.level} of corruption {self.corruption!r} is a fraction: use 0..1")
        return self

    def plan_check(self, check: PlanCheck) -> None:
        check.source("source", self.source)

    def default_label(self) -> str:
        if self.corruption == "identity":
            return "identity"
        suffix = "_features" if not self.include_target and self.corruption in ("noise", "shuffle") else ""
        return f"{self.corruption}{suffix}@{self.level:g}"


def target_column(table: pd.DataFrame, target: str | None) -> str | None:
    """The class column: `target` (must exist), else a column named 'target', else None."""
    if target is not None:
        if target not in table.columns:
            raise BadInput(f"corrupt.target names {target!r}, not a column; columns: {sorted(table.columns)}")
        return target
    return DEFAULT_TARGET if DEFAULT_TARGET in table.columns else None


def add_noise(
    table: pd.DataFrame, meta: TableMeta, columns: list[str], level: float, rng: np.random.Generator
) -> pd.DataFrame:
    """Gaussian noise on numeric `columns`, category flips on categorical ones (see the module docstring)."""
    from perfscale.generators._tables import fix_numeric

    out = table.copy()
    n = len(out)
    for name in columns:
        col = meta.columns[name]
        if col.is_numeric:
            x = pd.to_numeric(out[name], errors="coerce").to_numpy(dtype=float)
            std = float(np.nanstd(x, ddof=1)) if np.isfinite(x).sum() > 1 else 0.0
            noisy = fix_numeric(x + rng.normal(0.0, 1.0, n) * level * std, col)
            out[name] = pd.Series(noisy, index=out.index).astype(out[name].dtype)
        elif col.type in ("categorical", "boolean"):
            out[name] = _flip(out[name], min(level, 1.0), rng)
    return out


def _flip(series: pd.Series, p: float, rng: np.random.Generator) -> pd.Series:
    """Each present value replaced with probability p by another of the series' categories (uniformly)."""
    categories = pd.unique(series.dropna())
    codes = pd.Categorical(series, categories=categories).codes
    k = len(categories)
    flip = (rng.random(len(series)) < p) & (codes >= 0)
    if k < 2 or not flip.any():
        return series.copy()
    draw = rng.integers(0, k - 1, size=len(series))
    new = np.where(draw >= codes, draw + 1, draw)  # uniform over the k - 1 other categories
    values = series.to_numpy(dtype=object).copy()
    values[flip] = categories[new[flip]]
    return pd.Series(values, index=series.index).astype(series.dtype)


def shuffle_columns(
    table: pd.DataFrame, columns: list[str], level: float, rng: np.random.Generator
) -> pd.DataFrame:
    """round(level x len(columns)) of `columns`, drawn at random, each permuted independently."""
    out = table.copy()
    k = round(level * len(columns))
    for name in rng.choice(np.asarray(columns, dtype=object), size=k, replace=False):
        out[name] = out[name].to_numpy()[rng.permutation(len(out))]
    return out


def class_labels(
    table: pd.DataFrame, meta: TableMeta, target: str | None, clusters: int, seed: int
) -> np.ndarray:
    """Each row's class: the target's value when it is discrete, else its k-means cluster."""
    if target is not None:
        col = meta.columns[target]
        if col.type in ("categorical", "boolean") or (col.type == "integer" and col.allowed):
            return table[target].astype(str).to_numpy()
    from sklearn.cluster import KMeans

    from perfscale.tabular.encode import encode

    x = encode([table], meta)[0]
    k = min(clusters, len(table))
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x).astype(str)


def collapse_modes(
    table: pd.DataFrame, labels: np.ndarray, level: float, n: int, rng: np.random.Generator
) -> pd.DataFrame:
    """n rows drawn from the rows of max(1, round((1 - level) K)) of the K classes (pool cycled)."""
    classes = np.unique(labels)
    keep = max(1, round((1.0 - level) * len(classes)))
    kept = rng.choice(classes, size=keep, replace=False)
    pool = rng.permutation(np.flatnonzero(np.isin(labels, kept)))
    return table.iloc[np.resize(pool, n)].reset_index(drop=True)


def corrupt_table(train: pd.DataFrame, params: CorruptParams, seed: int) -> pd.DataFrame:
    """The corrupted table (without the `generator` column); a pure function of its inputs."""
    from perfscale.tabular.meta import infer_meta

    if len(train) < 2:
        raise BadInput(f"corrupt: the train part of {params.source!r} has {len(train)} row(s); need >= 2")
    meta = infer_meta(train)
    target = target_column(train, params.target)
    rng_rows, rng = (np.random.default_rng([seed, stream]) for stream in (0, 1))
    n = params.rows or len(train)
    if params.corruption == "mode_collapse":
        labels = class_labels(train, meta, target, params.clusters, seed)
        return collapse_modes(train, labels, params.level, n, rng)
    if params.rows is None:
        base = train.reset_index(drop=True)
    else:
        base = train.iloc[rng_rows.choice(len(train), size=n, replace=n > len(train))].reset_index(drop=True)
    eligible = [c for c in base.columns if params.include_target or c != target]
    if params.corruption == "noise":
        return add_noise(base, meta, eligible, params.level, rng)
    if params.corruption == "shuffle":
        return shuffle_columns(base, eligible, params.level, rng)
    if params.corruption == "copy":
        jittered = add_noise(base, meta, list(base.columns), params.jitter, rng)
        exact = rng.choice(n, size=round(params.level * n), replace=False)
        jittered.iloc[exact] = base.iloc[exact]
        return jittered
    return base


@stage_kind("corrupt", CorruptParams)
def corrupt(ctx: StageContext, params: CorruptParams) -> pd.DataFrame:
    """A corrupted copy of a split's train part, labelled like a sample (`generator` = e.g. noise@0.5)."""
    train = real_table(ctx, params.source, "train")
    if GENERATOR_COLUMN in train.columns:
        raise BadInput(f"{params.source!r} already has a column named {GENERATOR_COLUMN!r}")
    table = corrupt_table(train, params, ctx.seed)
    return table.assign(**{GENERATOR_COLUMN: params.label or params.default_label()})
