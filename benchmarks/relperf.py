"""Relative-performance prediction on the shared RAJAPerf data, by vector set, beside Nichols, Yeom and
Bhatele (XGBoost MAE 0.11, 81.6% below the mean baseline, Same Order Score 76%, on four machines).

For three sets of systems (the six FCR systems; four of them, two CPUs and two GPUs as in the paper; all
eight with Quartz and Lassen) it fits the mean baseline and XGBoost on three splits (random by whole
vectors, leave one kernel out, leave one profiled system out) and prints MAE (pooled over folds), the share
below the mean's MAE and SOS. The share of vectors the *mean* orders right is the chance level to beat.

  PERFSCALE_SHARED_DATA=../shared/data python benchmarks/relperf.py
  PERFSCALE_SHARED_DATA=../shared/data python benchmarks/relperf.py --quick   (make bench: the four-system
      set, XGBoost of 10 trees, every split; nothing written)

Results: benchmarks/results/relperf.json with the machine description.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, quick_line, write_results

from perfscale.ingest import read_source
from perfscale.models.fit import FitSpec, fit_predict
from perfscale.models.rpv import FEATURES, Dropped, profile_points, rpv_table
from perfscale.report.fit_predict import pooled_vector_scores

DATA = Path(os.environ.get("PERFSCALE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SEED = 2024
FCR = ["H100_cpu", "H100_gpu", "MI300A-CPX_cpu", "MI300A-CPX_gpu", "MI300A-SPX_cpu", "MI300A-SPX_gpu"]
SETS = {
    "fcr6": FCR,
    "fcr4": ["H100_cpu", "H100_gpu", "MI300A-SPX_cpu", "MI300A-SPX_gpu"],
    "all8": [*FCR, "lassen_gpu", "quartz_cpu"],
}
SPLITS = [("random", "vector"), ("group", "kernel"), ("group", "profiled_on")]
MODELS = {"mean": {}, "xgboost": {"n_estimators": 200, "max_depth": 4}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="fcr4 only, XGBoost of 10 trees, nothing written (make bench)"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    sets = {"fcr4": SETS["fcr4"]} if args.quick else SETS
    models = {"mean": {}, "xgboost": {"n_estimators": 10, "max_depth": 4}} if args.quick else MODELS
    tables = [
        read_source("caliper", DATA / "caliper" / "rajaperf").to_pandas(),
        read_source("rajaperf", DATA / "rajaperf-fcr2026").to_pandas(),
    ]
    points = profile_points(tables, Dropped())
    rows = []
    for name, systems in sets.items():
        t = rpv_table(points, base="H100_gpu", systems=systems)
        targets = [f"speed_{s}" for s in systems]
        features = [*FEATURES, *(f"on_{s}" for s in systems)]
        for split, group in SPLITS:
            outs = []
            for model, hp in models.items():
                start = time.perf_counter()
                spec = FitSpec(targets, features, model, hp, split=split, group_column=group)
                outs.append(fit_predict(t, spec, SEED))
                seconds = time.perf_counter() - start
            scores = pooled_vector_scores(pd.concat(outs, ignore_index=True))
            for r in scores.to_dict("records"):
                rows.append(
                    {
                        "systems": name,
                        "vectors": int(t["vector"].nunique()),
                        "kernels": int(t["kernel"].nunique()),
                        "model": r["model"],
                        "split": r["split"],
                        "mae": r["vector_mae"],
                        "mae_below_mean_pct": r["mae_below_mean_pct"],
                        "sos": r["sos"],
                        "r2": r["vector_r2"],
                        "seconds_xgboost": seconds,
                    }
                )
                print(*rows[-1].values(), sep="\t", flush=True)
    out = pd.DataFrame(rows)
    if args.quick:
        xgb = out[out["model"] == "xgboost"]
        quick_line(
            "relperf",
            started,
            sets=list(sets),
            xgboost_mae=dict(zip(xgb["split"], xgb["mae"].round(3), strict=True)),
        )
        return
    out.to_csv(sys.stdout, sep="\t", index=False, float_format="%.3f")
    result = {
        "data": "Caliper Quartz/Lassen RAJAPerf profiles + RAJAPerf FCR 2026 CSVs (../shared/data)",
        "seed": SEED,
        "base": "H100_gpu",
        "size_tolerance": 2.0,
        "rows": out.round(4).to_dict(orient="records"),
        "machine": describe(),
    }
    print(write_results(Path(__file__).parent / "results" / "relperf.json", result))


if __name__ == "__main__":
    main()
