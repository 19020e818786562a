"""The perf stat collector for real: perf's captured outputs parsed, event names checked, and the built-in
kernels profiled under the real `perf stat` through the profile stage. Also the rest of a profile row that
comes with the collectors: machine GPUs and the captured environment."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

import perfscale.stages.profile  # noqa: F401  (registers the kind)
from perfscale.collect import perf
from perfscale.collect.command import USAGE_COLUMNS, WrapperFailed, run_command
from perfscale.collect.derived import DERIVED_COLUMNS
from perfscale.collect.machine import (
    MACHINE_COLUMNS,
    captured_env,
    gpu_columns,
    gpus,
    parse_nvidia_smi,
    parse_rocm_smi,
)
from perfscale.collect.papi import has_cpu_pmu
from perfscale.errors import BadInput, SpecError
from perfscale.execute import execute_task
from perfscale.runner import prepare_run
from perfscale.spec import load_site
from perfscale.stages.profile import ProfileParams

DATA = Path(__file__).parent / "data" / "perf"
PERF = shutil.which("perf")
needs_perf = pytest.mark.skipif(PERF is None, reason="perf is not installed (Debian: linux-perf)")
HARDWARE = ("cycles", "instructions", "branches", "branch-misses", "cache-references", "cache-misses")


def counts(name: str, sep: str = ";") -> dict[str, perf.PerfCount]:
    return {c.event: c for c in perf.parse_perf_csv((DATA / name).read_text(), sep)}


# ---- parsing captured outputs ----------------------------------------------------------------------------
def test_parse_software_and_unsupported_hardware_events() -> None:
    got = counts("software_and_hardware.csv")
    assert list(got) == list(perf.DEFAULT_PERF_EVENTS)  # one line per event, in the order asked
    clock = got["task-clock"]
    assert (clock.value, clock.unit, clock.status, clock.running_pct) == (133.70, "msec", "counted", 100.0)
    assert (clock.run_time_ns, clock.metric, clock.metric_unit) == (133696536, 1.037, "CPUs utilized")
    assert (got["page-faults"].value, got["context-switches"].value, got["cpu-migrations"].value) == (
        11791,
        40,
        0,
    )
    assert isinstance(got["page-faults"].value, int)
    for event in HARDWARE:
        assert (got[event].value, got[event].status, got[event].raw) == (None, "not_supported", None)


def test_parse_tool_pmu_and_tracepoint_events() -> None:
    got = counts("tool_pmu_tracepoint.csv")
    assert (got["duration_time"].value, got["duration_time"].unit) == (135635563, "ns")
    assert got["msr/tsc/"].value == 329287032 and got["sched:sched_switch"].value == 38
    assert got["cycles:u"].status == "not_supported"
    row = perf.perf_row(list(got), list(got.values()), "ok")
    assert row["perf_duration_time_ns"] == 135635563 and row["perf_cpu_clock_ms"] == 134.65
    assert row["perf_msr_tsc"] == 329287032 and row["perf_sched_sched_switch"] == 38
    assert row["perf_cycles_u"] is None and row["perf_cycles_u_status"] == "not_supported"
    assert row["perf_cycles_u_running_pct"] is None  # perf prints 100.00 for it; it never ran
    assert not any(k.endswith("_unit") and not k.endswith("metric_unit") for k in row)  # units are in names


def test_parse_not_counted_and_the_comma_form() -> None:
    group = counts("not_counted_group.csv")
    assert (group["task-clock"].status, group["task-clock"].value) == ("not_counted", None)
    assert group["page-faults"].value == 330 and group["page-faults"].metric is None
    comma = counts("comma_separated.csv", sep=",")
    assert comma["task-clock"].value == 29.13 and comma["instructions"].status == "not_supported"


def test_parse_multiplexed_handwritten() -> None:
    """Hand-written from perf-stat(1) (no PMU here to multiplex; see tests/data/perf/README.md)."""
    got = counts("multiplexed_handwritten.csv")
    cycles = got["cycles"]
    assert (cycles.status, cycles.running_pct, cycles.value, cycles.raw) == (
        "multiplexed", 50.0, 3801234568, 1900617284
    )  # fmt: skip
    assert got["branches"].raw == 750925926 and got["task-clock"].status == "counted"
    assert got["instructions"].extra_metrics == ((0.35, "stalled cycles per insn"),)
    assert (got["cache-misses"].status, got["cache-misses"].value) == ("not_counted", None)
    row = perf.perf_row(list(got), list(got.values()), "ok")
    assert (row["perf_cycles"], row["perf_cycles_raw"], row["perf_cycles_running_pct"]) == (
        3801234568, 1900617284, 50.0
    )  # fmt: skip
    assert (
        row["perf_instructions_metric"] == 1.42 and row["perf_instructions_metric_unit"] == "insn per cycle"
    )


def test_rows_without_counts_and_unexpected_units() -> None:
    row = perf.perf_row(["task-clock", "cycles:u"], None, "unavailable: perf not found on PATH")
    assert set(row) == set(perf.perf_columns(["task-clock", "cycles:u"]))
    assert row["perf_status"].startswith("unavailable") and row["perf_task_clock_ms"] is None
    energy = perf.PerfCount("power/energy-pkg/", 12.5, "Joules", "counted", 10, 100.0)
    row = perf.perf_row(["power/energy-pkg/", "faults"], [energy], "ok")
    assert (row["perf_power_energy_pkg"], row["perf_power_energy_pkg_unit"]) == (12.5, "Joules")
    assert row["perf_faults_status"] == "not_counted"  # perf ran but printed no line for it


# ---- names -----------------------------------------------------------------------------------------------
def test_column_names() -> None:
    assert perf.event_column("task-clock") == "perf_task_clock_ms"
    assert perf.event_column("L1-dcache-load-misses") == "perf_l1_dcache_load_misses"
    assert perf.event_column("cycles:u") == "perf_cycles_u"
    assert perf.event_column("cpu/event=0x3c,umask=0x00/") == "perf_cpu_event_0x3c_umask_0x00"


def test_event_names_are_checked() -> None:
    perf.check_perf_events(["cycles:u", "L1-dcache-load-misses", "r1a8", "cpu/event=0x3c,umask=0x0/", "cs"])
    bad = {
        "bogus event": "whitespace",
        "{cycles,instructions}": "no groups",
        "cycles,instructions": "own list item",
        "-e": "may not start",
        "cycles:zz": "not event modifiers",
    }
    for name, why in bad.items():
        with pytest.raises(BadInput, match=f"perf_events: event .*{why}"):
            perf.check_perf_events([name])
    with pytest.raises(BadInput, match="would both make column perf_cycles_u"):
        perf.check_perf_events(["cycles:u", "cycles-u"])
    with pytest.raises(BadInput, match="would both make column perf_task_clock_ms"):
        perf.check_perf_events(["task-clock", "task-clock-ms"])


@needs_perf
def test_unknown_events_are_rejected_by_this_machines_perf() -> None:
    assert PERF is not None
    with pytest.raises(
        BadInput, match=r"perf_events: event 'bogus-event' unknown to perf.*event syntax error"
    ):
        perf.check_perf_events(["task-clock", "bogus-event"], perf=PERF)


def test_paranoia_rules() -> None:
    assert perf.paranoid_problem(2, privileged=False) is None  # own processes, user space: allowed
    assert perf.paranoid_problem(4, privileged=True) is None
    assert "perf_event_paranoid is 3" in (perf.paranoid_problem(3, privileged=False) or "")


# ---- real runs under perf --------------------------------------------------------------------------------
@needs_perf
def test_perf_wraps_the_command_and_leaves_its_usage_alone(kernel_dir: Path, tmp_path: Path) -> None:
    assert PERF is not None
    argv, env = [str(kernel_dir / "triad"), "400000", "5"], {"OMP_NUM_THREADS": "2"}
    out = tmp_path / "perf.csv"
    wrapped = run_command(argv, env, wrapper=perf.perf_wrapper(PERF, ["task-clock", "page-faults"], out))
    bare = run_command(argv, env)
    assert wrapped.ok and wrapped.wrapper_returncode == 0 and "checksum:" in wrapped.stdout
    assert wrapped.stderr == ""  # perf's table went to its own file
    got = {c.event: c for c in perf.parse_perf_csv(out.read_text())}
    assert got["task-clock"].value > 0 and got["page-faults"].value > 0
    # max RSS is the kernel's own (perf alone peaks near 14 MB): within 10% of the bare run's
    assert wrapped.max_rss_bytes == pytest.approx(bare.max_rss_bytes, rel=0.1)
    with pytest.raises(WrapperFailed, match="perf exited with status 129"):
        run_command(argv, env, wrapper=[PERF, "stat", "-e", "bogus-event", "--"])


def _dies(pid: int, within_s: float = 10.0) -> bool:
    """Whether the process is gone or a zombie within a while (SIGKILL is delivered asynchronously)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


