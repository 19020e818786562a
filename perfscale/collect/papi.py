"""PAPI as a collector: preset and native event counts of a command, joined from one run per event group.

How a command is counted: perfscale's small C wrapper kernels/papi_run.c (built with the kernels where
papi.h is found) forks the command, holds it before exec while a PAPI event set is attached to it
(PAPI_attach) with inheritance on (PAPI_INHERIT_ALL: the threads and children it starts are counted too),
then lets it run and prints the counts. python-papi was not used: it counts the calling Python process only,
not an external command, and it bundles its own PAPI build rather than the machine's.

Events that do not fit one event set (too few counters, conflicting constraints, different components) are
split into groups with the machine's own `papi_event_chooser` (first fit, in the order given), and the
command runs once per group after the measured run; the groups' counts are joined into one row. An event
that cannot be counted even on its own is left null and named in `papi_status`.

Columns: `papi_<event>` (the name in snake_case without a leading `PAPI_`: PAPI_TOT_INS -> papi_tot_ins,
perf::TASK-CLOCK -> papi_perf_task_clock), a count; `papi_status`: ok | partial: ... | unavailable: ... |
disabled: ...; `papi_runs`: how many extra runs of the command the counts took.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from perfscale.collect.builtin_kernels import helper_path
from perfscale.collect.perf import snake
from perfscale.errors import BadInput

log = logging.getLogger(__name__)

#: every PAPI 7 preset (papi_avail lists them all, available here or not)
PAPI_PRESETS = frozenset(
    """
    PAPI_L1_DCM PAPI_L1_ICM PAPI_L2_DCM PAPI_L2_ICM PAPI_L3_DCM PAPI_L3_ICM PAPI_L1_TCM PAPI_L2_TCM
    PAPI_L3_TCM PAPI_CA_SNP PAPI_CA_SHR PAPI_CA_CLN PAPI_CA_INV PAPI_CA_ITV PAPI_L3_LDM PAPI_L3_STM
    PAPI_BRU_IDL
    PAPI_FXU_IDL PAPI_FPU_IDL PAPI_LSU_IDL PAPI_TLB_DM PAPI_TLB_IM PAPI_TLB_TL PAPI_L1_LDM PAPI_L1_STM
    PAPI_L2_LDM PAPI_L2_STM PAPI_BTAC_M PAPI_PRF_DM PAPI_L3_DCH PAPI_TLB_SD PAPI_CSR_FAL PAPI_CSR_SUC
    PAPI_CSR_TOT PAPI_MEM_SCY PAPI_MEM_RCY PAPI_MEM_WCY PAPI_STL_ICY PAPI_FUL_ICY PAPI_STL_CCY PAPI_FUL_CCY
    PAPI_HW_INT PAPI_BR_UCN PAPI_BR_CN PAPI_BR_TKN PAPI_BR_NTK PAPI_BR_MSP PAPI_BR_PRC PAPI_FMA_INS
    PAPI_TOT_IIS PAPI_TOT_INS PAPI_INT_INS PAPI_FP_INS PAPI_LD_INS PAPI_SR_INS PAPI_BR_INS PAPI_VEC_INS
    PAPI_RES_STL PAPI_FP_STAL PAPI_TOT_CYC PAPI_LST_INS PAPI_SYC_INS PAPI_L1_DCH PAPI_L2_DCH PAPI_L1_DCA
    PAPI_L2_DCA PAPI_L3_DCA PAPI_L1_DCR PAPI_L2_DCR PAPI_L3_DCR PAPI_L1_DCW PAPI_L2_DCW PAPI_L3_DCW
    PAPI_L1_ICH PAPI_L2_ICH PAPI_L3_ICH PAPI_L1_ICA PAPI_L2_ICA PAPI_L3_ICA PAPI_L1_ICR PAPI_L2_ICR
    PAPI_L3_ICR PAPI_L1_ICW PAPI_L2_ICW PAPI_L3_ICW PAPI_L1_TCH PAPI_L2_TCH PAPI_L3_TCH PAPI_L1_TCA
    PAPI_L2_TCA PAPI_L3_TCA PAPI_L1_TCR PAPI_L2_TCR PAPI_L3_TCR PAPI_L1_TCW PAPI_L2_TCW PAPI_L3_TCW
    PAPI_FML_INS PAPI_FAD_INS PAPI_FDV_INS PAPI_FSQ_INS PAPI_FNV_INS PAPI_FP_OPS PAPI_SP_OPS PAPI_DP_OPS
    PAPI_VEC_SP PAPI_VEC_DP PAPI_REF_CYC
    """.split()  # noqa: SIM905  (108 names: one string reads better than 108 list items)
)

#: the inputs of the derived features (derived.py): instruction mix, L1 and last-level cache, cycles
DEFAULT_PAPI_EVENTS = (
    "PAPI_TOT_INS",
    "PAPI_TOT_CYC",
    "PAPI_BR_INS",
    "PAPI_LD_INS",
    "PAPI_SR_INS",
    "PAPI_SP_OPS",
    "PAPI_DP_OPS",
    "PAPI_INT_INS",
    "PAPI_L1_DCM",
    "PAPI_L1_DCA",
    "PAPI_L3_TCM",
    "PAPI_L3_TCA",
)

#: PAPI error codes a chooser or papi_run may report, in words
PAPI_ERRORS = {
    -4: "not supported by its component (PAPI_ECMP)",
    -7: "not available on this machine (PAPI_ENOEVNT)",
    -8: "conflicts with the events before it (PAPI_ECNFLCT)",
    -13: "no counter is free for it (PAPI_ENOCNTR)",
    -15: "not permitted (PAPI_EPERM)",
    -17: "its component is disabled (PAPI_ENOCMP)",
}


def papi_column(event: str) -> str:
    """`papi_<event>`: PAPI_TOT_INS -> papi_tot_ins, perf::TASK-CLOCK -> papi_perf_task_clock."""
    name = event[5:] if event.upper().startswith("PAPI_") else event
    return "papi_" + snake(name)


# ---- the machine's PAPI tools ----------------------------------------------------------------------------
def find_tool(name: str, env: Mapping[str, str]) -> str | None:
    return shutil.which(name, path=env.get("PATH", os.defpath))


def papi_env(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The variables that change what PAPI and libpfm4 see (LIBPFM_DISABLED_PMUS, PAPI_*...): the PAPI
    tools run with exactly these, and cached answers are kept per set of them."""
    return tuple(sorted((k, v) for k, v in env.items() if k.startswith(("LIBPFM", "PFM_", "PAPI_"))))


