"""Running a study: plan it, open the run folder, and push every missing task through an engine.

Stages run in order (a stage starts when the one before it has finished). A task whose shard exists is
skipped;
a task whose input is incomplete (an upstream task failed) is reported as blocked, not run.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from perfscale.bundles import Bundler
from perfscale.engines import Engine, EngineStalled, engine_class, make_engine
from perfscale.errors import FailureKind
from perfscale.execute import Outcome, execute_bundle
from perfscale.gpus import GpuAdmission
from perfscale.logs import run_log
from perfscale.plan.cache import CachedPlan, cached_plan, plan_digest
from perfscale.plan.overrides import load_study_text
from perfscale.plan.placement import check_run_folder, placed, record_sites, site_of
from perfscale.plan.planner import Plan, Task, build_plan
from perfscale.spec.site import Site
from perfscale.spec.study import Study
from perfscale.store import space
from perfscale.store.atomic import remove_dead_writers_temps
from perfscale.store.attempt import Attempt
from perfscale.store.lock import LOCK_NAME, run_lock
from perfscale.store.run import RunStore
from perfscale.store.space import DiskFull, disk_full_named, is_disk_full

log = logging.getLogger(__name__)
CANCELLED = FailureKind.CANCELLED


@dataclass
class StageSummary:
    total: int = 0
    done: int = 0
    ran: int = 0
    failed: int = 0
    blocked: int = 0
    failure_kinds: Counter[str] = field(default_factory=Counter)
    # the stage's done tasks at the run's end (what the status table shows: not checked a second time)
    done_keys: set[str] = field(default_factory=set, repr=False)


class AttemptLog:
    """Buffers attempt records and appends them to the run in batches (at most every `every_s` seconds)."""

    def __init__(self, store: RunStore, every_s: float = 2.0):
        self.store, self.every_s, self.buffer, self.last = store, every_s, [], time.monotonic()

    def add(self, records: list[Attempt]) -> None:
        self.buffer.extend(records)
        if time.monotonic() - self.last > self.every_s:
            self.flush()

    def flush(self) -> None:
        """Append the buffer. A full disk: free the run's reserve, write the buffer there, raise DiskFull."""
        try:
            self.store.append_attempts(self.buffer)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            if space.release(self.store.root):
                log.info(
                    "disk full in %s: its reserve freed to record %d attempts",
                    self.store.root,
                    len(self.buffer),
                )
                with suppress(OSError):
                    self.store.append_attempts(self.buffer)
                    self.buffer = []
            raise DiskFull(self.store.root, exc) from exc
        self.buffer, self.last = [], time.monotonic()


def default_run_dir(study_name: str, site: Site) -> Path:
    return Path("runs") / f"{study_name}-{site.name}"


@dataclass
class _Planned:
    """A study ready to open its run: its plan (built now, or the run's own plan.parquet when the study, the
    site and perfscale are unchanged: perfscale.plan.cache), the run folder and the study text to record."""

    study: Study
    plan: Plan | CachedPlan
    root: Path
    text: str  # overridden by `--set`s, see plan.overrides
    digest: str | None
    sites: set[str]  # the sites stages are placed on (resources.site)


def _planned(study_path: Path, site: Site, run_dir: Path | None, overrides: Sequence[str] = ()) -> _Planned:
    """Validate the study (always: its errors must be seen) and plan it unless its run's plan is current."""
    study, text = load_study_text(study_path, overrides)
    root = run_dir or default_run_dir(study.name, site)
    digest = plan_digest(study, text, site)
    plan: Plan | CachedPlan | None = cached_plan(root / "plan.parquet", digest, study)
    if plan is None:
        plan = build_plan(study, str(study_path), site)
    sites = {s for name in study.stages if (s := study.resources_of(name).site)}
    check_run_folder(root, site, sites)
    return _Planned(study, plan, root, text, digest, sites)


def _create(planned: _Planned, site: Site, study_path: Path) -> RunStore:
    """The run folder written. A cached plan is looked at again first: under the run's lock now, it may
    have been rewritten by a run of another version of the study since `_planned` found it."""
    if isinstance(planned.plan, CachedPlan):
        again = cached_plan(planned.plan.path, planned.digest, planned.study)
        planned.plan = again or build_plan(planned.study, str(study_path), site)
    store = RunStore.create(
        planned.root, planned.text, site, planned.plan, study_dir=study_path.parent, digest=planned.digest
    )
    record_sites(store.root, site, planned.sites)
    return store


