"""Conditional use of any generator: sampling under conditions, imputation, and recommendations.

Sampling under conditions (`sample_conditioned`): the generator's native conditioning is tried first
(`Generator._sample_conditioned`: an LLM's prompt prefix, TabDDPM's inpainting, SMOTE's restricted base rows);
generators without one, or conditions it cannot express (ranges), fall back to rejection sampling: draw,
post-process, keep the rows that meet every condition, and draw again with a batch sized from the acceptance
rate seen so far. The effort is bounded by `max_draws` drawn rows; when it is spent the call fails with the
acceptance rate, never spins. `Generator.last_sampling` says how it went.

Imputation (`impute`): for each row, the cells that are set are kept and the missing ones generated
conditioned on them. Native where the generator has `_impute` (cells it leaves missing, such as rows an
LLM could not complete within its budget, go to the generic method); otherwise by matching in a synthetic
pool: a pool of unconditioned samples is drawn, and each row takes its missing cells from the pool row that
agrees on every set categorical cell and is nearest (Euclidean, each column scaled by its pool standard
deviation) on the set numeric cells; categorical combinations the pool lacks are drawn under equality
conditions. When the model makes a combination too rarely for that draw's budget, the row falls back to a
relaxed match: the pool rows agreeing on the most of its set categorical cells, nearest on the numeric ones.
With `relax_unseen`, a categorical value never seen in training is dropped from the row's conditions (and
the row counts as a fallback) instead of being an error. `Generator.last_imputation` says which rows fell
back. Repeating with `draws` different seeds and taking the
mean / most frequent value gives a point prediction.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from perfscale.errors import BadInput
from perfscale.generators import _tables
from perfscale.generators.conditions import Conditions

if TYPE_CHECKING:
    from perfscale.generators._tables import TableSpec
    from perfscale.generators.base import Generator

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1
MAX_BATCH = 200_000  # rows drawn at once by rejection sampling (bounds memory)


def default_max_draws(n: int) -> int:
    """Rows rejection sampling may draw for `n` accepted ones: down to a 1% acceptance rate."""
    return max(10_000, 100 * n)


@dataclass
class SamplingReport:
    """How one `sample` call went: rows requested, drawn, meeting the conditions and returned (`accepted`),
    and how they were drawn. Sampling draws in batches, so `met` may exceed `requested`; the surplus is
    dropped."""

    requested: int
    drawn: int
    accepted: int  # rows returned: min(met, requested)
    met: int  # drawn rows that met the conditions
    method: str  # unconditioned | native | rejection | native+rejection
    conditions: str = ""

    @property
    def acceptance_rate(self) -> float:
        """The share of drawn rows that met the conditions (met / drawn), as measured."""
        return self.met / self.drawn if self.drawn else 1.0

    @classmethod
    def unconditioned(cls, n: int) -> SamplingReport:
        return cls(requested=n, drawn=n, accepted=n, met=n, method="unconditioned")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"acceptance_rate": self.acceptance_rate}


class ConditionsUnmet(BadInput):
    """Sampling spent its draw budget before enough drawn rows met the conditions."""


@dataclass(frozen=True)
class ImputationReport:
    """How one `impute` call went: the rows that had cells to fill, and those of them (positions in the
    table given) filled by the relaxed pool match, in at least one draw, because the model made their set
    categorical cells too rarely."""

    rows: int
    fallback_rows: tuple[int, ...]

    @property
    def fallback_share(self) -> float:
        return len(self.fallback_rows) / self.rows if self.rows else 0.0


class _Seeds:
    """A deterministic stream of sub-seeds derived from one seed."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def __call__(self) -> int:
        return int(self._rng.integers(0, MAX_SEED, endpoint=True))


