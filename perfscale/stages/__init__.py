"""Stage kinds. Importing this package registers the built-in kinds."""

from perfscale.stages import builtin  # noqa: F401  (registers the built-in stage kinds)
from perfscale.stages.base import (
    StageContext,
    StageKind,
    StageParams,
    get_stage_kind,
    registered_kinds,
    stage_kind,
)

__all__ = ["StageContext", "StageKind", "StageParams", "get_stage_kind", "registered_kinds", "stage_kind"]
