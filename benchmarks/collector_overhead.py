"""Collector overhead: one ~1 s kernel run bare, through perfscale's rusage launcher, and under perf stat too.

    .venv/bin/python benchmarks/collector_overhead.py [--reps 10] [--target-s 1.0] [--threads 1]
    .venv/bin/python benchmarks/collector_overhead.py --quick   # 0.05 s kernel, 2 + 3 reps, nothing written

The kernel is the built-in triad (OpenMP), its iteration count tuned so a bare run takes about --target-s.
Each repetition runs the three modes back to back, in an order rotated from one repetition to the next:

- bare: `subprocess.run(argv)`, nothing else;
- rusage: perfscale's run_command (the C launcher: wait4 rusage, /proc io, output files);
- rusage+perf: the same under `perf stat` with the default perf_events, its output parsed into the row's
  perf columns, as the profile stage's measured run does.

One OpenMP thread by default: on a small shared machine a second thread that loses its core to another
process stalls every barrier, and that noise would swamp what is measured here. The load average before and
after is recorded. Times are wall clock seen from Python around the whole call. The ratio of a mode is its
time over the bare run's of the same repetition; the report gives the median ratio and the median extra
milliseconds.

The fixed cost per run is below the noise of a 1 s kernel on a busy machine, so it is also measured apart:
the same three modes on `true` (--short-reps alternating repetitions), medians in milliseconds.
Results go to benchmarks/results/collector_overhead.json with the machine description.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, quick_line, write_results

from perfscale.collect import perf
from perfscale.collect.builtin_kernels import build_kernels
from perfscale.collect.command import run_command

RESULTS = Path(__file__).parent / "results"
SIZE = 4_000_000  # 3 arrays of 32 MB: out of cache, so the triad is memory-bound as meant


def bare(argv: list[str], env: dict[str, str]) -> None:
    subprocess.run(argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL, check=True)


def with_rusage(argv: list[str], env: dict[str, str]) -> None:
    assert run_command(argv, env).ok


def with_perf(argv: list[str], env: dict[str, str], perf_path: str, folder: Path) -> None:
    out = folder / "perf.csv"
    result = run_command(argv, env, wrapper=perf.perf_wrapper(perf_path, perf.DEFAULT_PERF_EVENTS, out))
    row = perf.perf_row(perf.DEFAULT_PERF_EVENTS, perf.parse_perf_csv(out.read_text()), "ok")
    assert result.ok and row["perf_task_clock_ms"] > 0


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def calibrate(kernel: Path, env: dict[str, str], target_s: float) -> int:
    """Iterations of the triad at SIZE that take about target_s, bare (from a short run, then refined)."""
    iters = 20
    for _ in range(3):
        argv = [str(kernel), str(SIZE), str(iters)]
        seconds = timed(lambda argv=argv: bare(argv, env))
        iters = max(1, round(iters * target_s / seconds))
    return iters


def run_modes(modes: dict[str, Callable[[], None]], reps: int, verbose: bool) -> dict[str, list[float]]:
    """Each mode once per repetition, in an order rotated between repetitions; seconds per mode."""
    for fn in modes.values():  # warm: page cache, launcher build, perf's own start-up files
        fn()
    names = list(modes)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            times[name].append(timed(modes[name]))
        if verbose:
            print(f"rep {rep + 1}/{reps}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" for n in names))
    return times


def summary(times: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, seconds in times.items():
        ratios = [t / b for t, b in zip(seconds, times["bare"], strict=True)]
        extra_ms = [1000 * (t - b) for t, b in zip(seconds, times["bare"], strict=True)]
        out[name] = {
            "median_s": round(statistics.median(seconds), 4),
            "min_s": round(min(seconds), 4),
            "max_s": round(max(seconds), 4),
            "median_ratio_to_bare": round(statistics.median(ratios), 4),
            "median_extra_ms": round(statistics.median(extra_ms), 1),
            "seconds": [round(t, 4) for t in seconds],
        }
    return out


def modes_for(
    argv: list[str], env: dict[str, str], perf_path: str, folder: Path
) -> dict[str, Callable[[], None]]:
    return {
        "bare": lambda: bare(argv, env),
        "rusage": lambda: with_rusage(argv, env),
        "rusage+perf": lambda: with_perf(argv, env, perf_path, folder),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--target-s", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--short-reps", type=int, default=30)
    parser.add_argument(
        "--quick", action="store_true", help="a 0.05 s kernel, 2 and 3 reps, nothing written (make bench)"
    )
    args = parser.parse_args()
    if args.quick:
        args.reps, args.target_s, args.short_reps = 2, 0.05, 3
    started = time.perf_counter()

    load_before = os.getloadavg()
    kernel = build_kernels() / "triad"
    env = {"OMP_NUM_THREADS": str(args.threads)}
    perf_path, problem = perf.perf_problem(os.environ, perf.DEFAULT_PERF_EVENTS)
    if perf_path is None and args.quick:
        quick_line("collector_overhead", started, not_exercised=f"perf cannot count here: {problem}")
        return
    if perf_path is None:
        sys.exit(f"perf cannot count here: {problem}")
    iters = calibrate(kernel, env, args.target_s)
    argv = [str(kernel), str(SIZE), str(iters)]
    with tempfile.TemporaryDirectory() as tmp:
        results = summary(run_modes(modes_for(argv, env, perf_path, Path(tmp)), args.reps, verbose=True))
        true_argv = ["/bin/true"]
        short = summary(run_modes(modes_for(true_argv, env, perf_path, Path(tmp)), args.short_reps, False))
    fixed_ms = {name: round(1000 * r["median_s"], 2) for name, r in short.items()}
    report = {
        "benchmark": "collector_overhead",
        "kernel": f"triad {SIZE} {iters}",
        "omp_num_threads": args.threads,
        "repetitions": args.reps,
        "perf_events": list(perf.DEFAULT_PERF_EVENTS),
        "results": results,
        "fixed_cost_on_true": {"repetitions": args.short_reps, "median_ms": fixed_ms},
        "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
        "machine": describe(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if args.quick:
        ratios = {name: r["median_ratio_to_bare"] for name, r in results.items()}
        quick_line("collector_overhead", started, median_ratio_to_bare=ratios, fixed_cost_ms=fixed_ms)
        return
    out = write_results(RESULTS / "collector_overhead.json", report)
    for name, r in results.items():
        print(
            f"{name:12s} median {r['median_s']:.3f} s  ratio {r['median_ratio_to_bare']:.3f}  "
            f"extra {r['median_extra_ms']:+.1f} ms"
        )
    print("fixed cost per run on `true`, median ms: " + ", ".join(f"{n} {ms}" for n, ms in fixed_ms.items()))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