def sample_conditioned(
    gen: Generator, spec: TableSpec, n: int, seed: int, conditions: Any, max_draws: int | None
) -> pd.DataFrame:
    conds = Conditions.parse(conditions).check(spec)
    if not conds:
        return gen.sample(n, seed)
    budget = default_max_draws(n) if max_draws is None else max_draws
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget < n:
        raise BadInput(f"max_draws must be an integer >= the rows requested ({n}), got {max_draws!r}")
    seeds = _Seeds(seed)
    parts: list[pd.DataFrame] = []
    have = drawn = 0
    methods: list[str] = []
    native = bool(set(spec.model_columns) & set(conds.columns))
    while have < n and drawn < budget:
        want, sub_seed = n - have, seeds()
        rate = have / drawn if drawn else None
        batch = want if rate is None else math.ceil(1.2 * want / max(rate, 1 / budget))
        batch = int(min(batch, budget - drawn, MAX_BATCH))
        rows = _native_rows(gen, spec, batch, sub_seed, conds) if native else None
        if rows is None:
            if "rejection" not in methods:
                _check_rejection_possible(gen, spec, conds)
            native = False
            batch = max(batch, min(1000, budget - drawn))
            raw = gen._sample(batch, sub_seed) if spec.model_columns else None
            rows = _tables.postprocess(raw, spec, batch, sub_seed)
            methods.append("rejection")
        else:
            methods.append("native")
        keep = conds.mask(rows)
        parts.append(rows[keep])
        have += int(keep.sum())
        drawn += len(rows)
    method = "+".join(dict.fromkeys(methods))
    gen.last_sampling = SamplingReport(n, drawn, min(have, n), have, method, str(conds))
    if have < n:
        raise ConditionsUnmet(_shortfall(conds, n, have, drawn))
    return pd.concat(parts, ignore_index=True).iloc[:n].reset_index(drop=True)


def _native_rows(
    gen: Generator, spec: TableSpec, n: int, seed: int, conds: Conditions
) -> pd.DataFrame | None:
    raw = gen._sample_conditioned(n, seed, conds)
    if raw is None or len(raw) == 0:
        return None
    return _tables.postprocess(raw, spec, len(raw), seed)


def _check_rejection_possible(gen: Generator, spec: TableSpec, conds: Conditions) -> None:
    """Equality on a continuous column is (almost surely) never met by rejection: say so at once."""
    for cond in conds.items:
        col = spec.meta.columns[cond.column]
        continuous = col.type == "numerical" and not col.allowed and cond.column not in spec.constants
        if cond.op in ("eq", "in") and continuous:
            raise BadInput(
                f"condition {cond}: {cond.column!r} is continuous, and the {gen.name} generator has no "
                "native conditioning for it, so rejection sampling would almost never draw that exact value; "
                f"use a range (e.g. {cond.column} between [low, high]) or impute() for exact values"
            )


def _shortfall(conds: Conditions, n: int, have: int, drawn: int) -> str:
    if have == 0:
        return (
            f"conditions {conds}: none of {drawn} drawn rows met them; the model does not generate such "
            "rows (acceptance rate 0); loosen the conditions or check them against the training data"
        )
    rate = have / drawn
    return (
        f"conditions {conds}: only {have} of {n} rows after drawing {drawn} (acceptance rate {rate:.3%}); "
        f"raise max_draws to about {math.ceil(1.2 * n / rate)} or loosen the conditions"
    )


# ---- imputation -----------------------------------------------------------------------------------------


def impute(
    gen: Generator, spec: TableSpec, table: pd.DataFrame, seed: int, draws: int, relax_unseen: bool = False
) -> pd.DataFrame:
    table, unseen = _check_impute_input(spec, table, draws, relax_unseen)
    model_cols = spec.model_columns
    known = _tables.model_table(table, spec)
    missing = known.isna().to_numpy()
    todo = np.flatnonzero(missing.any(axis=1))
    if unseen.any():  # relax_unseen: a value the model never saw is no condition (it stays in `out`)
        known = known.mask(unseen)
    filled = [known]
    fell_back = unseen[todo].any(axis=1)
    if len(todo):
        seeds = _Seeds(seed)
        subset = known.iloc[todo].reset_index(drop=True)
        filled = []
        for _ in range(draws):
            draw, relaxed = _impute_once(gen, spec, subset, seeds())
            filled.append(draw)
            fell_back |= relaxed
    gen.last_imputation = ImputationReport(len(todo), tuple(int(i) for i in todo[fell_back]))
    out = table.reset_index(drop=True).copy()
    for j, name in enumerate(model_cols):
        rows = todo[missing[todo, j]]
        if not len(rows):
            continue
        at = np.searchsorted(todo, rows)
        values = [f[name].to_numpy(object)[at] for f in filled]
        out[name] = out[name].astype(object)
        out.loc[rows, name] = _combine(values, spec.meta.columns[name])
    for name in spec.columns:
        if name in spec.constants:
            out[name] = out[name].where(out[name].notna(), spec.constants[name])
        if not out[name].isna().any():
            out[name] = out[name].astype(spec.dtype(name))
    out.index = table.index
    return out


