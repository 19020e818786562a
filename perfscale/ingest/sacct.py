"""Slurm accounting records: `sacct --parsable2 --noconvert` output -> one typed table of jobs.

Two importers read the same files:

- `sacct`: one row per job allocation (array elements are allocations of their own). Step lines (`.batch`,
  `.extern`, `.0`, ...) are folded into their allocation's row: `max_rss_bytes`, `max_vmsize_bytes`,
  `ave_rss_bytes` and `ave_cpu_s` are the largest value over the steps, `n_steps` counts them.
- `sacct-steps`: every line is a row; `step` is null on allocation rows and names the step otherwise (`batch`,
  `extern`, `0`). Step rows inherit the allocation's `user_hash`, `account`, `partition` and `qos`.

The files need sacct's header line (or exactly the columns of `SACCT_FIELDS` without one); columns missing
from a file are null in the table, so files captured with other `--format` lists still load. The schema, the
units and the exact parsing rules are in docs/ingest-jobs.md. In short:

- The user name is never stored: `user_hash` is the sha256 of the name, salted with `PERFSCALE_USER_SALT`
  when that is set. User-identifying fields (UID, Group, WorkDir, SubmitLine, Comment) are never read.
- Times without a zone are read in `PERFSCALE_SACCT_TZ` (an IANA name, default UTC): sacct prints local
  time, so `sacct_command` runs it with `TZ=UTC`. "Unknown", "None" and empty fields are null.
- Memory sizes are bytes (K/M/G/T/P are powers of 1024). `req_mem_bytes` is the job's total request: the
  old per-node ("4Gn") and per-CPU ("1Gc") forms are multiplied by the requested nodes or CPUs.
- A job name containing `|` (sacct does not escape it) is repaired when JobName is the only free-text field.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyarrow as pa

from perfscale.errors import BadInput
from perfscale.ingest.registry import ingester
from perfscale.sched.slurm_fields import NULLS, parse_job_id, parse_state

SACCT_FIELDS: tuple[str, ...] = (
    "JobID", "JobIDRaw", "JobName", "User", "Account", "Partition", "QOS", "State", "ExitCode",
    "DerivedExitCode", "Submit", "Eligible", "Start", "End", "Elapsed", "ElapsedRaw", "Timelimit",
    "TimelimitRaw", "ReqCPUS", "AllocCPUS", "ReqNodes", "AllocNodes", "NTasks", "ReqMem", "MaxRSS", "AveRSS",
    "MaxVMSize", "AveCPU", "TotalCPU", "UserCPU", "SystemCPU", "CPUTimeRAW", "NodeList", "ReqTRES",
    "AllocTRES", "Reason", "Cluster",
)  # fmt: skip
"""The `--format` fields perfscale asks sacct for (header names as sacct prints them)."""

SALT_ENV = "PERFSCALE_USER_SALT"
TZ_ENV = "PERFSCALE_SACCT_TZ"

# Fields whose text is free (user-chosen): a `|` inside one of them shifts every later column.
_FREE_TEXT = {"jobname", "comment", "admincomment", "systemcomment", "submitline", "workdir", "constraints"}
_NO_LIMIT = {"UNLIMITED", "INFINITE", "Partition_Limit"}
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60}
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)([KMGTPE]?)([nc]?)$", re.IGNORECASE)
_DURATION = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?(?:\.(\d+))?$")
_EXIT = re.compile(r"^(\d+):(\d+)$")

_TS = pa.timestamp("us", tz="UTC")  # what Parquet keeps exactly (it has no seconds unit)
_EPOCH_S = pa.timestamp("s", tz="UTC")
SCHEMA = pa.schema(
    [
        ("_source_file", pa.string()),  # provenance: hidden from stages
        ("cluster", pa.string()),
        ("job_id", pa.string()),
        ("job_id_raw", pa.int64()),
        ("array_job_id", pa.int64()),
        ("array_task_id", pa.int64()),
        ("step", pa.string()),
        ("job_name", pa.string()),
        ("user_hash", pa.string()),
        ("account", pa.string()),
        ("partition", pa.string()),
        ("qos", pa.string()),
        ("state", pa.string()),
        ("cancelled_by", pa.int64()),
        ("reason", pa.string()),
        ("exit_code", pa.int32()),
        ("exit_signal", pa.int32()),
        ("derived_exit_code", pa.int32()),
        ("derived_exit_signal", pa.int32()),
        ("submit", _TS),
        ("eligible", _TS),
        ("start", _TS),
        ("end", _TS),
        ("elapsed_s", pa.int64()),
        ("timelimit_s", pa.int64()),
        ("queue_wait_s", pa.int64()),
        ("req_cpus", pa.int64()),
        ("alloc_cpus", pa.int64()),
        ("req_nodes", pa.int64()),
        ("alloc_nodes", pa.int64()),
        ("ntasks", pa.int64()),
        ("req_mem_bytes", pa.int64()),
        ("req_mem_per", pa.string()),
        ("alloc_mem_bytes", pa.int64()),
        ("req_gpus", pa.int64()),
        ("alloc_gpus", pa.int64()),
        ("max_rss_bytes", pa.int64()),
        ("ave_rss_bytes", pa.int64()),
        ("max_vmsize_bytes", pa.int64()),
        ("ave_cpu_s", pa.float64()),
        ("total_cpu_s", pa.float64()),
        ("user_cpu_s", pa.float64()),
        ("system_cpu_s", pa.float64()),
        ("cpu_time_s", pa.int64()),
        ("nodelist", pa.string()),
        ("req_tres", pa.string()),
        ("alloc_tres", pa.string()),
        ("n_steps", pa.int32()),
    ]
)
"""Columns of both importers, in order. `n_steps` is null in the `sacct-steps` table."""


# ---------------------------------------------------------------------------------------------- values


def _text(value: str | None) -> str | None:
    """A field's text, or None for sacct's spellings of "no value"."""
    if value is None:
        return None
    value = value.strip()
    return None if value in NULLS else value


def parse_int(value: str | None) -> int | None:
    text = _text(value)
    if text is None:
        return None
    if not text.isdigit():
        raise ValueError(f"not a whole number: {value!r}")
    return int(text)


def parse_exit(value: str | None) -> tuple[int | None, int | None]:
    """sacct's `code:signal` ("0:15": exit code 0, killed by signal 15)."""
    text = _text(value)
    if text is None:
        return None, None
    match = _EXIT.match(text)
    if not match:
        raise ValueError(f"not an exit code of the form code:signal: {value!r}")
    return int(match[1]), int(match[2])


