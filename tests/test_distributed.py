"""Multi-rank tasks on real Open MPI (mpirun --oversubscribe, gloo on CPU): DDP TabDDPM equals one process,
checkpoints resume on another rank count, launch lines. Tiny models (tests/mpi_fit.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.mpi_fit import fit

ROOT = Path(__file__).resolve().parents[1]
MPIRUN = shutil.which("mpirun")
needs_mpi = pytest.mark.skipif(MPIRUN is None, reason="Open MPI is not installed (scripts/setup.sh)")


def mpirun(ranks: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    line = [MPIRUN, *root, "--oversubscribe", "-n", str(ranks), sys.executable, "-m", "mpi4py", *args]
    return subprocess.run(line, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def assert_same_fit(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("one") / "fit.safetensors"
    fit(out)
    return load_file(str(out))


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 4])
def test_ddp_fit_equals_one_process(reference, ranks, tmp_path) -> None:
    out = tmp_path / "fit.safetensors"
    done = mpirun(ranks, str(ROOT / "tests" / "mpi_fit.py"), str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    got = load_file(str(out))
    assert len(got["losses"]) == 12 and got["losses"].isfinite().all()
    assert_same_fit(reference, got)
    assert not list(tmp_path.glob("*.rank*"))  # rank 0 alone wrote