def prepare_run(
    study_path: Path, site: Site, run_dir: Path | None = None, overrides: Sequence[str] = ()
) -> RunStore:
    """Validate the study, expand its plan, and create (or re-open) its run folder. Nothing runs."""
    return _create(_planned(study_path, site, run_dir, overrides), site, study_path)


@contextmanager
def open_run(
    study_path: Path,
    site: Site,
    run_dir: Path | None = None,
    wait_lock: bool = False,
    overrides: Sequence[str] = (),
) -> Iterator[RunStore]:
    """`prepare_run` under the run folder's lock (RUN/.lock), held until the block ends: one run per folder.

    The study is checked and planned before the lock; the folder is written only once the lock is held."""
    planned = _planned(study_path, site, run_dir, overrides)
    root = planned.root
    if not (root / LOCK_NAME).exists():
        # before a lock file is made in a folder that is not ours. A folder with one is a run's, maybe one in
        # progress that has not written its manifest yet: its lock names the holder, and `create` checks the
        # folder again once the lock is ours.
        RunStore(root).refuse_foreign(planned.plan.study)
    with disk_full_named(root), run_lock(root, wait=wait_lock):
        store = _create(planned, site, study_path)
        with run_log(store.root):
            log.info(
                "run %s: study %s, site %s, %d tasks", store.root, study_path, site.name, store.task_count
            )
            yield store


def _ready(task: Task, done: dict[str, set[str]], complete: dict[str, bool]) -> bool:
    """Its foreach upstream task is done, and each whole-stage input is `complete` (all its tasks done)."""
    if task.upstream_stage and task.upstream_key not in done[task.upstream_stage]:
        return False
    return all(complete[s] for s in task.inputs)


def _next_attempts(store: RunStore) -> dict[str, int]:
    attempts = store.attempts()
    if attempts.empty:
        return {}
    return {k: int(v) + 1 for k, v in attempts.groupby("task_key")["attempt"].max().items()}


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress]:
    columns = [
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, disable=not enabled, transient=False) as progress:
        yield progress


def run_plan(
    store: RunStore,
    engine: str | Engine | None = None,
    workers: int | None = None,
    stages: list[str] | None = None,
    progress: bool = True,
    bundle: bool = True,
    compact_every: int | None = None,
) -> dict[str, StageSummary]:
    """Run every missing task of the run's plan (optionally only some stages) and summarise per stage.

    `engine` is an engine name (started and stopped here) or an Engine the caller has already started.
    `bundle`: pack short tasks into bundles, several per engine call (perfscale/bundles.py); False sends
    one task per call. `compact_every` (default: the site's): each time a stage has this many new shards,
    they are merged into packs (store/compact.py), and so is the rest when the stage ends; 0: never.
    """
    plan_keys = store.plan_keys  # {stage: {key: index}}: three columns, not a Task per row
    summary: dict[str, StageSummary] = {}
    done = {s: store.done_keys(s) for s in plan_keys}  # checks every shard's footer; bad ones quarantined
    next_attempt: dict[str, int] | None = None  # read from the attempts table once something is to run
    attempt_log = AttemptLog(store)
    bundler = Bundler(workers or store.site.workers, enabled=bundle)
    compactor = Compactor(store, store.site.compact_every if compact_every is None else compact_every)
    space.reserve(store.root)
    try:
        with (
            disk_full_named(store.root),
            _Engines(store, engine, workers) as engines,
            _progress(progress) as bars,
        ):
            for stage, keys in plan_keys.items():
                s = summary[stage] = StageSummary(total=len(keys), done_keys=done[stage])
                if stages and stage not in stages:
                    s.done = len(done[stage] & keys.keys())
                    continue
                # only the tasks still to do become Task objects (a rerun with everything done builds none)
                todo = [store.task(i) for k, i in keys.items() if k not in done[stage]]
                # whole-stage inputs checked once per stage, not once per task (O(plan) each)
                inputs = {s for t in todo for s in t.inputs}
                complete = {s: done[s].issuperset(plan_keys.get(s, {})) for s in inputs}
                ready = [t for t in todo if _ready(t, done, complete)]
                s.blocked = len(todo) - len(ready)
                s.done = len(keys) - len(todo)
                log.info(
                    "stage %s: %d tasks, %d done, %d to run, %d blocked",
                    stage,
                    s.total,
                    s.done,
                    len(ready),
                    s.blocked,
                )
                if ready and next_attempt is None:
                    next_attempt = _next_attempts(store)
                bar = bars.add_task(stage, total=len(keys), completed=s.done, failed="")
                # a stage with nothing to run starts no engine
                stage_engine = engines.of(ready[0]) if ready else None
                if stage_engine is not None:
                    bundler.workers = stage_engine.workers
                for outcome in (
                    _run_tasks(stage_engine, store, ready, next_attempt or {}, bundler)
                    if stage_engine
                    else ()
                ):
                    attempt_log.add(outcome.attempts)
                    _log_outcome(outcome)
                    if outcome.retrying:
                        continue
                    if outcome.ok:
                        s.done += 1
                        s.ran += not outcome.skipped
                        done[stage].add(outcome.key)
                        compactor.wrote(stage)
                    else:
                        s.failed += 1
                        s.failure_kinds[outcome.failure_kind or "?"] += 1
                    bars.update(bar, advance=1, failed=f"[red]{s.failed} failed" if s.failed else "")
                compactor.stage_ended(stage)
    except BaseException:
        # a run that stops early (disk full, a signal, a broken engine) may have killed workers mid-write
        removed = remove_dead_writers_temps(store.root)
        if removed:
            log.info("removed %d temp files of killed workers", removed)
        raise
    finally:
        try:
            compactor.close()  # a background compaction ends before the run does
            with disk_full_named(store.root):
                attempt_log.flush()
        finally:
            space.release(store.root)
    return summary


