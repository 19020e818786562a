"""Registry of fidelity/privacy metrics and `evaluate`, which runs a selection of them on one table pair.

A metric is a pure function ``fn(real, synth, meta, **options) -> dict[str, float]`` returning named
components: usually one per column plus an aggregate ("score" or "mean"). Metrics are registered with
``@metric(name, higher_is_better=..., description=...)``; their keyword-only parameters after ``meta`` are
the options `evaluate` accepts for them. `MetricSpec.options_model` is a pydantic model built from those
parameters (their annotations and defaults; a `Literal` annotation gives the choices): `evaluate` validates
options with it, and the planner checks a study's options with `metric_problems` before anything runs.
A metric never returns NaN or inf: an undefined component is either handled by a documented rule or the
metric raises (`evaluate` enforces this).

Splitting. ``@metric(..., per="column", aggregate="score")`` declares that the metric's components are one
per column (named like the column, or ``column:<name>`` for a column named like an aggregate) plus the
aggregate(s), each the mean of those components; ``per="pair"`` the same with one component per column pair
named ``a|b``. Such a metric gives the same per-column/per-pair values on any subset of the columns, so
`evaluate(..., part=Part(i, k))` computes only part i of k:

* a column metric gets the i-th of k contiguous column blocks;
* a pair metric: the columns are cut into m blocks, m the smallest with m(m+1)/2 >= k, and the block pairs
  (a <= b, in order) are dealt out round-robin; a block pair is computed on the union of its two blocks and
  keeps only the pairs across them (or, for a == b, inside the block), so each pair is computed by exactly
  one part (pairs inside either block of an off-diagonal block pair are computed and dropped: about twice the
  work of the unsplit metric in total, spread over k parts);
* table metrics (the default, ``per="table"``) are never split: the j-th one selected runs in part j % k.

Parts leave out the aggregates; `perfscale.metrics.combine.combine_parts` recomputes them from all parts.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import ConfigDict, create_model

from perfscale.errors import BadInput, FailureKind, TaskFailure
from perfscale.metrics.columns import check_tables, is_int
from perfscale.options import OptionsModel, Problem, option_problems, validated_options
from perfscale.tabular.meta import TableMeta

MetricFn = Callable[..., dict[str, float]]
Per = Literal["table", "column", "pair"]

PER_KINDS: tuple[Per, ...] = ("table", "column", "pair")
RESULT_COLUMNS = ["metric", "component", "value", "elapsed_s"]
PART_COLUMNS = ["part", "parts"]
PAIR_SEPARATOR = "|"
_AGGREGATE_RTOL = 1e-9  # a split metric's aggregate must be the mean of its components to this tolerance


@dataclass(frozen=True)
class MetricSpec:
    name: str
    fn: MetricFn
    higher_is_better: bool | None  # None: no single direction (e.g. an ideal value in the middle)
    description: str
    per: Per = "table"  # what one component is about: the table, one column, or one column pair
    aggregate: tuple[str, ...] = ()  # column/pair metrics: components that are means of all the others

    @property
    def options(self) -> list[str]:
        """Names of the options the metric accepts (its parameters after real, synth, meta)."""
        return list(self.options_model.model_fields)

    @property
    def options_model(self) -> type[OptionsModel]:
        """The metric's options as a pydantic model (see the module doc)."""
        return options_model(self.name, self.fn)


class _MetricOptions(OptionsModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)  # tables passed by code (a holdout)


class _AnyOptions(_MetricOptions):
    model_config = ConfigDict(extra="allow")  # a metric taking **options


@functools.cache
def options_model(name: str, fn: MetricFn) -> type[OptionsModel]:
    """A model of `fn`'s parameters after (real, synth, meta): each one's annotation (evaluated in `fn`'s
    module) and default; a required one stays required. `**options` lets any other name through."""
    fields: dict[str, Any] = {}
    base = _MetricOptions
    for param in list(inspect.signature(fn).parameters.values())[3:]:
        if param.kind is param.VAR_KEYWORD:
            base = _AnyOptions
        elif param.kind is not param.VAR_POSITIONAL:
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (_annotation(name, fn, param), default)
    return create_model(f"{name}_options", __base__=base, **fields)


