"""A synthetic finished run of N noop tasks, to time `status` and a no-op rerun where a real run is too long.

    .venv/bin/python benchmarks/scale_synthetic.py FOLDER REAL_RUN [--tasks 1000000]

FOLDER gets noop-N.yaml and run-N/: a real plan and run folder (`prepare_run`), every shard a copy of the
bytes of one shard of REAL_RUN (a finished noop run, e.g. one kept by `scale.py --keep`), the done index as
`write_shard` leaves it, and one attempts file with an `ok` row per task. The shards' footers name another
task, so only a done-check that trusts the index reports them done: never run main's footer check (or
`read_stage`) on it; they would quarantine every copy. Then time, e.g.:

    nice -n 10 /usr/bin/time perfscale status FOLDER/run-N
    nice -n 10 /usr/bin/time perfscale run FOLDER/noop-N.yaml --run-dir FOLDER/run-N --engine local --quiet
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from perfscale.runner import prepare_run
from perfscale.spec import load_site
from perfscale.store.done_index import append_index, stat_entry


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("real_run", type=Path)
    ap.add_argument("--tasks", type=int, default=1_000_000)
    args = ap.parse_args()
    b = 1000
    a = max(1, args.tasks // b)
    args.folder.mkdir(parents=True, exist_ok=True)
    study = args.folder / f"noop-{args.tasks}.yaml"
    study.write_text(
        f"name: noop{args.tasks}\nstages:\n  noop:\n    kind: noop\n    grid:\n      product:\n"
        f"        a: {list(range(a))}\n        b: {list(range(b))}\n"
    )
    t0 = time.perf_counter()
    store = prepare_run(study, load_site("local"), args.folder / f"run-{args.tasks}")
    print(f"planned and prepared in {time.perf_counter() - t0:.1f} s", flush=True)
    src = args.real_run / "stages" / "noop"
    data = (src / next(n for n in os.listdir(src) if n.endswith(".parquet"))).read_bytes()
    folder = store.stage_dir("noop")
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(store.plan_keys["noop"])
    entries = []
    for k in keys:
        path = f"{folder}/{k}.parquet"
        with open(path, "wb") as f:
            f.write(data)
        entries.append((k, stat_entry(path) or ""))
    append_index(store.root, "noop", entries)
    old = pq.read_table(str(next((args.real_run / "attempts").glob("*.parquet"))))
    rows = old.filter(pc.field("ok")).slice(0, 1).take(pa.array([0] * len(keys)))
    rows = rows.set_column(rows.schema.get_field_index("task_key"), "task_key", pa.array(keys))
    index = pa.array(list(store.plan_keys["noop"].values()), pa.int64())
    rows = rows.set_column(rows.schema.get_field_index("index"), "index", index)
    (store.root / "attempts").mkdir(exist_ok=True)
    pq.write_table(rows, store.root / "attempts" / "synthetic.parquet")
    print(f"{len(keys)} shards in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
