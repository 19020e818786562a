"""The PAPI collector for real: the machine's PAPI probed, events grouped by the real papi_event_chooser,
papi_run run on a real command, and the profile stage giving PAPI columns (or saying why not) without a
crash. Plus the grouping algorithm and the derived features as pure functions on hand-checkable values."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydantic import ValidationError

import perfscale.stages.profile  # noqa: F401  (registers the kind)
from perfscale.collect import papi
from perfscale.collect.command import WrapperFailed, run_command
from perfscale.collect.derived import DERIVED_COLUMNS, derive, ratio
from perfscale.collect.kernels import BUILD_INFO
from perfscale.errors import BadInput
from perfscale.execute import execute_task
from perfscale.runner import prepare_run
from perfscale.spec import load_site
from perfscale.stages.profile import ProfileParams

CHOOSER = shutil.which("papi_event_chooser")
needs_papi = pytest.mark.skipif(
    CHOOSER is None or shutil.which("papi_avail") is None,
    reason="papi-tools is not installed (Debian: apt-get install papi-tools libpapi-dev)",
)
SOFTWARE = ["perf::TASK-CLOCK", "perf::PAGE-FAULTS", "perf::CONTEXT-SWITCHES"]


# ---- grouping, as a pure function ------------------------------------------------------------------------
def budget_check(counters: int, cost: dict[str, int], unknown: Sequence[str] = ()):
    """A stand-in for the chooser: events fit while their counter costs add up to at most `counters`."""

    def check(events: Sequence[str]) -> str | None:
        for e in events:
            if e in unknown:
                return f"{e}: not available on this machine (PAPI_ENOEVNT)"
        if sum(cost[e] for e in events) > counters:
            return f"{events[-1]}: conflicts with the events before it (PAPI_ECNFLCT)"
        return None

    return check


def test_split_groups_first_fit() -> None:
    cost = {"A": 2, "B": 2, "C": 1, "D": 3, "E": 1, "X": 1}
    groups, unavailable = papi.split_groups(["A", "B", "C", "D", "X", "E"], budget_check(4, cost, ["X"]))
    # A+B = 4 fill the first set; C (A+B+C = 5) opens a second, D joins it (C+D = 4); X fits nowhere, not
    # even alone; E fits neither set (5 > 4 in both), so it opens a third
    assert groups == [["A", "B"], ["C", "D"], ["E"]]
    assert unavailable == {"X": "not available on this machine (PAPI_ENOEVNT)"}
    assert papi.split_groups(["C", "E"], budget_check(4, cost)) == ([["C", "E"]], {})  # one call: all fit
    assert papi.split_groups(["D", "D"], budget_check(4, cost)) == ([["D"], ["D"]], {})
    assert papi.split_groups([], budget_check(4, cost)) == ([], {})


def test_papi_names_and_columns() -> None:
    assert papi.papi_column("PAPI_TOT_INS") == "papi_tot_ins"
    assert papi.papi_column("perf::TASK-CLOCK") == "papi_perf_task_clock"
    papi.check_papi_events(list(papi.DEFAULT_PAPI_EVENTS))
    with pytest.raises(
        BadInput, match=r"papi_events: event 'PAPI_TOT_INSS' is not a PAPI preset; did you mean"
    ):
        papi.check_papi_events(["PAPI_TOT_INSS"])
    with pytest.raises(BadInput, match="would both be column papi_tot_ins"):
        papi.check_papi_events(["PAPI_TOT_INS", "TOT_INS"])
    with pytest.raises(ValidationError, match="papi_events"):
        ProfileParams.model_validate({"command": "true", "collectors": ["papi"], "papi_events": ["PAPI_FOO"]})


def test_parse_papi_output() -> None:
    out = papi.parse_papi_output("count 1234 PAPI_TOT_INS\ncount 99 perf::TASK-CLOCK\nstatus 0\n")
    assert out.counts == {"PAPI_TOT_INS": 1234, "perf::TASK-CLOCK": 99} and out.error is None
    failed = papi.parse_papi_output("error PAPI_attach: Event does not exist\n")
    assert failed.counts == {} and failed.error is not None and failed.error.startswith("PAPI_attach: Event")


# ---- the machine's PAPI ----------------------------------------------------------------------------------
@needs_papi
def test_probe_the_machines_papi() -> None:
    probe = papi.probe_papi(os.environ)
    assert probe is not None and probe.version and probe.version[0].isdigit()
    assert "perf_event" in probe.active and probe.hw_counters is not None and probe.hw_counters >= 0
    assert set(probe.checked_presets) <= papi.PAPI_PRESETS
    if papi.has_cpu_pmu() is False:  # this VM: libpfm4 sees the CPU, the kernel gives no counters
        assert probe.checked_presets == []


@needs_papi
def test_grouping_with_the_real_chooser() -> None:
    assert CHOOSER is not None
    assert papi.chooser_check(CHOOSER, SOFTWARE) is None  # software events share an event set
    assert papi.chooser_check(CHOOSER, ["perf::NO-SUCH-EVENT"]) == "perf::NO-SUCH-EVENT: unknown to PAPI here"
    # the same event twice conflicts (PAPI_ECNFLCT): the one conflict a PMU-less kernel can show, so the
    # second copy must go to a second event set
    events = ("perf::TASK-CLOCK", "perf::PAGE-FAULTS", "PAPI_TOT_INS", "perf::TASK-CLOCK")
    groups, unavailable = papi.plan_groups(CHOOSER, events)
    assert groups[0][:2] == ["perf::TASK-CLOCK", "perf::PAGE-FAULTS"] and groups[-1] == ["perf::TASK-CLOCK"]
    assert len(groups) == 2
    if papi.has_cpu_pmu() is False:
        assert unavailable == {"PAPI_TOT_INS": "not available on this machine (PAPI_ENOEVNT)"}
    else:
        assert "PAPI_TOT_INS" in groups[0] or "PAPI_TOT_INS" in unavailable


@needs_papi
def test_unknown_native_events_are_rejected_by_this_machines_papi() -> None:
    papi.check_papi_events(SOFTWARE, chooser=CHOOSER)
    with pytest.raises(
        BadInput, match=r"papi_events: event 'perf::NO-SUCH-EVENT' is unknown to PAPI on this"
    ):
        papi.check_papi_events(["perf::TASK-CLOCK", "perf::NO-SUCH-EVENT"], chooser=CHOOSER)


@needs_papi
def test_papi_run_counts_a_command_or_says_why_before_running_it(kernel_dir: Path, tmp_path: Path) -> None:
    if not (kernel_dir / "papi_run").exists():
        pytest.skip("papi_run was not built: papi.h not found (Debian: apt-get install libpapi-dev)")
    assert "papi_run" in (kernel_dir / BUILD_INFO).read_text()
    out, marker = tmp_path / "papi.txt", tmp_path / "ran"
    argv = ["sh", "-c", f"touch {marker}; {kernel_dir / 'triad'} 200000 3"]
    wrapper = papi.papi_wrapper(str(kernel_dir / "papi_run"), out, SOFTWARE)
    try:
        result = run_command(argv, {"OMP_NUM_THREADS": "2"}, wrapper=wrapper)
    except WrapperFailed:
        failed = papi.parse_papi_output(out.read_text())
        assert failed.error is not None and not marker.exists()  # PAPI failed first: the command never ran
        if papi.has_cpu_pmu() is False:
            assert "Event does not exist" in failed.error and papi.NO_CPU_PMU in failed.error
        return
    counted = papi.parse_papi_output(out.read_text()).counts  # a machine where PAPI can attach
    assert (
        result.ok and marker.exists() and counted["perf::TASK-CLOCK"] > 0 and counted["perf::PAGE-FAULTS"] > 0
    )


# ---- the profile stage -----------------------------------------------------------------------------------
STUDY = """\
name: papistudy
retry: {app_error: 0}
stages:
  defaults:
    kind: profile
    params: {command: "{kernels}/triad 100000 2", collectors: [rusage, papi]}
  software:
    kind: profile
    params:
      command: "{kernels}/triad 100000 2"
      collectors: [papi]
      papi_events: [perf::TASK-CLOCK, perf::PAGE-FAULTS, PAPI_TOT_INS]
  required:
    kind: profile
    params: {command: "{kernels}/triad 100000 2", collectors: [papi], counters_required: true}