def _annotation(name: str, fn: MetricFn, param: inspect.Parameter) -> Any:
    annotation = param.annotation
    if annotation is param.empty:
        return Any
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, fn.__globals__)  # the metric's own annotation, evaluated as typing does
    except Exception as exc:
        raise TypeError(
            f"metric {name!r}: the annotation {annotation!r} of option {param.name!r} cannot be evaluated in "
            f"{fn.__module__} ({exc}); import what it names at module level"
        ) from None


def metric_problems(metrics: Sequence[Any], options: Any) -> list[Problem]:
    """Every problem of a study's metric list and options: unknown metric names (at ("metrics", i) or
    ("options", name)) and each metric's option problems (at ("options", name, option...)), with choices."""
    known = ", ".join(sorted(_REGISTRY))
    problems = [
        Problem(("metrics", i), f"unknown metric {name!r}; choose one of {known}")
        for i, name in enumerate(metrics)
        if name not in _REGISTRY
    ]
    for name, opts in options.items():
        if name not in _REGISTRY:
            problems.append(Problem(("options", name), f"unknown metric {name!r}; choose one of {known}"))
            continue
        for p in option_problems(_REGISTRY[name].options_model, opts, "option", name):
            problems.append(Problem(("options", name, *p.loc), p.message, p.value))
    return problems


_REGISTRY: dict[str, MetricSpec] = {}


def metric(
    name: str,
    *,
    higher_is_better: bool | None,
    description: str = "",
    per: Per = "table",
    aggregate: str | Sequence[str] = (),
) -> Callable[[MetricFn], MetricFn]:
    """Register `fn` under `name`; the function itself is returned unchanged (callable directly).

    `per` and `aggregate` declare how the metric may be split across parts (see the module docstring); leave
    them out for a metric whose components are not independent per column or pair.
    """
    if per not in PER_KINDS:
        raise ValueError(f"metric {name!r}: per must be one of {list(PER_KINDS)}, not {per!r}")
    aggregates = (aggregate,) if isinstance(aggregate, str) else tuple(aggregate)
    if per == "table" and aggregates:
        raise ValueError(f"metric {name!r}: aggregate is only meaningful with per='column' or per='pair'")

    def register(fn: MetricFn) -> MetricFn:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"metric {name!r} is already registered by {_REGISTRY[name].fn.__module__}")
        doc = description or (inspect.getdoc(fn) or "").split("\n\n")[0]
        _REGISTRY[name] = MetricSpec(name, fn, higher_is_better, doc, per, aggregates)
        return fn

    return register


def list_metrics() -> list[MetricSpec]:
    """Every registered metric, in registration order."""
    return list(_REGISTRY.values())


def get_metric(name: str) -> MetricSpec:
    if name not in _REGISTRY:
        raise BadInput(f"unknown metric {name!r}; known metrics are {sorted(_REGISTRY)}")
    return _REGISTRY[name]


# ---------------------------------------------------------------- parts of a split evaluation


@dataclass(frozen=True)
class Part:
    """Part `index` (0-based) of an evaluation split into `of` parts; Part() is the whole evaluation."""

    index: int = 0
    of: int = 1

    def __post_init__(self) -> None:
        if not is_int(self.of) or self.of < 1:
            raise BadInput(f"part: the number of parts must be a positive integer, not {self.of!r}")
        if not is_int(self.index) or not 0 <= self.index < self.of:
            raise BadInput(f"part: the index must be an integer in [0, {self.of}), not {self.index!r}")

    @property
    def whole(self) -> bool:
        return self.of == 1


@dataclass(frozen=True)
class Unit:
    """One call of one metric within a part: on `columns` (None: the whole table, unsplit)."""

    spec: MetricSpec
    columns: tuple[str, ...] | None = None
    keep: frozenset[str] = frozenset()  # the per-column/per-pair components this unit reports
    drop: frozenset[str] = frozenset()  # components it computes that another unit reports


def column_blocks(columns: Sequence[str], n: int) -> list[list[str]]:
    """`columns` cut into `n` contiguous blocks whose sizes differ by at most one (the first are larger)."""
    size, extra = divmod(len(columns), n)
    bounds = [i * size + min(i, extra) for i in range(n + 1)]
    return [list(columns[bounds[i] : bounds[i + 1]]) for i in range(n)]


