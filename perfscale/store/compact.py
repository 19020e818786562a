"""Compaction: a stage's loose shards merged into packs (store/packs.py), atomically, losing nothing.

`compact_stage` packs the stage's done loose shards, in plan order, into packs of at most `MAX_PACK_BYTES`
of shard files and `MAX_PACK_TASKS` tasks each. For each pack:

1. the shards' footers are read (key, rows, attempt, artifacts) with each file's size and mtime, then their
   rows, as one table with the stage's unified schema;
   (each shard passes the done-check first: its footer names the task, holds its rows, its artifacts are
   there; one that fails is quarantined as the done-check would);
2. the pack is written whole and renamed into place;
3. each packed shard is deleted while its size and mtime are still those recorded in step 1, and the
   stage's done index forgets it.

A kill before step 2 leaves a temp file (removed as a dead writer's) and every shard as it was. A kill
during step 3 leaves loose shards identical to their packed copies; readers take the loose copy (the same
rows), and the next compaction deletes them first (`finish_deletes`). So at every moment each done task has
at least one readable copy, and tables read the same.

Only one compaction runs on a run folder at a time: callers hold the run's lock (RUN/.lock), as
`perfscale compact` and `perfscale run` (which compacts as it goes) do. Array elements, which hold no lock,
pack only their own tasks' shards (`pack_element`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from perfscale.store import done_index, recover, task_attempts
from perfscale.store.atomic import atomic_write_table
from perfscale.store.attempt import ATTEMPT_SCHEMA
from perfscale.store.packs import INDEX_SCHEMA, new_pack_name, write_pack
from perfscale.store.run import RunStore
from perfscale.store.shards import check_shard

MAX_PACK_BYTES = 256 << 20  # of shard files per pack: bounds the memory a compaction holds
MAX_PACK_TASKS = 20_000
log = logging.getLogger(__name__)


@dataclass
class Compacted:
    """What one compaction of a stage did."""

    stage: str
    packed: int = 0  # shards merged into new packs
    packs: int = 0  # packs written
    leftovers: int = 0  # shards of an interrupted compaction deleted (already packed)
    loose_before: int = 0
    loose_after: int = 0


def finish_deletes(store: RunStore, stage: str) -> int:
    """Delete the loose shards that a pack already holds unchanged (an earlier compaction was killed before
    deleting them): same size and mtime as the pack recorded. Returns how many."""
    packs = store.packs(stage)
    folder = store.stage_dir(stage)
    removed = []
    for key in store.listed_keys(stage) if packs.keys() else ():
        pack = packs.pack_of(key)
        path = f"{folder}/{key}.parquet"
        if pack is not None and done_index.stat_entry(path) == pack.shard_of(key):
            _unlink(path)
            removed.append(key)
    _forget(store, stage, removed)
    return len(removed)


def _unlink(path: str) -> None:
    """Delete a packed shard; one already gone was deleted by an element packing the same shard (their
    packs hold the same rows)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _forget(store: RunStore, stage: str, keys: Iterable[str]) -> None:
    """Drop `keys` from the stage's done index (their loose shards are gone)."""
    gone = set(keys)
    if not gone:
        return
    entries, _lines = done_index.read_index(store.root, stage)
    done_index.rewrite_index(store.root, stage, {k: e for k, e in entries.items() if k not in gone})


def _chunks(store: RunStore, stage: str, keys: list[str]) -> Iterable[list[tuple[str, str]]]:
    """(key, "size mtime_ns") of the loose shards to pack, cut into packs by size and count."""
    folder = store.stage_dir(stage)
    chunk: list[tuple[str, str]] = []
    size = 0
    for key in keys:
        stat = done_index.stat_entry(f"{folder}/{key}.parquet")
        if stat is None:
            continue
        nbytes = int(stat.split(" ", 1)[0])
        if chunk and (size + nbytes > MAX_PACK_BYTES or len(chunk) >= MAX_PACK_TASKS):
            yield chunk
            chunk, size = [], 0
        chunk.append((key, stat))
        size += nbytes
    if chunk:
        yield chunk


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns, in its order: missing ones null, others cast (promoted)."""
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _pack(store: RunStore, stage: str, chunk: list[tuple[str, str]], forget: bool = True) -> int:
    """Write one pack of `chunk`'s shards, then delete them; the number of shards packed. `forget`: drop
    them from the stage's done index (a rewrite of the whole index)."""
    folder = store.stage_dir(stage)
    schemas, index, tables, bad, kept = {}, [], [], {}, []
    for key, stat in chunk:
        path = f"{folder}/{key}.parquet"
        footer, problem = check_shard(path, key, store.artifact_dir(stage, key))  # the done-check's
        if footer is None or problem is not None:
            if problem is not None:
                bad[key] = problem
            continue
        kept.append((key, stat))
        meta = footer.meta or {}
        attempt, artifacts = meta.get("attempt"), meta.get("artifacts")
        own = footer.schema.remove_metadata()
        index.append(
            {
                "key": key,
                "rows": footer.num_rows,
                "shard": stat,
                "attempt": json.dumps(attempt, sort_keys=True) if attempt else None,
                "artifacts": json.dumps(artifacts, sort_keys=True) if artifacts else None,
                "schema": schemas.setdefault(own, len(schemas)),
            }
        )
        if footer.num_rows:  # the footer just parsed is reused; an empty shard has nothing more to read
            with pa.OSFile(path) as source:
                table = pq.ParquetFile(source, metadata=footer.parquet).read()
            tables.append(table.replace_schema_metadata())
    if bad:
        recover.quarantine_shards(store, stage, bad)
    if not kept:
        return 0
    distinct = list(schemas)
    schema = pa.unify_schemas(distinct, promote_options="permissive")
    rows = pa.concat_tables(tables, promote_options="permissive") if tables else schema.empty_table()
    write_pack(folder, _conform(rows, schema), pa.Table.from_pylist(index, schema=INDEX_SCHEMA), distinct)
    removed = []
    for key, stat in kept:
        path = f"{folder}/{key}.parquet"
        if done_index.stat_entry(path) == stat:  # a shard rewritten since it was read is newer: kept
            _unlink(path)
            removed.append(key)
    if forget:
        _forget(store, stage, removed)
    return len(kept)


