"""Metric speed: perfscale's SDMetrics-quality vs sdmetrics' QualityReport, DCR at 100k x 100k, and how every
registered metric's time grows with the number of rows.

    .venv/bin/python benchmarks/metrics_speed.py [--quick] [--rows 100000] [--sizes 10000,100000,1000000]

Tables: a seeded mixed table (12 numerical columns with correlated blocks and skew, 2 integer, 6
categorical of cardinality 2 to 100 that depend on the numbers, so QualityReport's association thresholds
select real pairs) and a perturbed synthetic twin (a bootstrap of the rows with 5% multiplicative noise on the
numbers and 5% of the categories redrawn).

* quality: perfscale's `sdmetrics_quality` and sdmetrics' QualityReport, each run once in a fresh
  subprocess (wall time of the call; peak RSS = the subprocess's ru_maxrss, baseline = its RSS after
  imports and table generation, just before the call). SDMetrics subsamples ContingencySimilarity pairs to
  50,000 rows (unseeded) on tables this size, so it is also run with subsampling off (``exact``), which is
  what perfscale computes by default; the score differences of both are recorded.
* dcr: the `dcr` metric, synthetic vs real train table of `--rows` rows each, in a fresh subprocess.
* scaling: every registered metric through `evaluate` at each size (one process, wall time only). A metric
  whose time predicted from the previous size (x size ratio x 1.2) exceeds `--budget` seconds is skipped with
  that reason, as is a metric that failed at a smaller size.

Results go to benchmarks/results/metrics_speed.json (or ``--out``) with the machine description; a
``--quick`` run (make bench) prints a one-line summary and writes them only where ``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, quick_line, write_results

RESULTS = Path(__file__).parent / "results"
CARDINALITIES = (2, 3, 5, 10, 30, 100)
TARGET = "cat_2"  # a categorical column (5 categories) for the metrics that train a predictor
GROWTH_MARGIN = 1.2  # scaling: predicted time = previous time x size ratio x this


def make_real(n: int, seed: int) -> pd.DataFrame:
    """12 numerical (3 correlated blocks, some skewed), 2 integer and 6 categorical columns."""
    rng = np.random.default_rng(seed)
    cols: dict[str, Any] = {}
    for block in range(3):
        base = rng.normal(size=n)
        for j in range(4):
            weight = (0.9, 0.7, 0.4, 0.1)[j]
            x = weight * base + np.sqrt(1 - weight**2) * rng.normal(size=n)
            cols[f"num_{block * 4 + j}"] = np.exp(x) if j == 3 else 10 * x + 5 * block
    cols["threads"] = 2 ** rng.integers(0, 7, n)
    cols["size"] = rng.integers(1_000, 1_000_000, n)
    for i, k in enumerate(CARDINALITIES):
        driver = cols[f"num_{(i % 3) * 4}"]  # the category depends on a numeric block
        edges = np.quantile(driver, np.linspace(0, 1, k + 1)[1:-1])
        code = np.searchsorted(edges, driver + rng.normal(0, 5, n))
        labels = np.array([f"c{i}_{v}" for v in range(k)], dtype=object)
        cols[f"cat_{i}"] = labels[code]
    return pd.DataFrame(cols)


def make_synth(real: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Bootstrap of `real`, 5% multiplicative noise on the numbers, 5% of the categories redrawn."""
    rng = np.random.default_rng(seed)
    synth = real.iloc[rng.integers(0, len(real), len(real))].reset_index(drop=True)
    numeric = [c for c in synth.columns if c.startswith("num_")]
    synth[numeric] = synth[numeric] * (1 + rng.normal(0, 0.05, (len(synth), len(numeric))))
    for i, k in enumerate(CARDINALITIES):
        name = f"cat_{i}"
        flip = rng.random(len(synth)) < 0.05
        labels = np.array([f"c{i}_{v}" for v in range(k)], dtype=object)
        values = synth[name].to_numpy(copy=True)
        values[flip] = labels[rng.integers(0, k, int(flip.sum()))]
        synth[name] = values
    return synth


