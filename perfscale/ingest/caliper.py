"""Caliper `.cali` profiles: one row per profile x calling-context record, metrics and Adiak metadata as
typed columns. The schema and the naming rules are in docs/ingest-caliper.md; the short version:

- `_source_file, profile, region, region_path, region_attribute, depth` say where a row comes from
  (`_source_file` is provenance: hidden from stages, see perfscale.ingest.registry);
- every metric attribute of the records becomes a column named from its Caliper aggregation name
  (`min#inclusive#sum#time.duration` with unit `sec` -> `time_inclusive_min_s`);
- other record attributes (`spot.channel`, `mpi.rank`, ...) become snake_case columns;
- every global of the file becomes a column: `adiak_<key>` for Adiak values, `cali_<key>` for Caliper's own.

Each column's Arrow field metadata keeps the Caliper attribute it came from (`caliper_attribute`), its `kind`
and, where the file says, its `unit` and `alias`.

Files are parsed with caliper-reader (each file once); columns are built one at a time from the parsed
records and converted with Arrow casts, never row by row through a DataFrame. Many files (200 or more, with
4 or more cores) are read by a process pool; `PERFSCALE_INGEST_WORKERS` sets its size (1 turns it off).
"""

from __future__ import annotations

import functools
import hashlib
import io
import multiprocessing
import os
import re
import warnings
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from perfscale.errors import BadInput, PerfscaleError
from perfscale.ingest.registry import ingester

STRUCTURE = ("_source_file", "profile", "region", "region_path", "region_attribute", "depth")
KINDS = ("structure", "metric", "attribute", "adiak", "global")  # column groups, in table order
POOL_MIN_FILES = 200  # below this, starting worker processes costs more than it saves (measured)
POOL_MIN_CORES = 4  # on 2 shared vCPUs the pool measured from 1.4x faster to 2x slower than serial
FILES_PER_WORKER = 50  # each worker gets enough files (~0.25 s) to repay its start

_ARROW_TYPES: dict[str, pa.DataType] = {
    "double": pa.float64(),
    "int": pa.int64(),
    "uint": pa.int64(),  # uint64 only if a value does not fit (see _cast)
    "addr": pa.uint64(),
    "bool": pa.bool_(),
}
_UNITS = {"sec": "s", "s": "s", "seconds": "s", "msec": "ms", "ms": "ms", "usec": "us", "us": "us"}
_UNITS |= {"nsec": "ns", "ns": "ns", "byte": "bytes", "bytes": "bytes"}
_INT_ELEMENTS = ("int", "long", "unsigned int", "unsigned long", "uint")
_SNAKE_STEPS = (
    (re.compile(r"/"), "_per_"),  # Bytes/Rep -> Bytes_per_Rep
    (re.compile(r"([a-z0-9])([A-Z])"), r"\1_\2"),  # ProblemSize -> Problem_Size
    (re.compile(r"([A-Z]+)([A-Z][a-z])"), r"\1_\2"),  # MPIRank -> MPI_Rank
    (re.compile(r"[^0-9A-Za-z]+"), "_"),
)


@functools.lru_cache(maxsize=4096)  # the same keys come back in every file
def snake(name: str) -> str:
    """`Bytes/Rep` -> `bytes_per_rep`, `spot.channel` -> `spot_channel`, `ProblemSize` -> `problem_size`."""
    for pattern, replacement in _SNAKE_STEPS:
        name = pattern.sub(replacement, name)
    return name.strip("_").lower() or "unnamed"


def unit_suffix(unit: str | None) -> str:
    if not unit:
        return ""
    return "_" + _UNITS.get(unit.lower(), snake(unit))


@functools.lru_cache(maxsize=4096)
def metric_name(caliper_name: str, unit: str | None) -> str:
    """Column name of a metric from its Caliper aggregation name, read from the inside out.

    `inclusive` becomes `_inclusive`; `any` reductions are dropped (the value is the same everywhere);
    repeated reductions collapse (`min#min#x` is `min` of x); the innermost reduction is dropped when it is
    `sum` (a summed duration is *the* time) or when `any` wrapped it (RAJAPerf's `any#any#max#Bytes/Rep`
    carries a per-region constant). The reductions left are appended innermost first, then the unit:
    `sum#time.duration` -> `time_s`, `inclusive#sum#time.duration` -> `time_inclusive_s`,
    `avg#inclusive#sum#time.duration` -> `time_inclusive_avg_s`,
    `min#min#aggregate.slot` -> `aggregate_slot_min`.
    """
    *ops, base = caliper_name.split("#")
    inclusive = "inclusive" in ops
    had_any = "any" in ops
    ops = [op for op in ops if op not in ("inclusive", "any")]
    ops = [op for i, op in enumerate(ops) if i == 0 or op != ops[i - 1]]
    if ops and (ops[-1] == "sum" or had_any):
        ops.pop()
    stem = "time" if base.startswith("time.duration") else snake(base)
    name = stem + ("_inclusive" if inclusive else "") + "".join(f"_{snake(op)}" for op in reversed(ops))
    suffix = unit_suffix(unit)
    return name if name.endswith(suffix) else name + suffix


