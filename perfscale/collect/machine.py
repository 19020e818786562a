"""What machine a measurement was taken on: a few facts read once per process from /proc and /sys.

Every value is None where this system does not expose it (no /proc on macOS, no cpufreq in most VMs), so the
columns exist on every machine and tables from different sites line up.
"""

from __future__ import annotations

import os
import platform
import socket
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
)


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
    }
    return tuple((name, values[name]) for name in MACHINE_COLUMNS)


def machine_metadata() -> dict[str, Any]:
    """hostname, cpu_model, cpu_cores (logical CPUs), sockets, kernel_release, perf_event_paranoid and
    scaling_governor of this machine; read once per process, returned as a fresh dict each call."""
    return dict(_metadata())
