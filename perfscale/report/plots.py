"""Matplotlib figures for the report, returned as PNG bytes (the Agg backend: no display needed)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter

REAL_COLOUR, SYNTH_COLOUR = "#1f77b4", "#ff7f0e"


def to_png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _grid(n: int, cols: int = 4, size: float = 3.0) -> tuple[plt.Figure, np.ndarray]:
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(
        rows, min(cols, max(n, 1)), figsize=(size * min(cols, max(n, 1)), size * rows), squeeze=False
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def profile_scaling(
    df: pd.DataFrame, group: str | None, x: str | None, series: str | None, y: str = "wall_time_s"
) -> bytes:
    """Median `y` against `x` (log-log), one panel per `group` value, one line per `series` value."""
    groups = sorted(df[group].dropna().unique()) if group else [None]
    fig, axes = _grid(len(groups))
    for ax, g in zip(axes.flat, groups, strict=False):
        part = df if g is None else df[df[group] == g]
        for s, sub in part.groupby(series) if series else [(None, part)]:
            if x:
                med = sub.groupby(x)[y].median().sort_index()
                ax.plot(med.index, med.values, marker="o", label=f"{series}={s}" if series else None)
                ax.set_xscale("log")
                ax.set_xlabel(x)
            else:
                ax.hist(sub[y].dropna(), bins=20, alpha=0.6, label=str(s))
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_minor_formatter(NullFormatter())
        ax.set_ylabel(y)
        ax.set_title(str(g) if g is not None else y)
        if series:
            ax.legend(fontsize=7)
    return to_png(fig)


def loss_curves(telemetry: pd.DataFrame) -> bytes:
    """One panel per generator, one line per loss name."""
    gens = sorted(telemetry["generator"].unique())
    fig, axes = _grid(len(gens), cols=3, size=3.5)
    for ax, gen in zip(axes.flat, gens, strict=False):
        part = telemetry[telemetry["generator"] == gen]
        for name, sub in part.groupby("loss"):
            ax.plot(sub["step"], sub["value"], label=str(name))
        ax.set_title(gen)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)
    return to_png(fig)


def real_vs_synthetic(real: pd.DataFrame, synth: pd.DataFrame, title: str, max_columns: int = 12) -> bytes:
    """Overlaid histograms (numerical) and bar charts (categorical) of real vs synthetic columns."""
    columns = [c for c in real.columns if c in synth.columns][:max_columns]
    fig, axes = _grid(len(columns))
    for ax, col in zip(axes.flat, columns, strict=False):
        r, s = real[col].dropna(), synth[col].dropna()
        if pd.api.types.is_numeric_dtype(r) and r.nunique() > 8:
            both = pd.concat([r, s])
            lo, hi = float(both.min()), float(both.max())
            use_log = lo > 0 and hi / lo > 100
            bins = np.geomspace(lo, hi, 25) if use_log else np.linspace(lo, hi, 25)
            # share of rows per bin (not density: densities on log-spaced bins exaggerate the small values)
            ax.hist(
                r, bins=bins, weights=np.full(len(r), 1 / len(r)), alpha=0.55, color=REAL_COLOUR, label="real"
            )
            if len(s):
                ax.hist(
                    s,
                    bins=bins,
                    weights=np.full(len(s), 1 / len(s)),
                    alpha=0.55,
                    color=SYNTH_COLOUR,
                    label="synthetic",
                )
            if use_log:
                ax.set_xscale("log")
        else:
            freq = pd.DataFrame(
                {
                    "real": r.astype(str).value_counts(normalize=True),
                    "synthetic": s.astype(str).value_counts(normalize=True),
                }
            ).fillna(0)
            idx = np.arange(len(freq))
            ax.bar(idx - 0.2, freq["real"], 0.4, color=REAL_COLOUR, label="real")
            ax.bar(idx + 0.2, freq["synthetic"], 0.4, color=SYNTH_COLOUR, label="synthetic")
            ax.set_xticks(idx, freq.index, rotation=45, fontsize=7)
        ax.set_title(col, fontsize=9)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    return to_png(fig)


def metric_bars(metrics: pd.DataFrame) -> bytes:
    """One panel per (metric, component) summary, one bar per generator."""
    pairs = metrics[["metric", "component"]].drop_duplicates().values.tolist()
    fig, axes = _grid(len(pairs), cols=4, size=2.8)
    for ax, (metric, component) in zip(axes.flat, pairs, strict=False):
        part = metrics[(metrics.metric == metric) & (metrics.component == component)]
        means = part.groupby("generator")["value"].mean()
        ax.bar(means.index, means.values, color=SYNTH_COLOUR)
        ax.set_title(f"{metric}\n{component}", fontsize=8)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    return to_png(fig)


def predictions(table: pd.DataFrame) -> bytes:
    """Predicted vs true value of a numeric target, one panel per generator and target (y = x dashed)."""
    groups = list(table.groupby(["target", "generator"]))
    fig, axes = _grid(len(groups), cols=4, size=2.8)
    for ax, ((target, generator), part) in zip(axes.flat, groups, strict=False):
        ax.scatter(part["truth"], part["prediction"], s=8, color=SYNTH_COLOUR, alpha=0.7)
        lo = float(min(part["truth"].min(), part["prediction"].min()))
        hi = float(max(part["truth"].max(), part["prediction"].max()))
        ax.plot([lo, hi], [lo, hi], "--", color=REAL_COLOUR, linewidth=0.8)
        ax.set_title(f"{generator}: {target}", fontsize=8)
        ax.set_xlabel("true", fontsize=7)
        ax.set_ylabel("predicted", fontsize=7)
    return to_png(fig)


def rho_bars(result: pd.DataFrame) -> bytes:
    """Spearman rho of each metric's headline component with the reference (positive: agrees), best first."""
    shown = result.dropna(subset=["spearman_rho"]).sort_values("spearman_rho")
    fig, ax = plt.subplots(figsize=(7.0, 0.35 * max(len(shown), 1) + 1.2))
    labels = [f"{m} ({c})" for m, c in zip(shown["metric"], shown["component"], strict=True)]
    colours = [SYNTH_COLOUR if r < 0 else REAL_COLOUR for r in shown["spearman_rho"]]
    ax.barh(labels, shown["spearman_rho"], color=colours)
    ax.axvline(0, color="#444", linewidth=0.8)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel("Spearman rho with the reference (oriented: > 0 = agrees)")
    ax.tick_params(axis="y", labelsize=8)
    return to_png(fig)


