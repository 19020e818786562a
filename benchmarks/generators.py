"""Generators side by side: cost (fit time, sampling speed, peak memory) and quality on two real tables.

    .venv/bin/python benchmarks/generators.py [--reduced] [--generators smote,ctgan] [--datasets digits]
    .venv/bin/python benchmarks/generators.py --quick   (make bench: a smoke run on profiles, nothing written)
    .venv/bin/python benchmarks/generators.py --refresh-profiles runs/perfgen-local   (rebuild the data file)

Every registered generator (`perfscale.generators.list_generators()`, GReaT included) is run on each
dataset in a fresh Python process, so its peak resident memory
(`getrusage(RUSAGE_SELF).ru_maxrss`) is its own: interpreter, libraries and data included, which is what a
worker process running it needs. The process loads the data, fits (timed), samples as many rows as the train
table (timed: rows/s), reads the peak RSS, then scores the synthetic table against the real train table with
perfscale.metrics: wasserstein and jsd (means over columns), dcr with the real holdout, and diff_corr and
ml_efficacy (target and holdout below) when those metrics are registered. A generator that fails or runs past
--timeout is recorded with its error and the others go on.

Datasets:
* digits: scikit-learn's load_digits, 64 pixel columns (int64 0..16) and `digit` (the target, as a string
  category); a seeded 75/25 train/holdout split (--reduced, --quick: 400 train and 150 holdout rows of it).
* profiles: benchmarks/data/profiles.parquet, the `split` stage of `perfscale run workflows/perfgen.yaml
  --site local` (built-in kernels x size x threads x 5 repetitions on this machine: 112 train, 38 holdout
  rows, 11 columns); ml_efficacy predicts wall_time_s (regression). --refresh-profiles RUN_DIR rewrites the
  file from another run folder.

Hyperparameters are chosen to fit a CPU budget (a busy 2-core machine): they are in HYPERPARAMETERS below and
copied into the results. Results: benchmarks/results/generators.json (one row per generator x dataset, the
machine description, the options) and a table per dataset printed like Table I of the BNL job-record study.

Modes: full (the default), `--reduced` (fewer epochs and rows; recorded as mode "quick", the name this
flag had before `--quick` became `make bench`'s smoke run) and `--quick`: every generator with a token
budget (one epoch, a few steps) on profiles only, a one-line summary, nothing written.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, quick_line, write_results

from perfscale.tabular.meta import TableMeta, infer_meta

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "generators.json"
PROFILES = HERE / "data" / "profiles.parquet"
SEED = 2026
DATASETS = ("digits", "profiles")
TARGETS = {"digits": "digit", "profiles": "wall_time_s"}
QUALITY = ("wasserstein", "jsd", "dcr", "diff_corr", "ml_efficacy")  # those registered are used
ML_EFFICACY = {
    "full": {"models": ["linear", "random_forest", "xgboost"], "n_estimators": 100},
    "quick": {"models": ["linear", "decision_tree"]},
}
ML_EFFICACY["smoke"] = ML_EFFICACY["quick"]
# per mode, generator -> hyperparameters; a dataset name key overrides them on that dataset, and a "skip"
# entry there (the reason) leaves the generator out on it. Chosen for a busy 2-core CPU machine: SDV's
# mode-specific normalisation fits a Gaussian mixture per numeric column (64 on digits), TabDDPM runs one
# thread (two threads on two busy cores were slower), GReaT uses the tiny char-level GPT-2 with a time cap.
_GREAT_DIGITS_SKIP = {"skip": "65 columns make ~700-token rows: too slow to train and sample on a CPU here"}
# perfgen.yaml's setting: 40 epochs (~280 steps) gave 0% valid rows on the 11 profile columns, 2,500 100%
_GREAT = {
    "base_model": "tiny",
    "steps": 2500,
    "lr": 0.002,
    "float_digits": 3,
    "max_train_seconds": 400,
    "digits": _GREAT_DIGITS_SKIP,
}
HYPERPARAMETERS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "gaussian_copula": {},
        "ctgan": {"epochs": 150, "enable_gpu": False},
        "tvae": {"epochs": 150, "enable_gpu": False},
        "copulagan": {"epochs": 150, "enable_gpu": False},
        "smote": {"k_neighbors": 5},
        "tabddpm": {
            "steps": 1500,
            "num_timesteps": 200,
            "batch_size": 256,
            "d_layers": [256, 256],
            "threads": 1,
        },
        "great": _GREAT,
    },
    "quick": {
        "gaussian_copula": {},
        "ctgan": {"epochs": 10, "enable_gpu": False},
        "tvae": {"epochs": 10, "enable_gpu": False},
        "copulagan": {"epochs": 10, "enable_gpu": False},
        "smote": {"k_neighbors": 5},
        "tabddpm": {
            "steps": 200,
            "num_timesteps": 50,
            "batch_size": 256,
            "d_layers": [128, 128],
            "threads": 1,
        },
        "great": _GREAT,
    },
    "smoke": {  # --quick: the code path only; the figures mean nothing
        "gaussian_copula": {},
        "ctgan": {"epochs": 1, "enable_gpu": False},
        "tvae": {"epochs": 1, "enable_gpu": False},
        "copulagan": {"epochs": 1, "enable_gpu": False},
        "smote": {"k_neighbors": 5},
        "tabddpm": {"steps": 10, "num_timesteps": 10, "batch_size": 64, "d_layers": [32, 32], "threads": 1},
        # GReaT needs ~2,500 steps for valid rows here: at 50 it fits and generates, then stops at its
        # valid-row budget (one attempt per row), a failure the summary line shows; its scoring is not reached
        "great": {**_GREAT, "steps": 50, "max_train_seconds": 15, "max_attempts": 1},
    },
}


@dataclass
class Dataset:
    train: pd.DataFrame
    holdout: pd.DataFrame
    meta: TableMeta
    target: str


# ---- data -----------------------------------------------------------------------------------------------


def load_dataset(name: str, quick: bool) -> Dataset:
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits(as_frame=True)
        table = digits.data.astype("int64")
        table["digit"] = digits.target.astype(str)
        order = np.random.default_rng(SEED).permutation(len(table))
        n_holdout = len(table) // 4
        holdout, train = table.iloc[order[:n_holdout]], table.iloc[order[n_holdout:]]
        if quick:
            train, holdout = train.iloc[:400], holdout.iloc[:150]
    elif name == "profiles":
        if not PROFILES.is_file():
            raise SystemExit(
                f"{PROFILES} is missing: run `perfscale run workflows/perfgen.yaml --site local`, then "
                f"`benchmarks/generators.py --refresh-profiles runs/perfgen-local`"
            )
        from perfscale.tabular.columns import split_part

        table = pd.read_parquet(PROFILES)
        train, holdout = split_part(table, "train"), split_part(table, "holdout")
    else:
        raise SystemExit(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    train, holdout = train.reset_index(drop=True), holdout.reset_index(drop=True)
    return Dataset(train, holdout, infer_meta(train), TARGETS[name])


def refresh_profiles(run_dir: Path) -> None:
    """Copy the `split` stage of a perfgen run folder (provenance columns dropped) to PROFILES."""
    from perfscale.store import RunStore

    table = RunStore(run_dir).read_stage("split", provenance=False).to_pandas()
    if table.empty:
        raise SystemExit(f"{run_dir} has no finished `split` stage; run workflows/perfgen.yaml first")
    PROFILES.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(PROFILES, index=False)
    print(f"wrote {PROFILES}: {len(table)} rows, columns {list(table.columns)}")


# ---- one generator on one dataset, in its own process ---------------------------------------------------


def available_generators() -> list[str]:
    """Registered generators (importing perfscale.generators registers the built-in ones)."""
    from perfscale.generators import list_generators

    return list_generators()


def hyperparameters(mode: str, generator: str, dataset: str) -> dict[str, Any]:
    params = dict(HYPERPARAMETERS[mode].get(generator, {}))
    return {**{k: v for k, v in params.items() if k not in DATASETS}, **params.get(dataset, {})}


def aggregates(rows: pd.DataFrame, columns: list[str]) -> dict[str, float]:
    """The table-level components of `evaluate`'s long result: per-column, per-pair and per-model ones
    (ml_efficacy's `<source>/<model>/<score>`) are left out."""
    out = {}
    for metric, component, value in rows[["metric", "component", "value"]].itertuples(index=False):
        per_item = (
            component in columns or component.startswith(("column:", "pair:")) or component.count("/") > 1
        )
        if not per_item:
            out[f"{metric}/{component}"] = float(value)
    return out


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Fit, sample and score one generator on one dataset; runs in a fresh process (see `run_job`)."""
    from perfscale.generators import get_generator
    from perfscale.generators.base import max_rss_bytes
    from perfscale.metrics import evaluate, list_metrics

    available_generators()
    data = load_dataset(job["dataset"], job["quick"])
    rss_before = max_rss_bytes()
    generator = get_generator(job["generator"])(**job["hyperparameters"])
    t0 = time.perf_counter()
    generator.fit(data.train, data.meta, seed=SEED)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    synth = generator.sample(len(data.train), seed=SEED)
    sample_s = time.perf_counter() - t0
    peak = max_rss_bytes()
    registered = {spec.name for spec in list_metrics()}
    metrics = [m for m in QUALITY if m in registered]
    options: dict[str, dict[str, Any]] = {"dcr": {"holdout": data.holdout}}
    if "ml_efficacy" in metrics:
        options["ml_efficacy"] = {
            "target": data.target,
            "holdout": data.holdout,
            **ML_EFFICACY["quick" if job["quick"] else "full"],
        }
    t0 = time.perf_counter()
    scores = evaluate(data.train, synth, data.meta, metrics=metrics, options=options)
    return {
        "train_rows": len(data.train),
        "holdout_rows": len(data.holdout),
        "columns": data.train.shape[1],
        "fit_s": fit_s,
        "sample_rows": len(synth),
        "sample_s": sample_s,
        "sample_rows_per_s": len(synth) / sample_s if sample_s > 0 else None,
        "peak_rss_mb": peak / 2**20,
        "rss_before_fit_mb": rss_before / 2**20,
        "metrics_s": time.perf_counter() - t0,
        "metrics": aggregates(scores, list(data.train.columns)),
    }


def run_job(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {**job, "ok": False, "error": f"timed out after {timeout_s:.0f} s"}
    wall = time.perf_counter() - t0
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {**job, "ok": False, "error": f"exit {proc.returncode}: {tail}", "wall_s": wall}
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {**job, "ok": True, "wall_s": wall, "when": when, **json.loads(lines[-1])}


# ---- report ---------------------------------------------------------------------------------------------

COLUMNS = [  # header, key, format
    ("fit s", "fit_s", "{:.1f}"),
    ("sample rows/s", "sample_rows_per_s", "{:,.0f}"),
    ("peak MB", "peak_rss_mb", "{:.0f}"),
    ("WD", "wasserstein/mean", "{:.3f}"),
    ("JSD", "jsd/mean", "{:.3f}"),
    ("diff-CORR", "diff_corr/score", "{:.2f}"),
    ("DCR", "dcr/synth_to_train_median", "{:.2f}"),
    ("DCR hold", "dcr/holdout_to_train_median", "{:.2f}"),
    ("closer", "dcr/share_closer_to_train", "{:.2f}"),
]
ML_COLUMNS = {"classification": "accuracy", "regression": "r2"}


def cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key, row.get("metrics", {}).get(key))
    return "-" if value is None else fmt.format(value)


def ml_cells(row: dict[str, Any]) -> tuple[str, str]:
    metrics = row.get("metrics", {})
    for score in ML_COLUMNS.values():
        synth, real = metrics.get(f"ml_efficacy/synthetic/{score}"), metrics.get(f"ml_efficacy/real/{score}")
        if synth is not None:
            return f"{score} synth", f"{synth:.3f} ({real:.3f})"
    return "ML", "-"


def table_text(rows: list[dict[str, Any]], dataset: str) -> str:
    rows = [r for r in rows if r["dataset"] == dataset]
    if not rows:
        return ""
    ml_header = next((ml_cells(r)[0] for r in rows if ml_cells(r)[1] != "-"), "ML")
    header = ["generator", *[h for h, _, _ in COLUMNS], f"{ml_header} (real)"]
    ok = [[r["generator"], *[cell(r, k, f) for _, k, f in COLUMNS], ml_cells(r)[1]] for r in rows if r["ok"]]
    widths = [max(len(line[i]) for line in [header, *ok]) for i in range(len(header))]
    first = next((r for r in rows if r["ok"]), {})
    shape = f"{first.get('train_rows', '?')} train / {first.get('holdout_rows', '?')} holdout rows"
    lines = [f"{dataset} ({shape})", "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in ok]
    for r in rows:
        if not r["ok"]:
            prefix = "" if r.get("skipped") else "failed: "
            lines.append(f"{r['generator'].rjust(widths[0])}  {prefix}{r['error'][:100]}")
    return "\n".join(lines)


LEGEND = (
    "WD: Wasserstein-1 per numeric column in real std units, mean; JSD: Jensen-Shannon per categorical "
    "column, mean; diff-CORR: Frobenius distance of the association matrices; DCR: median distance of a "
    "synthetic row to its nearest train row (std units), DCR hold: the same for real holdout rows (the "
    "reference), closer: share of synthetic rows closer to train than to holdout (0.5 ideal, 1 = copies); "
    "ML: train on synthetic, test on real holdout (in brackets: trained on real train)."
)


def merged(path: Path, mode: str, rows: list[dict[str, Any]], elapsed_s: float) -> dict[str, Any]:
    """The results document: `rows` plus, from an earlier results file of the same mode, the rows of the
    generator x dataset pairs not run now (so `--generators x` reruns one generator into the table)."""
    done = {(r["generator"], r["dataset"]) for r in rows}
    earlier: list[dict[str, Any]] = []
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("mode") == mode:
            earlier = [r for r in old["results"] if (r["generator"], r["dataset"]) not in done]
    every = sorted(earlier + rows, key=lambda r: (DATASETS.index(r["dataset"]), r["generator"]))
    return {
        "benchmark": "generators",
        "mode": mode,
        "seed": SEED,
        "datasets": {d: {"target": TARGETS[d]} for d in DATASETS if any(r["dataset"] == d for r in every)},
        "ml_efficacy_options": ML_EFFICACY[mode],
        "results": every,  # each row carries its hyperparameters, wall time and when it ran
        "elapsed_s_last_invocation": elapsed_s,
        "machine": describe(),
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reduced", action="store_true", help="fewer epochs and rows (recorded as mode quick)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run on profiles, nothing written (make bench)"
    )
    parser.add_argument("--generators", help="comma-separated names (default: every registered generator)")
    parser.add_argument(
        "--datasets", help="comma-separated: digits,profiles (default both; --quick: profiles)"
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds per generator and dataset")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (rows of other runs merged)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--refresh-profiles", type=Path, metavar="RUN_DIR", help="rebuild the profiles file")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.refresh_profiles:
        refresh_profiles(args.refresh_profiles)
        return
    mode = "smoke" if args.quick else "quick" if args.reduced else "full"
    known = available_generators()
    names = args.generators.split(",") if args.generators else known
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise SystemExit(f"unknown generators {unknown}; registered: {', '.join(known)}")
    datasets = (args.datasets or ("profiles" if args.quick else ",".join(DATASETS))).split(",")
    start, rows = time.perf_counter(), []
    for dataset in datasets:
        for name in names:
            params = hyperparameters(mode, name, dataset)
            reduced = mode != "full"
            job = {"generator": name, "dataset": dataset, "quick": reduced, "hyperparameters": params}
            if "skip" in params:
                row = {**job, "ok": False, "skipped": True, "error": f"skipped: {params['skip']}"}
            else:
                row = run_job(job, args.timeout)
            rows.append(row)
            status = f"fit {row['fit_s']:.1f} s" if row["ok"] else row["error"]
            print(f"{dataset:9s} {name:16s} {status}", flush=True)
    if args.quick:
        ok = {r["generator"]: "ok" if r["ok"] else r["error"][:120] for r in rows}
        fit_s = {r["generator"]: round(r["fit_s"], 1) for r in rows if r["ok"]}
        quick_line("generators", start, datasets=datasets, generators=ok, fit_s=fit_s)
        return
    result = merged(args.out, mode, rows, time.perf_counter() - start)
    print()
    for dataset in result["datasets"]:
        print(table_text(result["results"], dataset), end="\n\n")
    print(LEGEND)
    write_results(args.out, result)
    print(f"\nwrote {args.out} ({result['elapsed_s_last_invocation']:.0f} s)")


if __name__ == "__main__":
    main()
