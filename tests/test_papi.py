"""The PAPI collector for real: the machine's PAPI probed, events grouped by the real papi_event_chooser,
papi_run run on a real command, and the profile stage giving PAPI columns (or saying why not) without a
crash. Plus the grouping algorithm and the derived features as pure functions on hand-checkable values."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

import perfscale.stages.profile  # noqa: F401  (registers the kind)
from perfscale.collect import papi
from perfscale.collect.builtin_kernels import BUILD_INFO
from perfscale.collect.command import WrapperFailed, run_command
from perfscale.collect.derived import DERIVED_COLUMNS, derive, ratio
from perfscale.errors import BadInput
from perfscale.execute import execute_task
from perfscale.runner import prepare_run
from perfscale.spec import load_site
from perfscale.spec.site import Site
from perfscale.stages.profile import ProfileParams

CHOOSER = shutil.which("papi_event_chooser")
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


# ---- the machine's PAPI, in every state this machine can show ------------------------------------------
# A machine shows one of three states, and a test must pass on all of them (CI machines differ):
#   counting:    libpfm4 finds the CPU's PMU and the kernel exposes it: events count;
#   no CPU PMU:  libpfm4 finds the CPU (perf_event active) but the kernel exposes no PMU (many VMs): events
#                are known, but PAPI cannot attach to a process, so nothing counts;
#   off:         libpfm4 finds no default PMU ("Error libpfm4 no default PMU found", other VMs): PAPI's
#                perf_event component is disabled and no CPU event is known at all, not even perf::TASK-CLOCK.
# Where perf_event is active, the "off" state is also made here for real, by turning libpfm4's CPU PMUs off
# (LIBPFM_DISABLED_PMUS): so "off" is exercised on every machine, and the machine's own state besides.
STATE_DOC = (
    "papi-tools is set up by scripts/setup.sh; run it (Debian: apt-get install papi-tools libpapi-dev)"
)
PMU_OFF = "Error libpfm4 no default PMU found"


def _state(probe: papi.PapiProbe) -> str:
    if probe.perf_event_off is not None:
        return "off"
    return "no CPU PMU" if not probe.checked_presets and papi.has_cpu_pmu() is False else "counting"


def _states() -> list[tuple[str, dict[str, str]]]:
    """(state, env) for the machine as it is and, where perf_event is on, with libpfm4's CPU PMUs off."""
    probe = papi.probe_papi(os.environ)
    assert probe is not None and CHOOSER is not None, STATE_DOC  # never a silent skip
    states = [(_state(probe), {})]
    cpu_pmus = [p for p in probe.pmus.get("perf_event", []) if p not in ("perf", "perf_raw")]
    if probe.perf_event_off is None and cpu_pmus:
        states.append(("off", {"LIBPFM_DISABLED_PMUS": ",".join(cpu_pmus)}))
    return states


STATES = _states() if CHOOSER is not None else [("no papi-tools", {})]