@lru_cache(maxsize=65536)  # sacct repeats the same few values (limits, zero times) on most lines
def parse_duration(value: str | None) -> float | None:
    """Slurm durations in seconds: `[D-]HH:MM:SS`, `MM:SS[.mmm]`, `D-HH[:MM]`; a bare number is minutes.

    "UNLIMITED", "INFINITE" and "Partition_Limit" (no limit of the job's own) are None.
    """
    text = _text(value)
    if text is None or text in _NO_LIMIT:
        return None
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a Slurm duration: {value!r}")
    days, first, second, third, fraction = match.groups()
    parts = [int(p) for p in (first, second, third) if p is not None]
    if days is not None:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = [*parts, 0, 0][:3]
        total = int(days) * 86400 + hours * 3600 + minutes * 60 + seconds
    elif len(parts) == 3:
        total = parts[0] * 3600 + parts[1] * 60 + parts[2]
    elif len(parts) == 2:
        total = parts[0] * 60 + parts[1]
    else:
        if fraction is not None:
            raise ValueError(f"not a Slurm duration: {value!r}")
        total = parts[0] * 60
    return total + (float(f"0.{fraction}") if fraction else 0.0)


@lru_cache(maxsize=65536)
def parse_memory(value: str | None, default_unit: str = "") -> tuple[int | None, str | None]:
    """Bytes and the old per-node ("n") / per-CPU ("c") suffix of a Slurm size: "4000M", "4Gn", "1Gc".

    A bare number is in `default_unit`: MiB for requests (ReqMem, TRES mem), bytes for usage (MaxRSS under
    --noconvert). Units are powers of 1024, as Slurm means them.
    """
    text = _text(value)
    if text is None:
        return None, None
    match = _MEMORY.match(text)
    if not match:
        raise ValueError(f"not a Slurm memory size: {value!r}")
    number, unit, per = match.groups()
    scale = _UNITS[(unit or default_unit).upper()]
    per_name = {"n": "node", "c": "cpu"}.get(per.lower()) if per else None
    return round(float(number) * scale), per_name


