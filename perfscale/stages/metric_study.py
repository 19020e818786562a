"""The `metric_study` stage: Spearman rho of each metric's headline value with ML efficacy across synthetic
sets. The analysis (headline components, orientation, the output's columns) is perfscale.results.metric_study,
which the report reads too.
"""

from __future__ import annotations

import pandas as pd

from perfscale.results.metric_study import (
    MetricStudyParams,
    collect_sets,
    source_stages,
    split_reference,
    study_points,
)
from perfscale.stages.base import StageContext, stage_kind


@stage_kind("metric_study", MetricStudyParams)
def metric_study(ctx: StageContext, params: MetricStudyParams) -> pd.DataFrame:
    """Spearman rho of each metric's headline value with ML efficacy across synthetic sets (`inputs`)."""
    split_reference(params.reference)
    tables = {s: ctx.input(s, provenance=True) for s in source_stages(params, list(ctx.task.inputs))}
    _, result = study_points(collect_sets(tables, ctx.store.plan), params)
    return result
