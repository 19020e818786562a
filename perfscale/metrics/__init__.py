"""Metrics of synthetic tables against real ones: a registry of pure functions and `evaluate`.

Importing this package registers the built-in metrics, one module each below; `list_metrics()` names them
and docs/metrics.md defines each. A new metric module only needs ``@metric(...)`` on its function and an
import below.
"""

from perfscale.metrics import (  # noqa: F401  (imported to register their metrics)
    associations,
    column_shapes,
    dcr,
    detection,
    dissimilarity,
    divergence,
    ml_efficacy,
    pair_trends,
    quality,
    tabsyndex,
)
from perfscale.metrics.columns import check_tables
from perfscale.metrics.combine import combine_parts
from perfscale.metrics.registry import (
    MetricSpec,
    Part,
    evaluate,
    get_metric,
    list_metrics,
    metric,
    part_columns,
)

__all__ = [
    "MetricSpec",
    "Part",
    "check_tables",
    "combine_parts",
    "evaluate",
    "get_metric",
    "list_metrics",
    "metric",
    "part_columns",
]