def parse_tres(value: str | None) -> dict[str, str]:
    """`billing=1,cpu=2,gres/gpu=1,mem=64M,node=1` -> {"cpu": "2", "gres/gpu": "1", ...}."""
    text = _text(value)
    if text is None:
        return {}
    pairs = (item.split("=", 1) for item in text.split(",") if item)
    return {key: val for key, val in (p for p in pairs if len(p) == 2)}


def tres_gpus(tres: dict[str, str]) -> int | None:
    """GPU count: `gres/gpu`, else the sum of typed `gres/gpu:<type>` entries (sacct lists both when the
    typed ones are tracked, so adding them all would count twice)."""
    if "gres/gpu" in tres:
        return int(tres["gres/gpu"])
    typed = [int(v) for k, v in tres.items() if k.startswith("gres/gpu:")]
    return sum(typed) if typed else None


@lru_cache(maxsize=8)
def _zone(name: str) -> timezone | ZoneInfo:
    if name.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadInput(f"{TZ_ENV}={name!r} is not a time zone name (try UTC or Europe/Berlin)") from None


@lru_cache(maxsize=65536)
def parse_time(value: str | None, zone: str = "UTC") -> int | None:
    """Epoch seconds of a sacct time: ISO `YYYY-MM-DDTHH:MM:SS` read in `zone`, or epoch digits
    (SLURM_TIME_FORMAT=%s). "Unknown" (not yet) and "None" (never) are None."""
    text = _text(value)
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a sacct time (set SLURM_TIME_FORMAT=standard): {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_zone(zone))
    return int(moment.timestamp())


@lru_cache(maxsize=4096)
def hash_user(user: str, salt: str | None = None) -> str:
    """sha256 hex of a user name, salted (`salt` NUL `user`) when a salt is given.

    Without a salt, anyone can hash a list of likely names and compare, so set PERFSCALE_USER_SALT to a
    secret when the table leaves the site.
    """
    data = user.encode() if not salt else salt.encode() + b"\0" + user.encode()
    return hashlib.sha256(data).hexdigest()


def split_job_id(value: str) -> dict[str, Any]:
    """`9_2.batch` -> job_id "9_2", array_job_id 9, array_task_id 2, step "batch".

    `9_[0-3]` (array elements not started yet) has no array_task_id; `123+1` (heterogeneous job component)
    keeps its text in job_id only.
    """
    parsed = parse_job_id(value)
    return {
        "job_id": parsed.job_id,
        "array_job_id": int(parsed.base) if parsed.task else None,
        "array_task_id": parsed.array_task_id,
        "step": parsed.step,
    }


# --------------------------------------------------------------------------------------------- records


_TEXT_COLUMNS = (
    ("cluster", "cluster"), ("account", "account"), ("partition", "partition"), ("qos", "qos"),
    ("reason", "reason"), ("nodelist", "nodelist"), ("req_tres", "reqtres"), ("alloc_tres", "alloctres"),
)  # fmt: skip
_CPU_COLUMNS = (
    ("ave_cpu_s", "avecpu"), ("total_cpu_s", "totalcpu"), ("user_cpu_s", "usercpu"),
    ("system_cpu_s", "systemcpu"),
)  # fmt: skip


