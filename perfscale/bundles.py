"""Bundled dispatch: how many tasks one engine call runs.

An engine call costs ~1 ms or more (Parsl's interchange, Dask's scheduler, Ray's raylet, a process pool's
pipe); a no-op task costs less. So the runner packs short tasks into bundles: one call runs several tasks
with `execute.execute_bundle`, each through `execute_task` as if alone (own shard, attempt records,
retries, failure kinds).

A bundle's size aims at `TARGET_S` seconds of work per call, from the stage's expected task time: the
study's `resources.expected_runtime` when it is set (shorter than the walltime), else learnt from the wall
time of the tasks run so far (in their worker, shard and records included; a moving average per resource
shape). A shape with no estimate yet gets bundles of one, and the first answers size the next. A bundle
never holds more than `1 / SPREAD_SHARE` of the remaining tasks per worker (so every worker gets work and
progress moves), nor tasks of different resource shapes, nor multi-rank tasks (one MPI job each), nor GPU
tasks (each claims its GPUs in its worker, and CUDA keeps a process on the first ids it saw:
perfscale/gpus.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from perfscale.plan.planner import Task

TARGET_S = 0.25  # seconds of work per engine call
MAX_BUNDLE = 2000
SPREAD_SHARE = 4  # at least this many bundles per worker while the stage has that many tasks left
LEARN_WEIGHT = 0.2  # weight of a new wall time in the moving average


def shape(t: Task) -> tuple[object, ...]:
    """What a task asks of a worker: tasks of one bundle share it."""
    return (
        t.cores,
        t.memory_gb,
        t.gpus,
        t.nodes,
        t.ranks,
        t.ranks_per_node,
        t.cores_per_rank,
        t.gpus_per_rank,
    )


@dataclass
class Bundler:
    """Sizes bundles for one run: `enabled` False gives one task per call (the engine's own dispatch)."""

    workers: int
    enabled: bool = True
    learnt_s: dict[tuple[object, ...], float] = field(default_factory=dict)

    def expected_s(self, t: Task) -> float | None:
        """The study's hint (`expected_runtime`, which defaults to the walltime when unset), else what the
        tasks of this shape took so far."""
        if t.expected_runtime_s < t.walltime_s:
            return t.expected_runtime_s
        return self.learnt_s.get(shape(t))

    def learn(self, t: Task, wall_s: float | None) -> None:
        if wall_s is None:
            return
        key = shape(t)
        old = self.learnt_s.get(key)
        self.learnt_s[key] = wall_s if old is None else (1 - LEARN_WEIGHT) * old + LEARN_WEIGHT * wall_s

    def size(self, head: Task, remaining: int) -> int:
        """How many tasks, `head` first, the next bundle takes from `remaining` queued ones."""
        if not self.enabled or head.ranks > 1 or head.gpus:
            return 1  # a GPU task goes alone: CUDA binds a process to the first GPU ids it sees
        expected = self.expected_s(head)
        if expected is None:
            return 1
        by_time = int(TARGET_S / max(expected, 1e-6))
        by_spread = -(-remaining // (SPREAD_SHARE * max(1, self.workers)))
        return max(1, min(by_time, by_spread, MAX_BUNDLE))

    def take(self, queue: deque[Task]) -> list[Task]:
        """The next bundle, popped from the front of `queue`: tasks of the head's shape, in order."""
        head = queue.popleft()
        bundle, want = [head], self.size(head, len(queue) + 1)
        kind = shape(head)
        while queue and len(bundle) < want and queue[0].ranks == 1 and shape(queue[0]) == kind:
            bundle.append(queue.popleft())
        return bundle