@dataclass(frozen=True)
class Column:
    """One column of one file's table, with where it came from in the file."""

    name: str
    array: pa.Array
    kind: str
    caliper_attribute: str = ""
    unit: str | None = None
    alias: str | None = None

    def field(self) -> pa.Field:
        meta = {"kind": self.kind, "caliper_attribute": self.caliper_attribute}
        meta |= {k: v for k, v in (("unit", self.unit), ("alias", self.alias)) if v}
        return pa.field(self.name, self.array.type, metadata=meta)


class _Names:
    """Hands out column names, unique within one file: a clash falls back to the full Caliper name."""

    def __init__(self) -> None:
        self.taken: set[str] = set(STRUCTURE)

    def claim(self, preferred: str, fallback: str) -> str:
        for name in (preferred, fallback):
            if name not in self.taken:
                self.taken.add(name)
                return name
        n = 2
        while f"{fallback}_{n}" in self.taken:
            n += 1
        self.taken.add(f"{fallback}_{n}")
        return f"{fallback}_{n}"


def _cast(values: list[Any], caliper_type: str, file: Path, attribute: str) -> pa.Array:
    """Caliper's values are strings: build a string array once and cast it with Arrow (C++, vectorised)."""
    if any(type(v) is list for v in values):  # an attribute repeated in one record: joined as cali-query does
        values = [("/".join(v) if type(v) is list else v) for v in values]
        caliper_type = "string"
    strings = pa.array(values, pa.string())
    target = _ARROW_TYPES.get(caliper_type)
    if target is None:
        return strings
    try:
        return strings.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    if caliper_type == "uint":
        try:
            return strings.cast(pa.uint64())
        except pa.ArrowInvalid:
            pass
    try:  # empty strings are missing values; anything else that is not a number is an error
        return pa.array([None if v in ("", None) else v for v in values], pa.string()).cast(target)
    except pa.ArrowInvalid as exc:
        message = f"{file}: attribute {attribute!r} of type {caliper_type} has a bad value: {exc}"
        raise BadInput(message) from None


def _global_value(raw: Any, caliper_type: str, adiak_type: str | None) -> tuple[Any, pa.DataType]:
    """A global's Python value and Arrow type: numbers as numbers, Adiak dates as UTC timestamps, Adiak sets
    and lists (written `[a,b,c]`) as lists."""
    if isinstance(raw, list):
        return [str(v) for v in raw], pa.list_(pa.string())
    if adiak_type and adiak_type.split(" ", 1)[0] in ("set", "list", "tuple") and raw[:1] in ("[", "{", "("):
        element = adiak_type.split(" of ", 1)[-1]
        items = [s.strip() for s in raw[1:-1].split(",")] if raw[1:-1].strip() else []
        if element in _INT_ELEMENTS:
            return [int(s) for s in items], pa.list_(pa.int64())
        if element in ("double", "float"):
            return [float(s) for s in items], pa.list_(pa.float64())
        return items, pa.list_(pa.string())
    if raw == "" and caliper_type in _ARROW_TYPES:
        return None, _ARROW_TYPES[caliper_type]
    if adiak_type == "date" and caliper_type in ("int", "uint"):
        return int(raw) * 1000, pa.timestamp("ms", tz="UTC")  # ms: the coarsest unit Parquet stores
    if caliper_type in ("int", "uint", "addr"):
        value = int(raw)
        return value, (pa.int64() if -(2**63) <= value < 2**63 else pa.uint64())
    if caliper_type == "double":
        return float(raw), pa.float64()
    if caliper_type == "bool":
        return raw.lower() in ("true", "1"), pa.bool_()
    return raw, pa.string()


