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
rho_low and rho_high (the 2.5% and 97.5% percentiles of rho over BOOTSTRAP resamples of the sets, drawn with
replacement from `bootstrap_seed`, the same draws for every metric; resamples where a side is constant are
left out), p_value, n_sets (sets that have both the component and the reference), status (``ok``; or why rho
is missing: ``missing``: no evaluate table has the metric, ``no component ...``, ``too few sets``,
``constant``), and reference. A listed metric absent from the evaluate tables is reported, never an error.

Variants: for each metric named in `variants` (e.g. ``dissimilarity`` evaluated with ``variants: true``),
every component ``variant/NAME`` is ranked as a metric of its own, ``METRIC[NAME]`` with component ``score``
and the metric's direction, after the listed metrics. Several studies side by side (one per real table):
`perfscale.results.metric_study_summary`.
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
BOOTSTRAP = 1000  # resamples of the sets behind each rho's 95% interval
VARIANT_PREFIX = "variant/"  # components of a metric that are whole scores of one of its variants
RESULT_COLUMNS = [
    "metric",
    "component",
    "orientation",
    "spearman_rho",
    "rho_low",
    "rho_high",
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
    variants: list[str] = Field(
        default_factory=list,
        description="metrics whose `variant/NAME` components are each ranked as a metric `METRIC[NAME]`",
    )
    bootstrap_seed: int = Field(0, description="seed of the bootstrap behind rho_low / rho_high")

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
        check.metric_names("variants", self.variants)


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
    base = base_metric(metric)
    spec = next((m for m in list_metrics() if m.name == base), None)
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


def base_metric(metric: str) -> str:
    """'dissimilarity' for a variant row 'dissimilarity[dcr/var0.9/...]', else the name itself."""
    return metric.split("[", 1)[0] if metric.endswith("]") else metric


def expand_variants(sets: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Each `variant/NAME` component of the given metrics becomes a metric `METRIC[NAME]` with component
    `score`; those components leave their metric."""
    if not metrics:
        return sets
    is_variant = sets["metric"].isin(metrics) & sets["component"].str.startswith(VARIANT_PREFIX)
    variants = sets[is_variant]
    renamed = variants.assign(
        metric=variants["metric"] + "[" + variants["component"].str[len(VARIANT_PREFIX) :] + "]",
        component="score",
    )
    return pd.concat([sets[~is_variant], renamed], ignore_index=True)


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
    sets = expand_variants(sets, params.variants)
    found = [m for m in dict.fromkeys(sets["metric"]) if m != ref_metric]
    wanted = list(dict.fromkeys(params.metrics)) if params.metrics is not None else found
    if params.metrics is not None:
        wanted += [m for m in found if base_metric(m) in params.variants and m not in wanted]
    draws = bootstrap_draws(len(ref_oriented), params.bootstrap_seed)
    components_of = sets.groupby("metric", sort=False)["component"].agg(set).to_dict()
    headlines = {m: headline_of(m, components_of.get(m, set()), params.headline) for m in wanted}
    wanted_component = sets["metric"].map({m: h.component for m, h in headlines.items() if h})
    chosen = sets[sets["component"] == wanted_component]
    wide = chosen.pivot_table(index="set", columns="metric", values="value", aggfunc="mean", sort=False)
    order = ref_oriented.index  # every set with a reference value, in one order for all metrics
    matrix = wide.reindex(index=order).to_numpy(dtype=float)
    column = {m: i for i, m in enumerate(wide.columns)}
    labels = sets.drop_duplicates("set").set_index("set")["label"].reindex(order).to_numpy()
    ref_values, ref_y = reference[order].to_numpy(dtype=float), ref_oriented.to_numpy(dtype=float)
    set_names = order.to_numpy()
    rows, points = [], []
    for metric in wanted:
        components, headline = components_of.get(metric, set()), headlines[metric]
        row: dict[str, Any] = {"metric": metric, "component": headline.component if headline else ""}
        direction, ideal = _direction(metric, headline) if headline else ("none", None)
        row["orientation"] = f"ideal={ideal:g}" if direction == "ideal" else direction
        if not components:
            rows.append(row | _no_rho("missing: in no evaluate table", 0))
            continue
        if headline is None or headline.component not in components:
            name = headline.component if headline else " or ".join(GENERIC_COMPONENTS)
            rows.append(
                row
                | _no_rho(f"no component {name!r} (has {len(components)}, e.g. {sorted(components)[:5]})", 0)
            )
            continue
        raw = matrix[:, column[metric]] if metric in column else np.full(len(order), np.nan)
        where = np.flatnonzero(~np.isnan(raw))
        x = orient(raw[where], direction, ideal)
        points.append(
            {
                "set": set_names[where],
                "label": labels[where],
                "metric": metric,
                "component": headline.component,
                "orientation": row["orientation"],
                "value": raw[where],
                "oriented": x,
                "reference": ref_values[where],
            }
        )
        rows.append(row | _rho(x, ref_y[where], draws, where))
    result = pd.DataFrame(rows, columns=RESULT_COLUMNS[:-1]).assign(reference=params.reference)
    floats = dict.fromkeys(["spearman_rho", "rho_low", "rho_high", "p_value"], "float64")
    result = result.astype(floats | {"n_sets": "int64"})
    result = result.sort_values("spearman_rho", ascending=False, na_position="last", kind="stable")
    point_columns = ["set", "label", "metric", "component", "orientation", "value", "oriented", "reference"]
    all_points = (
        pd.concat([pd.DataFrame(p) for p in points], ignore_index=True)
        if points
        else pd.DataFrame(columns=point_columns)
    )
    return all_points, result.reset_index(drop=True)


def _no_rho(status: str, n: int) -> dict[str, Any]:
    nan = math.nan
    rho = {"spearman_rho": nan, "rho_low": nan, "rho_high": nan, "p_value": nan}
    return rho | {"n_sets": n, "status": status}


def bootstrap_draws(n: int, seed: int) -> np.ndarray:
    """BOOTSTRAP x n indices of the sets, drawn with replacement; the same draws for every metric of a study
    (paired), so intervals of two metrics are comparable."""
    return np.random.default_rng([seed, n]).integers(0, max(n, 1), size=(BOOTSTRAP, n))


def bootstrap_rho(x: np.ndarray, y: np.ndarray, draws: np.ndarray) -> tuple[float, float]:
    """The 2.5% and 97.5% percentiles of Spearman's rho over resamples of the (x, y) pairs; a resample where
    either side is constant has no rho and is left out."""
    rx, ry = average_ranks(x[draws]), average_ranks(y[draws])
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    norm = np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))
    ok = norm > 0
    if not ok.any():
        return math.nan, math.nan
    rho = (rx * ry).sum(axis=1)[ok] / norm[ok]
    low, high = np.percentile(rho, [2.5, 97.5])
    return float(low), float(high)


def average_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks (1-based, ties get their mean rank) along the last axis, as `scipy.stats.rankdata`; by pairwise
    comparison, which for the few dozen sets of a study is much faster than a call per row."""
    if a.shape[-1] > 200:
        from scipy.stats import rankdata

        return rankdata(a, axis=-1)
    less = (a[..., :, None] > a[..., None, :]).sum(axis=-1)
    equal = (a[..., :, None] == a[..., None, :]).sum(axis=-1)
    return less + (equal + 1) / 2.0


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman's rho and its two-sided p-value, as `scipy.stats.spearmanr` gives them (Pearson r of the
    average ranks; p from Student's t with n - 2 degrees of freedom), without its per-call overhead."""
    from scipy.special import stdtr

    rx, ry = average_ranks(x) - (len(x) + 1) / 2, average_ranks(y) - (len(y) + 1) / 2
    rho = float(np.clip((rx @ ry) / math.sqrt((rx @ rx) * (ry @ ry)), -1.0, 1.0))
    dof = len(x) - 2
    if abs(rho) == 1.0:
        return rho, 0.0
    t = rho * math.sqrt(dof / ((1.0 - rho) * (1.0 + rho)))
    return rho, float(2 * stdtr(dof, -abs(t)))


def _rho(x: np.ndarray, y: np.ndarray, draws: np.ndarray, where: np.ndarray) -> dict[str, Any]:
    n = len(x)
    if n < MIN_SETS:
        return _no_rho(f"too few sets ({n} < {MIN_SETS})", n)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        which = "metric" if np.ptp(x) == 0 else "reference"
        return _no_rho(f"constant: the {which} is the same for every set", n)
    rho, p = spearman(x, y)
    # the study's draws, restricted to the sets this metric has (all of them, usually)
    full = np.full(draws.shape[1], -1)
    full[where] = np.arange(n)
    mapped = full[draws]
    kept = mapped[(mapped >= 0).all(axis=1)] if len(where) < draws.shape[1] else mapped
    low, high = bootstrap_rho(x, y, kept) if len(kept) else (math.nan, math.nan)
    return {
        "spearman_rho": float(rho),
        "rho_low": low,
        "rho_high": high,
        "p_value": float(p),
        "n_sets": n,
        "status": "ok",
    }


def source_stages(params: MetricStudyParams, inputs: list[str]) -> list[str]:
    sources = params.sources if params.sources is not None else inputs
    missing = [s for s in sources if s not in inputs]
    if missing or not sources:
        raise BadInput(
            f"metric_study.sources {missing or sources} must be evaluate stages listed in `inputs` {inputs}"
        )
    return sources
