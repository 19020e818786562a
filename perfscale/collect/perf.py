"""`perf stat` as a collector: counts of software and hardware events over one run of a command.

The measured command is wrapped as `perf stat -x ';' --no-big-num -o FILE -e EV1 -e EV2 ... -- cmd...`
(through run_command's `wrapper`, so rusage stays the command's own). perf writes its table to FILE, never
to stderr, so the command's stderr stays clean. The separator is `;`, not `,`: perf does not quote its
fields (perf-stat(1), CSV FORMAT), and PMU events such as `cpu/event=0x3c,umask=0x0/` hold commas.

Each line of that table is `value;unit;event;run time (ns);running %;metric value;metric unit`, where value
may be `<not supported>` (the event does not exist here, e.g. hardware events in a VM without a virtual PMU)
or `<not counted>` (it never got onto a counter), and a line with every field before the metric empty
carries one more metric of the event above it. perf scales a multiplexed count to the whole run
(count x enabled / running); the running % says how long it was really counted.

Column names (docs/profile-schema.md lists them all), with `<e>` the event name in snake_case (`cycles:u` ->
`cycles_u`, `msr/tsc/` -> `msr_tsc`, `L1-dcache-load-misses` -> `l1_dcache_load_misses`):
`perf_<e>` (plus `_ms` / `_ns` for the time events in TIME_UNITS), the value as perf printed it (scaled);
`perf_<e>_raw`, the unscaled count (value x running % / 100); `perf_<e>_status`: counted | multiplexed |
not_supported | not_counted; `perf_<e>_running_pct`; `perf_<e>_metric` and `perf_<e>_metric_unit`, perf's
own derived figure (`CPUs utilized`, `insn per cycle`); `perf_<e>_unit` only where perf prints a unit that
the column name does not already say. One `perf_status` per row: ok, or why perf did not run (disabled by
the site, unavailable here, or failed).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from perfscale.errors import BadInput

SEPARATOR = ";"

#: A useful default: the four software events every Linux has, and the hardware events behind IPC, branch
#: and last-level-cache figures (6 hardware events: fits the counters of most x86 cores without multiplexing).
DEFAULT_PERF_EVENTS = (
    "task-clock",
    "page-faults",
    "context-switches",
    "cpu-migrations",
    "cycles",
    "instructions",
    "branches",
    "branch-misses",
    "cache-references",
    "cache-misses",
)

#: events whose value is a time, by the unit perf prints it in: the unit becomes part of the column name
TIME_UNITS = {
    "task-clock": "ms",
    "cpu-clock": "ms",
    "duration_time": "ns",
    "user_time": "ns",
    "system_time": "ns",
}
_PERF_UNITS = {"msec": "ms", "ns": "ns"}

EVENT_STATUSES = ("counted", "multiplexed", "not_supported", "not_counted")

# ---- known event names ----------------------------------------------------------------------------------
#: perf's generic events (tools/perf/util/parse-events.c): known to every perf on every machine, whether
#: or not this machine's PMU can count them (those say <not supported> at run time)
GENERIC_EVENTS = frozenset(
    {
        # hardware
        "cpu-cycles", "cycles", "instructions", "cache-references", "cache-misses", "branch-instructions",
        "branches", "branch-misses", "bus-cycles", "stalled-cycles-frontend", "idle-cycles-frontend",
        "stalled-cycles-backend", "idle-cycles-backend", "ref-cycles",
        # software
        "cpu-clock", "task-clock", "page-faults", "faults", "minor-faults", "major-faults",
        "context-switches", "cs", "cpu-migrations", "migrations", "alignment-faults", "emulation-faults",
        "dummy", "bpf-output", "cgroup-switches",
        # tool
        "duration_time", "user_time", "system_time",
    }
)  # fmt: skip
# generic cache events: <cache>[-<op>][-<result>], names as perf's legacy cache table spells them
_CACHE = "l1-dcache|l1-d|l1d|l1-data|l1-icache|l1-i|l1i|l1-instruction|llc|l2|dtlb|d-tlb|data-tlb|itlb|i-tlb|"
_CACHE += "instruction-tlb|branch|branches|bpu|btb|bpc|node"
_OP = "load|loads|read|store|stores|write|prefetch|prefetches|speculative-read|speculative-load"
_RESULT = "refs|reference|ops|access|misses|miss"
_CACHE_EVENT = re.compile(rf"(?:{_CACHE})(?:-(?:{_OP}))?(?:-(?:{_RESULT}))?", re.IGNORECASE)
_MODIFIERS = re.compile(r"[ukhIGHpPSDWe]+")  # event modifiers after ':' (perf-list(1))
_RAW = re.compile(r"r[0-9a-fA-F]+")
_PMU = re.compile(r"[A-Za-z0-9_.\-]+/[^/]*/[A-Za-z]*")  # pmu/terms/ with optional modifiers after
_SYMBOLIC = re.compile(r"[A-Za-z0-9_.\-:]+")  # vendor (JSON) events, tracepoints: checked by perf itself


def _is_generic(name: str) -> bool:
    """Generic, cache or raw events (with optional `:modifiers`): every perf takes these on any machine, so
    they are accepted without asking this machine's perf (which may not list them: no PMU, no entry)."""
    base, _, mods = name.partition(":")
    if mods and not _MODIFIERS.fullmatch(mods):
        return False
    return base.lower() in GENERIC_EVENTS or bool(_CACHE_EVENT.fullmatch(base) or _RAW.fullmatch(base))


