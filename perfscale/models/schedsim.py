"""Model-based scheduling (Nichols, ch. 5): jobs placed on machines by a relative-performance prediction, each
machine running FCFS with EASY backfilling (docs/relperf.md).

* **Jobs** are sampled with replacement from an RPV table: each job is one vector (a kernel at one size),
  with a node count, an arrival time and a base run time; its run time on machine m is the base time x
  `rpvmin_m` (time on m / time on the fastest machine).
* **Placement policies** choose a machine for each job when it arrives: `predicted` (the machine with the
  highest predicted speed), `true` (the highest true speed), `random` (uniform, seeded). Only machines with
  enough nodes for the job are candidates.
* **EASY backfilling** per machine: jobs start in arrival order while they fit; when the head of the queue
  does not fit, it gets a reservation (the earliest time enough nodes are free, from the running jobs' end
  times; run times are known exactly here), and a later job may start now if it fits in the free nodes and
  either ends by the reservation or leaves the head's nodes free at that time. `backfill_depth` bounds how
  many queued jobs each pass looks at.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from perfscale.errors import BadInput


@dataclass
class Job:
    id: int
    arrival: float
    nodes: int
    runtime: float
    start: float = np.nan
    machine: str = ""


@dataclass
class Machine:
    name: str
    nodes: int
    backfill_depth: int = 100
    free: int = 0
    queue: list[Job] = field(default_factory=list)
    running: list[tuple[float, int, int]] = field(default_factory=list)  # heap of (end, job id, nodes)

    def __post_init__(self) -> None:
        self.free = self.nodes

    def _start(self, job: Job, now: float) -> None:
        job.start = now
        self.free -= job.nodes
        heapq.heappush(self.running, (now + job.runtime, job.id, job.nodes))

    def finish_until(self, now: float) -> None:
        while self.running and self.running[0][0] <= now:
            _, _, nodes = heapq.heappop(self.running)
            self.free += nodes

    def schedule(self, now: float) -> None:
        """FCFS from the head of the queue, then EASY backfilling behind a head that does not fit."""
        while self.queue and self.queue[0].nodes <= self.free:
            self._start(self.queue.pop(0), now)
        if not self.queue:
            return
        head = self.queue[0]
        free, shadow = self.free, now
        for end, _, nodes in sorted(self.running):  # when do enough nodes free up for the head?
            free += nodes
            shadow = end
            if free >= head.nodes:
                break
        extra = free - head.nodes  # nodes the head will not need at its reservation
        started = []
        for job in self.queue[1 : 1 + self.backfill_depth]:
            if job.nodes > self.free:
                continue
            if now + job.runtime <= shadow:
                self._start(job, now)
                started.append(job)
            elif job.nodes <= extra:
                self._start(job, now)
                extra -= job.nodes
                started.append(job)
        if started:
            ids = {j.id for j in started}
            self.queue = [j for j in self.queue if j.id not in ids]

    def next_end(self) -> float:
        return self.running[0][0] if self.running else np.inf


def simulate(jobs: Sequence[Job], machines: dict[str, int], backfill_depth: int = 100) -> pd.DataFrame:
    """Run jobs already placed (`job.machine`) on machines of the given node counts; one row per job with its
    start, end and wait."""
    sims = {name: Machine(name, n, backfill_depth) for name, n in machines.items()}
    for job in jobs:
        if job.machine not in sims:
            raise BadInput(f"simulate: job {job.id} is placed on unknown machine {job.machine!r}")
        if job.nodes > sims[job.machine].nodes:
            raise BadInput(
                f"simulate: job {job.id} needs {job.nodes} nodes; {job.machine} has {machines[job.machine]}"
            )
    pending = sorted(jobs, key=lambda j: (j.arrival, j.id))
    i = 0
    now = 0.0
    while i < len(pending) or any(m.queue or m.running for m in sims.values()):
        next_arrival = pending[i].arrival if i < len(pending) else np.inf
        now = min(next_arrival, *(m.next_end() for m in sims.values()))
        for m in sims.values():
            m.finish_until(now)
        while i < len(pending) and pending[i].arrival <= now:
            sims[pending[i].machine].queue.append(pending[i])
            i += 1
        for m in sims.values():
            m.schedule(now)
    out = pd.DataFrame(
        {
            "job": [j.id for j in jobs],
            "machine": [j.machine for j in jobs],
            "arrival": [j.arrival for j in jobs],
            "nodes": [j.nodes for j in jobs],
            "runtime": [j.runtime for j in jobs],
            "start": [j.start for j in jobs],
        }
    )
    return out.assign(end=out["start"] + out["runtime"], wait=out["start"] - out["arrival"])


POLICIES = ("predicted", "true", "random")


def place_and_simulate(
    true_speed: pd.DataFrame,
    predicted_speed: pd.DataFrame,
    machines: dict[str, int],
    n_jobs: int,
    seed: int,
    max_nodes: int = 4,
    mean_interarrival: float = 1.0,
    mean_runtime: float = 20.0,
    policies: Sequence[str] = POLICIES,
    backfill_depth: int = 100,
) -> pd.DataFrame:
    """Sample `n_jobs` vectors with replacement (rows of `true_speed`, one column per machine with its speed
    relative to the fastest, and the matching rows of `predicted_speed`), place them by each policy and
    simulate. One row per policy: makespan, mean wait, mean turnaround, mean run time."""
    names = list(machines)
    missing = [m for m in names if m not in true_speed.columns or m not in predicted_speed.columns]
    if missing:
        raise BadInput(
            f"simulate: machines {missing} have no speed column; columns: {list(true_speed.columns)}"
        )
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise BadInput(f"simulate: unknown policies {unknown}; choose from {POLICIES}")
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(true_speed), n_jobs)
    nodes = rng.integers(1, max_nodes + 1, n_jobs)
    arrival = np.cumsum(rng.exponential(mean_interarrival, n_jobs))
    base = rng.exponential(mean_runtime, n_jobs)  # run time on the job's fastest machine
    truth = true_speed[names].to_numpy(np.float64)[rows]
    guess = predicted_speed[names].to_numpy(np.float64)[rows]
    capacity = np.array([machines[m] for m in names])
    fits = nodes[:, None] <= capacity[None, :]
    if not fits.any(axis=1).all():
        raise BadInput(f"simulate: max_nodes {max_nodes} exceeds every machine's node count {machines}")
    choice_rng = np.random.default_rng([seed, 1])
    results = []
    for policy in policies:
        if policy == "random":
            score = np.where(fits, choice_rng.random(truth.shape), -np.inf)
        else:
            score = np.where(fits, truth if policy == "true" else guess, -np.inf)
        placed = score.argmax(axis=1)
        runtime = base / truth[np.arange(n_jobs), placed]
        jobs = [
            Job(k, float(arrival[k]), int(nodes[k]), float(runtime[k]), machine=names[placed[k]])
            for k in range(n_jobs)
        ]
        out = simulate(jobs, machines, backfill_depth)
        results.append(
            {
                "policy": policy,
                "jobs": n_jobs,
                "makespan": float(out["end"].max() - out["arrival"].min()),
                "mean_wait": float(out["wait"].mean()),
                "mean_turnaround": float((out["end"] - out["arrival"]).mean()),
                "mean_runtime": float(out["runtime"].mean()),
                **{f"share_{m}": float((out["machine"] == m).mean()) for m in names},
            }
        )
    return pd.DataFrame(results)