ATTEMPT_FILES_KEPT = 64  # the runner merges its attempt batch files (one per 2 s) when it compacts past this


class Compactor:
    """Compaction as the run goes (store/compact.py): a stage is compacted each time `every` new shards
    have been written since its last compaction, and once more when it ends if it was compacted before or
    has `every` loose shards (so a stage of fewer tasks keeps its loose shards); each compaction also merges
    the attempt batch files when there are more than ATTEMPT_FILES_KEPT. The run holds the lock.

    Compactions during a stage run in a background thread, with a RunStore of their own (no cache shared
    with the runner), so that dispatch goes on meanwhile; one at a time (a trigger while one runs waits for
    the next). The one at a stage's end runs after the background one is over and before the next stage
    starts, so a stage that reads it never meets a compaction of it. A compaction's error is raised here."""

    def __init__(self, store: RunStore, every: int):
        self.store, self.every = store, every
        self.fresh: Counter[str] = Counter()
        self.compacted: set[str] = set()
        self._own = RunStore(store.root)  # the background thread's: its caches are not the runner's
        self._pool: ThreadPoolExecutor | None = None
        self._running: Future | None = None

    def wrote(self, stage: str) -> None:
        if not self.every:
            return
        self.fresh[stage] += 1
        if self.fresh[stage] >= self.every and not self._busy():
            self.fresh[stage] = 0
            self.compacted.add(stage)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="perfscale-compact")
            self._running = self._pool.submit(self._compact, self._own, stage)

    def stage_ended(self, stage: str) -> None:
        self.wait()
        if self.every and (stage in self.compacted or len(self.store.listed_keys(stage)) >= self.every):
            self._compact(self.store, stage)

    def wait(self) -> None:
        """Wait for the background compaction, if any; raise its error."""
        running, self._running = self._running, None
        if running is not None:
            running.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # a compaction stopped halfway is safe; a finished one is neater

    def _busy(self) -> bool:
        if self._running is None:
            return False
        if not self._running.done():
            return True
        self.wait()  # raises a finished compaction's error
        return False

    @staticmethod
    def _compact(store: RunStore, stage: str) -> None:
        from perfscale.store.compact import compact_attempts, compact_stage

        compact_stage(store, stage)
        compact_attempts(store, min_files=ATTEMPT_FILES_KEPT)


class _Engines:
    """The engine of each stage's placement (its `resources.site` and `resources.partition`). Stages run one
    after another, so one engine is live at a time: a stage placed elsewhere than the one before stops that
    engine and starts its own (Parsl allows one loaded configuration per process). `given`: an engine name
    for the run's site (default: the site's own), or an Engine the caller started, used for the stages on
    the run's site and default partition; stages on another site use that site's engine."""

    def __init__(self, store: RunStore, given: str | Engine | None, workers: int | None):
        self.store, self.given, self.workers = store, given, workers
        self.key: tuple[str | None, str | None, int] | None = None
        self.engine: Engine | None = None
        self.owned = False

    def of(self, task: Task) -> Engine:
        site = site_of(task.site, self.store.site, self.store.root)
        here = None if site is self.store.site else site.name
        if here is None and task.partition is None and isinstance(self.given, Engine):
            key: tuple[str | None, str | None, int] = (None, None, 0)
            if key != self.key or self.engine is None:
                self.close()
                self.engine, self.owned, self.key = self.given, False, key
            return self.engine
        name = (self.given if isinstance(self.given, str) and here is None else None) or site.engine
        # an engine that binds GPUs itself is built for its tasks' GPUs: one per stage shape
        shape = task.gpus if site.gpus_per_node and engine_class(name).binds_gpus else 0
        key = (here, task.partition, shape)
        if key != self.key or self.engine is None:
            self.close()
            where = placed(site, task.partition)
            self.engine = make_engine(name, where, self.store.root, self.workers, shape)
            self.engine.__enter__()
            self.owned, self.key = True, key
        return self.engine

    def close(self, exc_type: type[BaseException] | None = None) -> None:
        engine, self.engine, self.key = self.engine, None, None
        if engine is not None and self.owned:
            engine.__exit__(exc_type)

    def __enter__(self) -> _Engines:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(exc_type)


