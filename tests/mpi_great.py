"""A GReaT fine-tuning run by every rank of `mpirun -n N python -m mpi4py tests/mpi_great.py OUT [JSON]`
(tests/test_distributed.py); JSON: extra hyperparameters (zero_stage, checkpoint_dir...). Rank 0 writes the
loss curve and the final weights to OUT (safetensors). With a checkpoint_dir the fit is run twice: the second
time from the checkpoint before the last (the last one removed), and OUT also holds the second fit's
weights under `resumed.` and its loss curve as `resumed_losses` (DeepSpeed's checkpoints: zero_stage). With
GREAT_PAUSE=1 in the environment rank 0 stops after its first checkpoint, for the test to kill."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perfscale.distributed import session  # noqa: E402
from perfscale.generators import get_generator  # noqa: E402
from perfscale.tabular.meta import infer_meta  # noqa: E402
from tests.tables import iris_table  # noqa: E402

# the tiny GPT-2 of tests/test_llm.py; 150 rows in global batches of 8 (the 19th of an epoch has 6 rows)
HYPERPARAMETERS = {"steps": 12, "batch_size": 8, "tiny_merges": 64, "tiny_config": {"n_positions": 300}}
SEED = 3


def fit(extra: dict[str, object]) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    table = iris_table()
    generator = get_generator("great")(**HYPERPARAMETERS, **extra)
    generator.fit(table, infer_meta(table), seed=SEED)
    weights = {k: v.detach().contiguous().clone() for k, v in generator._lm.model.state_dict().items()}
    telemetry = generator.training_log.telemetry.sort_values("step")
    losses = torch.tensor(telemetry.value.to_numpy(), dtype=torch.float64)
    return weights, losses, generator._state["resumed_from"]


def rewind(folder: Path, step: int) -> None:
    """Leave DeepSpeed's checkpoint of `step` as the newest (the later tags removed)."""
    tag = f"step-{step:09d}"
    for path in folder.glob("step-*"):
        if path.name > tag:
            shutil.rmtree(path)
    (folder / "latest").write_text(tag)


def main(out: Path, extra: dict[str, object], rank: int) -> None:
    from safetensors.torch import save_file

    weights, losses, _ = fit(extra)
    tensors = {f"model.{k}": v for k, v in weights.items()} | {"losses": losses}
    folder = extra.get("checkpoint_dir")
    if folder is not None:
        steps = [int(p.name.split("-")[1]) for p in Path(str(folder)).glob("step-*")]
        tensors["checkpoint_steps"] = torch.tensor(sorted(steps))
        torch.distributed.barrier()
        if rank == 0:
            rewind(Path(str(folder)), sorted(steps)[-2])
        torch.distributed.barrier()
        again, resumed, step = fit(extra)
        tensors |= {f"resumed.{k}": v for k, v in again.items()} | {"resumed_losses": resumed}
        tensors["resumed_from"] = torch.tensor(step)
    if rank == 0:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out))


def pause_after_first_checkpoint() -> None:
    """Rank 0 stops for good after writing its first checkpoint (GREAT_PAUSE=1): a fit the test kills
    mid-training, at a known step."""
    import time

    from perfscale.distributed import checkpoint

    write = checkpoint.write

    def write_then_pause(*args, **kwargs):
        path = write(*args, **kwargs)
        time.sleep(600)
        return path

    checkpoint.write = write_then_pause


if __name__ == "__main__":
    import os

    from mpi4py import MPI

    if os.environ.get("GREAT_PAUSE") == "1":
        pause_after_first_checkpoint()

    target = Path(sys.argv[1])
    hyper = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    with session(f"mpi-great-{target.name}", ranks=MPI.COMM_WORLD.Get_size()) as s:
        main(target, hyper, s.rank)
