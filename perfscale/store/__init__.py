"""Run directories, atomic Parquet shards, attempts and provenance.

The names below load lazily, so that a leaf such as `perfscale.store.atomic` can be imported (by generators,
say) without pulling in the run store, the planner and the stages behind it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from perfscale.store.run import PROVENANCE_COLUMNS, Provenance, RunStore

__all__ = ["PROVENANCE_COLUMNS", "Provenance", "RunStore"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from perfscale.store import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
