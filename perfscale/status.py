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
    shard is a `corrupt_output` attempt); missing = never attempted."""
    done_by_stage = {stage: store.done_keys(stage) for stage in store.plan.stages}  # quarantines bad shards
    attempts = store.attempts()
    last = attempts.sort_values("attempt").groupby("task_key").tail(1).set_index("task_key")
    states = []
    for stage in store.plan.stages:
        keys = [t.key for t in store.plan.of_stage(stage)]
        done = done_by_stage[stage]
        st = StageState(stage, total=len(keys))
        for key in keys:
            if key in done:
                st.done += 1
                st.recovered += key in last.index and last.at[key, "message"] == RECOVERED_MESSAGE
            elif key in last.index and not bool(last.at[key, "ok"]):
                st.failed += 1
                kind = str(last.at[key, "failure_kind"])
                st.failure_kinds[kind] = st.failure_kinds.get(kind, 0) + 1
            else:
                st.missing += 1
        states.append(st)
    return states
