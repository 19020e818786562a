"""Data-parallel fine-tuning of the GReaT language model: the loss of one rank's share of a global batch and
the optimizer step of one process or of DistributedDataParallel (DeepSpeed ZeRO: zero.py).

Inside a multi-rank task (torch.distributed initialised by perfscale.distributed.session, world > 1) every
rank builds the same model from the seed and walks the same shuffled batches; each takes its contiguous share
of every global batch (perfscale.distributed.shares), and the loss of a share is its part of the global
batch's mean token loss (summed token losses / the global batch's token count, all-reduced). DDP averages
gradients over the ranks, so a share's loss is scaled by the world size before backward: the gradients, the
clipped norm and the update are those of one process on the whole batch (to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE = -100  # label of padding: no loss there


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> World:
        """This process's rank and world size when torch.distributed is initialised, else (0, 1)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def parallel(self) -> bool:
        return self.size > 1


def share_loss(model: Any, batch: tuple[Any, Any, Any] | None, world: World) -> tuple[Any, float]:
    """(the loss to call backward on, the global batch's mean token loss) for this rank's share `batch`
    (input ids, attention mask, labels; None for an empty share, which still takes part in the all-reduce)."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    if batch is None:
        params = [p for p in model.parameters() if p.requires_grad]
        summed, count = sum(p.sum() for p in params) * 0.0, torch.zeros((), dtype=torch.long)
    else:
        ids, mask, labels = batch
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        summed = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="sum"
        )
        count = (target != IGNORE).sum()
    totals = torch.stack([summed.detach().double().cpu(), count.double().cpu()])
    if world.parallel:
        device = summed.device
        totals = totals.to(device)
        dist.all_reduce(totals)
        totals = totals.cpu()
    tokens = max(float(totals[1]), 1.0)
    return summed / tokens * world.size, float(totals[0]) / tokens


class TorchStepper:
    """AdamW, linear decay to 0 over `total` steps and the gradient norm clipped at 1, on one process or
    under DistributedDataParallel. Its checkpoints (perfscale/distributed/checkpoint.py) hold the model, the
    optimizer and the schedule, with the training loop's own state (`client`); rank 0 writes them, and one
    resumes on any number of ranks (every rank holds the same state)."""

    def __init__(self, model: Any, lr: float, total: int, world: World, device: str) -> None:
        import torch

        self.module, self.model, self.world = model, model, world
        if world.parallel:
            from torch.nn.parallel import DistributedDataParallel

            ids = None if device == "cpu" else [torch.device(device)]
            self.model = DistributedDataParallel(model, device_ids=ids)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: max(0.0, 1.0 - s / total))

    def step(self, loss: Any) -> None:
        import torch

        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)

    def load(self, folder: str | None, fingerprint: str) -> dict[str, Any] | None:
        """The client state of the newest checkpoint in `folder` (None when there is none), the model,
        optimizer and schedule put back; BadInput naming the file when it is unreadable or another fit's."""
        import json

        from perfscale.distributed import checkpoint
        from perfscale.errors import BadInput

        path = checkpoint.latest(folder)
        if path is None:
            return None
        tensors, metadata = checkpoint.read(path, fingerprint)
        try:
            self.module.load_state_dict(checkpoint.prefixed(tensors, "model"))
            checkpoint.load_optimizer(self.optimizer, tensors, metadata)
            self.schedule.load_state_dict({**json.loads(metadata["schedule"]), "lr_lambdas": [None]})
            client = {
                "fingerprint": fingerprint,
                "step": int(metadata["step"]),
                "telemetry": [(int(e), int(s), v) for e, s, v in tensors["telemetry"].tolist()],
                "rng": tensors["rng.torch"],
            }
        except (KeyError, ValueError, RuntimeError) as exc:
            raise BadInput(
                f"checkpoint {path} is corrupted ({exc}); delete it to train from scratch"
            ) from exc
        return client

    def save(self, folder: str | None, step: int, client: dict[str, Any]) -> None:
        """Rank 0 writes `checkpoint-<step>.safetensors` (the others hold the same state)."""
        import json

        import torch

        from perfscale.distributed import checkpoint

        if folder is None or self.world.rank != 0:
            return
        tensors = checkpoint.module_tensors(self.module, "model")
        optim, groups = checkpoint.optimizer_tensors(self.optimizer)
        schedule = {k: v for k, v in self.schedule.state_dict().items() if k != "lr_lambdas"}
        telemetry = torch.tensor(client["telemetry"], dtype=torch.float64).reshape(-1, 3)
        tensors |= optim | {"telemetry": telemetry, "rng.torch": client["rng"]}
        metadata = {
            "fingerprint": client["fingerprint"],
            "step": str(step),
            "schedule": json.dumps(schedule),
            **groups,
        }
        checkpoint.write(folder, step, tensors, metadata)

    def trained(self) -> Any:
        return self.module
