"""Planning cost: microseconds per task of `build_plan` on a noop grid and a profile grid.

    .venv/bin/python benchmarks/planning.py [--tasks 10000] [--repeat 3]
    .venv/bin/python benchmarks/planning.py --quick    # 200 tasks, one round, nothing written (make bench)

Each grid has `--tasks` points (one task each). The profile grid counts with perf and PAPI, so its params
checks include the event checks (against the `local` site, whose PAPI events are checked on this host).
Reported: the best of `--repeat` runs, in microseconds per task, wall and CPU time. Results go to
benchmarks/results/planning.json with the machine description.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, quick_line, write_results

from perfscale.plan import build_plan
from perfscale.spec import load_site
from perfscale.spec.study import Study

RESULTS = Path(__file__).parent / "results"


def noop_study(n: int) -> Study:
    grid = {"product": {"i": list(range(n))}}
    return Study.model_validate({"name": "noop", "stages": {"noop": {"kind": "noop", "grid": grid}}})


def profile_study(n: int) -> Study:
    sizes = list(range(1000, 1000 + n // 10))
    profile = {
        "kind": "profile",
        "params": {
            "command": "{kernels}/triad {size} {threads}",
            "env": {"OMP_NUM_THREADS": "{threads}"},
            "fom": {"gbs": r"^triad_gbs:\s*(\S+)"},
            "collectors": ["rusage", "perf", "papi"],
            "papi_events": ["PAPI_TOT_INS", "perf::TASK-CLOCK"],
        },
        "grid": {"product": {"size": sizes, "threads": list(range(1, 11))}},
    }
    return Study.model_validate({"name": "profile", "stages": {"kernels": profile}})


def us_per_task(study: Study, repeat: int) -> tuple[float, float, int]:
    """Best wall and CPU time of `repeat` plans, in microseconds per task (CPU time is what a busy, shared
    machine disturbs least)."""
    site = load_site("local")
    wall, cpu, tasks = float("inf"), float("inf"), 0
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        plan = build_plan(study, "<benchmark>", site)
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.process_time() - c0)
        tasks = len(plan.tasks)
    return wall / tasks * 1e6, cpu / tasks * 1e6, tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "planning.json")
    ap.add_argument("--quick", action="store_true", help="200 tasks, one round, nothing written (make bench)")
    args = ap.parse_args()
    if args.quick:
        args.tasks, args.repeat = 200, 1
    started = time.perf_counter()
    results = {}
    for name, make in (("noop", noop_study), ("profile", profile_study)):
        wall, cpu, tasks = us_per_task(make(args.tasks), args.repeat)
        results[name] = {"tasks": tasks, "us_per_task": round(wall, 1), "cpu_us_per_task": round(cpu, 1)}
        print(f"{name:8s} {tasks:7d} tasks  {wall:8.1f} us/task  ({cpu:.1f} us CPU)")
    out = {
        "benchmark": "planning",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": describe(),
        "repeat": args.repeat,
        "results": results,
    }
    if args.quick:
        quick_line("planning", started, us_per_task={k: r["us_per_task"] for k, r in results.items()})
    else:
        print(f"-> {write_results(args.out, out)}")


if __name__ == "__main__":
    main()
