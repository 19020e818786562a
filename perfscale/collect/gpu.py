"""The GPU collector: power, utilisation, memory and SM clock of the task's GPUs, sampled during the measured
run, and Nsight Compute's per-kernel metrics.

Sources, in order of preference:

- `nvidia-smi --query-gpu=timestamp,index,power.draw,utilization.gpu,memory.used,clocks.sm
  --format=csv,noheader,nounits -lms PERIOD -i IDS`: one line per GPU per period, e.g.
  `2024/05/01 10:00:00.123, 0, 68.51, 35, 1043, 1410`; a field a GPU cannot report reads `[N/A]` or
  `[Not Supported]` (null). nvidia-smi ignores CUDA_VISIBLE_DEVICES, so the task's ids are passed with `-i`.
- `rocm-smi --showpower --showuse --showmeminfo vram --showclocks --json -d IDS`, run once per period: a JSON
  object per card (`"card0": {"Average Graphics Package Power (W)": "35.0", "GPU use (%)": "12",
  "VRAM Total Used Memory (B)": "1073741824", "sclk clock speed:": "(1700Mhz)", ...}`); the key names follow
  rocm_smi.py (ROCm 5 and 6, which renamed the power key to `Current Socket Graphics Package Power (W)` on
  some cards: both are read).

Columns (docs/profile-schema.md): `gpu_status`, `gpu_source`, `gpu_samples`, and for power (W), utilisation
(%), memory used (MiB) and SM clock (MHz) the peak and the mean over every sample of every GPU; `gpu_energy_j`
is the power integrated over time (trapezoids between a GPU's samples, summed over GPUs). Without a GPU, or a
tool, the columns are null and `gpu_status` says why, like the perf and PAPI collectors.

Nsight Compute (`ncu --csv --metrics M1,M2 --target-processes all CMD`) prints one CSV row per kernel launch
and metric (`"ID","Process ID",...,"Kernel Name",...,"Metric Name","Metric Unit","Metric Value"`, values with
thousands separators); `parse_ncu_csv` turns it into (kernel id, kernel name, metric, unit, value) records.

None of these tools exists on the machine this was written on: the parsers are tested on output written in
the documented formats (tests/data/gpu/, labelled so), not on captured output.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NVIDIA_FIELDS = ("timestamp", "index", "power.draw", "utilization.gpu", "memory.used", "clocks.sm")
PERIOD_S = 0.2  # between samples
MEASURES = {
    "power_w": "power",
    "util_pct": "utilisation",
    "mem_used_mib": "memory used",
    "sm_clock_mhz": "SM",
}
GPU_COLUMNS = [
    "gpu_status",
    "gpu_source",
    "gpu_samples",
    *(f"gpu_{m}_{stat}" for m in MEASURES for stat in ("peak", "mean")),
    "gpu_energy_j",
]
_ROCM_POWER_KEYS = ("Average Graphics Package Power (W)", "Current Socket Graphics Package Power (W)")
_ROCM_VISIBLE = ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")


@dataclass(frozen=True)
class GpuSample:
    t: float  # seconds (epoch)
    gpu: str
    power_w: float | None
    util_pct: float | None
    mem_used_mib: float | None
    sm_clock_mhz: float | None


def _number(text: str) -> float | None:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        return None  # [N/A], [Not Supported], empty


def parse_nvidia_smi_samples(text: str) -> list[GpuSample]:
    """Lines of `nvidia-smi --query-gpu=<NVIDIA_FIELDS> --format=csv,noheader,nounits` (see the module
    doc)."""
    samples = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != len(NVIDIA_FIELDS):
            continue
        try:
            t = datetime.strptime(fields[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
        except ValueError:
            continue  # a header or a message line
        power, util, mem, clock = (_number(f) for f in fields[2:])
        samples.append(GpuSample(t, fields[1], power, util, mem, clock))
    return samples


def parse_rocm_smi_sample(text: str, t: float) -> list[GpuSample]:
    """One `rocm-smi --showpower --showuse --showmeminfo vram --showclocks --json` answer, taken at `t`."""
    try:
        cards = json.loads(text)
    except ValueError:
        return []
    samples = []
    for card, info in sorted(cards.items()) if isinstance(cards, dict) else ():
        if not (card.startswith("card") and isinstance(info, dict)):
            continue
        power = next((_number(str(info[k])) for k in _ROCM_POWER_KEYS if k in info), None)
        used = _number(str(info.get("VRAM Total Used Memory (B)", "")))
        clock = re.search(r"(\d+(?:\.\d+)?)\s*mhz", str(info.get("sclk clock speed:", "")), re.IGNORECASE)
        samples.append(
            GpuSample(
                t,
                card.removeprefix("card"),
                power,
                _number(str(info.get("GPU use (%)", ""))),
                used / 2**20 if used is not None else None,
                float(clock.group(1)) if clock else None,
            )
        )
    return samples


def summarise(samples: Sequence[GpuSample], source: str) -> dict[str, Any]:
    """The GPU columns from samples: peak and mean of each measure, energy from power over time."""
    row: dict[str, Any] = {"gpu_status": "ok", "gpu_source": source, "gpu_samples": len(samples)}
    for measure in MEASURES:
        values = [v for s in samples if (v := getattr(s, measure)) is not None]
        row[f"gpu_{measure}_peak"] = max(values) if values else None
        row[f"gpu_{measure}_mean"] = sum(values) / len(values) if values else None
    energy, powered = 0.0, False
    for gpu in dict.fromkeys(s.gpu for s in samples):
        points = sorted((s.t, s.power_w) for s in samples if s.gpu == gpu and s.power_w is not None)
        for (t0, p0), (t1, p1) in pairwise(points):
            energy += (t1 - t0) * (p0 + p1) / 2
            powered = True
    row["gpu_energy_j"] = energy if powered else None
    if not samples:
        row["gpu_status"] = f"failed: {source} gave no sample during the run"
    return row


def gpu_row(status: str) -> dict[str, Any]:
    """Null GPU columns, with the status saying why."""
    return {**dict.fromkeys(GPU_COLUMNS), "gpu_status": status}


def _visible(env: Mapping[str, str], names: Sequence[str]) -> str | None:
    """The task's GPU ids (None: every GPU of the node; "": none)."""
    for name in names:
        if name in env:
            return env[name].strip()
    return None


