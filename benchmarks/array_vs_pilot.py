"""Array mode vs a Parsl pilot on a real (one-node, local) Slurm: N no-op tasks each way, side by side.

    .venv/bin/python benchmarks/array_vs_pilot.py [--tasks 1000] [--poll 5] [--packed]
    .venv/bin/python benchmarks/array_vs_pilot.py --quick   # make bench: 10 tasks each way, nothing written

Starts its own Slurm with tests/slurm_cluster.py (needs root and the Debian packages of scripts/setup.sh),
declaring the machine's real CPU count, then runs the same `kind: noop` study:

- array: `submit_run` + `wait` (one `perfscale task run` process per task, one array element per task;
  with --packed also a variant whose expected_runtime packs 100 tasks per element);
- pilot: `run_plan` on the Parsl engine (SlurmProvider + SrunLauncher, one block, one worker per CPU).

Time is wall time to completion, scheduler start-up included (submission to the last shard for arrays;
engine start to shutdown for the pilot). Scheduler calls are counted by command: perfscale's CommandClient
for array mode, the SlurmProvider's `execute_wait` (every sbatch/sacct/squeue/scancel it runs) for the pilot.
`per_task_overhead_ms` is wall time x CPUs / tasks: the slot time each no-op task costs end to end.
Results go to benchmarks/results/array_vs_pilot.json with the machine description.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))  # tests.slurm_cluster
from machine import describe, quick_line, write_results

from perfscale.runner import prepare_run, run_plan
from perfscale.sched.client import CommandClient
from perfscale.sched.submit import submit_run, wait
from perfscale.spec import load_site
from tests.slurm_cluster import SlurmCluster, missing_requirements, start_cluster, stop_cluster

RESULTS = Path(__file__).parent / "results"


def noop_study(folder: Path, n: int, walltime: str = "00:05:00", expected: str | None = None) -> Path:
    resources = f'{{walltime: "{walltime}"' + (f', expected_runtime: "{expected}"' if expected else "") + "}"
    path = folder / "noop.yaml"
    path.write_text(
        f"name: noop\nstages:\n  noop:\n    kind: noop\n    grid:\n      product:\n"
        f"        i: {list(range(n))}\n    resources: {resources}\n"
    )
    return path


def time_array(site: Path, folder: Path, n: int, poll_s: float, expected: str | None = None) -> dict:
    walltime = "00:01:57" if expected else "00:05:00"
    store = prepare_run(noop_study(folder, n, walltime, expected), load_site(site), folder / "run")
    client = CommandClient()
    t0 = time.perf_counter()
    arrays = submit_run(store, client=client)
    submitted_s = time.perf_counter() - t0
    states = wait(store, every_s=poll_s, client=client)
    elapsed = time.perf_counter() - t0
    done = len(store.done_keys("noop"))
    assert done == n, (
        f"array mode: {done} of {n} tasks done; states {Counter(s.state for s in states.values())}"
    )
    return {
        "seconds": round(elapsed, 2),
        "tasks_per_s": round(n / elapsed, 2),
        "submit_seconds": round(submitted_s, 3),
        "arrays": len(arrays),
        "elements": sum(len(a.elements) for a in arrays),
        "tasks_per_element": max(len(e) for a in arrays for e in a.elements),
        "poll_every_s": poll_s,
        "scheduler_calls": dict(client.calls),
        "scheduler_calls_total": sum(client.calls.values()),
    }


def time_pilot(site: Path, folder: Path, n: int) -> dict:
    from parsl.providers import SlurmProvider

    calls: Counter[str] = Counter()
    original = SlurmProvider.execute_wait

    def counted(self, cmd: str, timeout: int | None = None):
        calls[cmd.split()[0]] += 1
        return original(self, cmd, timeout)

    store = prepare_run(noop_study(folder, n), load_site(site), folder / "run")
    SlurmProvider.execute_wait = counted
    try:
        t0 = time.perf_counter()
        summary = run_plan(store, "parsl", progress=False)
        elapsed = time.perf_counter() - t0
    finally:
        SlurmProvider.execute_wait = original
    assert summary["noop"].done == n, summary
    return {
        "seconds": round(elapsed, 2),
        "tasks_per_s": round(n / elapsed, 2),
        "blocks": calls["sbatch"],
        "workers": store.site.workers,
        "scheduler_calls": dict(calls),
        "scheduler_calls_total": sum(calls.values()),
    }


def run(cluster: SlurmCluster, n: int, poll_s: float, packed: bool) -> dict[str, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        site = folder / "testslurm.yaml"
        site.write_text(cluster.site_yaml())
        results = {}
        for name in ("pilot", "array", *(["array_packed"] if packed else [])):
            sub = folder / name
            sub.mkdir()
            print(f"{name}: {n} tasks ...", flush=True)
            if name == "pilot":
                results[name] = time_pilot(site, sub, n)
            else:
                # packed: 100 x 17 s + (117 - 17) s = 1800 s, the partition limit: 100 tasks per element
                results[name] = time_array(
                    site, sub, n, poll_s, "00:00:17" if name == "array_packed" else None
                )
            print(f"  {results[name]}", flush=True)
        return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--poll", type=float, default=5.0, help="array mode: seconds between polls")
    ap.add_argument("--packed", action="store_true", help="also array mode with 100 tasks per element")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="10 tasks each way, polls every second, nothing written (make bench)",
    )
    args = ap.parse_args()
    started = time.perf_counter()
    if args.quick:
        args.tasks, args.poll, args.packed = 10, 1.0, False
    why = missing_requirements()
    if why and args.quick:
        quick_line("array_vs_pilot", started, not_exercised=f"no local Slurm can start here: {why}")
        return
    if why:
        sys.exit(why)
    root = Path(tempfile.mkdtemp(prefix="perfscale-slurm-bench-"))
    cluster = start_cluster(root)  # the machine's real CPU count: one slot per core for both modes
    os.environ["SLURM_CONF"] = str(cluster.conf)
    load_before = os.getloadavg()
    try:
        results = run(cluster, args.tasks, args.poll, args.packed)
    finally:
        stop_cluster(cluster)
        shutil.rmtree(root, ignore_errors=True)
    array, pilot = results["array"], results["pilot"]
    if args.quick:
        seconds = {name: r["seconds"] for name, r in results.items()}
        quick_line(
            "array_vs_pilot",
            started,
            tasks=args.tasks,
            slurm_startup_s=round(cluster.startup_s, 2),
            **seconds,
        )
        return
    out = {
        "benchmark": "array_vs_pilot",
        "tasks": args.tasks,
        "slurm": {
            "nodes": 1,
            "cpus": cluster.cpus,
            "startup_s": round(cluster.startup_s, 2),
            "config": "tests/slurm_cluster.py (Slurm 22.05, slurmdbd + MariaDB, proctrack/linuxproc)",
        },
        "results": results,
        "ratio_array_over_pilot_time": round(array["seconds"] / pilot["seconds"], 2),
        "per_task_overhead_ms": {
            name: round(r["seconds"] / args.tasks * cluster.cpus * 1e3, 1) for name, r in results.items()
        },
        "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()},
        "machine": describe(),
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_results(RESULTS / "array_vs_pilot.json", out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
