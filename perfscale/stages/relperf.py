"""The `relperf` stage: relative performance vectors across machines from profile tables
(perfscale.models.rpv, docs/relperf.md). One row per vector x profiled system, ready for `fit_predict` with
the `speed_<system>` columns as targets; what was dropped (and why) is logged and written to the task's
artifacts (relperf.json).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pandas as pd
from pydantic import Field

from perfscale.stages.base import StageContext, StageParams, stage_kind

if TYPE_CHECKING:
    from perfscale.plan.named import PlanCheck


class RelperfParams(StageParams):
    sources: list[str] = Field(min_length=1, description="ingest stages (caliper, rajaperf), in `inputs`")
    base: str = Field(description="the system vectors are relative to (rpv(., ., s)), e.g. H100_gpu")
    systems: list[str] | None = Field(None, description="systems in each vector (default: all measured)")
    size_tolerance: float = Field(
        2.0, ge=1.0, description="largest ratio between a system's node work and the base's in one vector"
    )

    def plan_check(self, check: PlanCheck) -> None:
        check.sources("sources", self.sources)


@stage_kind("relperf", RelperfParams)
def relperf(ctx: StageContext, params: RelperfParams) -> pd.DataFrame:
    """RPV table: features of each profiled system's point and the vector (rpv_, rpvmin_, speed_ columns)."""
    from perfscale.models.rpv import Dropped, profile_points, rpv_table
    from perfscale.store.atomic import atomic_write_text

    dropped = Dropped()
    points = profile_points([ctx.input(s) for s in params.sources], dropped)
    table = rpv_table(points, params.base, params.systems, params.size_tolerance, dropped)
    dropped.log()
    summary = {
        "vectors": int(table["vector"].nunique()),
        "rows": len(table),
        "kernels": sorted(table["kernel"].unique()),
        "systems": sorted(table["profiled_on"].unique()),
        "dropped": dropped.counts,
    }
    atomic_write_text(json.dumps(summary, indent=1), ctx.artifacts / "relperf.json")
    return table