def _check_impute_input(
    spec: TableSpec, table: Any, draws: Any, relax_unseen: bool
) -> tuple[pd.DataFrame, np.ndarray]:
    """The table with the generator's columns, and its categorical cells holding values never seen in
    training (rows x model columns; an error unless `relax_unseen`)."""
    if not isinstance(table, pd.DataFrame):
        raise BadInput(f"impute needs a pandas DataFrame, got {type(table).__name__}")
    if table.empty:
        raise BadInput("impute got an empty table; give rows with the cells to fill set to NaN")
    if isinstance(draws, bool) or not isinstance(draws, numbers.Integral) or draws < 1:
        raise BadInput(f"draws must be a positive integer, got {draws!r}")
    extra = [c for c in table.columns if c not in spec.meta.columns]
    if extra:
        raise BadInput(f"impute: columns {extra} are not the generator's; its columns are {spec.columns}")
    table = table.reindex(columns=spec.columns)  # absent columns are all missing
    unseen_cells = np.zeros((len(table), len(spec.model_columns)), dtype=bool)
    for j, name in enumerate(spec.model_columns):
        col, values = spec.meta.columns[name], table[name].dropna()
        if col.type in ("categorical", "boolean"):
            seen = {str(v) for v, _ in spec.category_values.get(name, [])}
            unseen = sorted({str(v) for v in values} - seen)
            if unseen and relax_unseen:
                text = table[name].astype(str)
                unseen_cells[:, j] = (table[name].notna() & ~text.isin(seen)).to_numpy()
            elif unseen:
                raise BadInput(
                    f"impute: column {name!r} holds {unseen[:5]}, never seen in training; the generator "
                    f"cannot condition on them (seen: {sorted(seen)[:20]})"
                )
        elif col.type in ("numerical", "integer") and pd.to_numeric(values, errors="coerce").isna().any():
            raise BadInput(f"impute: numeric column {name!r} holds non-numeric values")
    return table, unseen_cells