def _record(raw: dict[str, str], zone: str, salt: str | None) -> dict[str, Any]:
    """One sacct line (field name lower-cased -> text) -> one row of SCHEMA (without _source_file)."""
    get = raw.get
    row: dict[str, Any] = split_job_id(get("jobid") or get("jobidraw") or "")
    raw_id = _text(get("jobidraw"))
    if raw_id is not None:
        row["job_id_raw"] = int(raw_id.partition(".")[0].partition("+")[0])
    elif row["job_id"].isdigit():
        row["job_id_raw"] = int(row["job_id"])
    user = _text(get("user"))
    row["user_hash"] = hash_user(user, salt) if user else None
    row["job_name"] = get("jobname") or None  # kept as written: a job may be called "None"
    for column, field in _TEXT_COLUMNS:
        row[column] = _text(get(field))
    row["state"], row["cancelled_by"] = parse_state(get("state"))
    row["exit_code"], row["exit_signal"] = parse_exit(get("exitcode"))
    row["derived_exit_code"], row["derived_exit_signal"] = parse_exit(get("derivedexitcode"))
    for column in ("submit", "eligible", "start", "end"):
        row[column] = parse_time(get(column), zone)
    _durations(row, raw)
    _resources(row, raw)
    return row


def _seconds(value: float | None) -> int | None:
    return None if value is None else round(value)


def _durations(row: dict[str, Any], raw: dict[str, str]) -> None:
    elapsed_raw = parse_int(raw.get("elapsedraw"))
    row["elapsed_s"] = (
        elapsed_raw if elapsed_raw is not None else _seconds(parse_duration(raw.get("elapsed")))
    )
    if "timelimit" in raw:
        row["timelimit_s"] = _seconds(parse_duration(raw["timelimit"]))
    else:  # TimelimitRaw is in minutes
        row["timelimit_s"] = _seconds(parse_duration(raw.get("timelimitraw")))
    for column, field in _CPU_COLUMNS:
        row[column] = parse_duration(raw.get(field))
    row["cpu_time_s"] = parse_int(raw.get("cputimeraw"))
    if row["cpu_time_s"] is None:
        row["cpu_time_s"] = _seconds(parse_duration(raw.get("cputime")))


def _resources(row: dict[str, Any], raw: dict[str, str]) -> None:
    req_tres, alloc_tres = parse_tres(raw.get("reqtres")), parse_tres(raw.get("alloctres"))
    row["req_cpus"] = parse_int(raw.get("reqcpus")) or _tres_int(req_tres, "cpu")
    row["alloc_cpus"] = parse_int(raw.get("alloccpus")) or _tres_int(alloc_tres, "cpu")
    row["req_nodes"] = parse_int(raw.get("reqnodes")) or _tres_int(req_tres, "node")
    row["alloc_nodes"] = parse_int(raw.get("allocnodes"))
    if row["alloc_nodes"] is None:
        row["alloc_nodes"] = _tres_int(alloc_tres, "node")
    row["ntasks"] = parse_int(raw.get("ntasks"))
    row["req_mem_bytes"], row["req_mem_per"] = _requested_memory(raw.get("reqmem"), req_tres, row)
    row["alloc_mem_bytes"] = parse_memory(alloc_tres.get("mem"), "M")[0]
    row["req_gpus"], row["alloc_gpus"] = tres_gpus(req_tres), tres_gpus(alloc_tres)
    row["max_rss_bytes"] = parse_memory(raw.get("maxrss"))[0]
    row["ave_rss_bytes"] = parse_memory(raw.get("averss"))[0]
    row["max_vmsize_bytes"] = parse_memory(raw.get("maxvmsize"))[0]


def _tres_int(tres: dict[str, str], key: str) -> int | None:
    return int(tres[key]) if key in tres else None


def _requested_memory(
    value: str | None, req_tres: dict[str, str], row: dict[str, Any]
) -> tuple[int | None, str | None]:
    """The job's total memory request and the form it was given in ("job", "node" or "cpu").

    sacct >= 21.08 prints ReqMem as the job's total (the `mem` of ReqTRES). Older versions print the request
    as given with an "n" (per node) or "c" (per CPU) suffix; those are multiplied out.
    """
    amount, per = parse_memory(value, "M")
    if amount is None:
        total = parse_memory(req_tres.get("mem"), "M")[0]
        return total, "job" if total is not None else None
    if per == "node":
        return (amount * row["req_nodes"] if row["req_nodes"] else None), per
    if per == "cpu":
        return (amount * row["req_cpus"] if row["req_cpus"] else None), per
    return amount, "job"


