"""Registry of fidelity/privacy metrics and `evaluate`, which runs a selection of them on one table pair.

A metric is a pure function ``fn(real, synth, meta, **options) -> dict[str, float]`` returning named
components: usually one per column plus an aggregate ("score" or "mean"). Metrics are registered with
``@metric(name, higher_is_better=..., description=...)``; their keyword-only parameters after ``meta`` are
the options `evaluate` accepts for them. A metric never returns NaN or inf: an undefined component is either
handled by a documented rule or the metric raises (`evaluate` enforces this).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from perfscale.errors import BadInput, FailureKind, TaskFailure
from perfscale.metrics.columns import check_tables
from perfscale.tabular.meta import TableMeta

MetricFn = Callable[..., dict[str, float]]

RESULT_COLUMNS = ["metric", "component", "value", "elapsed_s"]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    fn: MetricFn
    higher_is_better: bool | None  # None: no single direction (e.g. an ideal value in the middle)
    description: str

    @property
    def options(self) -> list[str]:
        """Names of the options the metric accepts (its parameters after real, synth, meta)."""
        return [p.name for p in list(inspect.signature(self.fn).parameters.values())[3:]
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    @property
    def takes_any_option(self) -> bool:
        return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(self.fn).parameters.values())


_REGISTRY: dict[str, MetricSpec] = {}


def metric(
    name: str, *, higher_is_better: bool | None, description: str = ""
) -> Callable[[MetricFn], MetricFn]:
    """Register `fn` under `name`; the function itself is returned unchanged (callable directly)."""

    def register(fn: MetricFn) -> MetricFn:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"metric {name!r} is already registered by {_REGISTRY[name].fn.__module__}")
        doc = description or (inspect.getdoc(fn) or "").split("\n\n")[0]
        _REGISTRY[name] = MetricSpec(name, fn, higher_is_better, doc)
        return fn

    return register


def list_metrics() -> list[MetricSpec]:
    """Every registered metric, in registration order."""
    return list(_REGISTRY.values())


def get_metric(name: str) -> MetricSpec:
    if name not in _REGISTRY:
        raise BadInput(f"unknown metric {name!r}; known metrics are {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def _check_options(spec: MetricSpec, opts: Any) -> dict[str, Any]:
    if not isinstance(opts, dict):
        raise BadInput(f"options of metric {spec.name!r} must be a mapping, not {type(opts).__name__}")
    unknown = sorted(set(opts) - set(spec.options))
    if unknown and not spec.takes_any_option:
        raise BadInput(f"metric {spec.name!r} has no option(s) {unknown}; its options are {spec.options}")
    return opts


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


def evaluate(
    real: pd.DataFrame,
    synth: pd.DataFrame,
    meta: TableMeta,
    metrics: list[str] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
) -> pd.DataFrame:
    """Run `metrics` (default: all registered) on one real/synthetic pair.

    Returns a long table with columns metric, component, value, elapsed_s: one row per component, elapsed_s
    being the wall time of the whole metric. `options` maps a metric name to its keyword options; options of
    metrics not selected are ignored. A metric that applies to no column of the table (e.g. `jsd` on an
    all-numeric table) contributes no rows. Raises BadInput for unusable inputs or unknown metrics/options.
    """
    check_tables(real, synth, meta)
    options = dict(options or {})
    names = list(_REGISTRY) if metrics is None else list(dict.fromkeys(metrics))  # a repeat runs once
    specs = [get_metric(n) for n in names]
    for n in options:
        get_metric(n)
    real, synth = real.rename(columns=str), synth.rename(columns=str)
    rows: list[tuple[str, str, float, float]] = []
    for spec in specs:
        opts = _check_options(spec, options.get(spec.name, {}))
        start = time.perf_counter()
        result = spec.fn(real, synth, meta, **opts)
        elapsed = time.perf_counter() - start
        rows += [(spec.name, component, value, elapsed) for component, value in _checked_result(spec, result)]
    table = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    return table.astype({"metric": str, "component": str, "value": "float64", "elapsed_s": "float64"})