def pair_names(first: Sequence[str], second: Sequence[str]) -> set[str]:
    """Both spellings ("a|b" and "b|a") of every pair of distinct columns with one in each sequence."""
    return {f"{a}{PAIR_SEPARATOR}{b}" for x in first for y in second if x != y for a, b in ((x, y), (y, x))}


def _pair_units(spec: MetricSpec, columns: Sequence[str], part: Part) -> list[Unit]:
    m = 1
    while m * (m + 1) // 2 < part.of:
        m += 1
    blocks = column_blocks(columns, m)
    block_pairs = [(a, b) for a in range(m) for b in range(a, m)]
    units = []
    for a, b in block_pairs[part.index :: part.of]:
        cols = blocks[a] if a == b else blocks[a] + blocks[b]
        if len(cols) < 2:
            continue
        keep = pair_names(blocks[a], blocks[b])
        units.append(Unit(spec, tuple(cols), frozenset(keep), frozenset(pair_names(cols, cols) - keep)))
    return units


def plan_part(specs: Sequence[MetricSpec], columns: Sequence[str], part: Part) -> list[Unit]:
    """The metric calls of `part` of an evaluation of `specs` on a table with `columns` (in table order)."""
    if part.whole:
        return [Unit(spec) for spec in specs]
    units: list[Unit] = []
    tables = [s for s in specs if s.per == "table"]
    for spec in specs:
        if spec.per == "table":
            if tables.index(spec) % part.of == part.index:
                units.append(Unit(spec))
        elif spec.per == "column":
            block = column_blocks(columns, part.of)[part.index]
            if block:
                keep = {f"column:{c}" if c in spec.aggregate else c for c in block}
                units.append(Unit(spec, tuple(block), frozenset(keep)))
        else:
            units += _pair_units(spec, columns, part)
    return units


def part_columns(metrics: Sequence[str], columns: Sequence[str], part: Part) -> list[str]:
    """The columns (in table order) that `part` of an evaluation of `metrics` reads: all of them as soon as
    the part runs a table metric. Pass the tables reduced to these, with ``table_columns=columns``, to
    `evaluate` so that a part never loads columns it does not use."""
    return _columns_of(plan_part([get_metric(n) for n in dict.fromkeys(metrics)], columns, part), columns)


def _columns_of(units: list[Unit], columns: Sequence[str]) -> list[str]:
    if any(u.columns is None for u in units):
        return list(columns)
    needed = {c for u in units for c in u.columns or ()}
    return [c for c in columns if c in needed]


# ---------------------------------------------------------------- evaluate


def _check_options(spec: MetricSpec, opts: Any) -> dict[str, Any]:
    """The options set in `opts`, validated by the metric's options model (BadInput naming each problem)."""
    checked = validated_options(spec.options_model, opts, "option", spec.name)
    return {name: getattr(checked, name) for name in checked.model_fields_set} | (checked.model_extra or {})


def _checked_result(spec: MetricSpec, result: Any) -> list[tuple[str, float]]:
    """The metric's components as (name, float) pairs; NaN/inf or a non-number is a bug in the metric."""
    if not isinstance(result, dict):
        message = f"metric {spec.name!r} returned {type(result).__name__}, not a dict"
        raise TaskFailure(FailureKind.APP_ERROR, message)
    rows = []
    for component, value in result.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise TaskFailure(
                FailureKind.APP_ERROR, f"metric {spec.name!r} returned {value!r} for component {component!r}"
            )
        rows.append((str(component), number))
    return rows


def _restricted_options(opts: dict[str, Any], columns: list[str]) -> dict[str, Any]:
    """Table-valued options (e.g. a holdout table) cut to the unit's columns, like the real/synth tables."""
    out = {}
    for name, value in opts.items():
        if isinstance(value, pd.DataFrame) and set(columns) <= set(map(str, value.columns)):
            value = value.rename(columns=str)[columns]
        out[name] = value
    return out