@pytest.fixture(params=STATES, ids=[f"{s}{'-forced' if env else ''}" for s, env in STATES])
def state(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """One state, with its environment set for this test (the PAPI tools and papi_run read it)."""
    name, env = request.param
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    probe = papi.probe_papi(os.environ)
    assert probe is not None, STATE_DOC
    assert _state(probe) == name, f"{name}: PAPI here says {probe}"
    return name


COMPONENTS_OFF = """\
Compiled-in components:
Name:   perf_event              Linux perf_event CPU counters
   \\-> Disabled: Error libpfm4 no default PMU found
Name:   perf_event_uncore       Linux perf_event CPU uncore and northbridge
Name:   sysdetect               System info detection component

Active components:
Name:   perf_event_uncore       Linux perf_event CPU uncore and northbridge
                                Native: 1, Preset: 0, Counters: 3
                                PMUs supported: amd64_rapl
"""


def test_component_output_of_a_machine_where_libpfm4_finds_no_pmu() -> None:
    """papi_component_avail as printed by a 2-core AMD EPYC KVM guest (the CI machine of issue 10)."""
    active, disabled = papi.parse_components(COMPONENTS_OFF)
    assert list(active) == ["perf_event_uncore"] and disabled == {"perf_event": PMU_OFF}
    assert papi.parse_pmus(COMPONENTS_OFF) == {"perf_event_uncore": ["amd64_rapl"]}
    probe = papi.PapiProbe("7.0.0.0", 0, active, disabled, [])
    assert probe.perf_event_off == PMU_OFF


def test_probe_the_machines_papi(state: str) -> None:
    probe = papi.probe_papi(os.environ)
    assert probe is not None and probe.version and probe.version[0].isdigit()
    assert set(probe.checked_presets) <= papi.PAPI_PRESETS
    if state == "off":
        assert "perf_event" not in probe.active and probe.perf_event_off == PMU_OFF
        assert probe.checked_presets == []
    else:
        assert "perf_event" in probe.active and probe.hw_counters is not None and probe.hw_counters >= 0
        assert probe.perf_event_off is None and probe.pmus["perf_event"]
    if state == "no CPU PMU":
        assert probe.checked_presets == []


def test_grouping_with_the_real_chooser(state: str) -> None:
    assert CHOOSER is not None
    env = papi.papi_env(os.environ)
    events = ("perf::TASK-CLOCK", "perf::PAGE-FAULTS", "PAPI_TOT_INS", "perf::TASK-CLOCK")
    groups, unavailable = papi.plan_groups(CHOOSER, events, env)
    unknown = "perf::NO-SUCH-EVENT: unknown to PAPI here"
    assert papi.chooser_check(CHOOSER, ["perf::NO-SUCH-EVENT"], env) == unknown
    if state == "off":  # no CPU event is known: every one is unavailable, and says so
        assert papi.chooser_check(CHOOSER, SOFTWARE, env) == "perf::TASK-CLOCK: unknown to PAPI here"
        assert groups == [] and set(unavailable) == set(events)
        assert unavailable["perf::TASK-CLOCK"] == "unknown to PAPI here"
        return
    assert papi.chooser_check(CHOOSER, SOFTWARE, env) is None  # software events share an event set
    # the same event twice conflicts (PAPI_ECNFLCT): the one conflict a PMU-less kernel can show, so the
    # second copy must go to a second event set
    assert groups[0][:2] == ["perf::TASK-CLOCK", "perf::PAGE-FAULTS"] and groups[-1] == ["perf::TASK-CLOCK"]
    assert len(groups) == 2
    if state == "no CPU PMU":
        assert unavailable == {"PAPI_TOT_INS": "not available on this machine (PAPI_ENOEVNT)"}
    else:
        assert "PAPI_TOT_INS" in groups[0] or "PAPI_TOT_INS" in unavailable


def _site(tmp_path: Path, **changes: Any) -> Site:
    """The local site with PAPI on, renamed, and `changes` replacing top-level fields."""
    fields = yaml.safe_load((Path(__file__).parents[1] / "site_configs" / "local.yaml").read_text())
    fields |= {"name": "papisite", "counters": {"perf": True, "papi": True}} | changes
    path = tmp_path / f"site-{len(list(tmp_path.glob('site-*')))}.yaml"
    path.write_text(yaml.safe_dump(fields))
    return load_site(path)


def _check(events: list[str], site: Site | None) -> None:
    params = {"command": "true", "collectors": ["papi"], "papi_events": events}
    try:
        ProfileParams.model_validate(params, context={"site": site})
    except ValidationError as exc:
        raise BadInput(str(exc)) from None


def test_native_events_are_checked_against_the_site_not_the_planning_host(state: str, tmp_path: Path) -> None:
    """A login node that plans may have no PMU where the compute nodes do: the site decides."""
    unknown = ["perf::TASK-CLOCK", "perf::NO-SUCH-EVENT"]
    # a site that lists what its nodes know: checked against the list, whatever this machine's PAPI says
    listed = _site(tmp_path, counters={"papi": True, "papi_native_events": ["perf::*", "skx::*"]})
    _check(["perf::TASK-CLOCK", "skx::UNHALTED_CORE_CYCLES", "PAPI_TOT_INS"], listed)
    listed_only = _site(tmp_path, counters={"papi": True, "papi_native_events": ["perf::TASK-CLOCK"]})
    with pytest.raises(BadInput, match=r"'perf::PAGE-FAULTS' is not among the events site 'papisite' lists"):
        _check(["perf::TASK-CLOCK", "perf::PAGE-FAULTS"], listed_only)
    # a cluster site that lists nothing: names are checked for form only; the rows will say why
    cluster = _site(tmp_path, scheduler="slurm", launcher="srun")
    _check(unknown, cluster)
    with pytest.raises(BadInput, match="is not a PAPI preset"):
        _check(["PAPI_TOT_INSS"], cluster)
    # no site (a task re-validating its params where it runs): form only
    _check(unknown, None)
    # a site without a scheduler runs its tasks here: this machine's PAPI decides, where it can tell
    here = _site(tmp_path)
    _check(SOFTWARE, here) if state != "off" else _check(unknown, here)
    if state != "off":
        with pytest.raises(BadInput, match=r"'perf::NO-SUCH-EVENT' is unknown to PAPI on this machine"):
            _check(unknown, here)


def test_papi_run_counts_a_command_or_says_why_before_running_it(
    state: str, kernel_dir: Path, tmp_path: Path
) -> None:
    assert (kernel_dir / "papi_run").exists(), "papi_run was not built: " + STATE_DOC
    assert "papi_run" in (kernel_dir / BUILD_INFO).read_text()
    out, marker = tmp_path / "papi.txt", tmp_path / "ran"
    argv = ["sh", "-c", f"touch {marker}; {kernel_dir / 'triad'} 200000 3"]
    wrapper = papi.papi_wrapper(str(kernel_dir / "papi_run"), out, SOFTWARE)
    try:
        result = run_command(argv, {"OMP_NUM_THREADS": "2"}, wrapper=wrapper)
    except WrapperFailed:
        failed = papi.parse_papi_output(out.read_text())
        assert state != "counting" and failed.error is not None
        assert not marker.exists()  # PAPI failed first: the command never ran
        assert "Event does not exist" in failed.error
        if papi.has_cpu_pmu() is False:
            assert papi.NO_CPU_PMU in failed.error
        return
    assert state == "counting"
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


def test_profile_rows_say_why_papi_did_not_count(state: str, tmp_path: Path, kernel_dir: Path) -> None:
    store = _store(tmp_path, papi_on=True)  # plans on every machine: the site runs here, and PAPI here
    row = _row(store, "defaults")  # either knows perf::TASK-CLOCK or cannot tell
    assert {papi.papi_column(e) for e in papi.DEFAULT_PAPI_EVENTS} | set(DERIVED_COLUMNS) <= set(row)
    assert row["wall_time_s"] > 0 and row["exit_status"] == 0
    software = _row(store, "software")
    if state == "counting":
        assert software["papi_runs"] >= 1 and software["papi_perf_task_clock"] > 0
        return
    for r in (row, software):
        assert r["papi_runs"] == 0 and all(r[c] is None for c in DERIVED_COLUMNS)
        assert all(r[papi.papi_column(e)] is None for e in papi.DEFAULT_PAPI_EVENTS if e in r)
    if state == "off":
        why = f"unavailable: {papi.PERF_EVENT_OFF} ({PMU_OFF})"
        assert row["papi_status"] == why and software["papi_status"] == why
    else:  # presets are not there, and PAPI cannot attach to a process here
        assert row["papi_status"].startswith(
            "unavailable: no requested event can be counted here: PAPI_TOT_INS, PAPI_TOT_CYC"
        )
        assert "papi_avail --check finds no countable preset" in row["papi_status"]
        status = software["papi_status"]
        assert status.startswith(
            "unavailable: perf::TASK-CLOCK, perf::PAGE-FAULTS: PAPI_set_opt(PAPI_INHERIT)"
        )
        assert "PAPI_TOT_INS: not available on this machine" in status
    outcome = execute_task(store.root, store.plan.of_stage("required")[0].index)
    assert (outcome.ok, outcome.failure_kind) == (False, "unsupported_counter")
    assert "counters_required: papi: unavailable" in outcome.message


def test_a_machine_without_papi_tools_says_so(tmp_path: Path) -> None:
    """No papi-tools on the task's PATH: nothing is checked against this machine and the row says why."""
    env = {"PATH": str(tmp_path)}
    assert papi.probe_papi(env) is None and papi.host_native_check(env) is None
    plan = papi.plan_papi(env, SOFTWARE)
    assert plan.papi_run is None and plan.problem is not None
    assert plan.problem.startswith(papi.NO_TOOLS) and "apt-get install papi-tools" in plan.problem


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