def _parse(file: Path) -> tuple[Any, str]:
    """caliper-reader's reader for `file` (read once) and the profile id (hash of the file's bytes)."""
    try:
        from caliperreader import CaliperReader
    except ImportError:
        message = "the caliper importer needs caliper-reader: pip install caliper-reader"
        raise PerfscaleError(message) from None
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise BadInput(f"{file}: cannot read: {exc}") from None
    reader = CaliperReader()
    try:
        reader.read(io.StringIO(data.decode("utf-8")))
    except Exception as exc:  # caliper-reader raises many kinds (ReaderError, KeyError, ...) on bad input
        detail = str(getattr(exc, "message", exc))[:200]
        raise BadInput(f"{file}: not a readable Caliper file ({type(exc).__name__}: {detail})") from None
    if not reader.records and not reader.globals:
        raise BadInput(f"{file}: not a Caliper file: no records and no globals")
    return reader, hashlib.sha256(data).hexdigest()[:16]


def _structure_columns(records: list[dict], nested: list[str]) -> list[Column]:
    """Where each row sits in the calling-context tree. A record outside every region (no path) has null
    region columns."""
    regions, paths, attributes, depths = [], [], [], []
    for rec in records:
        path = rec.get("path")
        if not path:
            last = joined = attribute = depth = None
        else:
            last, joined, depth = path[-1], "/".join(path), len(path) - 1
            attribute = next((a for a in nested if _innermost(rec.get(a)) == last), None)
        regions.append(last)
        paths.append(joined)
        attributes.append(attribute)
        depths.append(depth)
    return [
        Column("region", pa.array(regions, pa.string()), "structure", "path"),
        Column("region_path", pa.array(paths, pa.string()), "structure", "path"),
        Column("region_attribute", pa.array(attributes, pa.string()), "structure"),
        Column("depth", pa.array(depths, pa.int64()), "structure", "path"),
    ]


def _innermost(value: Any) -> Any:
    return value[-1] if type(value) is list else value


def _ordered_keys(records: Iterable[dict], skip: set[str]) -> list[str]:
    seen: dict[str, None] = {}
    for rec in records:
        for key in rec:
            if key not in seen and key not in skip:
                seen[key] = None
    return list(seen)


def _record_columns(file: Path, reader: Any, names: _Names, nested: list[str]) -> list[Column]:
    """Metrics (Caliper's as-value attributes) and the other non-nested attributes of the records."""
    columns = []
    for key in _ordered_keys(reader.records, {"path", *nested}):
        attr = reader.attribute(key)
        unit, alias = attr.get("attribute.unit"), attr.get("attribute.alias")
        kind = "metric" if attr.is_value() else "attribute"
        preferred = metric_name(key, unit) if kind == "metric" else snake(key)
        name = names.claim(preferred, snake(key) + unit_suffix(unit))
        array = _cast([rec.get(key) for rec in reader.records], attr.attribute_type(), file, key)
        columns.append(Column(name, array, kind, key, unit, alias))
    return columns


def _global_columns(file: Path, reader: Any, names: _Names) -> list[Column]:
    """One value per global: these columns have one row, repeated over the file's rows at the end."""
    columns = []
    for key, raw in reader.globals.items():
        attr = reader.attribute(key)
        adiak_type = attr.get("adiak.type")
        if adiak_type is not None:
            kind, stem = "adiak", "adiak_" + snake(key)
        else:
            kind, stem = "global", "cali_" + snake(key.removeprefix("cali."))
        try:
            value, arrow_type = _global_value(raw, attr.attribute_type(), adiak_type)
        except ValueError as exc:
            raise BadInput(f"{file}: global {key!r} has a bad value: {exc}") from None
        name = names.claim(stem, stem)
        unit = attr.get("attribute.unit")
        columns.append(Column(name, pa.array([value], arrow_type), kind, key, unit))
    return columns


def _table(columns: list[Column]) -> pa.Table:
    return pa.Table.from_arrays([c.array for c in columns], schema=pa.schema([c.field() for c in columns]))


@dataclass(frozen=True)
class Profile:
    """One file, compact: `rows` (one per record: tree position and record attributes) and `constants`
    (one row: source file, profile id, globals). Small to send back from a worker process."""

    rows: pa.Table
    constants: pa.Table


def read_profile(file: Path) -> Profile:
    file = Path(file)
    reader, profile = _parse(file)
    nested = [a for a in reader.attributes() if reader.attribute(a).is_nested()]
    names = _Names()
    rows = _structure_columns(reader.records, nested) + _record_columns(file, reader, names, nested)
    constants = [
        Column("_source_file", pa.array([str(file)], pa.string()), "structure"),
        Column("profile", pa.array([profile], pa.string()), "structure"),
        *_global_columns(file, reader, names),
    ]
    return Profile(_table(rows), _table(constants))


