"""Per-stage state of a run, from shards (done) and the attempts table (failed, with kinds)."""

from __future__ import annotations

from dataclasses import dataclass, field

from perfscale.store.recover import RECOVERED_MESSAGE
from perfscale.store.run import RunStore


@dataclass
class StageState:
    stage: str
    total: int = 0
    done: int = 0
    failed: int = 0
    missing: int = 0
    recovered: int = 0  # done tasks whose attempt row was lost and read back from their shard's footer
    failure_kinds: dict[str, int] = field(default_factory=dict)


def run_status(store: RunStore) -> list[StageState]:
    """done = the shard passes its check; failed = no good shard and the last attempt failed (a quarantined
    shard is a `corrupt_output` attempt); missing = never attempted. Reads the plan's keys, not its tasks."""
    plan_keys = store.plan_keys
    done_by_stage = {stage: store.done_keys(stage) for stage in plan_keys}  # quarantines bad shards
    attempts = store.attempts()
    last = attempts.sort_values("attempt", kind="stable").drop_duplicates("task_key", keep="last")
    recovered = set(last["task_key"][last["message"] == RECOVERED_MESSAGE])
    failed_last = last[~last["ok"].astype(bool)]
    failed = dict(zip(failed_last["task_key"], failed_last["failure_kind"].astype(str), strict=True))
    states = []
    for stage, keys in plan_keys.items():
        done = done_by_stage[stage]
        st = StageState(stage, total=len(keys))
        st.done = len(done)
        st.recovered = len(done & recovered)
        for key in keys:
            if key in done:
                continue
            kind = failed.get(key)
            if kind is None:
                st.missing += 1
            else:
                st.failed += 1
                st.failure_kinds[kind] = st.failure_kinds.get(kind, 0) + 1
        states.append(st)
    return states
