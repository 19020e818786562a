"""The done index (store/done_index.py): a cache of footer checks, never a change to the done-check."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from perfscale.errors import CorruptFile
from perfscale.plan import build_plan
from perfscale.spec import load_site
from perfscale.spec.study import Study
from perfscale.store import Provenance, RunStore
from perfscale.store.done_index import index_path, read_index


def _store(tmp_path: Path, n: int = 4) -> RunStore:
    study = Study.model_validate(
        {"name": "s", "stages": {"a": {"kind": "noop", "grid": {"product": {"x": list(range(n))}}}}}
    )
    return RunStore.create(tmp_path / "run", "name: s\n", load_site("local"), build_plan(study))


def _write_all(store: RunStore) -> list[str]:
    keys = list(store.plan_keys["a"])
    for k in keys:
        prov = Provenance(k, "local", "host", datetime(2026, 1, 1, tzinfo=timezone.utc), 0.1, 1)
        store.write_shard("a", k, pd.DataFrame({"v": [1.0]}), prov)
    return keys


def test_written_shards_are_indexed_and_found_done(tmp_path):
    store = _store(tmp_path)
    keys = _write_all(store)
    entries, _ = read_index(store.root, "a")
    assert set(entries) == set(keys)
    assert store.done_keys("a") == set(keys)


def test_a_shard_changed_after_indexing_is_checked_again_and_quarantined(tmp_path):
    store = _store(tmp_path)
    keys = _write_all(store)
    store.shard_path("a", keys[0]).write_bytes(b"garbage, not parquet")
    store.shard_path("a", keys[1]).unlink()
    assert store.done_keys("a") == set(keys[2:])
    assert list((store.root / "quarantine" / "stages" / "a").iterdir())  # the garbage was moved away
    kinds = store.task_attempts(keys[0])["failure_kind"].tolist()
    assert kinds == ["corrupt_output"]


def test_a_lost_or_garbled_index_is_rebuilt_from_the_footers(tmp_path):
    store = _store(tmp_path)
    keys = _write_all(store)
    path = Path(index_path(store.root, "a"))
    path.write_text(f"nonsense line\n{keys[0]} 12 x\nnot-a-key 1 2\n{keys[1]} 1")  # torn last line
    assert store.done_keys("a") == set(keys)
    assert set(read_index(store.root, "a")[0]) >= set(keys)
    path.unlink()
    assert store.done_keys("a") == set(keys)
    assert set(read_index(store.root, "a")[0]) == set(keys)


def test_shards_with_artifacts_are_never_indexed(tmp_path):
    store = _store(tmp_path, n=1)
    (key,) = store.plan_keys["a"]
    model = store.clear_artifacts("a", key) / "model.bin"
    model.write_bytes(b"weights")
    prov = Provenance(key, "local", "host", datetime(2026, 1, 1, tzinfo=timezone.utc), 0.1, 1)
    store.write_shard("a", key, pd.DataFrame({"v": [1.0]}), prov)
    assert store.done_keys("a") == {key}
    assert read_index(store.root, "a")[0] == {}
    model.unlink()  # the user deletes the model: the task is not done any more
    assert store.done_keys("a") == set()


def test_the_index_trusts_size_and_mtime_and_read_stage_still_catches_a_forged_shard(tmp_path):
    """What the cache does not see: a shard rewritten in place to the same size with its mtime put back. The
    done-check trusts it (it does not open it); reading the stage finds it and quarantines it."""
    store = _store(tmp_path, n=2)
    keys = _write_all(store)
    path = store.shard_path("a", keys[0])
    st = os.stat(path)
    path.write_bytes(b"x" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert store.done_keys("a") == set(keys)
    with pytest.raises(CorruptFile, match=keys[0]):
        store.read_stage("a")
    assert store.done_keys("a") == {keys[1]}


def test_a_mostly_stale_index_is_rewritten(tmp_path):
    store = _store(tmp_path, n=2)
    keys = _write_all(store)
    path = Path(index_path(store.root, "a"))
    with path.open("a") as f:
        f.writelines(f"gone{i} 1 2\n" for i in range(3000))
    assert store.done_keys("a") == set(keys)
    entries, lines = read_index(store.root, "a")
    assert set(entries) == set(keys) and lines == len(keys)


def test_one_tasks_check_leaves_the_index_alone(tmp_path):
    """`shard_done` (a worker's check of its own task) reads its footer, not the stage's growing index."""
    store = _store(tmp_path, n=2)
    keys = _write_all(store)
    before = Path(index_path(store.root, "a")).read_bytes()
    assert store.shard_done("a", keys[0])
    assert Path(index_path(store.root, "a")).read_bytes() == before