class _Sampler:
    source = ""

    def start(self) -> None: ...

    def stop(self) -> list[GpuSample]:
        return []


class _NvidiaSampler(_Sampler):
    source = "nvidia-smi"

    def __init__(self, tool: str, ids: str | None, out: Path):
        self.argv = [tool, f"--query-gpu={','.join(NVIDIA_FIELDS)}", "--format=csv,noheader,nounits"]
        self.argv += [f"-lms={int(PERIOD_S * 1000)}", *(["-i", ids] if ids else [])]
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log.info("GPU sampling: %s > %s", " ".join(self.argv), self.out)
        with open(self.out, "wb") as f:
            self.proc = subprocess.Popen(
                self.argv, stdout=f, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
            )

    def stop(self) -> list[GpuSample]:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return parse_nvidia_smi_samples(self.out.read_text(errors="replace"))


class _RocmSampler(_Sampler):
    source = "rocm-smi"

    def __init__(self, tool: str, ids: str | None, out: Path):
        self.argv = [tool, "--showpower", "--showuse", "--showmeminfo", "vram", "--showclocks", "--json"]
        self.argv += ["-d", *ids.split(",")] if ids else []
        self.out, self.samples = out, []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="perfscale-rocm-smi", daemon=True)

    def _loop(self) -> None:
        with open(self.out, "a") as f:
            while not self.done.is_set():
                t = time.time()
                try:
                    text = subprocess.run(
                        self.argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL
                    ).stdout
                except (OSError, subprocess.TimeoutExpired):
                    text = ""
                f.write(text.strip() + "\n")
                self.samples += parse_rocm_smi_sample(text, t)
                self.done.wait(PERIOD_S)

    def start(self) -> None:
        log.info("GPU sampling: %s every %.1f s > %s", " ".join(self.argv), PERIOD_S, self.out)
        self.thread.start()

    def stop(self) -> list[GpuSample]:
        self.done.set()
        self.thread.join(timeout=15)
        return list(self.samples)


