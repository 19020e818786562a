"""Compaction (store/compact.py, store/packs.py): tables, done-ness and status read the same before and after,
a compaction killed at any moment loses nothing, and a rerun after it redoes nothing."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from perfscale.cli import main
from perfscale.runner import prepare_run, run_plan
from perfscale.spec import load_site
from perfscale.status import run_status
from perfscale.store import RunStore, task_attempts
from perfscale.store.attempt import Attempt
from perfscale.store.compact import compact_attempts, compact_stage
from perfscale.store.packs import PACKS
from perfscale.store.recover import RECOVERED_MESSAGE

N = 24
STUDY = f"""\
name: packed
stages:
  rows:
    kind: function
    params: {{callable: "fns.py:rows_of"}}
    grid:
      product: {{x: {list(range(N))}}}
  model:
    kind: function
    params: {{callable: "fns.py:write_model"}}
    grid:
      product: {{x: [1, 2, 3, 4]}}
"""


def _snapshot(store: RunStore) -> dict[str, object]:
    """Everything a reader sees of the run: tables (several ways), done sets, status counts."""
    rows = store.read_stage("rows")
    some = list(store.plan_keys["rows"])[3:9:2]
    return {
        "rows": rows,
        "rows_plain": store.read_stage("rows", provenance=False),
        "rows_some": store.read_stage("rows", keys=some),
        "rows_filtered": store.read_stage("rows", filter=ds.field("v") > 20),
        "model": store.read_stage("model"),
        "done": {s: store.done_keys(s) for s in ("rows", "model")},
        "status": [(s.stage, s.done, s.failed, s.missing, s.recovered) for s in run_status(store)],
    }


def _assert_same(a: dict[str, object], b: dict[str, object]) -> None:
    for name, value in a.items():
        other = b[name]
        if hasattr(value, "equals"):
            assert value.schema == other.schema, name
            assert value.equals(other), name  # same rows, same order
        else:
            assert value == other, name


def _loose(store: RunStore, stage: str) -> list[Path]:
    return sorted(store.stage_dir(stage).glob("*.parquet"))


@pytest.fixture
def finished(write_study, tmp_path) -> tuple[Path, RunStore]:
    study = write_study(STUDY)
    store = prepare_run(study, load_site("local"), tmp_path / "run")
    summary = run_plan(store, "local", workers=2, progress=False, compact_every=0)
    assert summary["rows"].done == N and summary["model"].done == 4
    return study, store


def test_compact_reads_the_same_and_a_rerun_redoes_nothing(finished, capsys):
    _study, store = finished
    before = _snapshot(store)
    assert before["rows"].num_rows == sum(range(N))
    assert len(_loose(store, "rows")) == N

    assert main(["compact", str(store.root)]) == 0
    assert "shards packed" in capsys.readouterr().out
    for stage in ("rows", "model"):
        assert _loose(store, stage) == []  # every loose shard is in a pack now
        packs = list((store.stage_dir(stage) / PACKS).glob("*.parquet"))
        assert len(packs) == 1
    _assert_same(before, _snapshot(RunStore(store.root)))

    fresh = RunStore(store.root)
    summary = run_plan(fresh, "local", workers=2, progress=False)
    assert {s: (x.ran, x.done) for s, x in summary.items()} == {"rows": (0, N), "model": (0, 4)}
    # an array element given a packed task finds it done and writes nothing
    assert main(["task", "run", str(fresh.plan_path), "0"]) == 0
    assert "already done" in capsys.readouterr().out
    assert _loose(fresh, "rows") == []
    # the attempt that wrote a packed task is still known (lost-bundle recovery reads it)
    key = next(iter(fresh.plan_keys["rows"]))
    record = fresh.finished_attempt("rows", key)
    assert record is not None and record.ok and record.task_key == key


def test_an_array_element_packs_its_own_tasks_shards_in_stages_past_compact_every(
    write_study, tmp_path, capsys, monkeypatch
):
    """`perfscale task pack` (what an element runs after its tasks, launchers/element.sh.j2) packs the loose
    shards of the indices on its stdin only, in stages of at least the site's compact_every tasks (`rows`:
    24 >= 8; `model`: 4 < 8 keeps its shards loose), and every table reads the same."""
    site = load_site("local").model_copy(update={"compact_every": 8})
    store = prepare_run(write_study(STUDY), site, tmp_path / "run")
    run_plan(
        store, "local", workers=2, progress=False, compact_every=0
    )  # loose shards, as elements leave them
    before = _snapshot(store)
    rows, model = store.plan_keys["rows"], store.plan_keys["model"]
    element = sorted(rows.values())[5:15] + sorted(model.values())

    def pack(indices: list[int]) -> str:
        monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(map(str, indices)) + "\n"))
        assert main(["task", "pack", str(store.plan_path)]) == 0
        return capsys.readouterr().out

    assert pack(element).strip() == "stage rows: 10 shards packed into 1 packs"
    packed = {k for k, i in rows.items() if i in element}
    assert {p.stem for p in _loose(store, "rows")} == set(rows) - packed
    assert len(_loose(store, "model")) == 4
    assert len(list((store.stage_dir("rows") / PACKS).glob("*.parquet"))) == 1
    assert RunStore(store.root).packs("rows").keys() == packed
    _assert_same(before, _snapshot(RunStore(store.root)))
    assert pack(element).strip() == ""  # nothing of the element is loose any more
    assert pack([]).strip() == ""
    monkeypatch.setattr(sys, "stdin", io.StringIO("3 ../x\n"))
    assert main(["task", "pack", str(store.plan_path)]) == 2
    assert "stdin must hold task indices, not '../x'" in capsys.readouterr().err


def test_a_killed_compaction_leaves_copies_that_read_the_same_and_are_cleaned_next_time(finished):
    _study, store = finished
    before = _snapshot(store)
    saved = store.root / "saved"
    saved.mkdir()
    for shard in _loose(store, "rows"):
        shutil.copy2(shard, saved / shard.name)  # same bytes and mtime: as if never deleted
    assert compact_stage(store, "rows").packed == N
    for copy in saved.iterdir():  # the state a kill between writing the pack and deleting leaves
        os.rename(copy, store.stage_dir("rows") / copy.name)
    _assert_same(before, _snapshot(RunStore(store.root)))  # each task read once, not twice

    again = compact_stage(RunStore(store.root), "rows")
    assert (again.leftovers, again.packed, again.packs, again.loose_after) == (N, 0, 0, 0)
    _assert_same(before, _snapshot(RunStore(store.root)))


def test_a_packed_task_whose_artifact_is_gone_runs_again_and_its_new_shard_wins(finished):
    _study, store = finished
    compact_stage(store, "model")
    key = list(store.plan_keys["model"])[1]
    shutil.rmtree(store.artifact_dir("model", key))
    fresh = RunStore(store.root)
    assert key not in fresh.done_keys("model")

    summary = run_plan(fresh, "local", workers=2, progress=False, compact_every=0)
    assert (summary["model"].ran, summary["model"].done) == (1, 4)
    table = RunStore(store.root).read_stage("model").to_pandas()
    assert len(table) == 4 and table["_task_key"].tolist() == list(store.plan_keys["model"])
    assert table.set_index("_task_key").loc[key, "_attempt"] == 2  # the rerun's copy, not the packed one


def test_a_corrupt_pack_is_quarantined_and_its_tasks_run_again(finished, caplog):
    _study, store = finished
    compact_stage(store, "rows")
    (pack,) = (store.stage_dir("rows") / PACKS).glob("*.parquet")
    with open(pack, "r+b") as f:
        f.truncate(pack.stat().st_size // 2)
    fresh = RunStore(store.root)
    assert fresh.done_keys("rows") == set()
    assert not pack.exists() and list((store.root / "quarantine").rglob("*.parquet*"))
    assert "corrupt pack" in caplog.text and str(pack) in caplog.text
    summary = run_plan(fresh, "local", workers=2, progress=False, compact_every=0)
    assert summary["rows"].ran == N


def test_sigkill_during_perfscale_compact_loses_nothing(finished):
    """Real SIGKILLs at spread moments of a compaction that writes many small packs (4 tasks each)."""
    _study, store = finished
    before = _snapshot(store)
    script = (
        "import sys; import perfscale.store.compact as c; c.MAX_PACK_TASKS = 4; "
        "from perfscale.cli import main; sys.exit(main(['compact', sys.argv[1], 'rows']))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    cmd = [sys.executable, "-c", script, str(store.root)]
    t0 = time.monotonic()
    probe = RunStore(store.root)
    killed_mid = 0
    for delay in (0.0, 0.005, 0.01, 0.02, 0.04):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # kill once the first pack exists (the import is done), a little later each time
        deadline = time.monotonic() + 60
        packs = store.stage_dir("rows") / PACKS
        while time.monotonic() < deadline and proc.poll() is None:
            if packs.exists() and any(packs.glob("*.parquet")):
                break
            time.sleep(0.002)
        time.sleep(delay)
        running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_mid += running and bool(_loose(store, "rows"))
        _assert_same(before, _snapshot(RunStore(store.root)))
        if not _loose(store, "rows"):
            break
    assert time.monotonic() - t0 < 300
    assert main(["compact", str(store.root)]) == 0
    assert _loose(store, "rows") == []
    _assert_same(before, _snapshot(RunStore(store.root)))
    assert killed_mid >= 1  # at least one kill landed while packs and loose shards coexisted
    assert probe.done_keys("rows") == before["done"]["rows"]


def test_compaction_quarantines_a_bad_shard_instead_of_packing_it(finished):
    _study, store = finished
    victim = _loose(store, "rows")[5]
    victim.write_bytes(b"PAR1 not a footer")
    result = compact_stage(store, "rows")
    assert (result.packed, result.loose_after) == (N - 1, 0)
    assert victim.name.removesuffix(".parquet") not in RunStore(store.root).done_keys("rows")
    assert list((store.root / "quarantine" / "stages" / "rows").glob(f"{victim.name}*"))
    attempts = store.attempts()
    assert (attempts["failure_kind"] == "corrupt_output").sum() == 1


def _attempt_rows(store: RunStore):
    rows = store.attempts().drop(columns=["started_at", "ended_at"])
    return rows.sort_values(["task_key", "attempt"]).reset_index(drop=True)


def test_attempt_batch_files_merge_into_one_and_a_killed_merge_counts_no_row_twice(finished):
    _study, store = finished
    folder = store.root / "attempts"
    table = store.attempts_table()
    for f in task_attempts.batch_files(store.root):
        os.unlink(f)
    rows = table.to_pylist()
    for part in range(3):  # three batch files, as a run that flushed three times leaves
        store.append_attempts([Attempt(**r) for r in rows[part::3]])
    before = _attempt_rows(store)
    sources = sorted(folder.glob("*.parquet"))
    assert len(sources) == 3
    saved = store.root / "saved-attempts"
    saved.mkdir()
    for f in sources:
        shutil.copy2(f, saved / f.name)

    assert compact_attempts(store) == 3
    (merged,) = folder.glob("*.parquet")
    assert merged.name.startswith(task_attempts.MERGED_PREFIX)
    assert _attempt_rows(store).equals(before)
    for copy in saved.iterdir():  # a merge killed after writing its file, before deleting the sources
        os.rename(copy, folder / copy.name)
    assert _attempt_rows(store).equals(before)
    key = rows[0]["task_key"]
    assert store.next_attempt(key) == max(r["attempt"] for r in rows if r["task_key"] == key) + 1

    assert compact_attempts(store) == 0  # leftovers deleted, nothing new to merge
    assert [p.name for p in folder.glob("*.parquet")] == [merged.name]
    store.append_attempts([Attempt(**rows[0])])
    assert compact_attempts(store) == 2  # a merged file merged again
    assert len(_attempt_rows(store)) == len(before) + 1


def test_packed_tasks_whose_attempt_rows_were_lost_get_them_back_from_the_pack(finished):
    _study, store = finished
    compact_stage(store, "rows")
    for f in task_attempts.batch_files(store.root):
        os.unlink(f)  # the rows a SIGKILLed run had still buffered
    fresh = RunStore(store.root)
    rows = fresh.attempts()
    recovered = rows[rows["task_key"].isin(fresh.plan_keys["rows"])]
    assert len(recovered) == N and recovered["ok"].all()
    assert (recovered["message"] == RECOVERED_MESSAGE).all()
    assert sum(s.recovered for s in run_status(fresh)) == N + 4  # the model stage's loose shards too
