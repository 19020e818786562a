"""The metric study: does each fidelity metric rank synthetic sets the way ML efficacy does?

The `metric_study` stage (perfscale.stages.metric_study) writes `study_points`' result table; the report
reruns `study_points` on the same inputs for its scatter plots.

PERFGEN (RQ2/RQ3) shows that common metrics can stay near-perfect while a model trained on the synthetic data
collapses. This stage takes the long tables of one or more `evaluate` stages (one synthetic set = one
evaluation, its parts merged by `perfscale.metrics.combine_parts`) and, for each metric, computes Spearman's
rank correlation (`scipy.stats.spearmanr`) between the metric's headline value and a reference utility
component across all sets.

Headline component of each metric (one per metric; the `headline` param overrides or adds entries):

=====================  ======================  ==========================================================
metric                 component               direction
=====================  ======================  ==========================================================
column_shapes          score                   higher is better (the registry's direction)
column_pair_trends     score                   higher
sdmetrics_quality      score                   higher
tabsyndex              score                   higher
kl_divergence          mean                    lower
wasserstein            mean                    lower
jsd                    mean                    lower
diff_corr              score                   lower
dissimilarity          score                   lower
pmse                   pmse                    lower
detection_auc          detection_score         higher (1 - (2 max(AUC, 0.5) - 1): 1 = undetectable)
dcr                    share_closer_to_train   ideal 0.5 (0.5: synthetic rows as close to train as new real
                                               rows are; 1: copies)
=====================  ======================  ==========================================================

Any other metric uses its ``score`` component, else ``mean``, with the registry's direction. The reference
is a ``metric/component`` name (default ``ml_efficacy/synthetic/accuracy``: the mean accuracy over models
trained on the synthetic set and tested on the real holdout), higher is better unless
`reference_higher_is_better` is false (e.g. ``ml_efficacy/synthetic/mse``).

Orientation: before ranking, a lower-is-better value v becomes -v and an ideal-value one becomes
-|v - ideal|, and the reference likewise, so a positive rho always means "the metric agrees with ML
efficacy". A metric with no direction (registry None and no headline entry) is ranked raw (orientation
``none``). Output, one row per metric, best agreement first: metric, component, orientation, spearman_rho,
p_value, n_sets (sets that have both the component and the reference), status (``ok``; or why rho is missing:
``missing``: no evaluate table has the metric, ``no component ...``, ``too few sets``, ``constant``), and
reference. A listed metric absent from the evaluate tables is reported, never an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from perfscale.errors import BadInput
from perfscale.plan.kinds import StageParams
from perfscale.results.labels import describe_task, unique_labels
from perfscale.tabular.columns import PROVENANCE_COLUMNS, TASK_KEY_COLUMN

if TYPE_CHECKING:
    from perfscale.plan.named import PlanCheck
    from perfscale.plan.planner import Plan

DEFAULT_REFERENCE = "ml_efficacy/synthetic/accuracy"
GENERIC_COMPONENTS = ("score", "mean")
MIN_SETS = 3  # a rank correlation of fewer points means nothing
RESULT_COLUMNS = [
    "metric",
    "component",
    "orientation",
    "spearman_rho",
    "p_value",
    "n_sets",
    "status",
    "reference",
]


class Headline(BaseModel):
    """The component of a metric that is ranked, and which way is better."""

    model_config = ConfigDict(extra="forbid")

    component: str
    higher_is_better: bool | None = Field(None, description="None: the registry's direction, or `ideal`")
    ideal: float | None = Field(None, description="best value; the distance to it is ranked (lower better)")


HEADLINES: dict[str, Headline] = {
    **{m: Headline(component="score") for m in ("column_shapes", "column_pair_trends")},
    **{m: Headline(component="score") for m in ("sdmetrics_quality", "tabsyndex")},
    **{m: Headline(component="mean") for m in ("kl_divergence", "wasserstein", "jsd")},
    "diff_corr": Headline(component="score"),
    "dissimilarity": Headline(component="score"),
    "pmse": Headline(component="pmse"),
    "detection_auc": Headline(component="detection_score", higher_is_better=True),
    "dcr": Headline(component="share_closer_to_train", ideal=0.5),
}


class MetricStudyParams(StageParams):
    sources: list[str] | None = Field(None, description="evaluate stages (default: every stage in `inputs`)")
    reference: str = Field(DEFAULT_REFERENCE, description="'metric/component' every metric is ranked against")
    reference_higher_is_better: bool = True
    metrics: list[str] | None = Field(
        None, description="metrics to rank (default: every metric in the tables but the reference's)"
    )
    headline: dict[str, Headline] = Field(default_factory=dict, description="overrides of HEADLINES")

    def plan_check(self, check: PlanCheck) -> None:
        if self.sources is None:
            check.reads_some("evaluate")
        else:
            check.sources("sources", self.sources)
        try:
            check.metric_name("reference", split_reference(self.reference)[0])
        except BadInput as exc:
            check.problem(str(exc), "reference")
        check.metric_names("metrics", self.metrics or [])
        check.metric_names("headline", self.headline)


def split_reference(reference: str) -> tuple[str, str]:
    metric, sep, component = reference.partition("/")
    if not sep or not metric or not component:
        raise BadInput(f"metric_study.reference must look like 'metric/component', not {reference!r}")
    return metric, component


def collect_sets(tables: Mapping[str, pd.DataFrame], plan: Plan | None = None) -> pd.DataFrame:
    """One long table of all synthetic sets: set, label, generator, metric, component, value.

    A set is one evaluation of one evaluate stage (rows sharing the `evaluation` key, else the `generator`),
    its split parts combined. Its label is the generator plus, with a plan and the tables' `_task_key`, the
    hyperparameters of the model behind it ('ctgan (epochs=5)').
    """
    from perfscale.metrics import combine_parts

    frames = []
    for stage, table in tables.items():
        if table.empty:
            continue
        if "generator" not in table:
            raise BadInput(f"metric_study: {stage!r} has no `generator` column; is it an evaluate stage?")
        ident = "evaluation" if "evaluation" in table else "generator"
        task_of = table.groupby(ident)[TASK_KEY_COLUMN].min().to_dict() if TASK_KEY_COLUMN in table else {}
        combined = combine_parts(table.drop(columns=[c for c in PROVENANCE_COLUMNS if c in table]))
        combined = combined.assign(set=[f"{stage}:{v}" for v in combined[ident]])
        extras = {}
        for ident_value, generator in combined.groupby(ident)["generator"].first().items():
            described = describe_task(plan, task_of[ident_value]) if plan and ident_value in task_of else ""
            extras[f"{stage}:{ident_value}"] = f"{generator} ({described})" if described else str(generator)
        frames.append(combined.assign(label=combined["set"].map(extras)))
    columns = ["set", "label", "generator", "metric", "component", "value"]
    if not frames:
        return pd.DataFrame(columns=columns)
    sets = pd.concat(frames, ignore_index=True)[columns]
    order = sets.drop_duplicates("set")[["set", "label"]]
    relabel = dict(zip(order["set"], unique_labels(order["label"].tolist()), strict=True))
    return sets.assign(label=sets["set"].map(relabel))


def _direction(metric: str, headline: Headline) -> tuple[str, float | None]:
    """('higher' | 'lower' | 'ideal' | 'none', ideal value)."""
    from perfscale.metrics import list_metrics  # importing the package registers the built-in metrics

    if headline.higher_is_better is not None:
        return ("higher" if headline.higher_is_better else "lower"), None
    if headline.ideal is not None:
        return "ideal", headline.ideal
    spec = next((m for m in list_metrics() if m.name == metric), None)
    if spec is None or spec.higher_is_better is None:
        return "none", None
    return ("higher" if spec.higher_is_better else "lower"), None


def orient(values: pd.Series | np.ndarray, direction: str, ideal: float | None) -> np.ndarray:
    """Values turned so that larger is better: -v for 'lower', -|v - ideal| for 'ideal', v otherwise."""
    v = np.asarray(values, dtype=float)
    if direction == "lower":
        return -v
    if direction == "ideal":
        assert ideal is not None
        return -np.abs(v - ideal)
    return v


def headline_of(metric: str, components: set[str], overrides: Mapping[str, Headline]) -> Headline | None:
    if metric in overrides:
        return overrides[metric]
    if metric in HEADLINES:
        return HEADLINES[metric]
    generic = next((c for c in GENERIC_COMPONENTS if c in components), None)
    return Headline(component=generic) if generic else None


def study_points(sets: pd.DataFrame, params: MetricStudyParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(points, result): points = per set and ranked metric: set, label, metric, component, orientation,
    value, oriented, reference (the raw reference value); result = the stage's output table."""
    ref_metric, ref_component = split_reference(params.reference)
    is_ref = (sets["metric"] == ref_metric) & (sets["component"] == ref_component)
    reference = sets[is_ref].groupby("set")["value"].mean()
    if reference.empty:
        have = sorted(sets.loc[sets["metric"] == ref_metric, "component"].unique())
        hint = (
            f"its components are {have}"
            if have
            else (
                f"no evaluate table has metric {ref_metric!r} (for ml_efficacy set `options: {{ml_efficacy: "
                "{target: COLUMN}}` in the evaluate stages)"
            )
        )
        raise BadInput(f"metric_study.reference {params.reference!r} is in no synthetic set; {hint}")
    ref_oriented = reference if params.reference_higher_is_better else -reference
    found = [m for m in dict.fromkeys(sets["metric"]) if m != ref_metric]
    wanted = list(dict.fromkeys(params.metrics)) if params.metrics is not None else found
    rows, points = [], []
    for metric in wanted:
        part = sets[sets["metric"] == metric]
        components = set(part["component"])
        headline = headline_of(metric, components, params.headline)
        row: dict[str, Any] = {"metric": metric, "component": headline.component if headline else ""}
        direction, ideal = _direction(metric, headline) if headline else ("none", None)
        row["orientation"] = f"ideal={ideal:g}" if direction == "ideal" else direction
        if part.empty:
            rows.append(row | _no_rho("missing: in no evaluate table", 0))
            continue
        if headline is None or headline.component not in components:
            name = headline.component if headline else " or ".join(GENERIC_COMPONENTS)
            rows.append(
                row
                | _no_rho(f"no component {name!r} (has {len(components)}, e.g. {sorted(components)[:5]})", 0)
            )
            continue
        values = part[part["component"] == headline.component].groupby("set")["value"].mean()
        common = values.index.intersection(ref_oriented.index)
        labels = part.drop_duplicates("set").set_index("set")["label"]
        x = orient(values[common], direction, ideal)
        y = ref_oriented[common].to_numpy(dtype=float)
        points.append(
            pd.DataFrame(
                {
                    "set": common,
                    "label": labels[common].to_numpy(),
                    "metric": metric,
                    "component": headline.component,
                    "orientation": row["orientation"],
                    "value": values[common].to_numpy(),
                    "oriented": x,
                    "reference": reference[common].to_numpy(),
                }
            )
        )
        rows.append(row | _rho(x, y))
    result = pd.DataFrame(rows, columns=RESULT_COLUMNS[:-1]).assign(reference=params.reference)
    result = result.astype({"spearman_rho": "float64", "p_value": "float64", "n_sets": "int64"})
    result = result.sort_values("spearman_rho", ascending=False, na_position="last", kind="stable")
    point_columns = ["set", "label", "metric", "component", "orientation", "value", "oriented", "reference"]
    all_points = pd.concat(points, ignore_index=True) if points else pd.DataFrame(columns=point_columns)
    return all_points, result.reset_index(drop=True)


def _no_rho(status: str, n: int) -> dict[str, Any]:
    return {"spearman_rho": math.nan, "p_value": math.nan, "n_sets": n, "status": status}


def _rho(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from scipy.stats import spearmanr

    n = len(x)
    if n < MIN_SETS:
        return _no_rho(f"too few sets ({n} < {MIN_SETS})", n)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        which = "metric" if np.ptp(x) == 0 else "reference"
        return _no_rho(f"constant: the {which} is the same for every set", n)
    rho, p = spearmanr(x, y)
    return {"spearman_rho": float(rho), "p_value": float(p), "n_sets": n, "status": "ok"}


def source_stages(params: MetricStudyParams, inputs: list[str]) -> list[str]:
    sources = params.sources if params.sources is not None else inputs
    missing = [s for s in sources if s not in inputs]
    if missing or not sources:
        raise BadInput(
            f"metric_study.sources {missing or sources} must be evaluate stages listed in `inputs` {inputs}"
        )
    return sources
