"""A synthetic finished run of N noop tasks, to time `status` and a no-op rerun where a real run is too long.

    .venv/bin/python benchmarks/scale_synthetic.py FOLDER REAL_RUN [--tasks 1000000]

FOLDER gets noop-N.yaml and run-N/: a real plan and run folder (`prepare_run`), every shard a copy of the
bytes of one shard of REAL_RUN (a finished noop run, e.g. one kept by `scale.py --keep`), the done index as
`write_shard` leaves it, and one attempts file with an `ok` row per task. The shards' footers name another
task, so only a done-check that trusts the index reports them done: never run main's footer check (or
`read_stage`) on it; they would quarantine every copy. Then time, e.g.:

    nice -n 10 /usr/bin/time perfscale status FOLDER/run-N
    nice -n 10 /usr/bin/time perfscale run FOLDER/noop-N.yaml --run-dir FOLDER/run-N --engine local --quiet

`--quick` (make bench; no FOLDER or REAL_RUN): in a temporary folder, a real noop run of 10 tasks, a synthetic
run of 2,000 built from it, and `perfscale status` on that (it must count 2,000 done); nothing kept.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from perfscale.runner import prepare_run
from perfscale.spec import load_site
from perfscale.store.done_index import append_index, stat_entry


def synthesize(folder: Path, real_run: Path, tasks: int) -> Path:
    """The synthetic run folder of `tasks` noop tasks, every shard a copy of one of `real_run`'s."""
    b = 1000
    a = max(1, tasks // b)
    folder.mkdir(parents=True, exist_ok=True)
    study = folder / f"noop-{tasks}.yaml"
    study.write_text(
        f"name: noop{tasks}\nstages:\n  noop:\n    kind: noop\n    grid:\n      product:\n"
        f"        a: {list(range(a))}\n        b: {list(range(b))}\n"
    )
    t0 = time.perf_counter()
    store = prepare_run(study, load_site("local"), folder / f"run-{tasks}")
    print(f"planned and prepared in {time.perf_counter() - t0:.1f} s", flush=True)
    src = real_run / "stages" / "noop"
    data = (src / next(n for n in os.listdir(src) if n.endswith(".parquet"))).read_bytes()
    stage_dir = store.stage_dir("noop")
    stage_dir.mkdir(parents=True, exist_ok=True)
    keys = list(store.plan_keys["noop"])
    entries = []
    for k in keys:
        path = f"{stage_dir}/{k}.parquet"
        with open(path, "wb") as f:
            f.write(data)
        entries.append((k, stat_entry(path) or ""))
    append_index(store.root, "noop", entries)
    old = pq.read_table(str(next((real_run / "attempts").glob("*.parquet"))))
    rows = old.filter(pc.field("ok")).slice(0, 1).take(pa.array([0] * len(keys)))
    rows = rows.set_column(rows.schema.get_field_index("task_key"), "task_key", pa.array(keys))
    index = pa.array(list(store.plan_keys["noop"].values()), pa.int64())
    rows = rows.set_column(rows.schema.get_field_index("index"), "index", index)
    (store.root / "attempts").mkdir(exist_ok=True)
    pq.write_table(rows, store.root / "attempts" / "synthetic.parquet")
    print(f"{len(keys)} shards in {time.perf_counter() - t0:.1f} s", flush=True)
    return store.root


def quick() -> None:
    """A real 10-task noop run, a 2,000-task synthetic one from it, and `perfscale status` on that."""
    from perfscale.runner import run_plan

    sys.path.insert(0, str(Path(__file__).parent))
    from machine import quick_line

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="perfscale-synthetic-") as tmp:
        real = Path(tmp) / "real"
        real.mkdir()
        study = real / "noop.yaml"
        study.write_text(
            f"name: noop\nstages:\n  noop:\n    kind: noop\n    grid: {{product: {{i: {list(range(10))}}}}}\n"
        )
        store = prepare_run(study, load_site("local"), real / "run")
        assert run_plan(store, "local", workers=1, progress=False)["noop"].done == 10
        run = synthesize(Path(tmp) / "synthetic", store.root, 2000)
        t0 = time.perf_counter()
        status = subprocess.run(
            [sys.executable, "-m", "perfscale.cli", "status", str(run)], capture_output=True, text=True
        )
        status_s = time.perf_counter() - t0
    if status.returncode != 0 or not re.search(
        r"noop\W+2000\W+2000\W+0\W", status.stdout
    ):  # total done failed
        sys.exit(
            f"perfscale status on the synthetic run: exit {status.returncode}\n{status.stdout}{status.stderr}"
        )
    quick_line("scale_synthetic", started, tasks=2000, status_s=round(status_s, 2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path, nargs="?")
    ap.add_argument("real_run", type=Path, nargs="?")
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="a 2,000-task run from a 10-task one, then status")
    args = ap.parse_args()
    if args.quick:
        quick()
    elif args.folder is None or args.real_run is None:
        ap.error("FOLDER and REAL_RUN are needed (or --quick)")
    else:
        synthesize(args.folder, args.real_run, args.tasks)


if __name__ == "__main__":
    main()
