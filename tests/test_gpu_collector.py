"""The GPU collector (perfscale/collect/gpu.py).

Parsers: fed tests/data/gpu/, written by hand in the documented formats of nvidia-smi, rocm-smi and Nsight
Compute (no GPU tool exists here; see tests/data/gpu/README.md). Sampling: a profile task run for real, with
the collector on, here (no GPU: null columns, status says why), and with a stand-in `nvidia-smi` script on
PATH that prints documented lines, which checks the process side (the arguments, the task's ids passed
with -i, stopping it, integrating power over time).
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from perfscale.collect.gpu import (
    GPU_COLUMNS,
    parse_ncu_csv,
    parse_nvidia_smi_samples,
    parse_rocm_smi_sample,
    sampling,
    summarise,
)
from perfscale.execute import execute_task
from perfscale.runner import prepare_run
from perfscale.spec.site import load_site

DATA = Path(__file__).parent / "data" / "gpu"


def test_nvidia_smi_samples_give_peaks_means_and_energy():
    samples = parse_nvidia_smi_samples((DATA / "nvidia-smi-samples.csv").read_text())
    assert len(samples) == 6 and {s.gpu for s in samples} == {"0", "1"}
    assert samples[3].power_w is None and samples[3].sm_clock_mhz is None  # [N/A], [Not Supported]
    row = summarise(samples, "nvidia-smi")
    assert row["gpu_status"] == "ok" and row["gpu_samples"] == 6
    assert row["gpu_power_w_peak"] == 140.0 and row["gpu_power_w_mean"] == pytest.approx(420 / 5)
    assert row["gpu_util_pct_peak"] == 100 and row["gpu_mem_used_mib_peak"] == 2500
    assert row["gpu_sm_clock_mhz_mean"] == pytest.approx((1410 * 3 + 1380 * 2) / 5)
    # GPU 0: 0.2 s x (60+100)/2 + 0.2 s x (100+140)/2 = 40 J; GPU 1 (its middle sample has no power):
    # 0.4 s x (50+70)/2 = 24 J
    assert row["gpu_energy_j"] == pytest.approx(64.0)
    assert set(row) == set(GPU_COLUMNS)


def test_rocm_smi_answer_reads_both_power_keys_and_units():
    (a, b) = parse_rocm_smi_sample((DATA / "rocm-smi-sample.json").read_text(), t=10.0)
    assert (a.gpu, a.power_w, a.util_pct, a.mem_used_mib, a.sm_clock_mhz) == ("0", 35.0, 12, 1024, 1700)
    assert (b.gpu, b.power_w, b.util_pct, b.mem_used_mib, b.sm_clock_mhz) == ("1", 210.5, 97, 30720, 2100)
    assert parse_rocm_smi_sample("not json", 0.0) == []


def test_ncu_csv_gives_one_record_per_kernel_and_metric():
    records = parse_ncu_csv((DATA / "ncu.csv").read_text())
    assert [(r.kernel_id, r.metric) for r in records] == [
        (0, "dram__bytes.sum"),
        (0, "sm__throughput.avg.pct_of_peak_sustained_elapsed"),
        (1, "dram__bytes.sum"),
        (1, "sm__throughput.avg.pct_of_peak_sustained_elapsed"),
    ]
    assert records[0].value == 25_165_824 and records[0].unit == "byte"
    assert records[0].kernel.startswith("triad_kernel(") and records[1].value == 12.34
    assert records[3].value == "n/a"  # kept as text: a metric ncu could not collect
    assert parse_ncu_csv("==PROF== nothing profiled\n") == []


FAKE_NVIDIA_SMI = """\
#!/bin/sh
# stands in for nvidia-smi: records its arguments, prints documented sample lines until stopped
echo "$@" > "$(dirname "$0")/args.txt"
while true; do
  now=$(date -u +"%Y/%m/%d %H:%M:%S.%N" | cut -c1-23)
  echo "$now, 1, 100.00, 50, 1024, 1410"
  echo "$now, 3, [N/A], 0, 10, 210"
  sleep 0.05
done
"""

PROFILE = """\
name: gpuprofile
stages:
  run:
    kind: profile
    params: {command: "sleep 0.6", collectors: [rusage, gpu]}
