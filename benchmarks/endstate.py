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
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, write_results

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


def leaky(table: pd.DataFrame, model: str) -> float:
    """The thesis's order: resample everything, then split at random."""
    prepared, features = prepare(table, FitSpec(**BASE, **HISTORY, model=model), SEED)
    classes = sorted(prepared["new_status"].unique())
    y = prepared["new_status"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
    x, y = resample_training(prepared[features].to_numpy(float), y, "smotetomek", SEED)
    resampled = pd.DataFrame(x, columns=features).assign(new_status=np.asarray(classes)[y])
    ((train, test),) = make_splits(resampled, "random", seed=SEED, stratify="new_status")
    fitted = build_model(model, seed=SEED).fit(resampled.iloc[train], ["new_status"], features)
    truth = y[test]
    return float(class_scores(truth, fitted.predict_proba(resampled.iloc[test]), classes)["auc_macro"])


def raw_logistic(table: pd.DataFrame) -> float:
    from sklearn.linear_model import LogisticRegression

    prepared, features = prepare(table, FitSpec(**BASE, **HISTORY, model="linear"), SEED)
    ((train, test),) = make_splits(prepared, "random", seed=SEED, stratify="new_status")
    classes = sorted(prepared["new_status"].unique())
    y = prepared["new_status"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    x = prepared[features].to_numpy(float)
    lr = LogisticRegression(max_iter=1000).fit(x[train], y[train])
    return float(class_scores(y[test], lr.predict_proba(x[test]), classes)["auc_macro"])


def main() -> None:
    table = pd.read_csv(DATA / "jobs" / "mira" / "data_mira.csv")
    rows = []
    for model in MODELS:
        for history in (True, False):
            for split in ("random", "time"):
                for resample in ("none", "smotetomek"):
                    if not history and resample != "none":
                        continue
                    start = time.perf_counter()
                    spec = FitSpec(**BASE, **(HISTORY if history else {}), model=model, split=split,
                                   resample=resample)  # fmt: skip
                    auc = fit_predict(table, spec, SEED)["auc_macro"].iloc[0]
                    setting = "ours" if history else "no-history"
                    rows.append((model, setting, split, resample, auc, time.perf_counter() - start))
                    print(*rows[-1], sep="\t", flush=True)
        start = time.perf_counter()
        rows.append((model, "leaky", "random", "smotetomek-before-split", leaky(table, model),
                     time.perf_counter() - start))  # fmt: skip
        print(*rows[-1], sep="\t", flush=True)
    rows.append(("linear", "raw-LR", "random", "none", raw_logistic(table), 0.0))
    out = pd.DataFrame(rows, columns=["model", "setting", "split", "resample", "auc_macro", "seconds"])
    out.to_csv(sys.stdout, sep="\t", index=False, float_format="%.3f")
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