def tables(n: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    real = make_real(n, seed)
    return real, make_synth(real, seed + 1)


def sdmetrics_metadata(meta: Any) -> dict:
    sdtype = {"numerical": "numerical", "integer": "numerical"}
    return {"columns": {n: {"sdtype": sdtype.get(c.type, c.type)} for n, c in meta.columns.items()}}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


# ---------------------------------------------------------------- subprocess workers


def worker(kind: str, rows: int) -> dict[str, Any]:
    """Run one measured call (in this fresh process) and describe it."""
    from perfscale.metrics import check_tables, evaluate
    from perfscale.tabular.meta import infer_meta

    real, synth = tables(rows)
    meta = infer_meta(real)
    result: dict[str, Any] = {}
    if kind.startswith("sdmetrics"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from sdmetrics.reports.single_table import QualityReport
        report = QualityReport()
        if kind == "sdmetrics_exact":
            report.num_rows_subsample = None
        baseline = _rss_mb()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report.generate(real, synth, sdmetrics_metadata(meta), verbose=False)
        wall = time.perf_counter() - start
        props = report.get_properties().set_index("Property")["Score"]
        details = report.get_details("Column Pair Trends")
        result = {
            "column_shapes": float(props["Column Shapes"]),
            "column_pair_trends": float(props["Column Pair Trends"]),
            "score": float(report.get_score()),
            "pairs_counted": int(details["Meets Threshold?"].astype("boolean").fillna(False).sum()),
        }
    else:
        metric, options = {
            "perfscale": ("sdmetrics_quality", {}),
            "perfscale_subsampled": ("sdmetrics_quality", {"num_rows_subsample": 50_000}),
            "perfscale_pairs": ("column_pair_trends", {}),
            "dcr": ("dcr", {}),
        }[kind]
        evaluate(real.head(50), synth.head(50), meta, [metric], {metric: options})  # warm imports
        start = time.perf_counter()
        check_tables(real, synth, meta)  # evaluate's input checks, timed on their own for reference
        result["check_tables_s"] = time.perf_counter() - start
        baseline = _rss_mb()
        start = time.perf_counter()
        table = evaluate(real, synth, meta, [metric], {metric: options})
        wall = time.perf_counter() - start
        values = dict(zip(table.component, table.value, strict=True))
        result.update({"pairs_counted": len(values) - 1} if kind == "perfscale_pairs" else values)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "kind": kind,
        "rows": rows,
        "wall_s": wall,
        "peak_rss_mb": peak,
        "baseline_rss_mb": baseline,
        "result": result,
    }


def run_worker(kind: str, rows: int, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", kind, "--rows", str(rows)]
    print(f"  {kind} ({rows} rows) ...", flush=True)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"kind": kind, "rows": rows, "skipped": f"did not finish within {timeout:.0f} s"}
    if done.returncode != 0:
        return {"kind": kind, "rows": rows, "error": done.stderr.strip().splitlines()[-1:]}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"    {out['wall_s']:.2f} s, peak {out['peak_rss_mb']:.0f} MB", flush=True)
    return out


def quality_comparison(rows: int, timeout: float) -> dict[str, Any]:
    runs = {
        k: run_worker(k, rows, timeout)
        for k in ("perfscale", "perfscale_subsampled", "sdmetrics", "sdmetrics_exact", "perfscale_pairs")
    }
    out: dict[str, Any] = {"rows": rows, "runs": runs}
    ours, theirs, exact = runs["perfscale"], runs["sdmetrics"], runs["sdmetrics_exact"]
    if "wall_s" in ours and "wall_s" in theirs:
        out["speedup_vs_sdmetrics_default"] = theirs["wall_s"] / ours["wall_s"]
        out["score_diff_vs_sdmetrics_default"] = {
            k: ours["result"][k] - theirs["result"][k]
            for k in ("column_shapes", "column_pair_trends", "score")
        }
        sub = runs["perfscale_subsampled"]
        if "wall_s" in sub:
            out["subsampled_score_diff_vs_sdmetrics_default"] = (
                sub["result"]["score"] - theirs["result"]["score"]
            )
    if "wall_s" in ours and "wall_s" in exact:
        out["speedup_vs_sdmetrics_exact"] = exact["wall_s"] / ours["wall_s"]
        out["score_diff_vs_sdmetrics_exact"] = {
            k: ours["result"][k] - exact["result"][k]
            for k in ("column_shapes", "column_pair_trends", "score")
        }
    return out


