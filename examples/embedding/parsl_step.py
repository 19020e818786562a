"""A perfscale campaign as one step of a Parsl workflow.

    python examples/embedding/parsl_step.py [--executor threads|htex] [--out DIR] [DATASET.csv ...]

Step 1, one Parsl app per data set: a `perfscale.Campaign` of study.yaml with
`--set stages.data.params.source=DATASET` runs in its own run folder (OUT/<dataset>) on the `local` engine,
and the app returns that folder. Step 2, one app that depends on all of step 1: it reads the `split` stage
of every run as Arrow and summarises it with pandas, as a downstream analysis would.

Rerunning reruns nothing: each campaign finds its shards. The default data sets are data/small.csv and
data/large.csv beside this file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import parsl
from parsl.app.app import python_app
from parsl.config import Config

HERE = Path(__file__).resolve().parent
STUDY = HERE / "study.yaml"


@python_app
def campaign_step(study: str, dataset: str, run_dir: str) -> str:
    """Run the study on one data set; the run folder, or an error naming the failed stages."""
    from perfscale import Campaign

    campaign = Campaign(
        study, site="local", run_dir=run_dir, overrides=[f"stages.data.params.source={dataset}"]
    )
    summary = campaign.run(engine="local", workers=1)  # not "parsl": this process already runs Parsl
    failed = {stage: s.failure_kinds for stage, s in summary.items() if s.failed or s.blocked}
    if failed:
        raise RuntimeError(f"campaign {run_dir} did not finish: {failed}; see {run_dir}/perfscale.log")
    return run_dir


@python_app
def summarise(study: str, *run_dirs: str) -> str:
    """Rows per data set and split, from each run's `split` stage (an Arrow table, read with pandas)."""
    from pathlib import Path  # an app runs in a worker: it imports what it uses

    import pandas as pd

    from perfscale import Campaign

    frames = []
    for run_dir in run_dirs:
        table = Campaign(study, run_dir=run_dir).read("split")  # pyarrow.Table
        frame = table.to_pandas()
        frame["dataset"] = Path(run_dir).name
        frames.append(frame)
    rows = pd.concat(frames).groupby(["dataset", "split"]).agg(rows=("runtime_s", "size"))
    return rows.reset_index().to_string(index=False)


def config(executor: str, run_dir: Path) -> Config:
    if executor == "threads":
        from parsl.executors.threads import ThreadPoolExecutor

        return Config(executors=[ThreadPoolExecutor(max_threads=2, label="threads")], run_dir=str(run_dir))
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    # HTEX starts its workers by name (process_worker_pool.py): the interpreter's bin/ must be on PATH
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    htex = HighThroughputExecutor(
        label="htex", address="127.0.0.1", max_workers_per_node=2, provider=LocalProvider()
    )
    return Config(executors=[htex], run_dir=str(run_dir))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("datasets", nargs="*", default=["data/small.csv", "data/large.csv"])
    p.add_argument("--executor", choices=["threads", "htex"], default="threads")
    p.add_argument("--out", type=Path, default=Path("runs/embedded"))
    args = p.parse_args(argv)
    out = args.out.resolve()
    dfk = parsl.load(config(args.executor, out / "parsl"))
    try:
        runs = [campaign_step(str(STUDY), d, str(out / Path(d).stem)) for d in args.datasets]
        print(summarise(str(STUDY), *runs).result())
    finally:
        dfk.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