def _syntax_problem(name: str) -> str | None:
    if not name or name != name.strip() or any(c.isspace() for c in name):
        return "is empty or holds whitespace"
    if name.startswith("-") or any(c in name for c in "{};"):
        return "may not start with '-' or hold '{', '}' or ';' (give each event on its own, no groups)"
    if "," in re.sub(r"/[^/]*/", "", name):
        return "holds a ',' outside a PMU's /terms/: give each event as its own list item"
    if not (_PMU.fullmatch(name) or _SYMBOLIC.fullmatch(name)):
        return "is not an event name perf understands"
    base, _, mods = name.partition(":")
    if base.lower() in GENERIC_EVENTS and mods and not _MODIFIERS.fullmatch(mods):
        return f"has modifiers {mods!r} that are not event modifiers (perf-list(1): u k h I G H p P S D W e)"
    return None


@lru_cache(maxsize=256)
def _perf_rejects(perf: str, name: str) -> str | None:
    """perf's own verdict on an event name: its parser error, or None when it takes the name."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            out = subprocess.run(
                [perf, "stat", "-x", SEPARATOR, "-o", str(Path(tmp) / "x"), "-e", name, "--", "true"],
                capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return None  # perf itself is broken: not the event's fault; the run reports perf_status
    if out.returncode != 129:  # perf's status for option and event parse errors
        return None
    lines = [ln.strip() for ln in out.stderr.splitlines() if ln.strip()]
    return lines[0] if lines else "perf rejects it"


def event_column(event: str) -> str:
    """`perf_<event in snake_case>`, with `_ms`/`_ns` for the time events of TIME_UNITS."""
    column = "perf_" + snake(event)
    unit = TIME_UNITS.get(event.lower())
    return f"{column}_{unit}" if unit else column


def snake(name: str) -> str:
    """Lower case, every run of other characters than letters and digits one `_`, none at the ends."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _event_base(event: str) -> str:
    return "perf_" + snake(event)


def _event_columns(event: str, with_unit: bool = True) -> list[str]:
    """An event's columns; `perf_<e>_unit` (only there where perf prints a unit the name lacks) optional."""
    base = _event_base(event)
    suffixes = ("raw", "status", "running_pct", "metric", "metric_unit", *(("unit",) if with_unit else ()))
    return [event_column(event), *(f"{base}_{s}" for s in suffixes)]


def perf_columns(events: Sequence[str]) -> list[str]:
    """Every column a row always gets for these events, and perf_status."""
    return ["perf_status", *(c for e in events for c in _event_columns(e, with_unit=False))]


def check_perf_events(events: Sequence[str], field: str = "perf_events", perf: str | None = None) -> None:
    """Reject what perf would not take, naming `field`: bad syntax, duplicates, two names that make one
    column, and (where `perf` is given) names that are neither generic events nor accepted by that perf
    (PMU events, vendor events, tracepoints). Without perf here those are checked for form only."""
    if not events:
        raise BadInput(f"{field}: give at least one event (or leave perf out of collectors)")
    seen: dict[str, str] = {}
    for name in events:
        problem = _syntax_problem(name)
        if problem is None and perf is not None and not _is_generic(name):
            rejected = _perf_rejects(perf, name)
            if rejected is not None:
                problem = f"unknown to perf on this machine ({rejected}); see `perf list`"
        if problem is not None:
            raise BadInput(f"{field}: event {name!r} {problem}")
        if _event_base(name) == "perf":
            raise BadInput(f"{field}: event {name!r} has no letters or digits to name a column by")
        for column in _event_columns(name):
            if column in seen:
                raise BadInput(
                    f"{field}: events {seen[column]!r} and {name!r} would both make column {column}"
                )
            seen[column] = name


