"""Scaling: plan, run, status and no-op rerun of a noop grid study at growing task counts.

    .venv/bin/python benchmarks/scale.py [--sizes 1000,10000,100000] [--workers 2] [--run-max N]
    .venv/bin/python benchmarks/scale.py --quick        # 1,000 tasks, for `make bench`
    .venv/bin/python benchmarks/scale.py --sizes 1000000 --phases run --keep DIR --reuse  # DIR's run again

Each phase is one `perfscale` command in its own process, timed from outside, its peak memory read from the
child's rusage (ru_maxrss): `plan`; `run --engine local --compact-every 0` (loose shards), `status`, `run`
again with everything done; `compact`, then `status` and the rerun again on the compacted run; and a second
`run` that compacts as it goes (the site's default `compact_every`).
The study is one noop stage over an `a x b` grid (b = 1,000 for sizes of 10^4 and more). Also reported: the
most files in one folder of the run, with loose shards, after `perfscale compact`, and compacting as it
goes. Results go to benchmarks/results/scale.json with the machine
description, and a log-log plot to benchmarks/results/scale.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, write_results

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).parent.parent


def grid_study(folder: Path, n: int) -> Path:
    b = 1000 if n >= 10_000 else 100
    a = max(1, n // b)
    path = folder / f"noop-{n}.yaml"
    path.write_text(
        f"name: noop{n}\nstages:\n  noop:\n    kind: noop\n    grid:\n      product:\n"
        f"        a: {list(range(a))}\n        b: {list(range(b))}\n"
    )
    return path


def timed(*args: str) -> dict[str, float]:
    """Run `perfscale ARGS`; its wall time, CPU time and peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "perfscale.cli", *args], env=env, stdout=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"perfscale {' '.join(args)} exited with {proc.returncode}")
    cpu = usage.ru_utime + usage.ru_stime  # the command's own CPU time: what a busy machine disturbs least
    return {
        "seconds": round(elapsed, 3),
        "cpu_s": round(cpu, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def most_files_in_a_folder(root: Path) -> int:
    return max((len(files) + len(dirs) for _, dirs, files in os.walk(root)), default=0)


def measure(n: int, workers: int, folder: Path, phases: list[str], reuse: bool = False) -> dict[str, object]:
    study, run = grid_study(folder, n), folder / f"run-{n}"
    row: dict[str, object] = {"tasks": n}
    if "plan" in phases:
        row["plan"] = timed("plan", str(study), "--out", str(folder / f"plan-{n}.parquet"))
    common = ["--engine", "local", "--workers", str(workers), "--quiet", "--no-report"]
    if "run" in phases:  # loose shards only, then the same run compacted afterwards
        loose = [*common, "--run-dir", str(run), "--compact-every", "0"]
        if reuse and (run / "manifest.json").exists():
            # the run an earlier --keep made, finished: not run again. Its first rerun here plans the study
            # (its plan.parquet may be older than the plan cache) and writes the digest, as a run would
            row["rerun_planning"] = timed("run", str(study), *loose)
        else:
            row["run"] = timed("run", str(study), *loose)
        row["status"] = timed("status", str(run))
        row["rerun"] = timed("run", str(study), *loose)
        row["most_files_in_a_folder"] = most_files_in_a_folder(run)
        row["compact"] = timed("compact", str(run))
        row["status_compacted"] = timed("status", str(run))
        row["rerun_compacted"] = timed("run", str(study), *loose)
        row["most_files_in_a_folder_compacted"] = most_files_in_a_folder(run)
    if "compacting" in phases:  # the runner compacting as it goes (the site's default compact_every)
        packed = folder / f"run-{n}-compacting"
        on_packed = [*common, "--run-dir", str(packed)]
        if not (reuse and (packed / "manifest.json").exists()):
            row["run_compacting"] = timed("run", str(study), *on_packed)
        row["status_compacting"] = timed("status", str(packed))
        row["rerun_compacting"] = timed("run", str(study), *on_packed)
        row["most_files_in_a_folder_compacting"] = most_files_in_a_folder(packed)
    return row


PHASES = (
    "plan",
    "run",
    "rerun_planning",
    "status",
    "rerun",
    "compact",
    "status_compacted",
    "rerun_compacted",
    "run_compacting",
    "status_compacting",
    "rerun_compacting",
)


def plot(rows: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (wall, mem, files) = plt.subplots(1, 3, figsize=(15, 4))
    for phase in PHASES:
        points = [(r["tasks"], r[phase]) for r in rows if phase in r]
        if points:
            xs = [p[0] for p in points]
            wall.plot(xs, [p[1]["seconds"] for p in points], "o-", label=phase)
            mem.plot(xs, [p[1]["peak_rss_mb"] for p in points], "o-", label=phase)
    for suffix, label in (
        ("", "loose shards"),
        ("_compacted", "after perfscale compact"),
        ("_compacting", "compacting as it goes"),
    ):
        points = [
            (r["tasks"], r[f"most_files_in_a_folder{suffix}"])
            for r in rows
            if f"most_files_in_a_folder{suffix}" in r
        ]
        if points:
            files.plot([p[0] for p in points], [p[1] for p in points], "o-", label=label)
    for ax, label in ((wall, "seconds"), (mem, "peak RSS (MB)"), (files, "most files in one folder")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tasks")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--phases",
        default="plan,run,compacting",
        help="plan, run (then status, rerun, compact, status and rerun again) and/or compacting (a run that "
        "compacts as it goes)",
    )
    ap.add_argument(
        "--run-max",
        type=int,
        default=10**9,
        help="sizes above this are only planned (with --reuse: a compacting run kept before is timed again)",
    )
    ap.add_argument("--quick", action="store_true", help="1,000 tasks, nothing written (make bench)")
    ap.add_argument("--keep", type=Path, help="keep the runs in this folder")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="with --keep: a run the folder holds already is not run again (a 10^6 run takes ~30 min on 2 "
        "cores); its first rerun, which plans the study again, is reported as rerun_planning",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "scale.json", help="results (and a .png beside)")
    args = ap.parse_args()
    sizes = [1000] if args.quick else [int(s) for s in args.sizes.split(",")]
    phases = args.phases.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for n in sizes:
            kept = args.reuse and args.keep and (args.keep / f"run-{n}-compacting" / "manifest.json").exists()
            sized = [p for p in phases if p == "plan" or n <= args.run_max or (p == "compacting" and kept)]
            rows.append(measure(n, args.workers, folder, sized, args.reuse and args.keep is not None))
            print(json.dumps(rows[-1]), flush=True)
    out = {
        "benchmark": "scale",
        "command": " ".join(["benchmarks/scale.py", *sys.argv[1:]]),
        "workers": args.workers,
        "results": rows,
        "machine": describe(),
        "load_average": os.getloadavg(),
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if not args.quick:
        write_results(args.out, out)
        plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
