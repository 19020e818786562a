"""Shard packs: many tasks' shards merged into one Parquet file, so a stage's file count grows with its data,
not with its task count (a million small files in one folder is how a parallel file system's administrators
find you).

    RUN/stages/<stage>/packs/<name>.parquet

- `name` is `<creation time in ns, 20 digits>-<pid>-<random>`: sorting names sorts packs by age.
- Its rows are the packed shards' rows, task after task in plan order; each row keeps its `_task_key`.
- Its footer's key-value metadata holds, under `perfscale.pack`, the pack's *index*: an Arrow IPC stream
  (zstd) of one row per packed task (`INDEX_SCHEMA`): the key, its row count, the `"size mtime_ns"` of the
  shard file it was packed from, the shard footer's attempt record and artifact list (JSON), and which of
  the pack's distinct shard schemas (under `perfscale.pack.schemas`) the task's own shard had. A pack's
  columns are the union of its shards'; a read of some tasks gets the union of *their* schemas, as it would
  have from their loose shards.

A pack is written whole and renamed into place (store/atomic.py), data and index in one file, so there is no
moment at which a reader sees half a pack. The contract "a task whose shard exists is done" becomes "a task
whose shard exists, or that a readable pack lists, is done" (RunStore.done_keys). Which copy of a task's rows
counts when there are two:

- a loose shard wins over a pack: a task packed, then found not done (an artifact it lists was deleted) runs
  again and writes a loose shard, newer than the pack;
- of two packs, the newer one wins (that task's loose shard was packed again).

Compaction (store/compact.py) writes a pack and only then deletes the loose shards it packed, each only while
its size and mtime are still those the pack recorded; a compaction killed in between leaves loose shards
identical to their packed copies, which win (same rows) until the next compaction deletes them.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from perfscale.store.atomic import atomic_write_table
from perfscale.store.attempt import Attempt
from perfscale.store.shards import BadShard, one_line

PACK_META = b"perfscale.pack"
SCHEMAS_META = b"perfscale.pack.schemas"
PACKS = "packs"
INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("rows", pa.int64()),
        ("shard", pa.string()),  # "size mtime_ns" of the loose shard the task's rows came from
        ("attempt", pa.string()),  # JSON of the shard footer's attempt record, or null
        ("artifacts", pa.string()),  # JSON {path: bytes} of the task's artifacts, or null when it has none
        ("schema", pa.int32()),  # position of the task's own shard schema in the pack's list of schemas
    ]
)
log = logging.getLogger(__name__)


def pack_folder(stage_dir: Path | str) -> Path:
    return Path(stage_dir) / PACKS


def new_pack_name() -> str:
    return f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _index_bytes(index: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, INDEX_SCHEMA, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(index)
    return sink.getvalue().to_pybytes()


def write_pack(stage_dir: Path | str, data: pa.Table, index: pa.Table, schemas: list[pa.Schema]) -> Path:
    """Write one pack atomically and return its path: rows `data` (as many as `index.rows` sums to), and in
    its footer the index and the distinct shard `schemas` that `index.schema` points into."""
    if data.num_rows != sum(index.column("rows").to_pylist()):
        raise ValueError(f"pack data has {data.num_rows} rows, its index counts {index.column('rows')}")
    meta = {
        **(data.schema.metadata or {}),
        PACK_META: _index_bytes(index.cast(INDEX_SCHEMA)),
        SCHEMAS_META: json.dumps(
            [base64.b64encode(s.serialize().to_pybytes()).decode() for s in schemas]
        ).encode(),
    }
    path = pack_folder(stage_dir) / f"{new_pack_name()}.parquet"
    return atomic_write_table(data.replace_schema_metadata(meta), path)


@dataclass(frozen=True)
class Pack:
    """One pack's index, read from its footer."""

    path: Path
    index: pa.Table
    stat: str  # "size mtime_ns" of the pack file when its index was read
    schema: pa.Schema  # the pack file's: the union of its shards'
    schemas: list[pa.Schema]  # the distinct schemas of its shards

    @cached_property
    def _row(self) -> dict[str, int]:
        return {key: i for i, key in enumerate(self.keys())}

    @cached_property
    def _columns(self) -> dict[str, list[Any]]:
        return {}

    def _value(self, column: str, key: str) -> Any:
        """Task `key`'s value in the index `column` (each column made a list once: lookups by the million)."""
        return self._value_list(column)[self._row[key]]

    def schema_of(self, key: str) -> pa.Schema:
        """The schema of the task's own shard."""
        return self.schemas[self._value("schema", key)]

    def shard_of(self, key: str) -> str:
        """ "size mtime_ns" of the loose shard the task was packed from."""
        return self._value("shard", key)

    def attempt(self, key: str) -> Attempt | None:
        """The record of the attempt that wrote the task's shard (None for a shard that had none)."""
        record = self._value("attempt", key)
        return Attempt.from_json(json.loads(record)) if record else None

    def keys(self) -> list[str]:
        return self._value_list("key")

    def _value_list(self, column: str) -> list[Any]:
        """The index `column` as a list, made once."""
        values = self._columns.get(column)
        if values is None:
            values = self._columns[column] = self.index.column(column).to_pylist()
        return values

    @cached_property
    def with_artifacts(self) -> dict[str, dict[str, int]]:
        """{key: artifacts} of the packed tasks that list artifacts (the done-check checks their files)."""
        import pyarrow.compute as pc

        listed = self.index.filter(pc.is_valid(self.index.column("artifacts")))
        return {
            k: json.loads(a)
            for k, a in zip(
                listed.column("key").to_pylist(), listed.column("artifacts").to_pylist(), strict=True
            )
        }