def _log_outcome(outcome: Outcome) -> None:
    """The retry decisions `execute_task` took in its worker (each failed attempt before the last was
    retried there), and the task's end when it failed."""
    records = outcome.attempts
    for r in records[:-1] if not outcome.retrying else []:
        if not r.ok:
            log.info(
                "task %d (%s %s) attempt %d: %s; retried (retry policy)",
                outcome.index,
                outcome.stage,
                outcome.key,
                r.attempt,
                r.failure_kind,
            )
    if not outcome.ok and not outcome.retrying:
        attempt = records[-1].attempt if records else "?"
        # a task stopped by the run's own end (disk full, SIGTERM) is said once by the run's error line
        stopped = outcome.disk_full or outcome.failure_kind == FailureKind.CANCELLED.value
        log.log(
            logging.INFO if stopped else logging.WARNING,
            "task %d (%s %s) failed at attempt %s: %s; no retry left for it",
            outcome.index,
            outcome.stage,
            outcome.key,
            attempt,
            outcome.failure_kind,
        )


def _lost_record(t: Task, attempt: int, message: str, kind: FailureKind = FailureKind.NODE_LOST) -> Attempt:
    return Attempt.recorded(t.key, t.stage, t.index, attempt, kind, message)


class Watchdog:
    """No task finished and no worker alive (`Engine.last_alive`) for `limit_s`: the engine is restarted; the
    same again with no task finished since the restart stops the run with EngineStalled."""

    def __init__(self, engine: Engine, limit_s: float):
        self.engine, self.limit_s = engine, limit_s
        self.poll_s = min(5.0, limit_s / 5)
        self.last_progress = time.monotonic()
        self.restarted = False

    def progress(self) -> None:
        self.last_progress, self.restarted = time.monotonic(), False

    def stalled(self) -> bool:
        alive = self.engine.last_alive()
        return alive is not None and time.monotonic() - max(self.last_progress, alive) > self.limit_s

    def why(self) -> str:
        return f"no task finished and no worker alive for {self.limit_s:g} s (site watchdog_s)"

    def restart(self) -> None:
        log.warning("%s engine: %s; restarting it", self.engine.name, self.why())
        self.engine.restart()
        self.last_progress, self.restarted = time.monotonic(), True

    def error(self) -> EngineStalled:
        return EngineStalled(
            f"{self.engine.name} engine stalled in {self.engine.run_root}: {self.why()}, even after a "
            "restart; see the engine's logs there, then run again to resume"
        )


def _next_done(pending: dict[Future, Task], watchdog: Watchdog) -> Future | None:
    """The next finished future, or None when the watchdog finds the engine stalled."""
    while True:
        done, _ = wait(pending, timeout=watchdog.poll_s, return_when=FIRST_COMPLETED)
        if done:
            watchdog.progress()
            return next(iter(done))
        if watchdog.stalled():
            return None


