"""Each rank's share of a global batch: contiguous, disjoint, sizes differing by at most one row."""

from __future__ import annotations


def batch_share(total: int, rank: int, world: int) -> tuple[int, int]:
    """Rows `lo:hi` of a global batch of `total` rows that `rank` of `world` takes (a share may be empty)."""
    return total * rank // world, total * (rank + 1) // world