def _split_components(unit: Unit, rows: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """The components `unit` reports, after checking the result honours the metric's per/aggregate tags."""
    spec, kept, computed, aggregates = unit.spec, [], [], {}
    for component, value in rows:
        if component in unit.keep or component in unit.drop:
            computed.append(value)
            if component in unit.keep:
                kept.append((component, value))
        elif component in spec.aggregate:
            aggregates[component] = value
        else:
            raise TaskFailure(
                FailureKind.APP_ERROR,
                f"metric {spec.name!r} is tagged per={spec.per!r} but returned component {component!r} on "
                f"columns {list(unit.columns or ())}, which is neither one of their {spec.per}s nor a "
                f"declared aggregate {list(spec.aggregate)}; fix the metric's `per`/`aggregate` tags",
            )
    for name, value in aggregates.items():
        mean = float(np.mean(computed)) if computed else math.nan
        if not math.isclose(value, mean, rel_tol=_AGGREGATE_RTOL, abs_tol=_AGGREGATE_RTOL):
            raise TaskFailure(
                FailureKind.APP_ERROR,
                f"metric {spec.name!r}: aggregate {name!r} = {value!r} is not the mean of its {spec.per} "
                f"components ({mean!r}), so it cannot be split; tag it per='table'",
            )
    return kept


def _run_unit(
    unit: Unit, real: pd.DataFrame, synth: pd.DataFrame, meta: TableMeta, opts: dict[str, Any]
) -> list[tuple[str, float]]:
    if unit.columns is None:
        return _checked_result(unit.spec, unit.spec.fn(real, synth, meta, **opts))
    cols = list(unit.columns)
    sub_meta = TableMeta(columns={c: meta.columns[c] for c in cols})
    result = unit.spec.fn(real[cols], synth[cols], sub_meta, **_restricted_options(opts, cols))
    return _split_components(unit, _checked_result(unit.spec, result))


def evaluate(
    real: pd.DataFrame,
    synth: pd.DataFrame,
    meta: TableMeta,
    metrics: list[str] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    part: Part | tuple[int, int] | None = None,
    *,
    table_columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Run `metrics` (default: all registered) on one real/synthetic pair, or only `part` of that work.

    Returns a long table with columns metric, component, value, elapsed_s: one row per component, elapsed_s
    being the wall time of the whole metric (in this part). `options` maps a metric name to its keyword
    options; options of metrics not selected are ignored. A metric that applies to no column of the table
    (e.g. `jsd` on an all-numeric table) contributes no rows. Raises BadInput for unusable inputs or unknown
    metrics/options.

    With `part` = (index, of) the table also has the columns part and parts, and column/pair metrics report
    only their per-column/per-pair components of that part (see the module docstring); `combine_parts` turns
    all parts into the unsplit result. `table_columns` is the full table's column order the split is planned
    on, needed when `real`, `synth` and `meta` were reduced to `part_columns(...)`; default: meta's columns.
    """
    check_tables(real, synth, meta)
    options = dict(options or {})
    names = list(_REGISTRY) if metrics is None else list(dict.fromkeys(metrics))  # a repeat runs once
    specs = [get_metric(n) for n in names]
    for n in options:
        get_metric(n)
    split = Part(*part) if isinstance(part, tuple) else part
    columns = list(meta.columns) if table_columns is None else [str(c) for c in table_columns]
    units = plan_part(specs, columns, split or Part())
    lacking = [c for c in _columns_of(units, columns) if c not in meta.columns]
    if lacking:
        raise BadInput(
            f"this part of the evaluation needs columns {lacking}, which the tables lack; reduce the tables "
            "with part_columns(metrics, table_columns, part), not further"
        )
    real, synth = real.rename(columns=str), synth.rename(columns=str)
    checked = {spec.name: _check_options(spec, options.get(spec.name, {})) for spec in specs}
    rows: list[tuple[str, str, float, float]] = []
    for spec in specs:
        start, components = time.perf_counter(), []
        for unit in (u for u in units if u.spec is spec):
            components += _run_unit(unit, real, synth, meta, checked[spec.name])
        elapsed = time.perf_counter() - start
        rows += [(spec.name, component, value, elapsed) for component, value in components]
    table = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    table = table.astype({"metric": str, "component": str, "value": "float64", "elapsed_s": "float64"})
    return table if split is None else table.assign(part=split.index, parts=split.of)