def _impute_once(
    gen: Generator, spec: TableSpec, known: pd.DataFrame, seed: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """One draw of the missing cells of `known` (index 0..n-1) and the rows that used the relaxed match."""
    raw = gen._impute(known, seed)
    relaxed: list[Any] = []
    if raw is None:
        raw, relaxed = _pool_impute(gen, spec, known, seed)
    else:
        unfilled = (raw.isna() & known.isna()).any(axis=1)  # what the native hook could not generate
        if unfilled.any():
            raw = raw.astype(object)
            size = 200 * int(unfilled.sum())
            pooled, relaxed = _pool_impute(gen, spec, known[unfilled], seed, pool_size=size)
            raw.loc[pooled.index, pooled.columns] = pooled
    fixed = _tables.postprocess(raw.reset_index(drop=True), spec, len(known), seed)[spec.model_columns]
    draw = fixed.astype(object).where(known.isna(), known.astype(object))
    return draw, known.index.isin(relaxed)


def _pool_impute(
    gen: Generator, spec: TableSpec, known: pd.DataFrame, seed: int, pool_size: int | None = None
) -> tuple[pd.DataFrame, list[Any]]:
    """Fill each row from the nearest pool row that agrees on its set categorical cells (see module doc).

    The pool holds `pool_size` rows (default 20 per row to fill, at least 2,000); a smaller one serves the
    few rows a native hook left, when sampling is costly (an LLM). Also returns the labels of the rows that
    fell back to a relaxed match (their categorical cells too rare for the model)."""
    from scipy.spatial import cKDTree

    seeds = _Seeds(seed)
    pool_size = int(min(pool_size or max(2000, 20 * len(known)), MAX_BATCH))
    pool = gen.sample(pool_size, seeds())
    out = known.astype(object).copy()
    relaxed: list[Any] = []
    numeric = set(spec.meta.numeric)
    pattern = known.notna()
    keys = pattern.apply(lambda r: tuple(r.to_numpy()), axis=1)
    for key, rows in keys.groupby(keys).groups.items():
        set_cols = [c for c, is_set in zip(known.columns, key, strict=True) if is_set]
        cats = [c for c in set_cols if c not in numeric]
        nums = [c for c in set_cols if c in numeric]
        part = known.loc[rows]
        groups = part.groupby(cats, dropna=False).groups if cats else {(): part.index}
        for values, idx in groups.items():
            values = values if isinstance(values, tuple) else (values,)
            equal = dict(zip(cats, values, strict=True))
            cand = pool
            if equal:
                cand = pool[Conditions.parse(equal).mask(pool)]
                if cand.empty:
                    try:
                        cand = gen.sample(max(200, 20 * len(idx)), seeds(), conditions=equal)
                    except ConditionsUnmet as exc:
                        cand = _most_agreeing(pool, equal)
                        relaxed.extend(idx)
                        log.info("%d row(s) fall back to a relaxed pool match: %s", len(idx), exc)
            if nums:
                scale = cand[nums].astype(float).std(ddof=0).replace(0, 1).fillna(1).to_numpy()
                tree = cKDTree(np.nan_to_num(cand[nums].to_numpy(float) / scale))
                _, pick = tree.query(known.loc[idx, nums].to_numpy(float) / scale, k=1)
            else:
                pick = np.random.default_rng(seeds()).integers(0, len(cand), size=len(idx))
            chosen = cand.iloc[np.atleast_1d(pick)]
            for c in known.columns:
                if c not in set_cols:
                    out.loc[idx, c] = chosen[c].to_numpy(object)
    return out, relaxed


def _most_agreeing(pool: pd.DataFrame, equal: dict[str, Any]) -> pd.DataFrame:
    """The pool rows that agree with the most of the `equal` cells (the relaxed match of the module doc)."""
    agree = sum(Conditions.parse({c: v}).mask(pool).astype(int) for c, v in equal.items())
    return pool[agree == agree.max()]


def _combine(values: list[np.ndarray], col: Any) -> np.ndarray:
    """One value per cell from `draws` draws: mean (then snapped) for numeric, most frequent otherwise."""
    if len(values) == 1:
        return values[0]
    stacked = np.stack(values)
    if col.type in ("numerical", "integer"):
        mean = np.nanmean(pd.DataFrame(stacked).apply(pd.to_numeric, errors="coerce").to_numpy(float), axis=0)
        return _tables.fix_numeric(mean, col).astype(object)
    frame = pd.DataFrame(stacked.T)
    return frame.apply(lambda r: r.value_counts(sort=True).index[0], axis=1).to_numpy(object)


# ---- decision-making ------------------------------------------------------------------------------------


def recommend(
    gen: Generator,
    conditions: Any,
    columns: list[str],
    n: int = 1000,
    seed: int = 0,
    max_draws: int | None = None,
) -> pd.DataFrame:
    """Configurations (values of `columns`) the model generates under `conditions`, most frequent first.

    PERFGEN's decision-making use: "which thread counts and sizes keep runtime_s under 10?" is
    recommend(gen, "runtime_s < 10", ["threads", "size"]). Columns: the configuration columns, `count`
    (rows of the n drawn) and `share`.
    """
    rows = gen.sample(n, seed, conditions=conditions, max_draws=max_draws)
    unknown = [c for c in columns if c not in rows.columns]
    if unknown or not columns:
        raise BadInput(f"recommend: columns {unknown or columns} are not the generator's; use {list(rows)}")
    counts = rows.groupby(columns, dropna=False).size().rename("count").reset_index()
    counts = counts.sort_values(["count", *columns], ascending=[False] + [True] * len(columns))
    return counts.assign(share=counts["count"] / n).reset_index(drop=True)
