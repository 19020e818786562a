"""Array mode, part 3: submit a run's missing tasks as job arrays, poll them, resubmit, cancel.

Everything the scheduler was told is kept in RUN/arrays/: the rendered scripts, one index file per array
(line k = the task indices of element k) and jobs.json (array name, job id, stage, elements). Status needs one
scheduler call per poll whatever the number of arrays; shards stay the only completion marker.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from perfscale.errors import FailureKind, SpecError
from perfscale.sched.arrays import stage_arrays
from perfscale.sched.client import CommandClient
from perfscale.sched.lsf import LSF
from perfscale.sched.render import render_array
from perfscale.sched.slurm import ElementState, Slurm
from perfscale.store.atomic import atomic_write_text
from perfscale.store.run import RunStore, utcnow


@dataclass
class SubmittedArray:
    name: str
    stage: str
    job_id: str
    first_index: int  # 0 for Slurm, 1 for LSF
    elements: list[list[int]]  # task indices of each element
    submitted_at: str


def backend(site, client: CommandClient | None = None) -> Slurm | LSF:
    if site.scheduler == "slurm":
        return Slurm(client)
    if site.scheduler == "lsf":
        return LSF(client)
    raise SpecError(f"site {site.name!r} has no batch scheduler; use `perfscale run` for local sites")


def _jobs_path(store: RunStore) -> Path:
    return store.root / "arrays" / "jobs.json"


def submitted(store: RunStore) -> list[SubmittedArray]:
    path = _jobs_path(store)
    return [SubmittedArray(**j) for j in json.loads(path.read_text())] if path.exists() else []


def _save(store: RunStore, arrays: list[SubmittedArray]) -> None:
    atomic_write_text(json.dumps([asdict(a) for a in arrays], indent=1), _jobs_path(store))


def submit_run(
    store: RunStore,
    indices: set[int] | None = None,
    partition: str | None = None,
    account: str | None = None,
    throttle: int | None = None,
    client: CommandClient | None = None,
) -> list[SubmittedArray]:
    """Submit every task without a shard (or only `indices`) as arrays, stage by stage, with dependencies.

    Every array is rendered and checked against the site's limits before the first one is submitted.
    """
    site, plan = store.site, store.plan
    sched = backend(site, client)
    previous = submitted(store)
    round_ = len({a.submitted_at for a in previous})
    prefix = plan.study if round_ == 0 else f"{plan.study}-r{round_}"
    pending = []
    for stage in plan.stages:
        done = store.done_keys(stage)
        todo = [
            t for t in plan.of_stage(stage) if t.key not in done and (indices is None or t.index in indices)
        ]
        for job in stage_arrays(prefix, stage, todo, site, partition, account, throttle):
            pending.append((job, render_array(job, site, store.root)))
    (store.root / "arrays").mkdir(parents=True, exist_ok=True)
    (store.root / "logs").mkdir(parents=True, exist_ok=True)
    job_ids: dict[str, list[str]] = {}  # stage -> job ids submitted now
    now = utcnow().isoformat()
    new = []
    for job, rendered in pending:
        script = store.root / "arrays" / f"{job.name}.sh"
        atomic_write_text(rendered.script, script)
        atomic_write_text(rendered.index_file, store.root / "arrays" / f"{job.name}.idx")
        first = plan.of_stage(job.stage)[0]
        upstream = [*first.inputs, *([first.upstream_stage] if first.upstream_stage else [])]
        deps = [j for s in upstream for j in job_ids.get(s, [])]
        job_id = sched.submit(script, deps)
        job_ids.setdefault(job.stage, []).append(job_id)
        new.append(
            SubmittedArray(
                job.name, job.stage, job_id, sched.first_index, [list(e.indices) for e in job.elements], now
            )
        )
        _save(store, previous + new)  # after every submit: a crash mid-way forgets no job
    return new


def poll(store: RunStore, client: CommandClient | None = None) -> dict[int, ElementState]:
    """Scheduler state of every task index covered by a submitted array (the latest submission wins)."""
    arrays = submitted(store)
    if not arrays:
        return {}
    states = backend(store.site, client).poll(sorted({a.job_id for a in arrays}))
    by_task: dict[int, ElementState] = {}
    for arr in arrays:  # in submission order, so a resubmission overrides the earlier state
        for k, indices in enumerate(arr.elements):
            state = states.get((arr.job_id, k + arr.first_index))
            if state is not None:
                for i in indices:
                    by_task[i] = state
    return by_task


def record_scheduler_failures(store: RunStore, states: dict[int, ElementState]) -> int:
    """Write an attempt for each task the scheduler killed (walltime, OOM, node, preemption, cancel) that did
    not record its own failure. In a packed element only the first task without a shard is blamed: the ones
    after it never started. Returns the number of attempts written."""
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
        if store.shard_path(task.stage, task.key).exists():
            continue
        blamed.add((st.job_id, st.element))
        message = f"scheduler job {st.job_id}[{st.element}]: {st.state}"
        if message in seen:
            continue
        prior = attempts.loc[attempts.task_key == task.key, "attempt"]
        now = utcnow()
        records.append(
            {
                "task_key": task.key,
                "stage": task.stage,
                "index": index,
                "attempt": int(prior.max()) + 1 if len(prior) else 1,
                "host": None,
                "pid": None,
                "started_at": now,
                "ended_at": now,
                "duration_s": None,
                "ok": False,
                "exit_status": st.exit_code,
                "failure_kind": st.failure.value,
                "message": message,
            }
        )
    store.append_attempts(records)
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
    ids = sorted({a.job_id for a in submitted(store)})
    backend(store.site, client).cancel(ids)
    return ids
