"""SIGKILL a running campaign at a random moment: no partial shard is visible, and a rerun finishes only the
missing tasks with final tables equal to an uninterrupted run's."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from perfscale.runner import prepare_run, run_plan
from perfscale.spec import load_site
from perfscale.store import PROVENANCE_COLUMNS, RunStore
from tests.studies import slow_squares

TOTAL = """\
  total:
    kind: function
    params: {callable: "fns.py:total"}
    inputs: [square]
"""
N = 30


def _values(store: RunStore, stage: str):
    df = store.read_stage(stage).to_pandas()
    keys = sorted(df["_task_key"])
    return keys, df.drop(columns=list(PROVENANCE_COLUMNS)).sort_values(list(df.columns[:1])).reset_index(
        drop=True
    )


@pytest.mark.parametrize(("seed", "compact_every"), [(11, 0), (12, 4)])
def test_sigkill_then_resume_equals_uninterrupted(write_study, tmp_path, seed, compact_every):
    """`compact_every` 4: the run merges shards into packs as it goes, so a kill may land in a compaction."""
    study = write_study(slow_squares(N, 0.15, "killme") + TOTAL)
    run = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "perfscale.cli",
        "run",
        str(study),
        "--run-dir",
        str(run),
        "--engine",
        "local",
        "--workers",
        "2",
        "--no-report",
        "--quiet",
        "--compact-every",
        str(compact_every),
    ]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stage_dir = run / "stages" / "square"
    wanted = random.Random(seed).randint(2, N - 5)  # kill after a random number of finished tasks
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = RunStore(run).done_keys("square") if stage_dir.exists() else set()  # shards and packs
        if len(done) >= wanted or proc.poll() is not None:
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    files = list(stage_dir.rglob("*.parquet"))
    for file in files:  # every visible shard or pack is complete and readable
        assert pq.read_table(file).num_rows >= 1
    visible = RunStore(run).done_keys("square")
    assert 0 < len(visible) < N
    if compact_every:
        assert len(files) < len(visible) or len(visible) < compact_every  # packs hold several tasks
    assert not (run / "stages" / "total").exists() or not list((run / "stages" / "total").glob("*.parquet"))

    store = prepare_run(study, load_site("local"), run)
    summary = run_plan(store, "local", workers=2, progress=False, compact_every=compact_every)
    assert summary["square"].ran == N - len(visible)
    assert summary["square"].done == N and summary["total"].done == 1

    clean = prepare_run(study, load_site("local"), tmp_path / "clean")
    run_plan(clean, "local", workers=2, progress=False)
    for stage in ("square", "total"):
        keys_a, values_a = _values(store, stage)
        keys_b, values_b = _values(clean, stage)
        assert keys_a == keys_b
        assert values_a.equals(values_b)
