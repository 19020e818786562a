"""`perfscale sites probe`: check on the current machine what a site file claims.

Each check compares one claim of the site (scheduler commands, launcher, node shape, GPUs, counters, MPI,
architecture) with what this machine has. Run it on a login node (scheduler commands, launcher) or inside an
allocation (node shape, GPUs, counters). `auto` values claim nothing beyond "readable here". Nothing here
raises: a missing tool is a finding.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from perfscale.spec.site import Site

# nominal node memory (the site file) vs MemTotal: firmware and the kernel keep a few percent
MEMORY_TOLERANCE = 0.10
_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "ppc64el": "ppc64le"}
_TIMEOUT_S = 30
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    name: str
    expected: str
    found: str
    ok: bool


def _run(argv: list[str], with_stderr: bool = False) -> str | None:
    """stdout (and stderr if asked) of a command; None when it is missing, fails, or times out."""
    if shutil.which(argv[0]) is None:
        return None
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("%s: %s", shlex.join(argv), exc)
        return None
    logger.info("%s: rc %d in %.2f s", shlex.join(argv), done.returncode, time.monotonic() - started)
    if done.returncode != 0:
        return None
    return done.stdout + (done.stderr if with_stderr else "")


def check_arch(site: Site) -> Check:
    machine = platform.machine().lower()
    found = _ARCH_ALIASES.get(machine, machine)
    return Check("arch", site.arch, found, found == site.arch)


def check_scheduler(site: Site) -> Check:
    from perfscale.sched.base import scheduler_class

    commands = scheduler_class(site.scheduler).commands
    if not commands:
        return Check("scheduler", site.scheduler, "not needed", True)
    missing = [c for c in commands if shutil.which(c) is None]
    found = "all on PATH" if not missing else f"missing: {' '.join(missing)}"
    return Check(f"scheduler ({site.scheduler})", " ".join(commands), found, not missing)


def check_partitions(site: Site) -> Check | None:
    from perfscale.sched.base import scheduler_class

    sched = scheduler_class(site.scheduler)()
    argv = sched.queues_argv()
    if argv is None or not site.partitions:
        return None
    expected = sorted(site.partitions)
    out = _run(argv)
    here = None if out is None else sched.parse_queues(out)
    if here is None:
        command = argv[0]
        return Check("partitions", " ".join(expected), f"cannot query the scheduler ({command})", False)
    missing = [p for p in expected if p not in here]
    found = " ".join(sorted(here)) + (f" (missing: {' '.join(missing)})" if missing else "")
    return Check("partitions", " ".join(expected), found, not missing)


def check_launcher(site: Site) -> Check:
    if site.launcher == "local":
        return Check("launcher", "local", "not needed", True)
    path = shutil.which(site.launcher)
    return Check("launcher", site.launcher, path or "not on PATH", path is not None)


def check_cores(site: Site) -> Check:
    count = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else count
    found = str(count) + (f" ({usable} usable by this process)" if usable != count else "")
    if site.cores_per_node == "auto":
        return Check("cores per node", "auto", found, count > 0)
    return Check("cores per node", str(site.cores_per_node), found, count == site.cores_per_node)


def meminfo_gb(path: Path = Path("/proc/meminfo")) -> float | None:
    """MemTotal in GiB (the unit of memory_gb_per_node), or None where /proc/meminfo is missing."""
    try:
        m = re.search(r"^MemTotal:\s+(\d+)\s*kB", path.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) / 1024**2 if m else None


def check_memory(site: Site) -> Check:
    total = meminfo_gb()
    found = "unknown (no /proc/meminfo)" if total is None else f"{total:.1f} GiB"
    if site.memory_gb_per_node == "auto":
        return Check("memory per node", "auto", found, total is not None)
    claimed = float(site.memory_gb_per_node)
    ok = total is not None and abs(total - claimed) <= MEMORY_TOLERANCE * claimed
    return Check("memory per node", f"{claimed:g} GiB (±{MEMORY_TOLERANCE:.0%})", found, ok)


def gpus_here() -> tuple[int, list[str]]:
    """Count and names of the GPUs nvidia-smi and rocm-smi report (0 where neither is installed)."""
    names: list[str] = []
    out = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    if out is not None:
        names += [line.strip() for line in out.splitlines() if line.strip() and "NVIDIA-SMI" not in line]
    out = _run(["rocm-smi", "--showproductname", "--csv"])
    if out is not None:
        names += [line.split(",")[1].strip() for line in out.splitlines() if re.match(r"card\d+,", line)]
    return len(names), names


def check_gpus(site: Site) -> Check:
    count, names = gpus_here()
    found = str(count) + (f" ({', '.join(sorted(set(names)))})" if names else "")
    expected = str(site.gpus_per_node) + (f" ({site.gpu_model})" if site.gpu_model else "")
    return Check("GPUs per node", expected, found, count == site.gpus_per_node)


def _paranoid() -> int | None:
    try:
        return int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    except (OSError, ValueError):
        return None


def _hw_counters() -> str:
    """Whether perf can count a hardware event here (virtual machines often expose no PMU)."""
    out = _run(["perf", "stat", "-x,", "-e", "instructions:u", "--", "true"], with_stderr=True)
    if out is None:
        return "untested"
    line = next((x for x in out.splitlines() if "instructions" in x), "")
    return "counting" if line[:1].isdigit() else "not supported (software events only)"


def check_perf(site: Site) -> Check:
    """perf on PATH and perf_event_paranoid <= 2 (per-process counting as a normal user); root may always."""
    path, paranoid, root = shutil.which("perf"), _paranoid(), os.geteuid() == 0
    allowed = root or (paranoid is not None and paranoid <= 2)
    found = (
        f"{'perf on PATH' if path else 'no perf'}, perf_event_paranoid {paranoid}"
        + (", root" if root else "")
        + (f", hardware counters: {_hw_counters()}" if path and allowed else "")
    )
    if not site.counters.perf:
        return Check("perf", "not claimed", found, True)
    return Check("perf", "perf on PATH, paranoid <= 2 or root", found, path is not None and allowed)


def papi_components() -> list[str] | None:
    """Active PAPI components from papi_component_avail, or None where it is not installed."""
    out = _run(["papi_component_avail"])
    if out is None:
        return None
    active = out.split("Active components:", 1)[1] if "Active components:" in out else ""
    return re.findall(r"^Name:\s+(\S+)", active, re.MULTILINE)


def check_papi(site: Site) -> Check:
    active = papi_components()
    found = (
        "papi_component_avail not on PATH" if active is None else "active: " + (" ".join(active) or "none")
    )
    if not site.counters.papi:
        return Check("PAPI", "not claimed", found, True)
    return Check("PAPI", "active component perf_event", found, bool(active) and "perf_event" in active)


def check_mpi(site: Site) -> Check:
    """MPI for multi-rank tasks: an mpirun, and mpi4py (rank 0 discovery in perfscale.distributed)."""
    out = _run(["mpirun", "--version"])
    mpirun = next((x.strip() for x in out.splitlines() if x.strip()), "mpirun") if out else None
    mpi4py = importlib.util.find_spec("mpi4py") is not None
    found = f"mpirun: {mpirun or 'missing'}; mpi4py: {'importable' if mpi4py else 'missing'}"
    if site.launcher in ("local", "mpirun") and mpirun and mpi4py:
        found += f"; 2 ranks here: {mpi_works()}"
    if site.launcher == "local":
        return Check("MPI", "not claimed (multi-rank tasks need it)", found, True)
    if site.launcher == "mpirun":
        return Check("MPI", "mpirun starts 2 mpi4py ranks", found, found.endswith("2 ranks here: works"))
    # cluster launchers start MPI ranks themselves; the ranks still need mpi4py
    return Check("MPI", "mpi4py importable", found, mpi4py)


_HELLO = "from mpi4py import MPI; c = MPI.COMM_WORLD; n = c.allreduce(1); c.Get_rank() or print('ranks', n)"


def mpi_works() -> str:
    """'works' when mpirun starts 2 mpi4py ranks that all-reduce here; otherwise why not."""
    import sys

    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    argv = ["mpirun", *root, "--oversubscribe", "-n", "2", sys.executable, "-m", "mpi4py", "-c", _HELLO]
    out = _run(argv, with_stderr=True)
    if out is None:
        return f"fails ({shlex.join(argv)} exited non-zero or timed out)"
    return "works" if "ranks 2" in out else f"fails (output {out.strip()[-200:]!r})"


def probe(site: Site) -> list[Check]:
    """Every check of `site` against this machine, in a fixed order."""
    checks = [
        check_arch(site),
        check_scheduler(site),
        check_partitions(site),
        check_launcher(site),
        check_cores(site),
        check_memory(site),
        check_gpus(site),
        check_perf(site),
        check_papi(site),
        check_mpi(site),
    ]
    return [c for c in checks if c is not None]
