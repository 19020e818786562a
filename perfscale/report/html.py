"""The run report: one self-contained HTML file (plots embedded as PNG) at RUN/report/index.html."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from jinja2 import Environment, select_autoescape
from markupsafe import Markup

from perfscale.collect.gpu import GPU_COLUMNS
from perfscale.plan.kinds import RENAMED
from perfscale.plan.planner import Task
from perfscale.report import plots
from perfscale.results.metric_study import VARIANT_PREFIX
from perfscale.status import run_status
from perfscale.store.atomic import atomic_write_text
from perfscale.store.run import RunStore, utcnow
from perfscale.tabular.columns import SPLIT_COLUMN, split_part
from perfscale.version import __version__

PROFILE_FIELDS = {"command", "env", "cwd", "timeout_s", "warmup", "fom"}


@dataclass
class Section:
    title: str
    text: str = ""
    images: list[str] = field(default_factory=list)  # base64 PNGs
    tables: list[Markup] = field(default_factory=list)


def _img(png: bytes) -> str:
    return base64.b64encode(png).decode()


def _table(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> Markup:
    return Markup(
        df.to_html(
            index=False, float_format=floatfmt.format, border=0, classes="data", na_rep="", escape=True
        )
    )


def _placement(store: RunStore, task: Task) -> dict[str, object]:
    """Where a stage's tasks run: site, partition (the site's default when the stage names none), GPUs."""
    site = task.site or store.site.name
    partition = task.partition
    if partition is None and site == store.site.name:
        partition = store.site.partition()[0]
    return {"site": site, "partition": partition or "-", "GPUs per task": task.gpus}


def _status_section(store: RunStore) -> Section:
    rows = [
        {
            "stage": s.stage,
            "kind": store.plan.of_stage(s.stage)[0].kind,
            **_placement(store, store.plan.of_stage(s.stage)[0]),
            "tasks": s.total,
            "done": s.done,
            "failed": s.failed,
            "missing": s.missing,
            "failure kinds": ", ".join(f"{k}: {n}" for k, n in s.failure_kinds.items()),
        }
        for s in run_status(store)
    ]
    section = Section("Run status", tables=[_table(pd.DataFrame(rows))])
    attempts = store.attempts()
    failed = attempts[~attempts["ok"].astype(bool)]
    if not failed.empty:
        cols = ["stage", "index", "attempt", "failure_kind", "exit_status", "message"]
        shown = failed[cols].assign(message=failed["message"].str.slice(0, 200)).tail(50)
        section.tables.append(_table(shown))
    return section


def _profile_section(store: RunStore, stage: str) -> Section | None:
    df = store.read_stage(stage).to_pandas()
    if df.empty or "wall_time_s" not in df:
        return None
    variables = [k for k in store.plan.of_stage(stage)[0].params if k not in PROFILE_FIELDS and k in df]
    categorical = [v for v in variables if not pd.api.types.is_numeric_dtype(df[v])]
    numeric = sorted(
        (v for v in variables if pd.api.types.is_numeric_dtype(df[v]) and df[v].nunique() > 1),
        key=lambda v: df[v].nunique(),
    )
    group = categorical[0] if categorical else None
    x = numeric[-1] if numeric else None  # the variable with most values (problem size) on the x axis
    series = numeric[0] if len(numeric) > 1 else None  # the one with fewest (threads) as lines
    section = Section(f"Profiles: {stage}", f"{len(df)} measured runs; median wall time per configuration.")
    section.images.append(_img(plots.profile_scaling(df, group, x, series)))
    keys = [v for v in (group, x, series) if v]
    if keys:
        summary = df.groupby(keys)["wall_time_s"].agg(["median", "min", "max", "count"]).reset_index()
        section.tables.append(_table(summary))
    gpu = [c for c in GPU_COLUMNS if c in df and c != "gpu_source"]
    if "gpu_status" in gpu:  # the GPU collector was on: its columns per measured run
        section.tables.append(_table(df[[*keys, *gpu]].head(50)))
    return section


def _training_section(store: RunStore, stage: str) -> Section | None:
    df = store.read_stage(stage, provenance=False).to_pandas()
    if df.empty:
        return None
    section = Section(f"Training: {stage}")
    summary = df.groupby("generator")[["fit_elapsed_s", "peak_rss_bytes", "train_rows"]].first().reset_index()
    section.tables.append(_table(summary))
    curves = df.dropna(subset=["step"]) if "step" in df else df.iloc[0:0]
    if not curves.empty and {"loss", "value"} <= set(curves.columns):
        section.images.append(_img(plots.loss_curves(curves)))
    return section


def _synthetic_section(store: RunStore, stage: str) -> Section | None:
    synth = store.read_stage(stage, provenance=False).to_pandas()
    if synth.empty:
        return None
    section = Section(f"Real vs synthetic: {stage}")
    first = store.plan.of_stage(stage)[0]
    train_task = next(t for t in store.plan.tasks if t.key == first.upstream_key)
    real = store.read_stage(train_task.params["source"], provenance=False).to_pandas()
    if SPLIT_COLUMN in real:
        real = split_part(real, "train")
    for gen, part in synth.groupby("generator"):
        section.images.append(_img(plots.real_vs_synthetic(real, part.drop(columns="generator"), str(gen))))
    return section


def _metrics_section(store: RunStore, stage: str) -> Section | None:
    from perfscale.metrics import combine_parts
    from perfscale.metrics.combine import summary_rows

    df = combine_parts(store.read_stage(stage, provenance=False).to_pandas())  # split evaluations merged
    if df.empty:
        return None
    source = store.plan.of_stage(stage)[0].params["source"]
    summary = summary_rows(df, store.read_stage(source, provenance=False).column_names)
    summary = summary[~summary["component"].str.startswith(VARIANT_PREFIX)]  # ranked by metric_study
    table = (
        summary.pivot_table(
            index=["metric", "component"], columns="generator", values="value", aggfunc="mean"
        )
        .reset_index()
        .rename_axis(columns=None)
    )
    section = Section(
        f"Synthetic quality: {stage}",
        "Summary components of each metric (per-column values are in the stage's table: "
        f"<code>perfscale show RUN {html.escape(stage)}</code>).",
    )
    section.tables.append(_table(table))
    section.images.append(_img(plots.metric_bars(_headline_rows(summary))))
    return section


def _headline_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """One bar per metric (its headline component; ML efficacy: its mean synthetic and real scores), so
    the plot stays readable when a metric has dozens of summary components."""
    from perfscale.results.metric_study import headline_of

    keep: set[tuple[str, str]] = set()
    for metric, components in summary.groupby("metric")["component"]:
        names = set(components)
        if metric == "ml_efficacy":
            keep |= {
                (metric, c) for c in names if c.count("/") == 1 and c.split("/")[0] in ("synthetic", "real")
            }
            continue
        headline = headline_of(str(metric), names, {})
        keep |= {(metric, headline.component)} if headline and headline.component in names else set()
    mask = [(m, c) in keep for m, c in zip(summary["metric"], summary["component"], strict=True)]
    return summary[mask] if any(mask) else summary


def _umap_section(store: RunStore, stage: str) -> Section | None:
    """UMAP of real train vs each synthetic set of a `sample` or `corrupt` stage (PERFGEN's Figure 5)."""
    from perfscale.report import umap_plot

    if not umap_plot.enabled():
        return None
    projections = umap_plot.stage_projections(store, stage)
    if not projections:
        return None
    text = (
        f"Real train rows (left) and each synthetic set (right), at most {umap_plot.MAX_ROWS} of each, "
        "embedded together by UMAP (n_neighbors 15, fixed seed) on a standardised / one-hot encoding; "
        "colours are classes when the table has a class column. Set "
        f"<code>{umap_plot.ENV_SWITCH}=0</code> to leave these out."
    )
    return Section(f"UMAP, real vs synthetic: {stage}", text, [_img(umap_plot.figure(projections))])


def _metric_study_section(store: RunStore, stage: str) -> Section | None:
    """Rank agreement of each metric with ML efficacy: the rho table, a bar plot and metric-vs-reference."""
    from perfscale.results.metric_study import MetricStudyParams, collect_sets, source_stages, study_points

    result = store.read_stage(stage, provenance=False).to_pandas()
    if result.empty:
        return None
    task = store.plan.of_stage(stage)[0]
    params = MetricStudyParams.model_validate(task.params)
    sources = source_stages(params, list(task.inputs))
    tables = {s: store.read_stage(s, provenance=True).to_pandas() for s in sources}
    points, _ = study_points(collect_sets(tables, store.plan), params)
    n_sets = points["set"].nunique() if not points.empty else 0
    section = Section(
        f"Metric validation: {stage}",
        f"Spearman rank correlation of each metric's headline component with "
        f"<code>{html.escape(params.reference)}</code> across {n_sets} synthetic sets "
        f"(stages {html.escape(', '.join(sources))}). Values are oriented first (lower-is-better negated, "
        "ideal-value metrics as minus the distance to the ideal), so rho &gt; 0 means the metric ranks the "
        "sets as ML efficacy does. The scatter plots show raw values.",
    )
    variant = result["metric"].str.endswith("]")
    base, variants = result[~variant], result[variant]
    points = points[~points["metric"].str.endswith("]")]
    section.tables.append(_table(base, "{:.3g}"))
    if not variants.empty:
        section.text += (
            f" {len(variants)} variants of {html.escape(', '.join(params.variants))} are ranked too; the "
            f"{min(len(variants), VARIANTS_SHOWN)} best (rho_low / rho_high: bootstrap 95% interval):"
        )
        section.tables.append(_table(variants.head(VARIANTS_SHOWN), "{:.3g}"))
    if base["spearman_rho"].notna().any():
        section.images.append(_img(plots.rho_bars(pd.concat([base, variants.head(3)]))))
        section.images.append(_img(plots.metric_scatter(points, base, params.reference)))
    if not points.empty:
        wide = points.pivot_table(index="label", columns="metric", values="value", aggfunc="mean")
        reference = points.groupby("label")["reference"].first().rename(params.reference)
        section.tables.append(_table(pd.concat([reference, wide], axis=1).reset_index(), "{:.4g}"))
    return section


VARIANTS_SHOWN = 15


def _metric_studies_section(store: RunStore) -> Section | None:
    """Two or more metric_study stages (one per real table): every metric and variant's rho per table, the
    mean rank across tables (perfscale.results.metric_study_summary), and a heat map."""
    from perfscale.results.metric_study_summary import option_effects, summarise

    stages = [s for s in store.plan.stages if store.plan.of_stage(s)[0].kind == "metric_study"]
    results = {}
    for stage in stages:
        table = store.read_stage(stage, provenance=False).to_pandas()
        if not table.empty and table["spearman_rho"].notna().any():
            results[stage] = table
    if len(results) < 2:
        return None
    summary = summarise(results)
    section = Section(
        "Metric validation across tables",
        f"Spearman rho of every metric (and ranked variant) with ML efficacy on each of {len(results)} "
        "tables, its rank there among all rows (1 = best) and the mean rank; sorted by mean rank. Shown: the "
        f"{VARIANTS_SHOWN} best rows and every metric that is not a variant.",
    )
    variant = summary["metric"].str.endswith("]")
    shown = pd.concat([summary.head(VARIANTS_SHOWN), summary[~variant]]).drop_duplicates("metric")
    section.tables.append(_table(shown, "{:.3g}"))
    section.images.append(_img(plots.rho_heatmap(shown, list(results))))
    effects = option_effects(summary)
    if not effects.empty:
        section.tables.append(_table(effects, "{:.3g}"))
    return section


def _predict_section(store: RunStore, stage: str) -> Section | None:
    """Scores of prediction by generation per generator and target beside direct regressors trained on the
    same rows (one table), the thread-count hit rate of each, and predicted-vs-true plots."""
    df = store.read_stage(stage, provenance=False).to_pandas()
    if df.empty:
        return None
    scores = [c for c in ("mse", "mae", "r2", "accuracy", "fallback_share", "choice_hit_rate") if c in df]
    table = df.groupby(["target", "generator"])[scores].first().reset_index()
    section = Section(
        f"Prediction by generation: {stage}",
        "Each generator fills the hidden target of the real holdout from the other columns.",
    )
    section.tables.append(_table(table))
    params = store.plan.of_stage(stage)[0].params
    direct = _direct_regressors(store, sorted(df["target"].unique()), params)
    if not direct.empty:
        generated = table.assign(method=table["generator"] + " (generation)").drop(columns="generator")
        both = pd.concat([generated, direct], ignore_index=True)
        section.text += (
            " The second table sets beside them direct regressors (`fit_predict` with `split: given`) "
            "trained on the same split's train rows and scored on its holdout rows."
        )
        if params.get("choose"):
            bound = params.get("time_bound")
            rule = f"the smallest meeting {bound}, else the fastest" if bound else "the fastest"
            section.text += (
                f" choice_hit_rate: per configuration ({', '.join(params['group_by'])}) the "
                f"{params['choose']} value picked from predicted times ({rule}) equals the one picked from "
                "the measured holdout times."
            )
        scores = [c for c in ("mse", "mae", "r2", "choice_hit_rate") if c in both]
        section.tables.append(_table(both[["target", "method", *scores]]))
    if "prediction" in df and df["prediction"].notna().any():
        section.images.append(_img(plots.predictions(df.dropna(subset=["prediction"]))))
    return section


def _direct_regressors(store: RunStore, targets: list[str], predict_params: dict) -> pd.DataFrame:
    """Scores of `fit_predict` stages that used the split stage's own partition (`split: given`) on
    `targets`: one row per target x model, named "<model> (direct)", with the choice hit rate of the
    prediction stage's `choose` question where it asks one."""
    from perfscale.models.scoring import choice_hits

    rows = []
    for stage in store.plan.stages:
        task = store.plan.of_stage(stage)[0]
        if task.kind != "fit_predict":
            continue
        df = store.read_stage(stage, provenance=False).to_pandas()
        part = df[df["split"] == "given"] if "split" in df else df.iloc[:0]
        if part.empty:
            continue
        choose = predict_params.get("choose")
        source = store.read_stage(task.params["source"], provenance=False).to_pandas() if choose else None
        for target in targets:
            if f"mae_{target}" not in part:
                continue
            for model, m in part.groupby("model"):
                first = m.iloc[0]
                row = {
                    "target": target,
                    "method": f"{model} (direct, {stage})",
                    "mse": float(first[f"rmse_{target}"]) ** 2,
                    "mae": float(first[f"mae_{target}"]),
                    "r2": float(first[f"r2_{target}"]),
                }
                if source is not None and predict_params.get("target") == target:
                    config = source.iloc[m["row"].to_numpy()]
                    hits = choice_hits(
                        config,
                        choose,
                        predict_params["group_by"],
                        m[f"truth_{target}"].to_numpy(),
                        m[f"pred_{target}"].to_numpy(),
                        predict_params.get("time_bound"),
                    )
                    row["choice_hit_rate"] = float(hits["hit"].mean()) if len(hits) else float("nan")
                rows.append(row)
    return pd.DataFrame(rows)


def _recommend_section(store: RunStore, stage: str) -> Section | None:
    """The most frequent configurations each generator produces under the stage's conditions."""
    df = store.read_stage(stage, provenance=False).to_pandas()
    if df.empty:
        return None
    top = df.sort_values(["generator", "count"], ascending=[True, False]).groupby("generator").head(3)
    conditions = html.escape(str(df["conditions"].iloc[0]))
    section = Section(
        f"Recommended configurations: {stage}",
        f"Top configurations generated under <code>{conditions}</code>, with the acceptance rate.",
    )
    section.tables.append(_table(top.drop(columns=["conditions"])))
    return section


def _fit_predict_section(store: RunStore, stage: str) -> Section | None:
    """Scores of `fit_predict` models, ROC curves and confusion matrices (perfscale.report.fit_predict)."""
    from perfscale.report import fit_predict as fp

    df = store.read_stage(stage, provenance=False).to_pandas()
    if df.empty:
        return None
    section = Section(
        f"Model predictions: {stage}",
        "Scores on the test rows of each split (mean over folds); resampling touches training rows only.",
    )
    section.tables.append(_table(fp.score_table(df)))
    if "truth_label" in df:
        section.images.append(_img(fp.roc_curves(df)))
        section.tables.append(_table(fp.confusion_table(df)))
    else:
        section.images.append(_img(fp.predicted_vs_true(df)))
    if "sos" in df:
        section.tables.append(_table(fp.vector_table(df)))
        section.images.append(_img(fp.sos_bars(df)))
        section.images.append(_img(fp.mae_heatmap(df)))
    return section


def _simulate_section(store: RunStore, stage: str) -> Section | None:
    """Makespan and mean wait per placement policy of the scheduling simulation."""
    from perfscale.report import fit_predict as fp

    df = store.read_stage(stage, provenance=False).to_pandas()
    if df.empty:
        return None
    section = Section(
        f"Scheduling simulation: {stage}",
        "Jobs placed by predicted relative performance, the true best machine, or at random; FCFS + EASY "
        "backfilling on each machine.",
    )
    section.tables.append(_table(df))
    section.images.append(_img(fp.policy_bars(df)))
    return section


SECTIONS = {
    "profile": _profile_section,
    "train": _training_section,
    "sample": (_synthetic_section, _umap_section),
    "corrupt": _umap_section,
    "evaluate": _metrics_section,
    "metric_study": _metric_study_section,
    "predict_by_generation": _predict_section,
    "recommend": _recommend_section,
    "fit_predict": _fit_predict_section,
    "simulate": _simulate_section,
}

TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>perfscale report: {{ study }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
table.data { border-collapse: collapse; font-size: .85em; margin: .8em 0; }
table.data th, table.data td { padding: .25em .6em; border-bottom: 1px solid #eee; text-align: right; }
table.data th { background: #f4f4f4; } img { max-width: 100%; } .meta { color: #666; font-size: .9em; }
</style></head><body>
<h1>perfscale report: {{ study }}</h1>
<p class="meta">site <b>{{ site }}</b> &middot; host {{ host }} &middot; {{ tasks }} tasks &middot;
perfscale {{ version }} &middot; written {{ written }} &middot; run folder <code>{{ root }}</code></p>
{% for s in sections %}<h2>{{ s.title }}</h2>{% if s.text %}<p>{{ s.text|safe }}</p>{% endif %}
{% for t in s.tables %}{{ t }}{% endfor %}
{% for img in s.images %}<img src="data:image/png;base64,{{ img }}">{% endfor %}
{% endfor %}
</body></html>
"""


def build_report(store: RunStore) -> Path:
    """Write RUN/report/index.html from whatever the run holds now (a partial run gives a partial report)."""
    sections = [_status_section(store)]
    try:
        across = _metric_studies_section(store)
    except Exception as exc:  # as below: a broken section is named, the report still written
        error = html.escape(f"{type(exc).__name__}: {exc}")
        across = Section("Metric validation across tables: not drawn", error)
    for stage in store.plan.stages:
        kind = store.plan.of_stage(stage)[0].kind
        builders = SECTIONS.get(RENAMED.get(kind, kind), ())  # one builder or a tuple (old plans: old names)
        for builder in builders if isinstance(builders, tuple) else (builders,):
            try:
                section = builder(store, stage)
            except Exception as exc:  # a report of a broken run is still a report: show what failed
                section = Section(f"{stage}: section not drawn", html.escape(f"{type(exc).__name__}: {exc}"))
            if section:
                sections.append(section)
    if across:
        sections.append(across)
    manifest = store.manifest()
    env = Environment(autoescape=select_autoescape(default=True))
    page = env.from_string(TEMPLATE).render(
        study=manifest["study"],
        site=manifest["site"],
        host=manifest["host"],
        tasks=len(store.plan.tasks),
        version=__version__,
        written=utcnow().strftime("%Y-%m-%d %H:%M UTC"),
        root=store.root.resolve(),
        sections=sections,
    )
    return atomic_write_text(page, store.report_dir / "index.html")