def _family(label: str) -> str:
    """'ctgan (epochs=5)' -> 'ctgan', 'noise@0.5' -> 'noise': what a point's colour says."""
    return label.split(" (")[0].split("@")[0].split(" #")[0]


def metric_scatter(points: pd.DataFrame, result: pd.DataFrame, reference: str) -> bytes:
    """One panel per ranked metric: its raw headline value against the reference, one point per set."""
    ranked = result.dropna(subset=["spearman_rho"])
    fig, axes = _grid(len(ranked), cols=4, size=3.0)
    families = sorted({_family(str(label)) for label in points["label"]})
    cmap = plt.get_cmap("tab10" if len(families) <= 10 else "tab20")
    colour = {f: cmap(i % cmap.N) for i, f in enumerate(families)}
    for ax, row in zip(axes.flat, ranked.itertuples(), strict=False):
        part = points[points["metric"] == row.metric]
        for family, sub in part.groupby(part["label"].map(lambda s: _family(str(s)))):
            ax.scatter(sub["reference"], sub["value"], s=18, color=colour[family], label=family)
        ax.set_title(f"{row.metric} ({row.orientation})\nrho = {row.spearman_rho:.2f}", fontsize=8)
        ax.set_xlabel(reference, fontsize=7)
        ax.set_ylabel(str(row.component), fontsize=7)
        ax.tick_params(labelsize=7)
    if len(ranked):
        handles = [plt.Line2D([], [], ls="", marker="o", color=colour[f], label=f) for f in families]
        axes.flat[0].legend(handles=handles, fontsize=6, loc="best")
    return to_png(fig)


def rho_heatmap(summary: pd.DataFrame, tables: list[str]) -> bytes:
    """Rows: metrics (as `summary` orders them); columns: tables; colour and number: Spearman rho."""
    values = summary[[f"rho:{t}" for t in tables]].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(1.1 * len(tables) + 5.5, 0.3 * len(summary) + 1.5))
    ax.imshow(values, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    ax.set_title(
        "Spearman rho with ML efficacy (blue: agrees, red: disagrees); D = dissimilarity, (N) = mean rank",
        fontsize=9,
    )
    ax.set_xticks(range(len(tables)), [t.removesuffix("_study") for t in tables], rotation=30, ha="right")
    labels = [  # 'dissimilarity[standard/...]' shown as 'D[standard/...]': long names overflow the margin
        f"{m.replace('dissimilarity[', 'D[')} ({r:.0f})"
        for m, r in zip(summary["metric"], summary["mean_rank"], strict=True)
    ]
    ax.set_yticks(range(len(summary)), labels, fontsize=7)
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6)
    return to_png(fig)
