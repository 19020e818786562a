"""How the `sample` stage's tasks went, parts combined: each task writes sampling.json among its artifacts
(rows, the part it drew, an LLM generator's valid-row rate and the counts it comes from); the parts of one
sample (same upstream train task and params but the part) add up to one figure per sample."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from perfscale.store.run import RunStore

SAMPLING_JSON = "sampling.json"


def sampling_reports(store: RunStore, stage: str) -> list[dict[str, Any]]:
    """Each finished task's sampling.json, with its task key and upstream key; missing files are skipped."""
    out = []
    for task in store.plan.of_stage(stage):
        path = store.artifact_dir(stage, task.key) / SAMPLING_JSON
        if path.is_file():
            report = json.loads(path.read_text(encoding="utf-8"))
            rest = {k: v for k, v in task.params.items() if k not in ("part", "parts")}
            sample = json.dumps([task.upstream_key, rest, task.seed, task.rep], sort_keys=True, default=str)
            out.append(report | {"task": task.key, "sample": sample})
    return out


def combined_sampling(store: RunStore, stage: str) -> list[dict[str, Any]]:
    """One entry per sample: its parts, rows, and (for LLM generators) the valid-row rate over all parts
    (valid texts / generated texts, summed over parts: the rate an unsplit call would report)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for report in sampling_reports(store, stage):
        groups.setdefault(report["sample"], []).append(report)
    out = []
    for parts in groups.values():
        entry: dict[str, Any] = {
            "generator": parts[0].get("generator"),
            "tasks": sorted(p["task"] for p in parts),
            "parts": len(parts),
            "rows": sum(int(p.get("rows", 0)) for p in parts),
            "part_valid_row_rates": [
                p.get("valid_row_rate") for p in sorted(parts, key=lambda p: p.get("part", 0))
            ],
        }
        generated = sum(int(p.get("generated_texts", 0)) for p in parts)
        if generated:
            entry["generated_texts"] = generated
            entry["valid_texts"] = sum(int(p.get("valid_texts", 0)) for p in parts)
            entry["valid_row_rate"] = entry["valid_texts"] / generated
        out.append(entry)
    return out
