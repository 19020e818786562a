"""What machine a measurement was taken on: a few facts read once per process from /proc, /sys and the GPU
tools, and the environment variables that shape a run (OpenMP settings, the batch job's id).

Every value is None where this system does not expose it (no /proc on macOS, no cpufreq in most VMs, no GPU
tool), so the columns exist on every machine and tables from different sites line up.
"""

from __future__ import annotations

import fnmatch
import json
import os
import platform
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

MACHINE_COLUMNS = (
    "hostname",
    "cpu_model",
    "cpu_cores",
    "sockets",
    "kernel_release",
    "perf_event_paranoid",
    "scaling_governor",
    "gpu_count",
    "gpu_model",
    "gpu_memory_mib",
)

#: environment variables every profile row records (`env_<name in lower case>`); a pattern with * or ? adds
#: a column for each variable it matches, a plain name a column whether or not the variable is set
ENV_CAPTURE = ("OMP_NUM_THREADS", "OMP_*", "SLURM_JOB_ID", "LSB_JOBID")
_GPU_TOOL_TIMEOUT_S = 30.0


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _cpuinfo_values(key: str) -> list[str]:
    """All values of `key` in /proc/cpuinfo (one per logical CPU on x86)."""
    text = _read("/proc/cpuinfo") or ""
    values = []
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == key:
            values.append(value.strip())
    return values


def cpu_model() -> str | None:
    # x86 says "model name"; some ARM and POWER kernels only say "Hardware" or "cpu"
    for key in ("model name", "Hardware", "cpu"):
        values = _cpuinfo_values(key)
        if values:
            return values[0]
    return platform.processor() or None


@lru_cache(maxsize=1)
def cpu_flags() -> str:
    """The CPU's feature flags ("flags" on x86, "Features" on ARM): what -march=native compiles for."""
    for key in ("flags", "Features"):
        values = _cpuinfo_values(key)
        if values:
            return values[0]
    return ""


def _sockets() -> int | None:
    ids = set(_cpuinfo_values("physical id"))
    if not ids:
        root = Path("/sys/devices/system/cpu")
        ids = {_read(str(p)) for p in root.glob("cpu[0-9]*/topology/physical_package_id")} - {None}
    return len(ids) or None


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


# ---- GPUs ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Gpu:
    name: str
    memory_mib: int | None


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """`nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits`: one `name, MiB` line each."""
    gpus = []
    for line in text.splitlines():
        name, _, memory = line.rpartition(",")
        if name.strip():
            gpus.append(Gpu(name.strip(), _int_or_none(memory.strip())))
    return gpus


def parse_rocm_smi(text: str) -> list[Gpu]:
    """`rocm-smi --showproductname --showmeminfo vram --json`: {"card0": {"Card series": ..., "VRAM Total
    Memory (B)": ...}, ...}; the name keys differ between ROCm versions."""
    try:
        cards = json.loads(text)
    except ValueError:
        return []
    gpus = []
    for card, info in sorted(cards.items()) if isinstance(cards, dict) else ():
        if not (card.startswith("card") and isinstance(info, dict)):
            continue
        name = next(
            (info[k] for k in ("Card series", "Card model", "Device Name", "Card SKU") if info.get(k)), "?"
        )
        vram = _int_or_none(str(info.get("VRAM Total Memory (B)", "")).strip() or None)
        gpus.append(Gpu(str(name).strip(), vram // 2**20 if vram is not None else None))
    return gpus


def _run_tool(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=_GPU_TOOL_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def gpus() -> list[Gpu] | None:
    """The node's GPUs from nvidia-smi, else rocm-smi; None where neither tool is present or answers."""
    text = _run_tool(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"])
    if text is not None:
        return parse_nvidia_smi(text) or None
    text = _run_tool(["rocm-smi", "--showproductname", "--showmeminfo", "vram", "--json"])
    return (parse_rocm_smi(text) or None) if text is not None else None


def gpu_columns(found: list[Gpu] | None) -> dict[str, Any]:
    """gpu_count; gpu_model (the distinct names, joined by '; '); gpu_memory_mib (of one GPU: the smallest
    where they differ, as that bounds what each can hold). All None when no GPU tool answered."""
    if not found:
        return {"gpu_count": None, "gpu_model": None, "gpu_memory_mib": None}
    names = list(dict.fromkeys(g.name for g in found))
    memory = [g.memory_mib for g in found if g.memory_mib is not None]
    return {
        "gpu_count": len(found),
        "gpu_model": "; ".join(names),
        "gpu_memory_mib": min(memory, default=None),
    }


# ---- environment -----------------------------------------------------------------------------------------
def env_column(name: str) -> str:
    return "env_" + re.sub(r"[^a-z0-9_]+", "_", name.lower())


def check_env_patterns(patterns: Sequence[str], field: str = "env_capture") -> None:
    """Names or shell-style patterns (`OMP_*`) of environment variables; raises ValueError naming `field`."""
    for pattern in patterns:
        if (
            not pattern
            or "=" in pattern
            or "\0" in pattern
            or not re.fullmatch(r"[A-Za-z0-9_*?\[\]!-]+", pattern)
        ):
            raise ValueError(f"{field}: {pattern!r} is not an environment variable name or pattern")


def captured_env(env: Mapping[str, str], patterns: Sequence[str] = ()) -> dict[str, str | None]:
    """The `env_<name>` columns for ENV_CAPTURE and `patterns`, from the environment the command ran with."""
    out: dict[str, str | None] = {}
    for pattern in (*ENV_CAPTURE, *patterns):
        if any(c in pattern for c in "*?["):
            for name in sorted(n for n in env if fnmatch.fnmatchcase(n, pattern)):
                out[env_column(name)] = env[name]
        else:
            out[env_column(pattern)] = env.get(pattern)
    return out


# ---- all -------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _metadata() -> tuple[tuple[str, Any], ...]:
    values = {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "sockets": _sockets(),
        "kernel_release": platform.release() or None,
        "perf_event_paranoid": _int_or_none(_read("/proc/sys/kernel/perf_event_paranoid")),
        "scaling_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        **gpu_columns(gpus()),
    }
    return tuple((name, values[name]) for name in MACHINE_COLUMNS)


def machine_metadata() -> dict[str, Any]:
    """hostname, cpu_model, cpu_cores (logical CPUs), sockets, kernel_release, perf_event_paranoid,
    scaling_governor, gpu_count, gpu_model and gpu_memory_mib of this machine; read once per process,
    returned as a fresh dict each call."""
    return dict(_metadata())
