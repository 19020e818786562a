"""Shards: atomic writes, provenance, schema unification, attempts."""

from __future__ import annotations

import json
import os
from dataclasses import fields, replace
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from perfscale.errors import FailureKind
from perfscale.plan import build_plan
from perfscale.spec import load_site
from perfscale.spec.study import Study
from perfscale.store import PROVENANCE_COLUMNS, Provenance, RunStore
from perfscale.store.atomic import atomic_write
from perfscale.store.attempt import ATTEMPT_SCHEMA, Attempt


def _store(tmp_path: Path, n: int = 3) -> RunStore:
    study = Study.model_validate(
        {
            "name": "s",
            "stages": {
                "a": {
                    "kind": "function",
                    "params": {"callable": "fns.py:square"},
                    "grid": {"product": {"x": list(range(n))}},
                }
            },
        }
    )
    return RunStore.create(tmp_path / "run", "name: s\n", load_site("local"), build_plan(study))


def _prov(key: str) -> Provenance:
    return Provenance(key, "local", "host", datetime(2026, 1, 1, tzinfo=timezone.utc), 0.5, 1)


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "x.parquet"

    def half_write(tmp: Path) -> None:
        tmp.write_bytes(b"PAR1 half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, half_write)
    assert list(tmp_path.iterdir()) == []


def test_temp_files_are_invisible_to_readers(tmp_path):
    store = _store(tmp_path)
    key = store.plan.tasks[0].key
    store.stage_dir("a").mkdir(parents=True)
    (store.stage_dir("a") / f".{key}.parquet.123.abcd.tmp").write_bytes(b"partial")
    assert store.done_keys("a") == set()
    assert store.read_stage("a").num_rows == 0


def test_provenance_and_schema_unification(tmp_path):
    store = _store(tmp_path)
    k0, k1, k2 = (t.key for t in store.plan.tasks)
    store.write_shard("a", k0, pd.DataFrame({"x": [1, 2], "y": [10, 20]}), _prov(k0))
    store.write_shard("a", k1, pd.DataFrame({"x": [3.5], "z": ["s"]}), _prov(k1))
    table = store.read_stage("a")
    assert table.num_rows == 3
    assert set(PROVENANCE_COLUMNS) <= set(table.column_names)
    assert table.schema.field("x").type == pa.float64()  # int64 and double unify to double
    df = table.to_pandas().sort_values("x")
    assert df["y"].isna().tolist() == [False, False, True]
    assert df["z"].isna().tolist() == [True, True, False]
    assert set(df["_task_key"]) == {k0, k1}
    assert k2 not in store.done_keys("a")
    bare = store.read_stage("a", provenance=False)
    assert set(bare.column_names) == {"x", "y", "z"}


def test_reserved_column_names_are_rejected(tmp_path):
    store = _store(tmp_path)
    key = store.plan.tasks[0].key
    with pytest.raises(ValueError, match="reserved provenance column"):
        store.write_shard("a", key, pd.DataFrame({"_host": ["h"]}), _prov(key))
    assert not store.shard_path("a", key).exists()
    # the data's own columns may be called like what provenance records (a job trace's duration_s)
    store.write_shard("a", key, pd.DataFrame({"host": ["h"], "duration_s": [3]}), _prov(key))
    row = store.read_stage("a").to_pylist()[0]
    assert row["host"] == "h" and row["duration_s"] == 3 and row["_duration_s"] == 0.5


def test_shards_of_keys_outside_the_plan_are_ignored(tmp_path):
    store = _store(tmp_path)
    store.write_shard("a", "0" * 20, pd.DataFrame({"x": [99]}), _prov("0" * 20))
    assert store.read_stage("a").num_rows == 0


def test_empty_output_is_still_a_completion_marker(tmp_path):
    store = _store(tmp_path)
    key = store.plan.tasks[0].key
    store.write_shard("a", key, pd.DataFrame(), _prov(key))
    assert key in store.done_keys("a")


def test_attempts_round_trip(tmp_path):
    store = _store(tmp_path)
    now = datetime.now(timezone.utc)
    rec = Attempt("k", "a", 0, 1, "h", os.getpid(), now, now, 0.1, False, 3, "app_error", "boom")
    store.append_attempts([rec])
    store.append_attempts([replace(rec, attempt=2, ok=True, failure_kind=None)])
    df = store.attempts().sort_values("attempt")
    assert df["attempt"].tolist() == [1, 2]
    assert df["failure_kind"].tolist()[0] == "app_error"
    assert Attempt(**df.iloc[0].to_dict()) == rec  # a row reads back as the record it was


def test_attempt_schema_is_the_dataclass():
    assert ATTEMPT_SCHEMA.names == [f.name for f in fields(Attempt)]
    assert ATTEMPT_SCHEMA.field("started_at").type == pa.timestamp("us", tz="UTC")
    assert ATTEMPT_SCHEMA.field("pid").type == pa.int64() and ATTEMPT_SCHEMA.field("ok").type == pa.bool_()
    lost = Attempt.recorded("k", "a", 0, 2, FailureKind.NODE_LOST, "worker died")
    assert (lost.host, lost.pid, lost.duration_s, lost.ok, lost.failure_kind) == (
        None,
        None,
        None,
        False,
        "node_lost",
    )
    assert Attempt.from_json(json.loads(json.dumps(lost.to_json()))) == lost


def test_temp_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path: Path):
    import subprocess

    from perfscale.store.atomic import remove_dead_writers_temps

    dead_pid = subprocess.Popen(["true"])  # a process that has ended and been reaped: its pid is free
    dead_pid.wait()
    shard = tmp_path / "stage" / "k.parquet"
    shard.parent.mkdir()
    dead = shard.with_name(f".{shard.name}.{dead_pid.pid}.0123abcd.tmp")
    live = shard.with_name(f".{shard.name}.{os.getpid()}.0123abcd.tmp")
    foreign = shard.with_name(".notes.tmp")  # not a name atomic writes make
    for path in (dead, live, foreign):
        path.write_bytes(b"half")
    assert remove_dead_writers_temps(tmp_path) == 1
    assert not dead.exists() and live.exists() and foreign.exists()