def _pool_size(n_files: int) -> int:
    if multiprocessing.current_process().daemon:
        return 1  # a daemonic process may not start children
    configured = os.environ.get("PERFSCALE_INGEST_WORKERS", "").strip()
    if configured:
        if not configured.isdigit():
            raise PerfscaleError(f"PERFSCALE_INGEST_WORKERS must be a whole number (got {configured!r})")
        return max(1, int(configured))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n_files < POOL_MIN_FILES or cores < POOL_MIN_CORES:
        return 1
    return min(cores, n_files // FILES_PER_WORKER)


def read_profiles(files: list[Path]) -> list[Profile]:
    """One `Profile` per file, in order; many files go through a process pool (forkserver, as the local
    engine uses). A pool that breaks (a worker killed, or a `__main__` that cannot be re-imported) is
    reported as a warning and the files are read here instead."""
    workers = min(_pool_size(len(files)), len(files))
    if workers >= 2:
        chunk = max(1, len(files) // (workers * 4))
        try:
            context = multiprocessing.get_context("forkserver")
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                return list(pool.map(read_profile, files, chunksize=chunk))
        except BrokenProcessPool as exc:
            warnings.warn(f"caliper import: process pool failed ({exc}); reading serially", stacklevel=2)
    return [read_profile(f) for f in files]


def _stringify_conflicts(tables: list[pa.Table]) -> list[pa.Table]:
    """Columns whose types cannot be promoted into one (a key that is a number in one file and text in
    another) become strings everywhere."""
    types: dict[str, set[pa.DataType]] = {}
    for t in tables:
        for f in t.schema:
            if f.type != pa.null():
                types.setdefault(f.name, set()).add(f.type)
    numeric = (pa.types.is_integer, pa.types.is_floating)
    conflicts = {
        name
        for name, ts in types.items()
        if len(ts) > 1 and not all(any(check(t) for check in numeric) for t in ts)
    }
    out = []
    for t in tables:
        for name in conflicts & set(t.column_names):
            i = t.schema.get_field_index(name)
            text = pa.array([None if v is None else str(v) for v in t.column(name).to_pylist()], pa.string())
            t = t.set_column(i, t.schema.field(i).with_type(pa.string()), text)
        out.append(t)
    return out


def _unify(tables: list[pa.Table]) -> pa.Table:
    """Union of the tables' columns: missing -> null, int + float -> float, other clashes -> string."""
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        return pa.concat_tables(_stringify_conflicts(tables), promote_options="permissive")


def _kind(field: pa.Field) -> str:
    return (field.metadata or {}).get(b"kind", b"").decode()


def concat_profiles(profiles: list[Profile]) -> pa.Table:
    """All profiles as one table. Rows and constants are unified separately, then the constants (one row per
    file) are repeated over their file's rows with a single `take`. Columns come by kind (structure,
    metric, attribute, adiak, global), then by first appearance."""
    rows = _unify([p.rows for p in profiles])
    constants = _unify([p.constants for p in profiles])
    counts = [p.rows.num_rows for p in profiles]
    constants = constants.take(pa.array(np.repeat(np.arange(len(profiles)), counts), pa.int64()))
    fields = [*constants.schema, *rows.schema]
    arrays = [*constants.columns, *rows.columns]
    taken: set[str] = set()
    for i, f in enumerate(fields):  # a name that is a record attribute in one file and a global in another
        if f.name in taken:
            fields[i] = f.with_name(f"{f.name}_{_kind(f)}")
        taken.add(fields[i].name)
    rank = {kind: i for i, kind in enumerate(KINDS)}
    order = sorted(range(len(fields)), key=lambda i: (rank.get(_kind(fields[i]), 0), i))
    return pa.Table.from_arrays([arrays[i] for i in order], schema=pa.schema([fields[i] for i in order]))


def read_caliper_file(file: Path) -> pa.Table:
    """One `.cali` file as a table: one row per record caliper-reader gives, in the file's order."""
    return concat_profiles([read_profile(Path(file))])


@ingester(
    "caliper",
    patterns=("*.cali",),
    description="Caliper .cali profiles: one row per profile x region, metrics and Adiak metadata as columns",
)
def ingest_caliper(files: list[Path]) -> pa.Table:
    """Caliper profiles, read with caliper-reader; see docs/ingest-caliper.md for the schema."""
    if not files:
        raise BadInput("caliper import: no .cali files given")
    return concat_profiles(read_profiles(files))
