"""Machine description written beside every benchmark result."""

from __future__ import annotations

import json
import os
import platform
import socket
from importlib import metadata
from pathlib import Path
from typing import Any


def describe() -> dict[str, object]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {}
    for pkg in ("perfscale", "parsl", "pyarrow", "pandas", "sdv", "torch"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "host": socket.gethostname(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
    }


def write_results(path: Path, result: dict[str, Any]) -> Path:
    """Write a benchmark's results as indented JSON, atomically (folder created), and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def quick_line(benchmark: str, started: float, **figures: Any) -> None:
    """The one-line summary a `--quick` smoke run prints instead of writing a results file (`make bench`):
    the benchmark, its wall time since `started` (time.perf_counter()), and the figures it measured."""
    import time

    line = {"benchmark": benchmark, "quick": True, "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(line | figures, default=str), flush=True)
