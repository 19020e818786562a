"""Caliper import: perfscale's `caliper` importer vs `thicket.Thicket.from_caliperreader` on the same files.

    .venv/bin/python benchmarks/caliper_import.py [--repeats 5] [--copies 20]
    .venv/bin/python benchmarks/caliper_import.py --quick    # every 8th file, one run each, nothing written

Both read every profile in ../shared/data/caliper (RAJAPerf on Quartz and Lassen, an MPI scaling series) in
one process, after one untimed warm-up run each; the best of N wall times is kept. perfscale's result is an
Arrow table (timed alone and with `.to_pandas()`, since Thicket returns pandas frames). Peak memory is
measured in a fresh child process per tool: RSS after imports and a one-file warm-up, its high-water mark
during one import of all the files (VmHWM, reset after the warm-up), and the peaks of Python allocations
(tracemalloc, a second run) and of Arrow's memory pool.
`--copies N` also times N copies of the folder (many files: perfscale serially and through its process pool,
best of 3, and Thicket, one run). Results go to benchmarks/results/caliper_import.json with the machine
description.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, quick_line, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PERFSCALE_SHARED_DATA", ROOT.parent / "shared" / "data")) / "caliper"
RESULTS = Path(__file__).parent / "results"


def cali_files(folder: Path, quick: bool = False) -> list[Path]:
    """Every profile under `folder`; `quick`: every 8th (3 of the 23, from different series)."""
    from perfscale.ingest.registry import source_files

    return source_files(folder, ("*.cali",))[:: 8 if quick else 1]


def run_perfscale(files: list[Path]) -> object:
    from perfscale.ingest.caliper import ingest_caliper

    return ingest_caliper(files)


def run_perfscale_pandas(files: list[Path]) -> object:
    return run_perfscale(files).to_pandas()


def run_thicket(files: list[Path]) -> object:
    import thicket

    return thicket.Thicket.from_caliperreader([str(f) for f in files], disable_tqdm=True)


TOOLS: dict[str, Callable[[list[Path]], object]] = {
    "perfscale": run_perfscale,
    "perfscale_to_pandas": run_perfscale_pandas,
    "thicket": run_thicket,
}


def best_of(fn: Callable[[list[Path]], object], files: list[Path], repeats: int) -> dict[str, object]:
    fn(files)  # warm-up: imports, caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(files)
        times.append(time.perf_counter() - t0)
    runs = [round(t, 4) for t in times]
    return {"best_s": min(runs), "median_s": sorted(runs)[len(runs) // 2], "runs_s": runs}


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024


def child_memory(tool: str, quick: bool) -> dict[str, float]:
    """Runs in a fresh process: import the tool and read one file (lazy imports), reset the RSS high-water
    mark, read all the files once.

    ru_maxrss is not used: Linux keeps the parent's peak across fork + exec."""
    import pyarrow as pa

    files = cali_files(DATA, quick)
    TOOLS[tool](files[:1])
    rss_before = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset VmHWM to the current RSS
        f.write("5")
    TOOLS[tool](files)
    peak = _status_mb("VmHWM")
    tracemalloc.start()
    TOOLS[tool](files)
    _, python_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "rss_after_warmup_mb": round(rss_before, 1),
        "peak_rss_during_import_mb": round(peak, 1),
        "peak_rss_growth_mb": round(peak - rss_before, 1),
        "python_alloc_peak_mb": round(python_peak / 2**20, 1),
        "arrow_pool_peak_mb": round(pa.default_memory_pool().max_memory() / 2**20, 1),
    }