"""


def test_profile_rows_carry_null_gpu_columns_where_no_gpu_tool_is(write_study, tmp_path, monkeypatch):
    tools = shutil.which("nvidia-smi") or shutil.which("rocm-smi")
    store = prepare_run(write_study(PROFILE), load_site("local"), tmp_path / "run")
    assert execute_task(store.root, 0).ok  # in this process: the collector, not an engine, is under test
    row = store.read_stage("run").to_pandas().iloc[0]
    if tools is None:  # this machine, and CI
        assert row["gpu_status"] == "unavailable: neither nvidia-smi nor rocm-smi is on PATH (no GPU here)"
        assert all(row[c] is None or row[c] != row[c] for c in GPU_COLUMNS if c != "gpu_status")
    else:  # a GPU machine: sampled for real
        assert row["gpu_status"] == "ok" and row["gpu_samples"] > 0
    # the report says where each stage ran and shows the GPU columns
    from perfscale.report import build_report

    page = build_report(store).read_text()
    assert "<th>GPUs per task</th>" in page and "<th>partition</th>" in page and "<th>gpu_status</th>" in page


def test_sampling_runs_the_tool_for_the_task_gpus_and_stops_it(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text(FAKE_NVIDIA_SMI)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": "1,3"}
    with sampling(env, tmp_path / "samples.txt") as row:
        time.sleep(0.6)
    args = (bin_dir / "args.txt").read_text().split()
    assert args == [
        "--query-gpu=timestamp,index,power.draw,utilization.gpu,memory.used,clocks.sm",
        "--format=csv,noheader,nounits",
        "-lms=200",
        "-i",
        "1,3",
    ]
    assert row["gpu_status"] == "ok" and row["gpu_source"] == "nvidia-smi" and row["gpu_samples"] >= 4
    assert row["gpu_power_w_peak"] == 100.0 and row["gpu_sm_clock_mhz_peak"] == 1410
    assert row["gpu_energy_j"] == pytest.approx(100.0 * _span(tmp_path / "samples.txt", "1"), rel=1e-6)
    # a task bound to no GPU is not sampled
    with sampling({**env, "CUDA_VISIBLE_DEVICES": ""}, tmp_path / "none.txt") as none:
        pass
    assert none["gpu_status"] == "unavailable: the task sees no GPU (CUDA_VISIBLE_DEVICES is empty)"


def _span(path: Path, gpu: str) -> float:
    times = [s.t for s in parse_nvidia_smi_samples(path.read_text()) if s.gpu == gpu]
    return max(times) - min(times)


FAKE_NCU = """\
#!/bin/sh
# stands in for ncu: records its options, writes the documented CSV to --log-file, runs the command
echo "$1 $2 $3 $4 $5 $6 $7" > "$(dirname "$0")/ncu-args.txt"
grep -v '^==PROF==' "{csv}" | grep -v '^result' > "$3"
shift 7
exec "$@"
"""

NCU_PROFILE = """\
name: ncuprofile
stages:
  run:
    kind: profile
    params:
      command: "echo hello"
      collectors: [rusage, ncu]
      ncu_metrics: [dram__bytes.sum, sm__throughput.avg.pct_of_peak_sustained_elapsed]
"""


def test_the_ncu_collector_runs_the_command_under_ncu_and_keeps_the_kernel_table(
    write_study, tmp_path, monkeypatch
):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ncu"
    fake.write_text(FAKE_NCU.format(csv=DATA / "ncu.csv"))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    store = prepare_run(write_study(NCU_PROFILE), load_site("local"), tmp_path / "run")
    assert execute_task(store.root, 0).ok
    row = store.read_stage("run").to_pandas().iloc[0]
    assert (row["ncu_status"], row["ncu_kernels"], row["ncu_records"]) == ("ok", 2, 4)
    (key,) = [t.key for t in store.plan.tasks]
    artifacts = store.artifact_dir("run", key)
    options = (bin_dir / "ncu-args.txt").read_text().split()
    assert options == [
        "--csv",
        "--log-file",
        str(artifacts / "ncu.csv"),
        "--target-processes",
        "all",
        "--metrics",
        "dram__bytes.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed",
    ]
    table = (artifacts / "ncu-kernels.csv").read_text().splitlines()
    assert table[0] == "kernel_id,kernel,metric,unit,value" and len(table) == 5
    assert table[1].endswith(",dram__bytes.sum,byte,25165824.0")
