"""Stage kinds: one module per kind (or a pair), found by name through `perfscale.plan.kinds.KINDS`.

Importing this package loads no stage module: a kind's module is imported when a plan or a task names it.
"""

from perfscale.stages.base import (
    StageContext,
    StageKind,
    StageParams,
    get_stage_kind,
    registered_kinds,
    stage_kind,
)

__all__ = ["StageContext", "StageKind", "StageParams", "get_stage_kind", "registered_kinds", "stage_kind"]
