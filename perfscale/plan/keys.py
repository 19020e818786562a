"""Task keys: content hashes that give equal work an equal identity on every machine."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from perfscale.version import __version__

KEY_LENGTH = 20  # hex digits (80 bits): collisions are negligible for any campaign size


# one encoder for every call: json.dumps with options builds a new JSONEncoder each time (a million-task
# plan encodes millions of small documents)
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
SORTED_JSON = json.JSONEncoder(sort_keys=True)  # the plan's stored form of params, inputs and retry


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the byte-stable form that keys hash."""
    return _CANONICAL.encode(value)


def task_key(
    stage: str,
    kind: str,
    params: Mapping[str, Any],
    inputs: Mapping[str, str],
    upstream: str | None,
    version: str = __version__,
) -> str:
    """Hash of what determines a task's output: stage, kind, parameters, input digests and code version.

    Resources, site and study name are deliberately left out: they change where work runs, not what it is.
    """
    doc = {
        "stage": stage,
        "kind": kind,
        "params": dict(params),
        "inputs": dict(inputs),
        "upstream": upstream,
        "version": version,
    }
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()[:KEY_LENGTH]


def stage_digest(keys: Iterable[str]) -> str:
    """One digest standing for a whole stage's output (the sorted keys of its tasks)."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:KEY_LENGTH]
