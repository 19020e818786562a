"""A rank's share of a global batch, and random draws that do not depend on how the batch is shared.

Under data-parallel training every rank holds the same noise generator (same seed, same state) and draws the
numbers of the *whole* global batch, then keeps its own rows. So row r of a step gets the same timestep,
noise, categorical draw and dropout mask on 1, 2 or 4 ranks, and the generator's state after a step is the
same on every rank: a checkpoint holds one state that fits any rank count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowPart:
    """Rows `lo:hi` of a global batch of `total` rows."""

    lo: int
    hi: int
    total: int

    @classmethod
    def of(cls, total: int, rank: int, world: int) -> RowPart:
        """Contiguous, disjoint shares whose sizes differ by at most one row (a share may be empty)."""
        from perfscale.distributed.shares import batch_share

        return cls(*batch_share(total, rank, world), total)

    @property
    def rows(self) -> int:
        return self.hi - self.lo


def rand(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device, part: RowPart | None
) -> torch.Tensor:
    """Uniform [0, 1) numbers of `shape` (rows first), cut from the global batch's draw under `part`."""
    if part is None:
        return torch.rand(shape, generator=generator, device=device)
    return torch.rand((part.total, *shape[1:]), generator=generator, device=device)[part.lo : part.hi]


def randn(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device, part: RowPart | None
) -> torch.Tensor:
    if part is None:
        return torch.randn(shape, generator=generator, device=device)
    return torch.randn((part.total, *shape[1:]), generator=generator, device=device)[part.lo : part.hi]


def randint(
    high: int, rows: int, generator: torch.Generator, device: torch.device, part: RowPart | None
) -> torch.Tensor:
    if part is None:
        return torch.randint(0, high, (rows,), generator=generator, device=device)
    return torch.randint(0, high, (part.total,), generator=generator, device=device)[part.lo : part.hi]
