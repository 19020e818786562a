"""Dispatch overhead: N no-op tasks through perfscale's engines, bundled and one task per call, and through
raw Parsl.

    .venv/bin/python benchmarks/dispatch.py [--tasks 10000] [--workers 2] [--engines local,parsl]
    .venv/bin/python benchmarks/dispatch.py --quick      # 1,000 tasks, for `make bench`

perfscale's per-task work includes what makes it resumable: validating the task, writing its (empty)
Parquet shard atomically and recording its attempt. Each engine runs the study twice: with bundling (the
default: several tasks per engine call, perfscale/bundles.py) and with `bundle=False` (one call per task).
Raw Parsl runs a bare python_app per task on the same executor configuration, timed between the two Parsl
runs and again after them, so that a busy machine shows as a spread. Results go to
benchmarks/results/dispatch.json with the machine description.
"""

from __future__ import annotations

import argparse
import json
import os
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


def time_perfscale(engine_name: str, n: int, workers: int, folder: Path, bundle: bool) -> float:
    """Time from the first submit to the last result, with the engine started and warm (as for raw Parsl)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"run-{engine_name}-{'bundled' if bundle else 'single'}"
    store = prepare_run(noop_study(folder, n), load_site("local"), folder / name)
    with make_engine(engine_name, store.site, store.root, workers) as engine:
        engine.submit(noop).result()  # wait for workers to be up
        t0 = time.perf_counter()
        # dispatch alone: compacting as the run goes (the site's compact_every) is measured by scale.py
        summary = run_plan(store, engine, progress=False, bundle=bundle, compact_every=0)
        elapsed = time.perf_counter() - t0
    assert summary["noop"].done == n, summary
    return elapsed


def time_raw_parsl(n: int, workers: int, folder: Path) -> float:
    import parsl
    from parsl.app.app import python_app

    from perfscale.engines.parsl_engine import interpreter_on_path, parsl_config

    interpreter_on_path()  # the engine's PATH set-up
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
    ap.add_argument("--engines", default="local,parsl", help="comma-separated: local, parsl, dask, ray")
    ap.add_argument("--repeat", type=int, default=2, help="rounds; each figure is its best round")
    ap.add_argument(
        "--quick", action="store_true", help="1,000 tasks, one round, nothing written (make bench)"
    )
    args = ap.parse_args()
    n = 1000 if args.quick else args.tasks
    args.repeat = 1 if args.quick else args.repeat
    engines = args.engines.split(",")
    results: dict[str, float] = {}

    def keep(name: str, seconds: float) -> None:
        results[name] = min(seconds, results.get(name, float("inf")))
        print(f"{name}: {seconds:.3f} s", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for r in range(args.repeat):  # interleaved, best of each: a busy machine disturbs all alike
            for engine in engines:
                if engine == "parsl":
                    keep("raw_parsl", time_raw_parsl(n, args.workers, folder / f"raw{r}"))
                for bundle in (True, False):
                    name = f"{engine}_{'bundled' if bundle else 'single'}"
                    keep(name, time_perfscale(engine, n, args.workers, folder / f"{r}", bundle))
        writes = shard_write_cost(folder)
    rows = {name: {"seconds": round(s, 3), "tasks_per_s": round(n / s, 1)} for name, s in results.items()}
    out: dict[str, object] = {
        "benchmark": "dispatch",
        "command": " ".join(["benchmarks/dispatch.py", *sys.argv[1:]]),
        "tasks": n,
        "workers": args.workers,
        "rounds": args.repeat,
        "results": rows,
    }
    if "raw_parsl" in results:
        raw = results["raw_parsl"]
        out["ratio_perfscale_parsl_over_raw_parsl_time"] = {
            "bundled": round(results["parsl_bundled"] / raw, 3),
            "single": round(results["parsl_single"] / raw, 3),
        }
        out["per_task_overhead_ms_single"] = round((results["parsl_single"] - raw) / n * 1e3, 3)
    out.update(
        {
            "shard_write": writes,
            "machine": describe(),
            "load_average": os.getloadavg(),
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )
    if not args.quick:
        write_results(RESULTS / "dispatch.json", out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