def memory(tool: str, quick: bool = False) -> dict[str, float]:
    line = [sys.executable, __file__, "--child-memory", tool, *(["--quick"] if quick else [])]
    out = subprocess.run(line, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cross_check(files: list[Path]) -> dict[str, object]:
    """Same numbers in both: Thicket keeps the records that have a region; perfscale keeps those too, plus
    one record per file outside every region (null region)."""
    table = run_perfscale(files).to_pandas()
    tk = run_thicket(files).dataframe
    in_regions = table[table["region"].notna()]
    measured = tk["Avg time/rank"].notna()
    return {
        "perfscale_rows": len(table),
        "perfscale_rows_in_regions": len(in_regions),
        "thicket_rows": len(tk),
        "thicket_rows_with_time": int(measured.sum()),
        "sum_avg_time_perfscale_s": round(float(in_regions["time_inclusive_avg_s"].sum()), 6),
        "sum_avg_time_thicket_s": round(float(tk.loc[measured, "Avg time/rank"].sum()), 6),
    }


def many_files(copies: int) -> dict[str, object]:
    """`copies` copies of the data folder: perfscale serially and through its process pool (best of 3 each),
    and Thicket (one run)."""
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(copies):
            shutil.copytree(DATA, Path(tmp) / f"copy{i}", ignore=shutil.ignore_patterns("LICENSE*"))
        files = cali_files(Path(tmp))
        result: dict[str, object] = {"copies": copies, "files": len(files)}
        pool = str(min(os.cpu_count() or 1, max(2, len(files) // 50)))
        result["pool_workers"] = int(pool)
        for label, workers in (("perfscale_serial_s", "1"), ("perfscale_pool_s", pool)):
            os.environ["PERFSCALE_INGEST_WORKERS"] = workers
            times = []
            for _ in range(3):  # best of 3; the first pool run includes starting the forkserver
                t0 = time.perf_counter()
                rows = run_perfscale(files).num_rows
                times.append(round(time.perf_counter() - t0, 3))
            result[label], result[label.removesuffix("_s") + "_runs_s"] = min(times), times
        os.environ.pop("PERFSCALE_INGEST_WORKERS")
        result["rows"] = rows
        t0 = time.perf_counter()
        run_thicket(files)
        result["thicket_s"] = round(time.perf_counter() - t0, 3)
    for mode in ("serial", "pool"):
        perfscale_s = result[f"perfscale_{mode}_s"]
        result[f"ratio_thicket_over_perfscale_{mode}"] = round(result["thicket_s"] / perfscale_s, 1)
    return result


def ratio(results: dict[str, dict], tool: str) -> float:
    return round(results["thicket"]["best_s"] / results[tool]["best_s"], 1)


def versions() -> dict[str, str | None]:
    out = {}
    for pkg in ("caliper-reader", "llnl-thicket", "llnl-hatchet", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


INSTALL_THICKET = "pip install -e '.[bench]' (llnl-thicket)"


def has_thicket() -> bool:
    return importlib.util.find_spec("thicket") is not None


def quick_run() -> None:
    """The smoke run of `make bench`: every tool once on 3 files, the memory children, the cross-check;
    without Thicket installed, perfscale's side only (and the line says so)."""
    started = time.perf_counter()
    files = cali_files(DATA, quick=True)
    tools = [t for t in TOOLS if has_thicket() or t != "thicket"]
    os.environ["PERFSCALE_INGEST_WORKERS"] = "1"
    best = {tool: best_of(TOOLS[tool], files, 1)["best_s"] for tool in tools}
    os.environ.pop("PERFSCALE_INGEST_WORKERS")
    growth = {t: memory(t, quick=True)["peak_rss_growth_mb"] for t in ("perfscale", "thicket") if t in tools}
    figures: dict[str, object] = {"files": len(files), "best_s": best, "peak_rss_growth_mb": growth}
    if has_thicket():
        figures["cross_check"] = cross_check(files)
    else:
        figures["not_exercised"] = f"Thicket (timing, memory, cross-check): not installed; {INSTALL_THICKET}"
    quick_line("caliper_import", started, **figures)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--copies", type=int, default=0, help="also time N copies of the folder (many files)")
    p.add_argument("--child-memory", choices=sorted(TOOLS), help=argparse.SUPPRESS)
    p.add_argument(
        "--quick", action="store_true", help="every 8th file, one run each, nothing written (make bench)"
    )
    args = p.parse_args()
    if args.child_memory:
        print(json.dumps(child_memory(args.child_memory, args.quick)))
        return

    if args.quick:
        quick_run()
        return
    if not has_thicket():
        sys.exit(f"thicket is not installed: {INSTALL_THICKET}")
    load_at_start = os.getloadavg()
    files = cali_files(DATA)
    os.environ["PERFSCALE_INGEST_WORKERS"] = "1"  # 23 files: serial (the default below 64 files anyway)
    results = {tool: best_of(fn, files, args.repeats) for tool, fn in TOOLS.items()}
    os.environ.pop("PERFSCALE_INGEST_WORKERS")
    report = {
        "benchmark": "caliper_import",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": len(files),
        "bytes": sum(f.stat().st_size for f in files),
        "repeats": args.repeats,
        "results": results,
        "ratio_thicket_over_perfscale": ratio(results, "perfscale"),
        "ratio_thicket_over_perfscale_to_pandas": ratio(results, "perfscale_to_pandas"),
        "memory": {tool: memory(tool) for tool in ("perfscale", "thicket")},
        "cross_check": cross_check(files),
        "many_files": many_files(args.copies) if args.copies else None,
        "load_average_1_5_15min": {"start": load_at_start, "end": os.getloadavg()},  # a shared machine
        "versions": versions(),
        "machine": describe(),
    }
    write_results(RESULTS / "caliper_import.json", report)
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
