"""Job end-state AUC on the full Mira trace, set beside the VU thesis (RF/XGBoost 0.96, LR 0.62).

Runs each model (linear = logistic regression, random_forest, xgboost) in four settings and prints macro
one-vs-rest AUC on the test rows:
  ours        submit-time features + user/project history, SMOTETomek on training rows only (or none);
  no-history  requested nodes/cores/walltime + calendar only;
  leaky       SMOTETomek applied to the whole table BEFORE the random split (the thesis's order): test rows
              then have synthetic near copies in training, and Tomek cleaning has removed hard test rows;
  raw-LR      logistic regression on unscaled features (the models here standardise them).

  PERFSCALE_SHARED_DATA=../shared/data python benchmarks/endstate.py

Results: benchmarks/results/endstate.json with the machine description.

With `--llm ROWS` it instead sets the LLM classifier (`llm_classifier`: rows as text, a causal LM with a
sequence-classification head, fine-tuned) beside mean, LR, random forest and XGBoost on one seeded subset of
ROWS jobs (histories computed on the whole trace first), random and time-ordered splits, same features:

  PERFSCALE_SHARED_DATA=../shared/data python benchmarks/endstate.py --llm 2000 [--base-model smollm2]
      [--epochs 8] [--splits random,time]

Results: benchmarks/results/endstate-llm-<base model>-<ROWS>.json.

`--quick` (make bench) runs both on a seeded subset of 1,000 jobs (histories still from the whole trace):
every model and setting, then the tiny LLM classifier beside the others on 200 jobs, one epoch, the random
split; nothing written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, quick_line, write_results

from perfscale.models import build_model
from perfscale.models.fit import FitSpec, fit_predict, prepare
from perfscale.models.resample import resample_training
from perfscale.models.scoring import class_scores
from perfscale.models.splits import make_splits

DATA = Path(os.environ.get("PERFSCALE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
BASE = {
    "targets": ["new_status"],
    "features": ["node_num", "cpu_num", "wall_time"],
    "time_column": "submit_time",
    "calendar": True,
}
HISTORY = {
    "history_by": ["user", "project"],
    "history_outcome": "new_status",
    "end_columns": ["submit_time", "wait_time", "run_time"],
}
MODELS = ["linear", "random_forest", "xgboost"]
SEED = 2018


def leaky(table: pd.DataFrame, model: str, rows: int | None = None) -> float:
    """The thesis's order: resample everything, then split at random."""
    prepared, features = prepare(table, FitSpec(**BASE, **HISTORY, model=model, rows=rows), SEED)
    classes = sorted(prepared["new_status"].unique())
    y = prepared["new_status"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
    x, y = resample_training(prepared[features].to_numpy(float), y, "smotetomek", SEED)
    resampled = pd.DataFrame(x, columns=features).assign(new_status=np.asarray(classes)[y])
    ((train, test),) = make_splits(resampled, "random", seed=SEED, stratify="new_status")
    fitted = build_model(model, seed=SEED).fit(resampled.iloc[train], ["new_status"], features)
    truth = y[test]
    return float(class_scores(truth, fitted.predict_proba(resampled.iloc[test]), classes)["auc_macro"])


def raw_logistic(table: pd.DataFrame, rows: int | None = None) -> float:
    from sklearn.linear_model import LogisticRegression

    prepared, features = prepare(table, FitSpec(**BASE, **HISTORY, model="linear", rows=rows), SEED)
    ((train, test),) = make_splits(prepared, "random", seed=SEED, stratify="new_status")
    classes = sorted(prepared["new_status"].unique())
    y = prepared["new_status"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    x = prepared[features].to_numpy(float)
    lr = LogisticRegression(max_iter=1000).fit(x[train], y[train])
    return float(class_scores(y[test], lr.predict_proba(x[test]), classes)["auc_macro"])


def llm_beside_classical(
    table: pd.DataFrame, rows: int, base_model: str, epochs: int, splits: list[str]
) -> dict[str, object]:
    """AUC of every model, the LLM classifier included, on the same subset and splits."""
    llm = {"base_model": base_model, "epochs": epochs, "threads": max(1, (os.cpu_count() or 1) // 2)}
    models = {"mean": {}, "linear": {}, "random_forest": {}, "xgboost": {}, "llm_classifier": llm}
    out = []
    for split in splits:
        for model, hyper in models.items():
            start = time.perf_counter()
            spec = FitSpec(**BASE, **HISTORY, model=model, hyperparameters=hyper, split=split, rows=rows)
            scored = fit_predict(table, spec, SEED)
            first = scored.iloc[0]
            out.append(
                {
                    "model": model,
                    "split": split,
                    "auc_macro": round(float(first["auc_macro"]), 4),
                    "accuracy": round(float(first["accuracy"]), 4),
                    "train_rows": int(first["train_rows"]),
                    "test_rows": int(first["test_rows"]),
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
            print(*out[-1].values(), sep="\t", flush=True)
    result = {
        "data": f"ALCF Mira, a seeded subset of {rows} of 22,508 jobs (histories from the whole trace)",
        "seed": SEED,
        "test_fraction": 0.25,
        "llm_classifier": llm,
        "rows": out,
        "machine": describe(),
    }
    return result


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--llm", type=int, metavar="ROWS", help="the LLM classifier beside the others")
    parser.add_argument("--base-model", default="tiny", help="llm_classifier base_model: tiny, smollm2, ...")
    parser.add_argument("--epochs", type=int, default=8, help="llm_classifier fine-tuning epochs")
    parser.add_argument("--splits", default="random,time", help="with --llm: random, time or both")
    parser.add_argument(
        "--quick", action="store_true", help="a 1,000-job subset, nothing written (make bench)"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    table = pd.read_csv(DATA / "jobs" / "mira" / "data_mira.csv")
    if args.llm and not args.quick:
        result = llm_beside_classical(table, args.llm, args.base_model, args.epochs, args.splits.split(","))
        name = f"endstate-llm-{Path(args.base_model).name}-{args.llm}.json"
        print(write_results(Path(__file__).parent / "results" / name, result))
        return
    subset = 1000 if args.quick else None
    rows = []
    for model in MODELS:
        for history in (True, False):
            for split in ("random", "time"):
                for resample in ("none", "smotetomek"):
                    if not history and resample != "none":
                        continue
                    start = time.perf_counter()
                    spec = FitSpec(**BASE, **(HISTORY if history else {}), model=model, split=split,
                                   resample=resample, rows=subset)  # fmt: skip
                    auc = fit_predict(table, spec, SEED)["auc_macro"].iloc[0]
                    setting = "ours" if history else "no-history"
                    rows.append((model, setting, split, resample, auc, time.perf_counter() - start))
                    print(*rows[-1], sep="\t", flush=True)
        start = time.perf_counter()
        rows.append((model, "leaky", "random", "smotetomek-before-split", leaky(table, model, subset),
                     time.perf_counter() - start))  # fmt: skip
        print(*rows[-1], sep="\t", flush=True)
    rows.append(("linear", "raw-LR", "random", "none", raw_logistic(table, subset), 0.0))
    out = pd.DataFrame(rows, columns=["model", "setting", "split", "resample", "auc_macro", "seconds"])
    out.to_csv(sys.stdout, sep="\t", index=False, float_format="%.3f")
    if args.quick:
        llm = llm_beside_classical(table, 200, "tiny", 1, ["random"])["rows"]
        ours = out[(out["setting"] == "ours") & (out["split"] == "random") & (out["resample"] == "none")]
        auc = dict(zip(ours["model"], ours["auc_macro"].round(3), strict=True)) | {
            r["model"] + " (200 jobs)": r["auc_macro"] for r in llm if r["model"] == "llm_classifier"
        }
        quick_line("endstate", started, jobs=subset, fits=len(out) + len(llm), auc_macro_random_split=auc)
        return
    result = {
        "data": "ALCF Mira, 22,508 jobs (../shared/data/jobs/mira/data_mira.csv)",
        "seed": SEED,
        "test_fraction": 0.25,
        "rows": out.round({"auc_macro": 4, "seconds": 2}).to_dict(orient="records"),
        "machine": describe(),
    }
    print(write_results(Path(__file__).parent / "results" / "endstate.json", result))


if __name__ == "__main__":
    main()