@needs_perf
def test_wrapped_commands_die_with_their_worker(tmp_path: Path, kernel_dir: Path) -> None:
    """launch -> perf -> launch -> command: a killed worker still takes the command down with it."""
    pidfile = tmp_path / "pid"
    worker_code = (
        "import sys; from perfscale.collect.command import run_command; "
        "run_command(['sh', '-c', 'echo $$ > ' + sys.argv[1] + '; exec sleep 30'], "
        f"wrapper=[{PERF!r}, 'stat', '-o', sys.argv[1] + '.csv', '--'])"
    )
    worker = subprocess.Popen([sys.executable, "-c", worker_code, str(pidfile)])
    try:
        deadline = time.monotonic() + 30
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert time.monotonic() < deadline and worker.poll() is None, "the command never started"
            time.sleep(0.05)
        command = int(pidfile.read_text())
        assert not _dies(command, within_s=0.2)
    finally:
        worker.kill()
        worker.wait()
    assert _dies(command)


STUDY = """\
name: perfstudy
retry: {app_error: 0}
stages:
  kernels:
    kind: profile
    params:
      command: "{kernels}/{kernel} {size} 5"
      env: {OMP_NUM_THREADS: "2", OMP_PROC_BIND: "close"}
      collectors: [rusage, perf]
      env_capture: [MY_TAG]
      fom: {checksum: '^checksum:\\s*(\\S+)'}
    grid:
      zip: {kernel: [triad, spmv, jacobi2d], size: [400000, 100000, 256]}
  noperf:
    kind: profile
    params:
      command: "{kernels}/triad 10000 1"
      env: {PATH: "/nonexistent"}
      collectors: [perf]
  required:
    kind: profile
    params:
      command: "{kernels}/triad 10000 1"
      collectors: [perf]
      counters_required: true
"""


