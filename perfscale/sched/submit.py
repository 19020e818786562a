"""Array mode, part 3: submit a run's missing tasks as job arrays, poll them, resubmit, cancel.

Everything the scheduler was told is kept in RUN/arrays/: the rendered scripts, one index file per array
(line k = the task indices of element k) and jobs.json (array name, job id, stage, elements). Status needs one
scheduler call per poll whatever the number of arrays; shards stay the only completion marker.

Blocked elements (pending on a dependency that failed: Slurm's DependencyNeverSatisfied) are not active:
`wait` returns, `failed_or_missing` includes their tasks, and `submit_run` cancels them when it submits those
tasks again with dependencies on the new upstream arrays.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from perfscale.errors import FailureKind
from perfscale.plan.placement import site_of
from perfscale.sched.arrays import ArrayJob, stage_arrays
from perfscale.sched.base import ElementState, Scheduler
from perfscale.sched.client import CommandClient
from perfscale.sched.render import Rendered, batch_scheduler, render_array
from perfscale.spec.site import Site
from perfscale.store.atomic import atomic_write_text
from perfscale.store.attempt import Attempt, utcnow
from perfscale.store.compact import element_pack_every
from perfscale.store.run import RunStore

log = logging.getLogger(__name__)


@dataclass
class SubmittedArray:
    name: str
    stage: str
    job_id: str
    first_index: int  # the scheduler's array index base (0 for Slurm, 1 for LSF)
    elements: list[list[int]]  # task indices of each element
    submitted_at: str
    site: str | None = None  # the stage's own site (resources.site), None: the run's


def _site(store: RunStore, name: str | None) -> Site:
    return site_of(name, store.site, store.root)


def backend(store: RunStore, client: CommandClient | None = None, site: str | None = None) -> Scheduler:
    """The scheduler of the run's site, or of `site` (a stage's own; its state folder is RUN/arrays/); an
    error for sites without one."""
    return batch_scheduler(_site(store, site))(client, store.root / "arrays")


def _sites(arrays: list[SubmittedArray]) -> list[str | None]:
    return list(dict.fromkeys(a.site for a in arrays))


def _jobs_path(store: RunStore) -> Path:
    return store.root / "arrays" / "jobs.json"


def submitted(store: RunStore) -> list[SubmittedArray]:
    path = _jobs_path(store)
    return [SubmittedArray(**j) for j in json.loads(path.read_text())] if path.exists() else []


def _save(store: RunStore, arrays: list[SubmittedArray]) -> None:
    atomic_write_text(json.dumps([asdict(a) for a in arrays], indent=1), _jobs_path(store))


# sacct learns of a new job from slurmdbd seconds after the controller (up to 5 s measured, more when busy)
MISSING_GRACE_S = 300.0
NOT_LISTED = "NotListedYet"  # reason of an element that accounting does not list yet


def _submitted_at(arr: SubmittedArray) -> datetime:
    return datetime.fromisoformat(arr.submitted_at)


def poll_elements(
    store: RunStore, client: CommandClient | None = None
) -> tuple[list[SubmittedArray], dict[tuple[str, int], ElementState]]:
    """Every submitted array and its elements' states, from ONE scheduler call.

    An element that sacct does not list yet is PENDING (reason NotListedYet, active) for MISSING_GRACE_S
    after its submission: accounting lags the controller, and without this `wait` would return at once.
    Back ends that read the controller itself (squeue, bjobs) are taken as they are.
    """
    arrays = submitted(store)
    states: dict[tuple[str, int], ElementState] = {}
    lagging: list[SubmittedArray] = []
    for site in _sites(arrays):  # one call per site the arrays went to (one, unless stages name sites)
        mine = [a for a in arrays if a.site == site]
        sched = backend(store, client, site)
        states.update(sched.poll(sorted({a.job_id for a in mine})))
        lagging += mine if sched.lags else []
    now = utcnow()
    for arr in lagging:
        if (now - _submitted_at(arr)).total_seconds() >= MISSING_GRACE_S:
            continue
        for k in range(len(arr.elements)):
            key = (arr.job_id, k + arr.first_index)
            if key not in states:
                states[key] = ElementState(arr.job_id, key[1], "PENDING", True, None, None, NOT_LISTED)
    return arrays, states


def _by_task(
    arrays: list[SubmittedArray], states: dict[tuple[str, int], ElementState]
) -> dict[int, ElementState]:
    by_task: dict[int, ElementState] = {}
    for arr in arrays:  # in submission order, so a resubmission overrides the earlier state
        for k, indices in enumerate(arr.elements):
            state = states.get((arr.job_id, k + arr.first_index))
            if state is not None:
                for i in indices:
                    by_task[i] = state
    return by_task


def poll(store: RunStore, client: CommandClient | None = None) -> dict[int, ElementState]:
    """Scheduler state of every task index covered by a submitted array (the latest submission wins)."""
    return _by_task(*poll_elements(store, client))


def _superseded(
    sched: Scheduler,
    arrays: list[SubmittedArray],
    states: dict[tuple[str, int], ElementState],
    todo: set[int],
) -> list[str]:
    """Elements of earlier submissions (`arrays`: of one site) that wait for ever (blocked on a failed
    dependency) and whose tasks are submitted again now: cancelled, so they neither clutter the queue nor run
    twice."""
    ids = []
    for arr in arrays:
        for k, indices in enumerate(arr.elements):
            st = states.get((arr.job_id, k + arr.first_index))
            if st is not None and st.blocked and todo.intersection(indices):
                ids.append(sched.element_id(arr.job_id, st.element))
    return ids


def _upstream(store: RunStore, stage: str) -> list[str]:
    first = store.plan.of_stage(stage)[0]
    return [*first.inputs, *([first.upstream_stage] if first.upstream_stage else [])]


def _running_arrays(
    arrays: list[SubmittedArray], states: dict[tuple[str, int], ElementState], stages: list[str]
) -> list[str]:
    """Job ids of earlier arrays of `stages` with elements still queued or running (not blocked)."""
    return sorted(
        {
            a.job_id
            for a in arrays
            if a.stage in stages
            and any(
                (st := states.get((a.job_id, k + a.first_index))) is not None and st.active
                for k in range(len(a.elements))
            )
        }
    )


def render_arrays(
    store: RunStore,
    previous: list[SubmittedArray],
    busy: set[int],
    indices: set[int] | None = None,
    partition: str | None = None,
    account: str | None = None,
    throttle: int | None = None,
) -> list[tuple[ArrayJob, Rendered]]:
    """The arrays of every task without a shard (or only `indices`) that is not `busy`, stage by stage, each
    rendered for and checked against the stage's site (its `resources.site`, else the run's) and partition
    (its `resources.partition`, else `partition`, else the site's default; `partition` applies to stages on
    the run's site only). Names carry the submission round after `previous`."""
    plan = store.plan
    round_ = len({a.submitted_at for a in previous})
    prefix = plan.study if round_ == 0 else f"{plan.study}-r{round_}"
    pending = []
    for stage in plan.stages:
        done = store.done_keys(stage)
        todo = [
            t
            for t in plan.of_stage(stage)
            if t.key not in done and t.index not in busy and (indices is None or t.index in indices)
        ]
        if not todo:
            continue
        site = _site(store, todo[0].site)
        part = todo[0].partition or (partition if site is store.site else None)
        acct = account if site is store.site else None
        pack_every = element_pack_every(store, stage)
        for job in stage_arrays(prefix, stage, todo, site, part, acct, throttle):
            pending.append((job, render_array(job, site, store.root, pack_every)))
    return pending


def write_scripts(store: RunStore, job: ArrayJob, rendered: Rendered) -> Path:
    """RUN/arrays/<array>.sh and .idx (and the RUN/logs/ folder the script writes to); the script's path."""
    (store.root / "arrays").mkdir(parents=True, exist_ok=True)
    (store.root / "logs").mkdir(parents=True, exist_ok=True)
    script = store.root / "arrays" / f"{job.name}.sh"
    atomic_write_text(rendered.script, script)
    atomic_write_text(rendered.index_file, store.root / "arrays" / f"{job.name}.idx")
    return script


def dry_run(
    store: RunStore,
    partition: str | None = None,
    account: str | None = None,
    throttle: int | None = None,
) -> list[tuple[ArrayJob, Path]]:
    """What `submit_run` would submit, rendered into RUN/arrays/ as it would be, without calling the
    scheduler at all (no poll, no submit, no cancel; jobs.json is not touched). Tasks queued or running in
    earlier submissions cannot be told apart without a poll: every task without a shard is rendered."""
    pending = render_arrays(store, submitted(store), set(), None, partition, account, throttle)
    return [(job, write_scripts(store, job, rendered)) for job, rendered in pending]


def submit_run(
    store: RunStore,
    indices: set[int] | None = None,
    partition: str | None = None,
    account: str | None = None,
    throttle: int | None = None,
    client: CommandClient | None = None,
    hold: bool = False,
) -> list[SubmittedArray]:
    """Submit every task without a shard (or only `indices`) as arrays, stage by stage, with dependencies.

    Every array is rendered and checked against the site's limits before the first one is submitted. When
    arrays were submitted before, one poll first: tasks queued or running in them are not submitted again,
    their blocked elements are cancelled (superseded), and a stage waits for this round's upstream arrays
    (afterok) and for earlier upstream arrays still running (afterany). `hold` submits held arrays
    (`sbatch --hold`, `bsub -H`): nothing runs until released.
    """
    previous, states = poll_elements(store, client) if submitted(store) else ([], {})
    busy = {i for i, st in _by_task(previous, states).items() if st.active}
    pending = render_arrays(store, previous, busy, indices, partition, account, throttle)
    todo_all = {i for job, _ in pending for e in job.elements for i in e.indices}
    for site in _sites(previous) if pending else []:
        stale = _superseded(
            backend(store, client, site), [a for a in previous if a.site == site], states, todo_all
        )
        if stale:
            backend(store, client, site).cancel(stale)
    job_ids: dict[str, list[str]] = {}  # stage -> job ids submitted now
    stage_site = {t.stage: t.site if t.site != store.site.name else None for t in store.plan.tasks}
    deferred: set[str] = set()
    now = utcnow().isoformat()
    new = []
    for job, rendered in pending:
        upstream = _upstream(store, job.stage)
        site = stage_site[job.stage]
        after_any = _running_arrays(previous, states, upstream)
        # a scheduler cannot wait for another site's jobs: a stage whose upstream work on another site is not
        # finished waits for the next `perfscale submit` (as does everything downstream of it)
        elsewhere = [
            s
            for s in upstream
            if stage_site[s] != site and (s in job_ids or _running_arrays(previous, states, [s]))
        ]
        if job.stage in deferred or elsewhere or deferred.intersection(upstream):
            if job.stage not in deferred:
                log.warning(
                    "stage %s waits for stage(s) %s on another site: run `perfscale submit` again once they "
                    "are done",
                    job.stage,
                    ", ".join(elsewhere or sorted(deferred.intersection(upstream))),
                )
            deferred.add(job.stage)
            continue
        script = write_scripts(store, job, rendered)
        sched = backend(store, client, site)
        deps = [j for s in upstream if stage_site[s] == site for j in job_ids.get(s, [])]
        after_any = [j for j in after_any if any(a.job_id == j and a.site == site for a in previous)]
        job_id = sched.submit(script, deps, hold, after_any)
        job_ids.setdefault(job.stage, []).append(job_id)
        elements = [list(e.indices) for e in job.elements]
        new.append(SubmittedArray(job.name, job.stage, job_id, sched.first_index, elements, now, site))
        _save(store, previous + new)  # after every submit: a crash mid-way forgets no job
    return new


def _element_tag(job_id: str, element: int) -> str:
    """How an attempt message names an array element: `job 123[4]` (the task's signal records and the
    scheduler's records both contain it)."""
    return f"job {job_id}[{element}]"


def record_scheduler_failures(store: RunStore, states: dict[int, ElementState]) -> int:
    """Write an attempt for each task the scheduler killed (walltime, OOM, node, preemption, cancel) that did
    not record that failure itself. In a packed element only the first task without a shard is blamed: the
    ones after it never started. A task that caught the scheduler's signal has already written an attempt
    naming the element (perfscale.execute); it is kept when its kind agrees with the scheduler's state, and
    the scheduler's kind is added when they differ (a SIGTERM from a preemption reads as `cancelled` to the
    task). Returns the number of attempts written."""
    attempts = store.attempts()
    seen = set(attempts["message"].dropna())
    plan = store.plan
    blamed: set[tuple[str, int]] = set()
    records = []
    for index in sorted(states):
        st = states[index]
        if st.failure is None or st.failure is FailureKind.APP_ERROR or (st.job_id, st.element) in blamed:
            continue  # app errors are recorded by the task itself
        task = plan.tasks[index]
        if store.shard_done(task.stage, task.key):
            continue
        blamed.add((st.job_id, st.element))
        message = f"scheduler {_element_tag(st.job_id, st.element)}: {st.state}"
        mine = attempts[attempts.task_key == task.key]
        own = mine[
            mine["message"].fillna("").str.contains(_element_tag(st.job_id, st.element), regex=False)
            & (mine["failure_kind"] == st.failure.value)
        ]
        if message in seen or len(own):
            continue
        attempt = int(mine["attempt"].max()) + 1 if len(mine) else 1
        records.append(
            Attempt.recorded(task.key, task.stage, index, attempt, st.failure, message, st.exit_code)
        )
    store.append_task_attempts(records)  # in each task's bucket, where its next element numbers from
    return len(records)


def active(states: dict[int, ElementState]) -> set[int]:
    return {i for i, s in states.items() if s.active}


def wait(
    store: RunStore, every_s: float = 5.0, timeout_s: float | None = None, client: CommandClient | None = None
) -> dict[int, ElementState]:
    """Poll (one scheduler call per cycle) until no submitted element is queued or running."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        states = poll(store, client)
        if not active(states):
            record_scheduler_failures(store, states)
            return states
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{len(active(states))} array elements still active after {timeout_s} s")
        time.sleep(every_s)


def failed_or_missing(store: RunStore, states: dict[int, ElementState]) -> set[int]:
    """Tasks without a shard that the scheduler is not running now: what `resubmit --failed` submits."""
    running = active(states)
    done = {s: store.done_keys(s) for s in store.plan.stages}
    return {t.index for t in store.plan.tasks if t.key not in done[t.stage] and t.index not in running}


def cancel(store: RunStore, client: CommandClient | None = None) -> list[str]:
    arrays = submitted(store)
    for site in _sites(arrays):
        backend(store, client, site).cancel(sorted({a.job_id for a in arrays if a.site == site}))
    return sorted({a.job_id for a in arrays})
