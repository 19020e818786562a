"""Cost of the done-check: which of N finished tasks are done, as `perfscale run` and `status` ask it.

    .venv/bin/python benchmarks/done_check.py [--shards 2000] [--repeat 7]
    .venv/bin/python benchmarks/done_check.py --quick    # 50 shards, one round, nothing written (make bench)

Writes N one-row shards (with footer metadata, as tasks write them) into a noop run, then times:
- `listing`: one directory listing (the check before shards carried footers: a file exists = done);
- `footer check`: `RunStore.done_keys` (read each shard's footer, compare key and row count, stat listed
  artifacts), what `run_plan` and `run_status` call once per stage;
- `attempts read`: `RunStore.attempts()` with every shard's attempt row present (the recovery of lost rows
  then reads no footer) and with no attempts file at all (every row recovered from a footer).
Best and median of `--repeat` runs (the best is steadier on a shared machine), files in the page cache (a
cold parallel file system costs more per open).
Results: benchmarks/results/done_check.json with the machine description.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from dispatch import noop_study
from machine import describe, quick_line, write_results

from perfscale.runner import prepare_run
from perfscale.spec import load_site
from perfscale.store import Provenance, RunStore
from perfscale.store.attempt import Attempt

RESULTS = Path(__file__).parent / "results"


def _time_ms(fn: Callable[[], object], repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"best_ms": round(min(times) * 1e3, 2), "median_ms": round(statistics.median(times) * 1e3, 2)}


def _finished_run(folder: Path, n: int) -> RunStore:
    store = prepare_run(noop_study(folder, n), load_site("local"), folder / "run")
    now = datetime.now(timezone.utc)
    records = []
    for t in store.plan.tasks:
        record = Attempt(
            t.key, t.stage, t.index, 1, "bench", os.getpid(), now, now, 0.001, True, 0, None, None
        )
        prov = Provenance(t.key, "local", "bench", now, 0.001, 1)
        store.write_shard(t.stage, t.key, pd.DataFrame({"i": [t.index]}), prov, attempt=record)
        records.append(record)
    store.append_attempts(records)
    return RunStore(store.root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shards", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="50 shards, one round, nothing written (make bench)")
    args = ap.parse_args()
    if args.quick:
        args.shards, args.repeat = 50, 1
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="perfscale-done-check-"))
    try:
        store = _finished_run(folder, args.shards)
        assert len(store.done_keys("noop")) == args.shards
        listing = _time_ms(lambda: store.listed_keys("noop"), args.repeat)
        footers = _time_ms(lambda: store.done_keys("noop"), args.repeat)
        attempts = _time_ms(store.attempts, args.repeat)
        shutil.rmtree(store.root / "attempts")
        assert int(store.attempts()["ok"].sum()) == args.shards  # every row comes back from a footer
        recovered = _time_ms(store.attempts, args.repeat)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result = {
        "shards": args.shards,
        "repeat": args.repeat,
        "listing (before)": listing,
        "footer check (now)": footers,
        "footer check, best us per shard": round(footers["best_ms"] / args.shards * 1e3, 1),
        "attempts read": attempts,
        "attempts read, every row recovered from footers": recovered,
        "machine": describe(),
    }
    if args.quick:
        quick_line("done_check", started, shards=args.shards, footer_check_ms=footers["best_ms"])
    else:
        print(write_results(RESULTS / "done_check.json", result).read_text())


if __name__ == "__main__":
    main()
