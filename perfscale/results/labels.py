"""Labels of synthetic sets: the hyperparameters that tell a model apart from its siblings, made unique.

Used by the metric study (its set labels) and the report (plot titles).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from perfscale.plan.planner import Plan


def describe_task(plan: Plan, key: str) -> str:
    """The model hyperparameters along a task's upstream chain that tell it apart from the other tasks of its
    stage with the same generator, e.g. 'epochs=5' ('' when none)."""
    by_key = {t.key: t for t in plan.tasks}
    hyper: dict[str, Any] = {}
    task = by_key.get(key)
    while task is not None:
        found = task.params.get("hyperparameters")
        if isinstance(found, dict):
            siblings = [
                t.params.get("hyperparameters") or {}
                for t in plan.of_stage(task.stage)
                if t.params.get("generator") == task.params.get("generator")
            ]
            varying = {k for k in found if len({repr(s.get(k)) for s in siblings}) > 1}
            hyper = {**{k: v for k, v in found.items() if k in varying}, **hyper}
        task = by_key.get(task.upstream_key) if task.upstream_key else None
    return ", ".join(f"{k}={v}" for k, v in sorted(hyper.items()))


def unique_labels(labels: list[str]) -> list[str]:
    """Labels made unique by appending ' #2', ' #3'... to repeats (first occurrence unchanged)."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out