"""


def _store(tmp_path: Path, papi_on: bool):
    text = (Path(__file__).parents[1] / "site_configs" / "local.yaml").read_text()
    site = tmp_path / "site.yaml"
    site.write_text(text.replace("name: local", "name: papisite").replace("papi: false", f"papi: {papi_on}"))
    (tmp_path / "study.yaml").write_text(STUDY)
    return prepare_run(tmp_path / "study.yaml", load_site(site), tmp_path / "run")


def _row(store, stage: str) -> dict:
    outcome = execute_task(store.root, store.plan.of_stage(stage)[0].index)
    assert outcome.ok, outcome.message
    return store.read_stage(stage, provenance=False).to_pylist()[0]


@needs_papi
def test_profile_rows_say_why_papi_did_not_count(tmp_path: Path, kernel_dir: Path) -> None:
    store = _store(tmp_path, papi_on=True)
    row = _row(store, "defaults")
    assert {papi.papi_column(e) for e in papi.DEFAULT_PAPI_EVENTS} | set(DERIVED_COLUMNS) <= set(row)
    assert row["wall_time_s"] > 0 and row["exit_status"] == 0
    software = _row(store, "software")
    if papi.has_cpu_pmu() is False:  # presets are not there, and PAPI cannot attach to a process here
        assert row["papi_status"].startswith(
            "unavailable: no requested event can be counted here: PAPI_TOT_INS, PAPI_TOT_CYC"
        )
        assert "papi_avail --check finds no countable preset" in row["papi_status"]
        assert (
            all(row[papi.papi_column(e)] is None for e in papi.DEFAULT_PAPI_EVENTS) and row["papi_runs"] == 0
        )
        status = software["papi_status"]
        assert status.startswith(
            "unavailable: perf::TASK-CLOCK, perf::PAGE-FAULTS: PAPI_set_opt(PAPI_INHERIT)"
        )
        assert "PAPI_TOT_INS: not available on this machine" in status and software["papi_runs"] == 0
        assert all(row[c] is None for c in DERIVED_COLUMNS)
    else:
        assert software["papi_runs"] >= 1 and software["papi_perf_task_clock"] > 0
    outcome = execute_task(store.root, store.plan.of_stage("required")[0].index)
    if papi.has_cpu_pmu() is False:
        assert (outcome.ok, outcome.failure_kind) == (False, "unsupported_counter")


def test_a_site_without_papi_disables_it(tmp_path: Path, kernel_dir: Path) -> None:
    store = _store(tmp_path, papi_on=False)
    row = _row(store, "software")
    assert (
        row["papi_status"] == "disabled: site 'papisite' sets counters.papi: false" and row["papi_runs"] == 0
    )
    assert row["papi_perf_task_clock"] is None and row["wall_time_s"] > 0


# ---- derived features ------------------------------------------------------------------------------------
def test_ratio_never_gives_inf_or_nan() -> None:
    assert ratio(3, 4) == 0.75
    for num, den in [(1, 0), (None, 4), (4, None), (math.nan, 2), (2, math.inf), (True, 2), ("x", 2)]:
        assert ratio(num, den) is None


def test_derived_features_hand_checked() -> None:
    row = {
        "papi_tot_ins": 1000, "papi_tot_cyc": 500, "papi_br_ins": 150, "papi_ld_ins": 300, "papi_sr_ins": 100,
        "papi_sp_ops": 0, "papi_dp_ops": 250, "papi_int_ins": 400, "papi_l1_dcm": 40, "papi_l1_dca": 400,
        "papi_l3_tcm": 5, "papi_l3_tca": 0,
        "perf_cycles": 800, "perf_instructions": 1200, "perf_cache_misses": 30, "perf_cache_references": 120,
    }  # fmt: skip
    assert derive(row) == {
        "ipc": 2.0,  # PAPI first: 1000 / 500 (perf's 1200 / 800 is not mixed in)
        "branch_intensity": 0.15,
        "load_intensity": 0.3,
        "store_intensity": 0.1,
        "sp_fp_intensity": 0.0,
        "dp_fp_intensity": 0.25,
        "int_intensity": 0.4,
        "l1_dcache_miss_ratio": 0.1,
        "llc_miss_ratio": 0.25,  # L3 accesses are 0: PAPI gives none, so perf's 30 / 120
    }
    perf_only = {"perf_cycles": 800, "perf_instructions": 1200, "perf_branches": 240, "papi_tot_ins": None}
    got = derive(perf_only)
    assert (got["ipc"], got["branch_intensity"]) == (1.5, 0.2)
    assert [c for c in DERIVED_COLUMNS if got[c] is not None] == ["ipc", "branch_intensity"]
    assert all(v is None for v in derive({}).values())
