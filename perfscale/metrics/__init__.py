"""Metrics of synthetic tables against real ones: a registry of pure functions and `evaluate`.

Importing this package registers the built-in metrics (column_shapes, kl_divergence, wasserstein, jsd, dcr).
A new metric module only needs ``@metric(...)`` on its function and an import below.
"""

from perfscale.metrics import column_shapes, dcr, divergence  # noqa: F401  (imported to register their metrics)
from perfscale.metrics.columns import check_tables
from perfscale.metrics.registry import MetricSpec, evaluate, get_metric, list_metrics, metric

__all__ = ["MetricSpec", "check_tables", "evaluate", "get_metric", "list_metrics", "metric"]