# ------------------------------------------------------------------------------------------------ lines


def _header(first: list[str], where: str) -> tuple[list[str], bool]:
    """Lower-cased field names and whether `first` is a header line (else: header-less SACCT_FIELDS)."""
    names = [name.strip() for name in first]
    if any(name.lower() in ("jobid", "jobidraw") for name in names) and all(
        re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name) for name in names
    ):
        return [name.lower() for name in names], True
    if len(first) == len(SACCT_FIELDS):
        return [name.lower() for name in SACCT_FIELDS], False
    raise BadInput(
        f"{where}: no sacct header line; run sacct with --parsable2 and without --noheader "
        f"(or with --format={','.join(SACCT_FIELDS)})"
    )


def _fit(fields: list[str], header: list[str], where: str) -> list[str]:
    """Repairs a line that a `|` inside the job name split into too many fields."""
    extra = len(fields) - len(header)
    if extra == 0:
        return fields
    free = [i for i, name in enumerate(header) if name in _FREE_TEXT]
    if extra > 0 and len(free) == 1:
        i = free[0]
        return [*fields[:i], "|".join(fields[i : i + extra + 1]), *fields[i + extra + 1 :]]
    raise BadInput(f"{where}: {len(fields)} fields where the header has {len(header)}")


def parse_sacct_lines(lines: Iterable[str], where: str = "<sacct>") -> list[dict[str, str]]:
    """sacct --parsable2 (or --parsable) lines -> one {field: text} dict per record, fields lower-cased."""
    records: list[dict[str, str]] = []
    header: list[str] | None = None
    trailing = False
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("|")
        if header is None:
            trailing = len(fields) > 1 and fields[-1] == ""  # --parsable ends every line with "|"
            header, is_header = _header(fields[:-1] if trailing else fields, f"{where}:{number}")
            if is_header:
                continue
        if trailing and fields[-1] == "":
            fields = fields[:-1]
        records.append(dict(zip(header, _fit(fields, header, f"{where}:{number}"), strict=True)))
    return records


def _rows(records: list[dict[str, str]], where: str) -> list[dict[str, Any]]:
    zone = os.environ.get(TZ_ENV, "UTC")
    salt = os.environ.get(SALT_ENV) or None
    _zone(zone)
    rows = []
    for i, raw in enumerate(records):
        try:
            rows.append(_record(raw, zone, salt))
        except ValueError as exc:
            raise BadInput(f"{where}: record {i + 1} ({raw.get('jobid', '?')}): {exc}") from None
    return rows


# ------------------------------------------------------------------------------------------ step folding

_INHERITED = ("user_hash", "account", "partition", "qos", "cluster")
_FOLDED_MAX = ("max_rss_bytes", "max_vmsize_bytes", "ave_rss_bytes", "ave_cpu_s")


