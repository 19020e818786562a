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


def run_status(store: RunStore, done: dict[str, set[str]] | None = None) -> list[StageState]:
    """done = the shard passes its check; failed = no good shard and the last attempt failed (a quarantined
    shard is a `corrupt_output` attempt); missing = never attempted. Reads the plan's keys, not its tasks.
    `done`: each stage's done keys, where the caller has just checked them (`perfscale run`)."""
    plan_keys = store.plan_keys
    done_by_stage = done if done is not None else {stage: store.done_keys(stage) for stage in plan_keys}
    failed, recovered = _last_attempts(store)
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


def _last_attempts(store: RunStore) -> tuple[dict[str, str], set[str]]:
    """{task key: failure kind} of the tasks whose last attempt failed, and the keys whose last attempt is a
    row recovered from a shard's footer. Only the rows of tasks that have a failed or recovered row are
    sorted (in the usual run, every row is `ok`: a million rows are filtered, none sorted)."""
    import pyarrow.compute as pc

    table = store.attempts_table(["task_key", "attempt", "ok", "failure_kind", "message"])
    not_ok = pc.invert(pc.fill_null(table.column("ok"), False))
    recovered_row = pc.fill_null(pc.equal(table.column("message"), RECOVERED_MESSAGE), False)
    keys = pc.unique(pc.filter(table.column("task_key"), pc.or_(not_ok, recovered_row)))
    if len(keys) == 0:
        return {}, set()
    rows = table.filter(pc.is_in(table.column("task_key"), value_set=keys)).to_pandas()
    last = rows.sort_values("attempt", kind="stable").drop_duplicates("task_key", keep="last")
    recovered = set(last["task_key"][last["message"] == RECOVERED_MESSAGE])
    failed_last = last[~last["ok"].astype(bool)]
    return dict(zip(failed_last["task_key"], failed_last["failure_kind"].astype(str), strict=True)), recovered
