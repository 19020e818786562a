"""Before and after on one kept run: `status` and a no-op `run` of a finished noop grid run, under two or more
perfscale source trees, interleaved so that each sees the same machine load.

    .venv/bin/python benchmarks/scale_compare.py --run DIR/run-1000000 --study DIR/noop-1000000.yaml \
        --tree before=/tmp/main-tree --tree after=. [--reps 2] --out benchmarks/results/scale-rerun-1m.json

A tree is a perfscale checkout (e.g. `git archive main | tar -x -C /tmp/main-tree`). Making a 10^6 run takes
~30 min on 2 cores (`benchmarks/scale.py --keep DIR`); this times only what follows it. Per tree and
repetition: `status`, a `run` that finds everything done right after another tree's (which plans the study:
another tree writes plan.parquet without this tree's plan-cache digest), and a second one (which, with the
plan cache, does not plan). Each is timed as in scale.py (wall, the command's CPU time, peak RSS).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import scale
from machine import describe, write_results


def measure(tree: Path, run: Path, study: Path, workers: int) -> dict[str, dict[str, float]]:
    scale.ROOT = tree.resolve()  # timed() runs `python -m perfscale.cli` with PYTHONPATH=ROOT ...
    os.chdir(scale.ROOT)  # ... and `-m` puts the working folder first on sys.path: it must be the tree too
    rerun = ["run", str(study), "--run-dir", str(run), "--engine", "local", "--workers", str(workers)]
    rerun += ["--quiet", "--no-report", "--compact-every", "0"]
    return {
        "status": scale.timed("status", str(run)),
        "rerun_after_another_tree": scale.timed(*rerun),
        "rerun": scale.timed(*rerun),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True, help="a finished run folder (scale.py --keep)")
    ap.add_argument("--study", type=Path, required=True, help="its study file")
    ap.add_argument("--tree", action="append", required=True, help="NAME=PATH of a perfscale tree")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    results: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in trees}
    loads = []
    for _ in range(args.reps):
        for name, path in trees.items():
            loads.append(os.getloadavg())
            results[name].append(measure(Path(path), args.run, args.study, args.workers))
            print(name, results[name][-1], flush=True)
    result = {
        "benchmark": "scale_compare",
        "command": " ".join(["benchmarks/scale_compare.py", *sys.argv[1:]]),
        "run": str(args.run),
        "tasks": plan_size(args.run),
        "results": results,
        "machine": describe(),
        "load_average_before_each": loads,
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_results(args.out, result)
    plot(result, args.out.with_suffix(".png"))


def plot(result: dict, path: Path) -> None:
    """Bars per phase, one per tree (the mean over repetitions): wall seconds, CPU seconds, peak RSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trees = list(result["results"])
    phases = list(result["results"][trees[0]][0])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, measure in zip(axes, ("seconds", "cpu_s", "peak_rss_mb"), strict=True):
        for i, tree in enumerate(trees):
            reps = result["results"][tree]
            means = [sum(r[p][measure] for r in reps) / len(reps) for p in phases]
            xs = [j + i * 0.8 / len(trees) for j in range(len(phases))]
            ax.bar(xs, means, width=0.8 / len(trees), label=tree)
        ax.set_xticks([j + 0.4 - 0.4 / len(trees) for j in range(len(phases))], phases, fontsize=8)
        ax.set_ylabel(measure)
        ax.legend()
    fig.suptitle(f"{result['tasks']:,} tasks: {result['run']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plan_size(run: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(run / "plan.parquet").num_rows


if __name__ == "__main__":
    main()