def _run_tasks(
    engine: Engine, store: RunStore, tasks: list[Task], next_attempt: dict[str, int], bundler: Bundler
) -> Iterator[Outcome]:
    """Submit tasks in bundles (perfscale/bundles.py: one engine call runs one or more tasks), yield each
    task's outcome as its bundle finishes.

    At most 2 x workers bundles are in flight, so a dying worker (which can take every in-flight future of a
    process pool with it) costs few innocent attempts. A lost bundle's tasks that wrote their shard are done
    (their footer holds their attempt record); each other one is a `node_lost` attempt and is rerun *alone*,
    so a task that kills its worker again is caught as the culprit and its budget spent, while its innocent
    neighbours succeed on their rerun. A stalled engine (see Watchdog) loses every bundle in flight the same
    way. Tasks that ask for GPUs go alone (never bundled) and wait in the queue while the engine's GPUs are
    all in use (`perfscale.gpus.GpuAdmission`); tasks without GPUs go past them.
    """
    window = max(2, 2 * engine.workers)
    queue, suspects = GpuAdmission(tasks, engine.gpu_capacity), deque()
    lost: Counter[str] = Counter()
    pending: dict[Future, list[Task]] = {}
    watchdog = Watchdog(engine, store.site.watchdog_s)

    def number(t: Task) -> int:
        return next_attempt.get(t.key, 1) + lost[t.key]

    def submit(bundle: list[Task]) -> None:
        items = [(t.index, number(t)) for t in bundle]
        pending[engine.submit(execute_bundle, str(store.root), items)] = bundle
        queue.started(bundle)

    def finished(t: Task) -> Outcome | None:
        """A task of a lost bundle that finished before the loss: done, with its footer's record."""
        record = store.finished_attempt(t.stage, t.key)
        if record is None:
            return None
        return Outcome(t.index, t.key, t.stage, ok=True, attempts=[record])

    def lose(t: Task, message: str, rerun: bool = True) -> Outcome:
        done = finished(t)
        if done is not None:
            return done
        record = _lost_record(t, number(t), message)
        lost[t.key] += 1
        budget = t.retry.get(FailureKind.NODE_LOST.value, 0)
        if rerun and lost[t.key] <= budget:
            log.info(
                "task %d (%s %s): %s; rerun alone (node_lost retry %d of %d)",
                t.index,
                t.stage,
                t.key,
                message,
                lost[t.key],
                budget,
            )
            suspects.append(t)
            return Outcome(t.index, t.key, t.stage, ok=False, retrying=True, attempts=[record])
        return Outcome(
            t.index,
            t.key,
            t.stage,
            ok=False,
            failure_kind=FailureKind.NODE_LOST.value,
            message=message,
            attempts=[record],
        )

    def cancel(stopped: list[Task], why: str) -> Iterator[Outcome]:
        """The run stops: a `cancelled` attempt for every task in flight that has not finished."""
        for t in stopped:
            done = finished(t)
            if done is not None:
                yield done
                continue
            record = _lost_record(t, number(t), why, CANCELLED)
            yield Outcome(t.index, t.key, t.stage, False, failure_kind=CANCELLED.value, attempts=[record])

    def in_flight() -> list[Task]:
        return [t for bundle in pending.values() for t in bundle]

    while queue or suspects or pending:
        if suspects:
            if not pending:
                submit([suspects.popleft()])
        else:
            while len(pending) < window and (source := queue.next_source()) is not None:
                submit(bundler.take(source))
        try:
            fut = _next_done(pending, watchdog)
        except KeyboardInterrupt:  # SIGINT, or SIGTERM turned into one: record the tasks in flight, stop
            yield from cancel(in_flight(), "run interrupted (SIGINT or SIGTERM)")
            raise
        if fut is None:  # stalled: every task in flight is lost; restart once, then stop
            stuck, stop = in_flight(), watchdog.restarted
            for bundle in pending.values():
                queue.ended(bundle)
            pending.clear()
            if not stop:
                watchdog.restart()
            what = "run stopped" if stop else "engine restarted"
            for t in stuck:
                yield lose(t, f"{what}: {watchdog.why()}", rerun=not stop)
            if stop:
                raise watchdog.error()
            continue
        bundle = pending.pop(fut)
        queue.ended(bundle)
        try:
            outcomes: list[Outcome] = fut.result()
        except Exception as exc:  # the worker process died: the bundle never reported back
            outcomes = [lose(t, f"worker lost: {type(exc).__name__}: {exc}") for t in bundle]
        for t, outcome in zip(bundle, outcomes, strict=False):
            bundler.learn(t, outcome.wall_s)
            yield outcome
        if any(o.disk_full for o in outcomes):  # every other task would fail the same way
            full = next(o for o in outcomes if o.disk_full)
            yield from cancel(bundle[len(outcomes) :] + in_flight(), "run stopped: disk full")
            raise DiskFull(store.root, full.message.splitlines()[0] if full.message else "")


def run_study(
    study_path: Path,
    site: Site,
    run_dir: Path | None = None,
    engine: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    overrides: Sequence[str] = (),
) -> tuple[RunStore, dict[str, StageSummary]]:
    with open_run(study_path, site, run_dir, overrides=overrides) as store:
        return store, run_plan(store, engine, workers, progress=progress)