def _site(tmp_path: Path, perf_on: bool) -> Path:
    text = (Path(__file__).parents[1] / "site_configs" / "local.yaml").read_text()
    text = text.replace("name: local", "name: testsite").replace(
        "perf: true", f"perf: {str(perf_on).lower()}"
    )
    path = tmp_path / f"site-{perf_on}.yaml"
    path.write_text(text)
    return path


def _run(tmp_path: Path, perf_on: bool = True):
    (tmp_path / "study.yaml").write_text(STUDY)
    site = load_site(_site(tmp_path, perf_on))
    return prepare_run(tmp_path / "study.yaml", site, tmp_path / f"run-{perf_on}")


@needs_perf
def test_profile_kernels_under_real_perf(
    tmp_path: Path, kernel_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_TAG", "tagged")
    store = _run(tmp_path)
    for task in store.plan.of_stage("kernels"):
        outcome = execute_task(store.root, task.index)
        assert outcome.ok, outcome.message
    table = store.read_stage("kernels", provenance=False).to_pandas()
    assert list(table.columns[:2]) == ["kernel", "size"]
    assert list(table.columns[2 : 2 + len(USAGE_COLUMNS)]) == list(USAGE_COLUMNS)
    assert {*perf.perf_columns(perf.DEFAULT_PERF_EVENTS), *DERIVED_COLUMNS, *MACHINE_COLUMNS} <= set(
        table.columns
    )
    assert (table["perf_status"] == "ok").all() and table["checksum"].notna().all()
    assert (table["perf_task_clock_ms"] > 0).all() and (table["perf_page_faults"] > 0).all()
    assert (table["perf_task_clock_status"] == "counted").all()
    # perf counts the command (and a few hundred faults of the launcher in between): near rusage's figure
    assert (table["perf_page_faults"] >= table["minor_faults"]).all()
    assert (table["perf_page_faults"] < table["minor_faults"] + 1000).all()
    cpu_ms = 1000 * (table["user_time_s"] + table["sys_time_s"])
    assert (table["perf_task_clock_ms"] > 0.5 * cpu_ms).all() and (
        table["perf_task_clock_ms"] < 2 * cpu_ms + 20
    ).all()
    for event in HARDWARE:  # counted where there is a PMU; else null with a status, never a crash
        column, status = perf.event_column(event), table[f"perf_{perf.snake(event)}_status"]
        counted = status.isin(["counted", "multiplexed"])
        assert (table.loc[counted, column] > 0).all() and table.loc[~counted, column].isna().all()
        if has_cpu_pmu() is False:
            assert (status == "not_supported").all()
    if has_cpu_pmu() is False:
        assert table["ipc"].isna().all() and table["llc_miss_ratio"].isna().all()
    assert (table["env_omp_num_threads"] == "2").all() and (table["env_omp_proc_bind"] == "close").all()
    assert (table["env_my_tag"] == "tagged").all() and table["env_slurm_job_id"].isna().all()
    task = store.plan.of_stage("kernels")[0]
    assert "task-clock" in (store.artifact_dir("kernels", task.key) / "perf-stat.csv").read_text()


@needs_perf
def test_perf_missing_or_disabled_gives_null_columns_and_a_reason(tmp_path: Path, kernel_dir: Path) -> None:
    store = _run(tmp_path)
    outcome = execute_task(store.root, store.plan.of_stage("noperf")[0].index)
    assert outcome.ok, outcome.message
    row = store.read_stage("noperf", provenance=False).to_pylist()[0]
    assert row["perf_status"].startswith("unavailable: perf not found on PATH")
    assert row["perf_task_clock_ms"] is None and row["wall_time_s"] > 0
    off = _run(tmp_path, perf_on=False)
    outcome = execute_task(off.root, off.plan.of_stage("required")[0].index)
    assert (outcome.ok, outcome.failure_kind) == (False, "unsupported_counter")
    assert "site 'testsite' sets counters.perf: false" in (outcome.message or "")


def test_unknown_event_is_rejected_before_anything_runs(tmp_path: Path) -> None:
    study = textwrap.dedent("""\
        name: bad
        stages:
          p:
            kind: profile
            params: {command: "true", collectors: [perf], perf_events: [task-clock, "cycles:zz"]}
        """)
    (tmp_path / "study.yaml").write_text(study)
    with pytest.raises(SpecError, match=r"perf_events: event 'cycles:zz'"):
        prepare_run(tmp_path / "study.yaml", load_site("local"), tmp_path / "run")
    assert not (tmp_path / "run" / "stages").exists()
    with pytest.raises(ValidationError, match="collectors"):
        ProfileParams.model_validate({"command": "true", "collectors": ["perf", "vtune"]})
    with pytest.raises(ValidationError, match="variable 'perf_mode'"):
        ProfileParams.model_validate({"command": "true", "perf_mode": 1})
    if PERF is not None:
        with pytest.raises(ValidationError, match=r"perf_events: event 'bogus-event' .*unknown to perf"):
            ProfileParams.model_validate(
                {"command": "true", "collectors": ["perf"], "perf_events": ["bogus-event"]}
            )
    # without perf among the collectors, a name perf would have to look up is only checked for form
    ProfileParams.model_validate({"command": "true", "perf_events": ["bogus-event"]})


# ---- machine and environment columns ---------------------------------------------------------------------
def test_gpu_columns() -> None:
    smi = "NVIDIA H100 80GB HBM3, 81559\nNVIDIA H100 80GB HBM3, 81559\n"
    assert gpu_columns(parse_nvidia_smi(smi)) == {
        "gpu_count": 2, "gpu_model": "NVIDIA H100 80GB HBM3", "gpu_memory_mib": 81559
    }  # fmt: skip
    rocm = '{"card0": {"Card series": "AMD Instinct MI250X", "VRAM Total Memory (B)": "68702699520"}, '
    rocm += '"system": {}}'
    assert gpu_columns(parse_rocm_smi(rocm)) == {
        "gpu_count": 1, "gpu_model": "AMD Instinct MI250X", "gpu_memory_mib": 65520
    }  # fmt: skip
    assert gpu_columns(None) == {"gpu_count": None, "gpu_model": None, "gpu_memory_mib": None}
    if shutil.which("nvidia-smi") is None and shutil.which("rocm-smi") is None:
        assert gpus() is None  # this machine: no GPU tool, so null columns


def test_captured_env() -> None:
    env = {"OMP_PLACES": "cores", "OMP_NUM_THREADS": "4", "LSB_JOBID": "77", "MINE_1": "a", "MINE_2": "b"}
    assert captured_env(env, ["MINE_*", "ABSENT"]) == {
        "env_omp_num_threads": "4", "env_omp_places": "cores", "env_slurm_job_id": None,
        "env_lsb_jobid": "77", "env_mine_1": "a", "env_mine_2": "b", "env_absent": None,
    }  # fmt: skip
    with pytest.raises(ValidationError, match="env_capture"):
        ProfileParams.model_validate({"command": "true", "env_capture": ["A=B"]})
