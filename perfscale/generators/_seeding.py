"""Seeding of the global random generators that model libraries draw from, restored afterwards."""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def seeded(seed: int, *, torch: bool = False) -> Iterator[None]:
    """Seed Python's `random`, numpy's legacy global generator and (with `torch=True`) torch's CPU and CUDA
    generators for the duration of the block, then put the CPU states back so callers are not affected.

    Libraries such as ctgan draw from these globals during training instead of taking a seed. torch is
    seeded when asked or already imported, so numpy-only generators do not pay torch's import time.
    """
    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    with contextlib.ExitStack() as stack:
        if torch or "torch" in sys.modules:
            import torch as _torch

            stack.enter_context(_torch.random.fork_rng(devices=[]))  # CUDA states are seeded, not restored
            _torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
