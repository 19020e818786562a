"""The Dissimilarity study's numbers (issue 16): every metric and every Dissimilarity variant against ML
efficacy on each real table of a run of workflows/dissimilarity_study.yaml, and the mean rank across tables.

    nice -n 10 perfscale run workflows/dissimilarity_study.yaml --site local --workers 2 --run-dir RUN
    python benchmarks/dissimilarity_study.py RUN
    python benchmarks/dissimilarity_study.py --quick     (make bench: builds and analyses a tiny run itself)

The rank correlations are recomputed from the run's evaluate tables with the code of this checkout
(`perfscale.results.metric_study.study_points`, the metric_study stage's own analysis), so a change of the
analysis needs no new run. Writes benchmarks/results/dissimilarity_study.json (per table: the rho rows of
the other metrics and of the default variant; across tables: the 25 best rows by mean rank, every
non-variant metric, the effect of each option, and where the paper's definition and the default stand) with
the machine description.

`--quick` runs the workflow cut to two tables (wine and diabetes, 80 rows each) and four corruptions of each,
no generator (kl_divergence and dissimilarity against a decision tree's ML efficacy), in a temporary folder,
then the same analysis on it; nothing written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, quick_line, write_results

from perfscale.metrics.dissimilarity import Variant
from perfscale.results.metric_study import MetricStudyParams, collect_sets, source_stages, study_points
from perfscale.results.metric_study_summary import held_out_choice, option_effects, summarise
from perfscale.store.run import RunStore

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TOP = 25
# the definition docs/metrics.md gave before this study, and the paper's formula read literally
BEFORE = Variant("dcr", "variance", 0.9, 3, "normalised", "projected", "product")
PAPER = Variant("dcr", "variance", 0.9, 3, "raw", "none", "angles")


def studies(run: Path) -> dict[str, pd.DataFrame]:
    """The result table of each metric_study stage of the run, recomputed from its evaluate tables."""
    store = RunStore(run).check()
    out = {}
    for stage in store.plan.stages:
        task = store.plan.of_stage(stage)[0]
        if task.kind != "metric_study":
            continue
        params = MetricStudyParams.model_validate(task.params)
        tables = {
            s: store.read_stage(s, provenance=True).to_pandas() for s in source_stages(params, task.inputs)
        }
        if all(t.empty for t in tables.values()):
            continue
        out[stage.removesuffix("_study")] = study_points(collect_sets(tables, store.plan), params)[1]
    return out


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in frame.to_dict(orient="records")
    ]


def tiny_run(folder: Path) -> Path:
    """The reduced study of tests/studies.py (wine and diabetes, 80 rows, four corruptions each, no
    generator), run on the local engine: the run folder."""
    from perfscale.runner import prepare_run, run_plan
    from perfscale.spec import load_site

    sys.path.insert(0, str(ROOT))  # the reduced study is the one tests/test_metric_study.py runs
    from tests.studies import reduced_dissimilarity_study

    path = reduced_dissimilarity_study(folder)
    store = prepare_run(path, load_site("local"), folder / "run")
    summary = run_plan(store, "local", workers=2, progress=False)
    failed = {stage: v.failed for stage, v in summary.items() if v.failed or v.done != v.total}
    if failed:
        sys.exit(f"the tiny dissimilarity study failed in {failed}: see {store.root}")
    return store.root


def analysis(run: Path) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The results document of `run`, and the frames printed: summary, plain metrics, landmarks, held out."""
    started = time.perf_counter()
    results = studies(run)
    summary = summarise(results)
    plain = summary[~summary["metric"].str.endswith("]")]
    named = {f"dissimilarity[{v.name}]": label for v, label in ((BEFORE, "before"), (PAPER, "paper_literal"))}
    landmarks = summary[summary["metric"].isin(named)].assign(role=lambda f: f["metric"].map(named))
    held_out = held_out_choice(results)
    per_table = {}
    for table, result in results.items():
        keep = ~result["metric"].str.endswith("]") | result["metric"].isin(
            [summary["metric"].iloc[0], *named]
        )
        per_table[table] = records(result[keep])
    out = {
        "benchmark": "dissimilarity_study",
        "run": str(run),
        "tables": {t: int(r["n_sets"].max()) for t, r in results.items()},
        "best": records(summary.head(TOP)),
        "metrics": records(plain),
        "landmarks": records(landmarks),
        "rank_of_best_variant_among_metrics": int(
            pd.concat([plain, summary.head(1)])["mean_rank"].rank(method="min").iloc[-1]
        ),
        "option_effects": records(option_effects(summary)),
        "held_out_choice": records(held_out),
        "per_table": per_table,
        "analysis_s": round(time.perf_counter() - started, 1),
        "machine": describe(),
    }
    return out, summary, plain, landmarks, held_out


def quick() -> None:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="perfscale-dissimilarity-") as tmp:
        out, summary, *_ = analysis(tiny_run(Path(tmp)))
    best = out["best"][0]
    quick_line(
        "dissimilarity_study",
        started,
        tables=out["tables"],
        metrics_and_variants_ranked=len(summary),
        best={"metric": best["metric"], "mean_rank": best["mean_rank"]},
        analysis_s=out["analysis_s"],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, nargs="?")
    ap.add_argument("--out", type=Path, default=RESULTS / "dissimilarity_study.json")
    ap.add_argument("--quick", action="store_true", help="build a tiny run and analyse it; nothing written")
    args = ap.parse_args()
    if args.quick:
        quick()
        return
    if args.run is None:
        ap.error("RUN (a run folder of workflows/dissimilarity_study.yaml) is needed, or --quick")
    out, summary, plain, landmarks, held_out = analysis(args.run)
    print(json.dumps({k: out[k] for k in ("tables", "landmarks")}, indent=1))
    columns = ["metric", "mean_rank", "mean_rho", "worst_rank", "beats:sdmetrics_quality"]
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_colwidth", 70):
        print(summary.head(TOP)[columns + [c for c in summary if c.startswith("rho:")]].round(2).to_string())
        print(plain[columns + [c for c in summary if c.startswith("rho:")]].round(2).to_string())
        print(option_effects(summary).round(2).to_string())
        print(held_out.round(2).to_string())
        print(landmarks[columns + [c for c in summary if c.startswith("rho:")]].round(2).to_string())
    write_results(args.out, out)


if __name__ == "__main__":
    main()
