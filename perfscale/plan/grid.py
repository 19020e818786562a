"""Parameter-grid expansion: cartesian product x zipped lists, minus exclusion rules."""

from __future__ import annotations

import itertools
from typing import Any

from perfscale.spec.study import Grid


def _matches(row: dict[str, Any], rule: dict[str, Any]) -> bool:
    return all(row[k] in v if isinstance(v, list) else row[k] == v for k, v in rule.items())


def expand_grid(grid: Grid) -> list[dict[str, Any]]:
    """All grid points in a stable order (product order, then zip order); [{}] for an empty grid."""
    product_names = list(grid.product)
    zip_names = list(grid.zip)
    zip_rows = list(zip(*grid.zip.values(), strict=True)) if zip_names else [()]
    points = []
    for combo in itertools.product(*grid.product.values()):
        for zipped in zip_rows:
            row = dict(zip(product_names, combo, strict=True)) | dict(zip(zip_names, zipped, strict=True))
            if not any(_matches(row, rule) for rule in grid.exclude):
                points.append(row)
    return points
