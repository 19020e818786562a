"""A TabDDPM fit run by every rank of `mpirun -n N python -m mpi4py tests/mpi_fit.py OUT [CHECKPOINTS]`
(tests/test_distributed.py). Rank 0 writes the loss curve, the final weights and their EMA to OUT
(safetensors)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perfscale.distributed import session  # noqa: E402
from perfscale.generators import get_generator  # noqa: E402
from perfscale.tabular.meta import infer_meta  # noqa: E402
from tests.tables import iris_table  # noqa: E402

# tiny: T = 20, 150 rows in global batches of 64 (the third of each epoch has 22 rows, so shares differ),
# dropout on so that the masks' slicing is exercised
HYPERPARAMETERS = {
    "num_timesteps": 20,
    "steps": 40,
    "batch_size": 64,
    "d_layers": [32, 32],
    "dim_t": 16,
    "dropout": 0.1,
    "threads": 1,
    "ema_decay": 0.9,  # 0.999 would barely move in 40 steps
}
SEED = 5


def fit(out: Path, checkpoints: str | None = None, steps: int | None = None, write: bool = True) -> None:
    from safetensors.torch import save_file

    table = iris_table()
    extra = {"checkpoint_dir": checkpoints, "checkpoint_every": 3} if checkpoints else {}
    generator = get_generator("tabddpm")(
        **{**HYPERPARAMETERS, "steps": steps or HYPERPARAMETERS["steps"]}, **extra
    )
    generator.fit(table, infer_meta(table), seed=SEED)
    if not write:
        return
    telemetry = generator.training_log.telemetry
    total = telemetry[telemetry.loss == "total"].sort_values("step")
    tensors = {f"model.{k}": v.contiguous() for k, v in generator._denoiser.state_dict().items()}
    tensors |= {f"ema.{k}": v.contiguous() for k, v in generator._ema.state_dict().items()}  # rank 0's EMA
    tensors["losses"] = torch.tensor(total.value.to_numpy(), dtype=torch.float64)
    save_file(tensors, str(out))


if __name__ == "__main__":
    from mpi4py import MPI

    out = Path(sys.argv[1])
    checkpoints = sys.argv[2] if len(sys.argv) > 2 else None
    world = MPI.COMM_WORLD.Get_size()
    with session(f"mpi-fit-{out.name}", ranks=world) as s:
        fit(out, checkpoints, write=s.is_root)