def _with_steps(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row; step rows take the identity fields of the allocation listed before them."""
    current: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["step"] is None:
            current[row["job_id"]] = row
            row["queue_wait_s"] = _wait(row)
            continue
        row["queue_wait_s"] = None
        parent = current.get(row["job_id"])
        for column in _INHERITED:
            if parent is not None and row[column] is None:
                row[column] = parent[column]
    return rows


def _fold(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Allocation rows only, each with the largest per-step usage of its steps.

    A step whose allocation line is absent (not something sacct prints) is dropped.
    """
    current: dict[str, dict[str, Any]] = {}
    out = []
    for row in rows:
        if row["step"] is None:
            row["n_steps"] = 0
            row["queue_wait_s"] = _wait(row)
            current[row["job_id"]] = row
            out.append(row)
            continue
        parent = current.get(row["job_id"])
        if parent is None:
            continue
        parent["n_steps"] += 1
        for column in _FOLDED_MAX:
            if row[column] is not None and (parent[column] is None or row[column] > parent[column]):
                parent[column] = row[column]
        for column in ("total_cpu_s", "user_cpu_s", "system_cpu_s"):
            if parent[column] is None and row[column] is not None:
                parent[column] = row[column]
    return out


def _wait(row: dict[str, Any]) -> int | None:
    """Seconds from submission to start (None until it starts, and for jobs that never did)."""
    if row["submit"] is None or row["start"] is None:
        return None
    return row["start"] - row["submit"]


# -------------------------------------------------------------------------------------------- entry points


def parse_sacct(text: str, *, steps: bool = False, source: str = "<sacct>") -> pa.Table:
    """Parse sacct --parsable2 output held in memory (what the scheduler layer gets from a command)."""
    rows = _rows(parse_sacct_lines(text.splitlines(), source), source)
    rows = _with_steps(rows) if steps else _fold(rows)
    for row in rows:
        row["_source_file"] = source
    return _table(rows)


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows -> SCHEMA; times are kept as epoch seconds until here."""
    columns = {}
    for field in SCHEMA:
        values = [row.get(field.name) for row in rows]
        if field.type == _TS:
            columns[field.name] = pa.array(values, _EPOCH_S).cast(_TS)
        else:
            columns[field.name] = pa.array(values, field.type)
    return pa.table(columns, schema=SCHEMA)


def read_sacct(files: Sequence[Path], *, steps: bool = False) -> pa.Table:
    """Parse sacct output files into one table (SCHEMA), in file order."""
    tables = []
    for path in files:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise BadInput(f"{path}: cannot read: {exc}") from None
        tables.append(parse_sacct(text, steps=steps, source=str(path)))
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


@ingester("sacct", patterns=("*.sacct", "*.txt", "*.psv"))
def ingest_sacct(files: list[Path]) -> pa.Table:
    """Slurm sacct --parsable2 output: one row per job allocation, step usage folded in."""
    return read_sacct(files, steps=False)


@ingester("sacct-steps", patterns=("*.sacct", "*.txt", "*.psv"))
def ingest_sacct_steps(files: list[Path]) -> pa.Table:
    """Slurm sacct --parsable2 output: one row per job allocation and one per step."""
    return read_sacct(files, steps=True)


# ------------------------------------------------------------------------------------------------ command


def _sacct_time(moment: datetime | str) -> str:
    """A sacct --starttime/--endtime value; aware datetimes are converted to UTC, naive ones taken as UTC."""
    if isinstance(moment, str):
        return moment
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def sacct_command(
    fields: Sequence[str] = SACCT_FIELDS,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    *,
    users: Sequence[str] | None = None,
    accounts: Sequence[str] | None = None,
    partitions: Sequence[str] | None = None,
    states: Sequence[str] | None = None,
    jobs: Sequence[str] | None = None,
    clusters: Sequence[str] | None = None,
    steps: bool = True,
    duplicates: bool = False,
    utc: bool = True,
) -> list[str]:
    """The argv perfscale runs to export accounting records that `parse_sacct` reads.

    With `utc` (the default) the command starts with `env TZ=UTC SLURM_TIME_FORMAT=standard`, so sacct
    prints (and reads --starttime/--endtime) in UTC and in ISO form whatever the caller's environment.
    `users=None` asks for every user (--allusers); `steps=False` adds --allocations.
    Without `states`, sacct selects jobs that were eligible or running between start and end.
    """
    bad = [f for f in fields if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_%.]*", f)]
    if bad or not fields:
        raise BadInput(f"sacct fields must be sacct --helpformat names; got {bad or 'none'}")
    argv = ["env", "TZ=UTC", "SLURM_TIME_FORMAT=standard"] if utc else []
    argv += ["sacct", "--parsable2", "--noconvert", f"--format={','.join(fields)}"]
    argv.append("--allusers" if users is None else f"--user={','.join(users)}")
    for option, values in (("--accounts", accounts), ("--partition", partitions), ("--state", states),
                           ("--jobs", jobs), ("--clusters", clusters)):  # fmt: skip
        if values:
            argv.append(f"{option}={','.join(values)}")
    if start is not None:
        argv.append(f"--starttime={_sacct_time(start)}")
    if end is not None:
        argv.append(f"--endtime={_sacct_time(end)}")
    if not steps:
        argv.append("--allocations")
    if duplicates:
        argv.append("--duplicates")
    return argv