def _sampler(env: Mapping[str, str], out: Path) -> _Sampler | str:
    """The sampler for the task's GPUs, or why there is none."""
    nvidia, rocm = (
        shutil.which("nvidia-smi", path=env.get("PATH")),
        shutil.which("rocm-smi", path=env.get("PATH")),
    )
    if nvidia is not None:
        ids = _visible(env, ("CUDA_VISIBLE_DEVICES",))
        return (
            "unavailable: the task sees no GPU (CUDA_VISIBLE_DEVICES is empty)"
            if ids == ""
            else (_NvidiaSampler(nvidia, ids, out))
        )
    if rocm is not None:
        ids = _visible(env, _ROCM_VISIBLE)
        return (
            "unavailable: the task sees no GPU (ROCR_VISIBLE_DEVICES is empty)"
            if ids == ""
            else (_RocmSampler(rocm, ids, out))
        )
    return "unavailable: neither nvidia-smi nor rocm-smi is on PATH (no GPU here)"


@contextmanager
def sampling(env: Mapping[str, str], out: Path) -> Iterator[dict[str, Any]]:
    """Sample the task's GPUs while the block runs; the dict it yields holds the GPU columns afterwards."""
    row: dict[str, Any] = {}
    sampler = _sampler(env, out)
    if isinstance(sampler, str):
        row |= gpu_row(sampler)
        yield row
        return
    try:
        sampler.start()
    except OSError as exc:
        row |= gpu_row(f"failed: {sampler.source} did not start: {exc}")
        yield row
        return
    try:
        yield row
    finally:
        row |= summarise(sampler.stop(), sampler.source)


# ---- Nsight Compute ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelMetric:
    kernel_id: int
    kernel: str
    metric: str
    unit: str
    value: float | str


DEFAULT_NCU_METRICS = (
    "gpu__time_duration.sum",
    "dram__bytes.sum",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed",
)
NCU_COLUMNS = ["ncu_status", "ncu_kernels", "ncu_records"]


def ncu_wrapper(ncu: str, metrics: Sequence[str], out_file: Path) -> list[str]:
    """The words before the command: every kernel of every process, the chosen metrics, CSV into `out_file`
    (`--log-file`, so the program's own output stays apart)."""
    return [
        ncu,
        "--csv",
        "--log-file",
        str(out_file),
        "--target-processes",
        "all",
        "--metrics",
        ",".join(metrics),
    ]


def ncu_row(records: Sequence[KernelMetric] | None, status: str) -> dict[str, Any]:
    """ncu_status, ncu_kernels (distinct kernel launches), ncu_records (kernel x metric values); the values
    themselves go to the task's `ncu-kernels.csv`."""
    if records is None:
        return {**dict.fromkeys(NCU_COLUMNS), "ncu_status": status}
    return {
        "ncu_status": status,
        "ncu_kernels": len({r.kernel_id for r in records}),
        "ncu_records": len(records),
    }


def write_kernel_table(records: Sequence[KernelMetric], path: Path) -> None:
    """One line per kernel launch and metric: kernel_id, kernel, metric, unit, value."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["kernel_id", "kernel", "metric", "unit", "value"])
        writer.writerows((r.kernel_id, r.kernel, r.metric, r.unit, r.value) for r in records)


def parse_ncu_csv(text: str) -> list[KernelMetric]:
    """`ncu --csv --metrics ...` output: the CSV from its header line on (`==PROF==` lines and the program's
    own output before it are skipped); one record per kernel launch and metric."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        return []
    out = []
    for row in csv.DictReader(io.StringIO("\n".join(lines[start:]))):
        if not row.get("Metric Name") or not (row.get("ID") or "").isdigit():
            continue
        raw = (row.get("Metric Value") or "").replace(",", "")
        value: float | str = _number(raw) if _number(raw) is not None else raw
        out.append(
            KernelMetric(
                int(row["ID"]),
                row.get("Kernel Name", ""),
                row["Metric Name"],
                row.get("Metric Unit", ""),
                value,
            )
        )
    return out