def read_pack(path: Path | str) -> Pack:
    """A pack's index from its footer; BadShard when the file is not a complete pack."""
    path = Path(path)
    try:
        with pa.OSFile(str(path)) as source:
            md = pq.read_metadata(source)
        raw = (md.metadata or {}).get(PACK_META)
        if raw is None:
            raise BadShard(f"its footer has no {PACK_META.decode()} index")
        index = pa.ipc.open_stream(pa.py_buffer(raw)).read_all()
        st = os.stat(path)
    except FileNotFoundError:
        raise
    except BadShard:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise BadShard(f"not a readable pack ({one_line(exc)})") from None
    if not index.schema.equals(INDEX_SCHEMA):
        raise BadShard(f"its index has columns {index.schema.names}, not {INDEX_SCHEMA.names}")
    counted = pc.sum(index.column("rows")).as_py() or 0
    if counted != md.num_rows:
        raise BadShard(f"its index counts {counted} rows but the file holds {md.num_rows}")
    try:
        raw_schemas = json.loads((md.metadata or {}).get(SCHEMAS_META, b"[]"))
        schemas = [pa.ipc.read_schema(pa.py_buffer(base64.b64decode(x))) for x in raw_schemas]
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise BadShard(f"its list of shard schemas cannot be read ({one_line(exc)})") from None
    ids = pc.min_max(index.column("schema")).as_py()
    if index.column("schema").null_count or (len(index) and not 0 <= ids["min"] <= ids["max"] < len(schemas)):
        raise BadShard(f"its index points at shard schemas it does not have ({len(schemas)} listed)")
    schema = md.schema.to_arrow_schema().remove_metadata()
    return Pack(path, index, f"{st.st_size} {st.st_mtime_ns}", schema, schemas)


class StagePacks:
    """The packs of one stage folder, their indexes cached (packs are written once under unique names and
    never modified, so a listing tells whether the cache is current)."""

    def __init__(self, stage_dir: Path | str):
        self.folder = pack_folder(stage_dir)
        self.packs: dict[str, Pack] = {}
        self._keys: set[str] = set()  # every packed key: all the done-check needs
        self._owner: dict[str, str] | None = None  # key -> name of the newest pack holding it, when asked
        self._listing: tuple[str, ...] | None = None

    def refresh(self) -> list[tuple[Path, str]]:
        """Bring the cache up to date with the folder; returns (path, why) of packs that could not be read."""
        try:
            names = tuple(
                sorted(n for n in os.listdir(self.folder) if n.endswith(".parquet") and n[0] != ".")
            )
        except FileNotFoundError:
            names = ()
        if names == self._listing:
            return []
        bad, packs = [], {}
        for name in names:
            path = self.folder / name
            known = self.packs.get(name)
            if known is not None:
                packs[name] = known
                continue
            try:
                packs[name] = read_pack(path)
            except FileNotFoundError:
                continue
            except BadShard as exc:
                bad.append((path, str(exc)))
        old = self._listing
        if old is not None and not bad and names[: len(old)] == old:  # only newer packs were added
            added = names[len(old) :]
        else:
            added, self._keys, self._owner = names, set(), None
        for name in added:
            if name in packs:
                self._keys.update(packs[name].keys())
                if self._owner is not None:
                    self._owner.update(dict.fromkeys(packs[name].keys(), name))
        self.packs, self._listing = packs, names if not bad else None
        return bad

    def keys(self) -> set[str]:
        """Every key some pack of the stage holds."""
        return self._keys

    def owner(self) -> dict[str, str]:
        """{key: name of the pack whose copy of the task counts} (the newest pack listing it)."""
        if self._owner is None:
            owner: dict[str, str] = {}
            for name, pack in self.packs.items():  # oldest first: a newer pack's keys overwrite older ones'
                owner.update(dict.fromkeys(pack.keys(), name))
            self._owner = owner
        return self._owner

    def pack_of(self, key: str) -> Pack | None:
        name = self.owner().get(key)
        return None if name is None else self.packs[name]

    def schema_of(self, key: str) -> pa.Schema:
        """The schema of the shard a packed task's rows came from (from the pack that owns it)."""
        return self.packs[self.owner()[key]].schema_of(key)


def read_packed(
    packs: StagePacks, keys: list[str], schema: pa.Schema, columns: list[str] | None, filter: Any
) -> list[pa.Table]:
    """The rows of `keys` from the packs that own them, as `schema` (the union of the read's shard schemas,
    narrower than a pack's own when only some of its tasks are read): one table per pack, whole when all its
    keys are wanted and it owns them all, else filtered by `_task_key`."""
    import pyarrow.dataset as ds

    by_pack: dict[str, list[str]] = {}
    for key in keys:
        by_pack.setdefault(packs.owner()[key], []).append(key)
    names = schema.names if columns is None else columns
    want = pa.schema([schema.field(n) for n in names])
    tables = []
    for name, wanted in sorted(by_pack.items()):
        pack = packs.packs[name]
        expr = filter
        if len(wanted) != pack.index.num_rows:
            chosen = ds.field("_task_key").isin(pa.array(wanted, pa.string()))
            expr = chosen if expr is None else (chosen & expr)
        table = ds.dataset([str(pack.path)], format="parquet").to_table(columns=names, filter=expr)
        tables.append(table.cast(want))  # a pack may hold a column wider (int -> double) than these tasks'
    return tables


def in_key_order(table: pa.Table, keys: list[str], keep_key: bool) -> pa.Table:
    """`table`'s rows ordered as their `_task_key`s are in `keys` (stable: a task's rows keep their order);
    `_task_key` is dropped unless `keep_key`."""
    import pyarrow.compute as pc

    position = pc.index_in(table.column("_task_key"), value_set=pa.array(keys, pa.string()))
    table = table.take(pc.sort_indices(position))
    return table if keep_key else table.drop_columns(["_task_key"])