# ---------------------------------------------------------------- scaling of every registered metric


def metric_options(name: str, option_names: list[str], holdout: pd.DataFrame) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if "target" in option_names:
        opts["target"] = TARGET
    if name == "ml_efficacy" and "holdout" in option_names:
        opts["holdout"] = holdout
    return opts


def scaling(sizes: list[int], budget: float) -> dict[str, Any]:
    from perfscale.metrics import evaluate, list_metrics
    from perfscale.tabular.meta import infer_meta

    specs = list_metrics()
    out: dict[str, Any] = {spec.name: {} for spec in specs}
    previous: dict[str, tuple[int, float]] = {}
    failed: dict[str, str] = {}
    for n in sizes:
        real, synth = tables(n)
        holdout = make_real(max(n // 5, 1000), seed=7)
        meta = infer_meta(real)
        print(f"  scaling at {n} rows", flush=True)
        for spec in specs:
            if spec.name in failed:
                out[spec.name][str(n)] = {"skipped": f"failed at a smaller size: {failed[spec.name]}"}
                continue
            if spec.name in previous:
                rows, seconds = previous[spec.name]
                predicted = seconds * n / rows * GROWTH_MARGIN
                if predicted > budget:
                    out[spec.name][str(n)] = {
                        "skipped": f"predicted ~{predicted:.0f} s from {seconds:.1f} s at {rows} rows "
                        f"(budget {budget:.0f} s)"
                    }
                    continue
            options = {spec.name: metric_options(spec.name, spec.options, holdout)}
            start = time.perf_counter()
            try:
                evaluate(real, synth, meta, [spec.name], options)
            except Exception as exc:  # a metric's failure is a result to record, not a reason to stop
                failed[spec.name] = f"{type(exc).__name__}: {exc}"[:300]
                out[spec.name][str(n)] = {"error": failed[spec.name]}
                continue
            seconds = time.perf_counter() - start
            previous[spec.name] = (n, seconds)
            out[spec.name][str(n)] = {"wall_s": round(seconds, 4), "options": sorted(options[spec.name])}
            print(f"    {spec.name}: {seconds:.2f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (2,000 rows, sizes 500/1k)")
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the quality and dcr comparisons")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="row counts of the scaling runs")
    parser.add_argument(
        "--budget", type=float, default=300.0, help="max predicted seconds of one scaling run"
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="max seconds of one subprocess run")
    parser.add_argument("--out", type=Path, help="result file (default: results/metrics_speed.json)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.rows)))
        return
    rows, sizes = args.rows, [int(s) for s in args.sizes.split(",")]
    if args.quick:
        rows, sizes, args.budget = 2_000, [500, 1_000], 30.0
    started = time.perf_counter()
    print(f"quality comparison at {rows} rows", flush=True)
    quality = quality_comparison(rows, args.timeout)
    print(f"dcr at {rows} x {rows} rows", flush=True)
    dcr = run_worker("dcr", rows, args.timeout)
    print("scaling", flush=True)
    result = {
        "benchmark": "metrics_speed",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": describe(),
        "table": {
            "rows": rows,
            "columns": 20,
            "numerical": 12,
            "integer": 2,
            "categorical_cardinalities": list(CARDINALITIES),
        },
        "quality": quality,
        "dcr": dcr,
        "scaling": {"sizes": sizes, "budget_s": args.budget, "metrics": scaling(sizes, args.budget)},
    }
    result["total_s"] = round(time.perf_counter() - started, 1)
    path = args.out or (None if args.quick else RESULTS / "metrics_speed.json")
    if path is None:
        seconds = {m: t[str(sizes[-1])].get("wall_s") for m, t in result["scaling"]["metrics"].items()}
        quick_line("metrics_speed", started, rows=rows, dcr_s=dcr.get("wall_s"), scaling_wall_s=seconds)
        return
    write_results(path, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