# ---- running ---------------------------------------------------------------------------------------------
def find_perf(env: Mapping[str, str]) -> str | None:
    """The perf executable on the command's PATH."""
    return shutil.which("perf", path=env.get("PATH", os.defpath))


def _privileged() -> bool:
    """Root, or CAP_PERFMON (38) / CAP_SYS_ADMIN (21) in the effective set: paranoia does not apply."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status") as f:
            caps = next((int(ln.split()[1], 16) for ln in f if ln.startswith("CapEff:")), 0)
    except (OSError, ValueError):
        return False
    return bool(caps & (1 << 38 | 1 << 21))


def paranoid_problem(paranoid: int | None, privileged: bool) -> str | None:
    """Why kernel.perf_event_paranoid keeps an unprivileged user from counting their own process, or None.

    Upstream levels go to 2 (2 still allows counting one's own processes in user space); Debian and others
    add 3 and above, which forbid perf_event_open to unprivileged users altogether."""
    if privileged or paranoid is None or paranoid < 3:
        return None
    return (
        f"kernel.perf_event_paranoid is {paranoid}, which forbids perf_event_open for unprivileged users "
        "(set it to 2 or lower, or grant CAP_PERFMON)"
    )


def _read_paranoid() -> int | None:
    try:
        return int(Path("/proc/sys/kernel/perf_event_paranoid").read_text().strip())
    except (OSError, ValueError):
        return None


@lru_cache(maxsize=64)
def _probe(perf: str, events: tuple[str, ...]) -> str | None:
    """Run perf on `true` with the events once per process: its error when it fails, else None."""
    with tempfile.TemporaryDirectory() as tmp:
        out_file = Path(tmp) / "probe.csv"
        argv = [*perf_wrapper(perf, events, out_file), "true"]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"cannot run {perf}: {exc}"
        if out.returncode == 0 and out_file.exists():
            return None
    lines = [ln.strip() for ln in out.stderr.splitlines() if ln.strip()]
    return f"`perf stat` fails here (status {out.returncode}): {' '.join(lines[:3]) or 'no message'}"


def perf_problem(env: Mapping[str, str], events: Sequence[str]) -> tuple[str | None, str | None]:
    """(perf's path, None) when perf can count these events for a command with environment `env`, else
    (None, why not)."""
    perf = find_perf(env)
    if perf is None:
        return None, "perf not found on PATH (Debian: apt-get install linux-perf)"
    why = paranoid_problem(_read_paranoid(), _privileged())
    if why is None:
        why = _probe(perf, tuple(events))
    return (perf, None) if why is None else (None, why)


def perf_wrapper(perf: str, events: Sequence[str], out_file: Path) -> list[str]:
    """The words put in front of the command: `perf stat -x ; --no-big-num -o FILE -e EV ... --`."""
    argv = [perf, "stat", "-x", SEPARATOR, "--no-big-num", "-o", str(out_file)]
    for event in events:
        argv += ["-e", event]
    return [*argv, "--"]


# ---- parsing ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PerfCount:
    """One event's line of `perf stat -x` output."""

    event: str
    value: float | int | None  # as printed: scaled to the whole run when multiplexed; None when not counted
    unit: str  # perf's unit of the value ("msec", "ns"; "" for counts)
    status: str  # one of EVENT_STATUSES
    run_time_ns: int | None  # how long the counter ran
    running_pct: float | None  # percentage of the enabled time the counter ran (< 100: multiplexed)
    metric: float | None = None  # perf's derived figure for this event, e.g. 1.9 "CPUs utilized"
    metric_unit: str | None = None
    extra_metrics: tuple[tuple[float, str], ...] = ()  # further metric lines perf printed under it

    @property
    def raw(self) -> float | int | None:
        """The count before perf's scaling: value x running / enabled."""
        if self.value is None or self.running_pct is None:
            return None
        if self.running_pct >= 100.0:
            return self.value
        raw = self.value * self.running_pct / 100.0
        return round(raw) if isinstance(self.value, int) else raw


def _number(text: str) -> int | float | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def _status(value_text: str, running_pct: float | None) -> str:
    if value_text == "<not supported>":
        return "not_supported"
    if value_text == "<not counted>" or running_pct == 0.0:
        return "not_counted"
    if running_pct is not None and running_pct < 100.0:
        return "multiplexed"
    return "counted"


def _parse_line(fields: list[str]) -> PerfCount:
    fields = fields + [""] * (7 - len(fields))
    value_text, unit, event, run_time, pct = (f.strip() for f in fields[:5])
    rest = fields[5:]
    if rest and rest[0].strip().endswith("%") and len(rest) > 2:  # the variance field of `-r N`
        rest = rest[1:]
    running_pct = _number(pct)
    status = _status(value_text, None if running_pct is None else float(running_pct))
    value = _number(value_text) if status in ("counted", "multiplexed") else None
    metric = _number(rest[0]) if rest else None
    metric_unit = rest[1].strip() if len(rest) > 1 and rest[1].strip() else None
    run = _number(run_time)
    return PerfCount(
        event=event,
        value=value,
        unit=unit,
        status=status,
        run_time_ns=int(run) if run is not None else None,
        running_pct=float(running_pct) if running_pct is not None else None,
        metric=float(metric) if metric is not None else None,
        metric_unit=metric_unit,
    )


def parse_perf_csv(text: str, sep: str = SEPARATOR) -> list[PerfCount]:
    """The events of a `perf stat -x SEP` output file, in order. Comment (`#`) and blank lines are skipped;
    a line whose fields before the metric are all empty adds a metric to the event above it."""
    counts: list[PerfCount] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(sep)
        if not any(f.strip() for f in fields[:3]):  # a further metric of the previous event
            metric = _number(fields[5]) if len(fields) > 5 else None
            if counts and metric is not None:
                prev = counts[-1]
                unit = fields[6].strip() if len(fields) > 6 else ""
                extra = (*prev.extra_metrics, (float(metric), unit))
                counts[-1] = PerfCount(**{**prev.__dict__, "extra_metrics": extra})
            continue
        counts.append(_parse_line(fields))
    return counts


def match_events(events: Sequence[str], counts: Sequence[PerfCount]) -> dict[str, PerfCount | None]:
    """Each requested event's line: by name (perf prints names as given), else the next unclaimed line in
    order (perf prints one line per event, in the order asked, but may spell a name its own way)."""
    by_name: dict[str, PerfCount | None] = {}
    unclaimed = list(counts)
    for event in events:
        hit = next((c for c in unclaimed if c.event == event), None)
        if hit is None:
            hit = next(
                (c for c in unclaimed if c.event.lower().rstrip("/") == event.lower().rstrip("/")), None
            )
        if hit is not None:
            unclaimed.remove(hit)
        by_name[event] = hit
    for event, hit in by_name.items():
        if hit is None and unclaimed:
            by_name[event] = unclaimed.pop(0)
    return by_name


def _event_values(event: str, count: PerfCount | None) -> dict[str, Any]:
    base, column = _event_base(event), event_column(event)
    # perf prints a running % of 100 for events it could not count at all: not a fact worth a column
    ran = count is not None and count.status in ("counted", "multiplexed")
    row: dict[str, Any] = {
        column: None if count is None else count.value,
        f"{base}_raw": None if count is None else count.raw,
        f"{base}_status": None if count is None else count.status,
        f"{base}_running_pct": count.running_pct if ran and count is not None else None,
        f"{base}_metric": None if count is None else count.metric,
        f"{base}_metric_unit": None if count is None else count.metric_unit,
    }
    said = TIME_UNITS.get(event.lower())  # the unit the column's name carries, if any
    if count is not None and count.unit and _PERF_UNITS.get(count.unit, count.unit) != said:
        row[f"{base}_unit"] = count.unit
    return row


def perf_row(events: Sequence[str], counts: Sequence[PerfCount] | None, status: str) -> dict[str, Any]:
    """The perf columns of one row: every event's columns (null without counts) and perf_status."""
    matched = match_events(events, counts) if counts is not None else dict.fromkeys(events)
    row: dict[str, Any] = {"perf_status": status}
    for event in events:
        count = matched[event]
        if count is None and counts is not None:  # perf ran but printed no line for it
            count = PerfCount(event, None, "", "not_counted", None, None)
        row |= _event_values(event, count)
    return row
