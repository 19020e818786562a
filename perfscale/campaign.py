"""perfscale as a library: a `Campaign` is one study on one site in one run folder, driven from Python.

    from perfscale import Campaign

    c = Campaign("workflows/perfgen.yaml", site="local", run_dir="runs/a",
                 overrides=["stages.data.params.source=a.csv"])
    c.plan()                  # the tasks, nothing written
    c.run(engine="local")     # run the missing tasks; RUN/perfscale.log
    c.status()                # per stage: done, failed (with kinds), missing
    c.read("profile")         # a stage's rows as a pyarrow Table (DuckDB, pandas, polars read it as is)
    c.submit(dry_run=True)    # array mode on a batch site: render the job scripts (dry_run) or submit them

Each method is what the command of the same name does (`perfscale run/plan/submit/status/show`), with the
same checks and errors (`perfscale.errors.PerfscaleError` and its kinds, one line each), and nothing
printed. See docs/embedding.md for a campaign as one step of a Parsl, Snakemake or Maestro workflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from perfscale.errors import PerfscaleError

if TYPE_CHECKING:
    import pyarrow as pa

    from perfscale.engines import Engine
    from perfscale.plan import Plan
    from perfscale.runner import StageSummary
    from perfscale.sched.arrays import ArrayJob
    from perfscale.sched.submit import SubmittedArray
    from perfscale.spec.site import Site
    from perfscale.spec.study import Study
    from perfscale.status import StageState
    from perfscale.store import RunStore


class Campaign:
    """One study (a YAML file, with `--set`-style `overrides`) on one site, in one run folder.

    The study and the site are loaded and checked here, so a bad study fails at construction. `run_dir`
    defaults to `runs/<study>-<site>` in the current folder, as for the CLI.
    """

    def __init__(
        self,
        study: str | Path,
        site: str | Path | Site = "local",
        run_dir: str | Path | None = None,
        overrides: Sequence[str] = (),
    ) -> None:
        from perfscale.plan.overrides import load_study_text
        from perfscale.runner import default_run_dir
        from perfscale.spec.site import Site, load_site

        self.study_path = Path(study)
        self.site: Site = site if isinstance(site, Site) else load_site(site)
        self.overrides = tuple(overrides)
        self.study: Study = load_study_text(self.study_path, self.overrides)[0]
        self.run_dir = Path(run_dir) if run_dir is not None else default_run_dir(self.study.name, self.site)

    def __repr__(self) -> str:
        sets = f", overrides={list(self.overrides)}" if self.overrides else ""
        where = f"site={self.site.name!r}, run_dir={str(self.run_dir)!r}"
        return f"Campaign({str(self.study_path)!r}, {where}{sets})"

    def plan(self) -> Plan:
        """The study expanded into tasks (`Plan.to_table()` gives it as Arrow); nothing is written."""
        from perfscale.plan import build_plan

        return build_plan(self.study, str(self.study_path), self.site)

    def run(
        self,
        engine: str | Engine | None = None,
        workers: int | None = None,
        progress: bool = False,
        wait_lock: bool = False,
    ) -> dict[str, StageSummary]:
        """Run every missing task (`perfscale run` without the report): per stage, how many tasks were done,
        ran, failed (with kinds) or blocked. `engine`: a name (default: the site's) or a started Engine.
        Inside another workflow system's task, prefer `engine="local"` (see docs/embedding.md)."""
        from perfscale.runner import open_run, run_plan

        with open_run(self.study_path, self.site, self.run_dir, wait_lock, self.overrides) as store:
            return run_plan(store, engine, workers, progress=progress)

    def submit(
        self,
        dry_run: bool = False,
        partition: str | None = None,
        account: str | None = None,
        throttle: int | None = None,
    ) -> list[SubmittedArray] | list[tuple[ArrayJob, Path]]:
        """Array mode (`perfscale submit`): submit the missing tasks as job arrays, or with `dry_run` only
        render their scripts into RUN/arrays/ ((array, script path) pairs; no scheduler command runs)."""
        from perfscale.runner import prepare_run
        from perfscale.sched.submit import dry_run as render_only
        from perfscale.sched.submit import submit_run

        store = prepare_run(self.study_path, self.site, self.run_dir, self.overrides)
        if dry_run:
            return render_only(store, partition, account, throttle)
        return submit_run(store, partition=partition, account=account, throttle=throttle)

    @property
    def store(self) -> RunStore:
        """The run folder (an error naming the fix when the campaign has not run or been submitted yet)."""
        from perfscale.store import RunStore

        return RunStore(self.run_dir).check()

    def status(self) -> list[StageState]:
        """Per stage: total, done, failed (with failure kinds) and missing tasks, from the run folder."""
        from perfscale.status import run_status

        return run_status(self.store)

    def read(self, stage: str, provenance: bool = False) -> pa.Table:
        """The rows of `stage` as one Arrow table (`provenance=True` keeps the `_` columns: task key, host,
        times...). Only finished tasks have rows; a damaged shard raises CorruptFile naming it."""
        store = self.store
        if stage not in store.plan.stages:
            raise PerfscaleError(
                f"run {self.run_dir} has no stage {stage!r}; stages: {', '.join(store.plan.stages)}"
            )
        return store.read_stage(stage, provenance=provenance)

    def report(self) -> Path:
        """Write RUN/report/index.html (`perfscale report`) and return its path."""
        from perfscale.report import build_report

        return build_report(self.store)
