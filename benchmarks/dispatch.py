"""Dispatch overhead: N no-op tasks through perfscale's local and Parsl engines and through raw Parsl.

    .venv/bin/python benchmarks/dispatch.py [--tasks 10000] [--workers 2]

perfscale's per-task work includes what makes it resumable: validating the task, writing its (empty)
Parquet shard atomically and recording its attempt. Raw Parsl runs a bare python_app on the same executor
configuration. Results go to benchmarks/results/dispatch.json with the machine description.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, write_results

from perfscale.engines import make_engine
from perfscale.execute import noop
from perfscale.runner import prepare_run, run_plan
from perfscale.spec import load_site
from perfscale.store import Provenance

RESULTS = Path(__file__).parent / "results"


def noop_study(folder: Path, n: int) -> Path:
    path = folder / "noop.yaml"
    path.write_text(
        f"name: noop\nstages:\n  noop:\n    kind: noop\n    grid:\n      product:\n"
        f"        i: {list(range(n))}\n"
    )
    return path


def time_perfscale(engine_name: str, n: int, workers: int, folder: Path) -> float:
    """Time from the first submit to the last result, with the engine started and warm (as for raw Parsl)."""
    store = prepare_run(noop_study(folder, n), load_site("local"), folder / f"run-{engine_name}")
    with make_engine(engine_name, store.site, store.root, workers) as engine:
        engine.submit(noop).result()  # wait for workers to be up
        t0 = time.perf_counter()
        summary = run_plan(store, engine, progress=False)
        elapsed = time.perf_counter() - t0
    assert summary["noop"].done == n, summary
    return elapsed


def time_raw_parsl(n: int, workers: int, folder: Path) -> float:
    import parsl
    from parsl.app.app import python_app

    from perfscale.engines.parsl_engine import ParslEngine, parsl_config

    ParslEngine(load_site("local"), folder, workers)  # same PATH set-up as the engine
    dfk = parsl.load(parsl_config(load_site("local"), folder / "raw-parsl", workers))
    app = python_app(noop, data_flow_kernel=dfk, executors=["perfscale"])
    try:
        app().result()  # wait for the workers to connect, as the engine's first task does
        t0 = time.perf_counter()
        futures = [app(i) for i in range(n)]
        for f in futures:
            f.result()
        return time.perf_counter() - t0
    finally:
        dfk.cleanup()
        parsl.clear()


def shard_write_cost(folder: Path, repeats: int = 500) -> dict[str, float]:
    from perfscale.plan import build_plan
    from perfscale.spec.study import Study
    from perfscale.store import RunStore

    study = Study.model_validate({"name": "w", "stages": {"w": {"kind": "noop"}}})
    store = RunStore.create(folder / "writes", "", load_site("local"), build_plan(study))
    row = pd.DataFrame({"kernel": ["triad"], "size": [1 << 20], "threads": [4], "wall_time_s": [0.123]})
    prov = Provenance("k", "local", "h", datetime.now(timezone.utc), 0.1, 1)
    t0 = time.perf_counter()
    for i in range(repeats):
        store.write_shard("w", f"{i:020d}", row, prov)
    one_row = (time.perf_counter() - t0) / repeats
    return {"one_row_shard_ms": one_row * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results = {
            "local": time_perfscale("local", args.tasks, args.workers, folder),
            "parsl": time_perfscale("parsl", args.tasks, args.workers, folder),
            "raw_parsl": time_raw_parsl(args.tasks, args.workers, folder),
        }
        writes = shard_write_cost(folder)
    rows = {
        name: {"seconds": round(s, 3), "tasks_per_s": round(args.tasks / s, 1)} for name, s in results.items()
    }
    out = {
        "benchmark": "dispatch",
        "tasks": args.tasks,
        "workers": args.workers,
        "results": rows,
        "ratio_perfscale_parsl_over_raw_parsl_time": round(results["parsl"] / results["raw_parsl"], 3),
        "per_task_overhead_ms": round((results["parsl"] - results["raw_parsl"]) / args.tasks * 1e3, 3),
        "shard_write": writes,
        "machine": describe(),
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_results(RESULTS / "dispatch.json", out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
