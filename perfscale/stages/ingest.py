"""The `ingest` stage: import existing data (Caliper, sacct, job traces, CSV, Parquet) as a stage's output."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
from pydantic import Field

from perfscale.stages.base import StageContext, StageParams, stage_kind

if TYPE_CHECKING:
    from perfscale.plan.named import PlanCheck


class IngestParams(StageParams):
    kind: str = Field(description="importer: caliper, sacct, csv, parquet, ... (`perfscale ingest --help`)")
    source: str = Field(description="file or folder (searched recursively); relative to the study's folder")
    keep_provenance: bool = Field(
        False,
        description="make the importer's provenance columns (`_source_file`...) data columns "
        "(`source_file`); by default they are kept in the shard but hidden from downstream stages",
    )

    def plan_check(self, check: PlanCheck) -> None:
        check.importer("kind", self.kind)


@stage_kind("ingest", IngestParams)
def ingest(ctx: StageContext, params: IngestParams) -> pa.Table:
    """Read `source` with the `kind` importer; one task, one shard holding the whole import."""
    from perfscale.ingest import read_source
    from perfscale.ingest.registry import is_named_source

    named = is_named_source(params.kind, params.source)  # DEFAULT or a named data set, not a path
    source = params.source if named else ctx.store.study_dir / Path(params.source)
    return read_source(params.kind, source, keep_provenance=params.keep_provenance)