def _tool_env(papi_vars: tuple[tuple[str, str], ...]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LIBPFM", "PFM_", "PAPI_"))}
    return base | dict(papi_vars)


@dataclass(frozen=True)
class PapiProbe:
    """What the machine's PAPI says about itself (papi_avail, papi_component_avail)."""

    version: str | None
    hw_counters: int | None  # "Number Hardware Counters": what libpfm4 believes the CPU has
    active: dict[str, str]  # active component -> its description
    disabled: dict[str, str]  # compiled-in component that is off -> why
    checked_presets: list[str]  # presets that pass `papi_avail --check` (really addable here)
    pmus: dict[str, list[str]] = field(default_factory=dict)  # active component -> libpfm4 PMUs it uses

    @property
    def perf_event_off(self) -> str | None:
        """Why PAPI's perf_event component (every CPU event, software ones included) is off here, or None.

        libpfm4 turns it off when it finds no default PMU for this CPU ("Error libpfm4 no default PMU
        found", seen on some KVM guests): then PAPI knows no CPU event at all, not even perf::TASK-CLOCK."""
        if "perf_event" in self.active:
            return None
        return self.disabled.get("perf_event", "not compiled into this PAPI")


def _tool_output(argv: list[str], env: Mapping[str, str] | None = None) -> str:
    log.debug("running %s", " ".join(argv))
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("%s failed: %s", argv[0], exc)
        return ""
    return out.stdout


def parse_components(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """papi_component_avail's output: ({active component: description}, {disabled component: why})."""
    active: dict[str, str] = {}
    disabled: dict[str, str] = {}
    section = last = None
    for line in text.splitlines():
        if line.startswith(("Compiled-in components", "Active components")):
            section = line.split()[0]
            continue
        match = re.match(r"Name:\s+(\S+)\s*(.*)", line)
        if match and section is not None:
            last = match.group(1)
            if section == "Active":
                active[last] = match.group(2).strip()
        elif "-> Disabled:" in line and section == "Compiled-in" and last is not None:
            disabled[last] = line.split("-> Disabled:", 1)[1].strip()
    return active, disabled


def parse_pmus(text: str) -> dict[str, list[str]]:
    """papi_component_avail's `PMUs supported:` lines: {active component: [libpfm4 PMU names]}."""
    pmus: dict[str, list[str]] = {}
    last = None
    for line in text.split("Active components:", 1)[-1].splitlines():
        match = re.match(r"Name:\s+(\S+)", line)
        if match:
            last = match.group(1)
        elif "PMUs supported:" in line and last is not None:
            pmus[last] = [p.strip() for p in line.split("PMUs supported:", 1)[1].split(",") if p.strip()]
    return pmus


def probe_papi(env: Mapping[str, str]) -> PapiProbe | None:
    """The machine's PAPI in brief (as a command run with `env` sees it), or None where papi-tools is not
    installed."""
    avail, components = find_tool("papi_avail", env), find_tool("papi_component_avail", env)
    if avail is None or components is None:
        return None
    return _probe(avail, components, papi_env(env))


@lru_cache(maxsize=16)
def _probe(avail: str, components: str, papi_vars: tuple[tuple[str, str], ...]) -> PapiProbe:
    tool_env = _tool_env(papi_vars)
    header = _tool_output([avail], tool_env)
    version = re.search(r"^PAPI version\s*:\s*(\S+)", header, re.MULTILINE)
    counters = re.search(r"^Number Hardware Counters\s*:\s*(\d+)", header, re.MULTILINE)
    checked = re.findall(r"^(PAPI_[A-Z0-9_]+)\s", _tool_output([avail, "--check"], tool_env), re.MULTILINE)
    component_text = _tool_output([components], tool_env)
    active, disabled = parse_components(component_text)
    return PapiProbe(
        version=version.group(1) if version else None,
        hw_counters=int(counters.group(1)) if counters else None,
        active=active,
        disabled=disabled,
        checked_presets=checked,
        pmus=parse_pmus(component_text),
    )


_CHOOSER_ERROR = re.compile(r"Event (\S+) can't be (found|counted with others\s*(-?\d+))")


def chooser_check(
    chooser: str, events: Sequence[str], papi_vars: tuple[tuple[str, str], ...] = ()
) -> str | None:
    """None when `papi_event_chooser` can put all the events in one event set; else why not, naming the
    first event that does not fit ('EVENT: reason'). `papi_vars`: see papi_env."""
    argv = [chooser, "PRESET", *events]
    log.debug("running %s", " ".join(argv))
    try:
        out = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            env=_tool_env(papi_vars),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{events[0]}: cannot run {chooser}: {exc}"
    if out.returncode == 0:
        return None
    match = _CHOOSER_ERROR.search(out.stderr + out.stdout)
    if match is None:
        lines = [ln for ln in (out.stderr + out.stdout).splitlines() if ln.strip()]
        return (
            f"{events[0]}: papi_event_chooser failed (status {out.returncode}): {lines[-1] if lines else ''}"
        )
    event, kind, code = match.group(1), match.group(2), match.group(3)
    if kind == "found":
        return f"{event}: unknown to PAPI here"
    return f"{event}: {PAPI_ERRORS.get(int(code), f'PAPI error {code}')}"


def split_groups(
    events: Sequence[str], check: Callable[[Sequence[str]], str | None]
) -> tuple[list[list[str]], dict[str, str]]:
    """Split events into event sets that each fit, first fit in the order given.

    `check(events)` is None when the events fit together, else why not. An event that fits no open group
    starts a new one if it fits on its own, else it is unavailable: returns (groups, {event: why})."""
    if events and check(events) is None:  # the usual case, in one call
        return [list(events)], {}
    groups: list[list[str]] = []
    unavailable: dict[str, str] = {}
    for event in events:
        home = next((g for g in groups if check([*g, event]) is None), None)
        if home is not None:
            home.append(event)
            continue
        alone = check([event])
        if alone is None:
            groups.append([event])
        else:
            unavailable[event] = alone.split(": ", 1)[-1]
    return groups, unavailable


@lru_cache(maxsize=64)
def plan_groups(
    chooser: str, events: tuple[str, ...], papi_vars: tuple[tuple[str, str], ...] = ()
) -> tuple[list[list[str]], dict[str, str]]:
    """split_groups with the machine's papi_event_chooser, once per process, event list and PAPI env."""
    return split_groups(events, lambda evs: chooser_check(chooser, evs, papi_vars))


# ---- names -----------------------------------------------------------------------------------------------
def _syntax_problem(name: str) -> str | None:
    if not name or any(c.isspace() for c in name):
        return "is empty or holds whitespace"
    if name.startswith("-"):
        return "may not start with '-'"
    if name.upper().startswith("PAPI_") and name not in PAPI_PRESETS:
        close = difflib.get_close_matches(name.upper(), PAPI_PRESETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else " (see papi_avail)"
        return "is not a PAPI preset" + hint
    return None


#: checks one native event name: None when it is known, else what is wrong ("is unknown to ...")
NativeCheck = Callable[[str], str | None]


@lru_cache(maxsize=256)
def _unknown_here(chooser: str, name: str, papi_vars: tuple[tuple[str, str], ...]) -> bool:
    verdict = chooser_check(chooser, [name], papi_vars)
    return verdict is not None and verdict.endswith("unknown to PAPI here")


def host_native_check(env: Mapping[str, str]) -> NativeCheck | None:
    """Native names checked against this machine's PAPI, or None where this machine cannot tell: no
    papi-tools, or PAPI's perf_event component is off here (then PAPI knows no CPU event at all, and a name
    that the compute nodes know would be refused for nothing)."""
    chooser = find_tool("papi_event_chooser", env)
    probe = probe_papi(env)
    if chooser is None or probe is None or probe.perf_event_off is not None:
        return None
    papi_vars = papi_env(env)

    def check(name: str) -> str | None:
        if _unknown_here(chooser, name, papi_vars):
            return "is unknown to PAPI on this machine (see papi_native_avail)"
        return None

    return check


def check_papi_events(
    events: Sequence[str], field: str = "papi_events", native: NativeCheck | None = None
) -> None:
    """Reject bad names, naming `field`: presets must be PAPI presets; with `native` (the site's list or this
    machine's PAPI, see stages/profile.py) native names must pass it; no two names may make one column.
    A known event that the machine running the task cannot count passes: its row says so."""
    if not events:
        raise BadInput(f"{field}: give at least one event (or leave papi out of collectors)")
    seen: dict[str, str] = {}
    for name in events:
        problem = _syntax_problem(name)
        if problem is None and native is not None and name not in PAPI_PRESETS:
            problem = native(name)
        if problem is not None:
            raise BadInput(f"{field}: event {name!r} {problem}")
        column = papi_column(name)
        if column in seen:
            raise BadInput(f"{field}: events {seen[column]!r} and {name!r} would both be column {column}")
        seen[column] = name


# ---- running ---------------------------------------------------------------------------------------------
@dataclass
class PapiPlan:
    """How to count a list of events here: the wrapper, the chooser's groups, what cannot be counted."""

    papi_run: str | None
    groups: list[list[str]] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    problem: str | None = None  # why nothing can be counted (papi_status: unavailable: ...)


#: why PAPI fails on machines whose kernel exposes no CPU PMU (most VMs without a virtual PMU): PAPI's
#: perf_event component checks permissions with a hardware event, so even attaching or inheritance fails
NO_CPU_PMU = "the kernel exposes no CPU PMU here, as in many VMs: no cpu* in /sys/bus/event_source/devices"


def has_cpu_pmu() -> bool | None:
    """Whether the kernel exposes a CPU PMU (x86 cpu, cpu_core/cpu_atom; arm*; POWER); None without sysfs."""
    root = Path("/sys/bus/event_source/devices")
    if not root.is_dir():
        return None
    return any(p.name.startswith(("cpu", "armv", "arm_", "power")) for p in root.iterdir())


def plan_papi(env: Mapping[str, str], events: Sequence[str]) -> PapiPlan:
    """Find papi_run and papi_event_chooser and group the events, or say why PAPI cannot count here."""
    chooser = find_tool("papi_event_chooser", env)
    probe = probe_papi(env)
    if chooser is None or probe is None:
        return PapiPlan(None, problem=f"{NO_TOOLS} not found on PATH (Debian: apt-get install papi-tools)")
    if probe.perf_event_off is not None:
        return PapiPlan(None, problem=f"{PERF_EVENT_OFF} ({probe.perf_event_off})")
    papi_run = helper_path("papi_run")
    if papi_run is None:
        return PapiPlan(
            None, problem="papi_run was not built: papi.h not found (Debian: apt-get install libpapi-dev)"
        )
    cached_groups, cached_unavailable = plan_groups(chooser, tuple(events), papi_env(env))
    groups, unavailable = [list(g) for g in cached_groups], dict(cached_unavailable)  # the cache stays intact
    if not groups:
        why = " | ".join(by_reason(unavailable))
        return PapiPlan(
            str(papi_run), [], unavailable, f"no requested event can be counted here: {why}{_note(probe)}"
        )
    return PapiPlan(str(papi_run), groups, unavailable)


#: papi_status reasons, in the words rows carry (`unavailable: <reason> ...`)
NO_TOOLS = "papi_event_chooser or papi_component_avail"
PERF_EVENT_OFF = "PAPI's perf_event component is disabled on this machine, so no CPU event is known"


def _note(probe: PapiProbe) -> str:
    """What papi_avail adds when nothing can be counted: whether any preset passes its check here."""
    if probe.checked_presets:
        return ""
    pmu = f"; {NO_CPU_PMU}" if has_cpu_pmu() is False else ""
    return f" (papi_avail --check finds no countable preset on this machine{pmu})"


def by_reason(failures: Mapping[str, str]) -> list[str]:
    """{event: why} as 'ev1, ev2: why' per distinct reason (a reason shared by many events is said once)."""
    reasons: dict[str, list[str]] = {}
    for event, why in failures.items():
        reasons.setdefault(why, []).append(event)
    return [f"{', '.join(events)}: {why}" for why, events in reasons.items()]


def papi_wrapper(papi_run: str, out_file: Path, group: Sequence[str]) -> list[str]:
    """The words put in front of the command: `papi_run OUTPUT EVENT... --`."""
    return [papi_run, str(out_file), *group, "--"]


@dataclass(frozen=True)
class PapiOutput:
    counts: dict[str, int]
    error: str | None  # papi_run's `error ...` line: PAPI could not count (the command did not run)


def parse_papi_output(text: str) -> PapiOutput:
    """papi_run's output: `count VALUE EVENT` lines, a `status` line, or one `error WHAT: WHY` line."""
    counts: dict[str, int] = {}
    error = None
    for line in text.splitlines():
        word, _, rest = line.partition(" ")
        if word == "count":
            value, _, event = rest.partition(" ")
            counts[event.strip()] = int(value)
        elif word == "error":
            error = rest.strip() + (f" ({NO_CPU_PMU})" if has_cpu_pmu() is False else "")
    return PapiOutput(counts, error)


def papi_row(
    events: Sequence[str], counts: Mapping[str, int | None], status: str, runs: int
) -> dict[str, Any]:
    """The PAPI columns of one row: papi_status, papi_runs and papi_<event> (null where not counted)."""
    row: dict[str, Any] = {"papi_status": status, "papi_runs": runs}
    for event in events:
        row[papi_column(event)] = counts.get(event)
    return row
