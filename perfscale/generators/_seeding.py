"""Global torch/numpy state that model libraries read (random generators, torch's thread count), set for a
block and restored afterwards."""

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


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `count` inside the block (None: unchanged), restored after.

    Small models gain nothing from several threads, and on a busy node the thread synchronisation makes each
    step several times slower (TabDDPM: 93 ms vs 9 ms per step with 2 vs 1 threads on a loaded 2-core VM;
    the tiny GPT-2: 7 s vs 1.5 s for a 32 x 135-token batch).
    """
    if count is None:
        yield
        return
    import torch as _torch

    before = _torch.get_num_threads()
    _torch.set_num_threads(count)
    try:
        yield
    finally:
        _torch.set_num_threads(before)