def _pack_chunks(
    store: RunStore, result: Compacted, chunks: Iterable[list[tuple[str, str]]], forget: bool = True
) -> None:
    """Pack each chunk of `result.stage` (`_pack`), counting the shards and packs into `result`."""
    for chunk in chunks:
        packed = _pack(store, result.stage, chunk, forget)
        result.packed += packed
        result.packs += packed > 0


def compact_stage(store: RunStore, stage: str, min_shards: int = 2) -> Compacted:
    """Merge the stage's done loose shards into packs (nothing when fewer than `min_shards`)."""
    result = Compacted(stage)
    result.leftovers = finish_deletes(store, stage)
    loose = store.listed_keys(stage)
    result.loose_before = result.loose_after = len(loose)
    if len(loose) < min_shards:
        return result
    keys = [k for k in store.plan_keys.get(stage, {}) if k in loose]  # plan order; each is checked in _pack
    _pack_chunks(store, result, _chunks(store, stage, keys))
    result.loose_after = len(store.listed_keys(stage))
    log.info(
        "compacted stage %s: %d shards into %d packs (%d loose files left, %d leftovers removed)",
        stage,
        result.packed,
        result.packs,
        result.loose_after,
        result.leftovers,
    )
    return result


def element_pack_every(store: RunStore, stage: str) -> int:
    """How many tasks an array element of `stage` runs between packings of their shards: the site's
    `compact_every` in stages of at least that many tasks (where `perfscale run` would compact), else 0
    (elements do not pack)."""
    every = store.site.compact_every
    return every if every and len(store.plan_keys.get(stage, {})) >= every else 0


def pack_element(store: RunStore, indices: Iterable[int]) -> list[Compacted]:
    """What an array element does after its tasks (launchers/element.sh.j2, `perfscale task pack`): the
    loose done shards of its own tasks (`indices`) merged into packs, in stages of at least the site's
    `compact_every` tasks (the threshold at which `perfscale run` compacts; 0: never). One result per stage
    with something packed.

    Elements take no run lock: a task is its element's alone while the element runs (a resubmission never
    takes a task queued or running), so concurrent elements pack disjoint shards, and one racing a locked
    `perfscale compact` packs the same rows twice (readers take the newer pack). The stage's done index is
    not rewritten (O(stage) per element): a line of a packed shard is stale, and the next full done-check
    drops it."""
    wanted, results = set(indices), []
    for stage, keys in store.plan_keys.items():
        if not element_pack_every(store, stage):
            continue
        chunks = list(_chunks(store, stage, [k for k, i in keys.items() if i in wanted]))  # plan order
        result = Compacted(stage)
        if sum(map(len, chunks)) >= 2:
            _pack_chunks(store, result, chunks, forget=False)
        if result.packed:
            log.info("packed %d shards of stage %s into %d packs", result.packed, stage, result.packs)
            results.append(result)
    return results


def compact_attempts(store: RunStore, min_files: int = 2) -> int:
    """Merge the runner's attempt batch files (one per 2 s of a run: they grow with time) into one, named
    `merged-...` with the names of the files it holds in its footer, then delete those. Returns how many
    files were merged (0 when fewer than `min_files`). Unreadable files are quarantined (recover.py)."""
    folder = store.root / "attempts"
    for merged in folder.glob(f"{task_attempts.MERGED_PREFIX}*.parquet"):  # a merge killed before deleting
        for name in task_attempts.merged_sources(merged):
            (folder / name).unlink(missing_ok=True)
    files = task_attempts.batch_files(store.root)
    if len(files) < min_files:
        return 0
    held = [Path(f).name for f in files]
    for f in files:  # a merged file merged again: the names it holds stay held
        if Path(f).name.startswith(task_attempts.MERGED_PREFIX):
            held += task_attempts.merged_sources(f)
    table = recover.read_attempt_files(store, files, ATTEMPT_SCHEMA)
    meta = {task_attempts.MERGED_META: json.dumps(sorted(set(held))).encode()}
    name = f"{task_attempts.MERGED_PREFIX}{new_pack_name()}.parquet"
    atomic_write_table(table.replace_schema_metadata(meta), folder / name)
    for f in files:
        Path(f).unlink(missing_ok=True)
    log.info("merged %d attempt batch files of %s into %s", len(files), store.root, name)
    return len(files)


def compact_run(store: RunStore, stages: Iterable[str] | None = None, min_shards: int = 2) -> list[Compacted]:
    """Compact each stage of the run (default: every stage of its plan), then its attempt batch files."""
    done = [compact_stage(store, s, min_shards) for s in (stages or list(store.plan_keys))]
    compact_attempts(store)
    return done
