"""Should an array element that caught the walltime warning be requeued? Asked by the job templates.

    python -m perfscale.sched.requeue RUN/plan.parquet INDEX    # exit 0: requeue; 1: do not

The batch shell asks after the interrupted task has recorded its attempt (see perfscale.execute): the
element is requeued only when that task has no shard, its latest attempt failed with a kind the scheduler
can cure by running it again (timeout, preempted, node_lost), and the task's retry budget for that kind is
not spent: attempts of that kind so far <= `retry[kind]` (the first timeout with `retry: {timeout: 1}`
requeues, the second does not). The template then runs `scontrol requeue JOB_INDEX` (Slurm) or exits with
the requeue exit value (LSF `#BSUB -Q`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from perfscale.errors import FailureKind
from perfscale.store import RunStore

REQUEUABLE = {FailureKind.TIMEOUT.value, FailureKind.PREEMPTED.value, FailureKind.NODE_LOST.value}


def requeue_allowed(store: RunStore, index: int) -> tuple[bool, str]:
    """(decision, reason) for task `index` of the run in `store`."""
    task = store.task(index)
    if store.shard_done(task.stage, task.key):  # a loose shard or a pack
        return False, "the task is done"
    mine = store.task_attempts(task.key)  # its bucket and batch files, not the whole table
    if mine.empty:
        return False, "the task recorded no attempt"
    last = mine.iloc[-1]
    kind = last["failure_kind"]
    if bool(last["ok"]) or kind not in REQUEUABLE:
        return False, f"its last attempt is {kind or 'ok'}, not one a requeue can cure"
    used = int((mine["failure_kind"] == kind).sum())
    budget = int(task.retry.get(kind, 0))
    if used > budget:
        return False, f"{kind} budget spent ({used} attempts, retry.{kind} = {budget})"
    return True, f"{kind} attempt {used} of {budget + 1}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m perfscale.sched.requeue RUN/plan.parquet INDEX", file=sys.stderr)
        return 2
    path = Path(args[0])
    store = RunStore(path.parent if path.suffix == ".parquet" else path)
    ok, why = requeue_allowed(store, int(args[1]))
    print(f"perfscale: task {args[1]}: {'requeue' if ok else 'no requeue'}: {why}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
