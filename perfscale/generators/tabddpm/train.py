"""TabDDPM training: batches, the loss of one local batch, the optimizer step, checkpoints and the loop.

Split so that data-parallel training can be added later without rewriting: `batch_loss` works on one local
batch, `optimizer_step` is separate (gradients could be all-reduced between the two), `build_batches` gives
any step's rows without replaying earlier steps (ranks could take shards of them), and no module-level state
is kept: every random draw takes the fit's own `torch.Generator` (the layer initialisers' global draws run
under `fork_rng`, and `_seeding.torch_threads` puts torch's thread count back after the block).

Repeatability and resume: a fit is a function of (data, hyperparameters, seed, library versions, thread
count). Checkpoints (`checkpoint-<step>.safetensors`, written atomically, only the latest kept) hold the
model, its EMA (`Ema`) and AdamW state, the step, the noise generator's state and the loss history; the batch
order needs no state (each epoch's permutation comes from a generator seeded by (seed, epoch)) and no numpy
random state is drawn during training. A fit killed at any moment and run again with the same checkpoint
folder resumes from the last checkpoint and ends with the same model, EMA, telemetry and samples as an
uninterrupted fit.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perfscale.distributed import checkpoint
from perfscale.errors import BadInput
from perfscale.generators.tabddpm import rows as row_draws
from perfscale.generators.tabddpm.config import TabDDPMConfig
from perfscale.generators.tabddpm.diffusion import Diffusion
from perfscale.generators.tabddpm.model import Denoiser, build_denoiser
from perfscale.generators.tabddpm.rows import RowPart

LOSS_NAMES = ("gaussian", "multinomial", "total")
# tags that derive independent seeds from the fit's seed
_INIT, _NOISE, _BATCHES = 1, 2, 3


def derive_seed(seed: int, *tags: int) -> int:
    """An independent 63-bit seed for one purpose (model init, noise, an epoch's batch order...)."""
    return int(np.random.SeedSequence([seed, *tags]).generate_state(1, dtype=np.uint64)[0]) & (2**63 - 1)


def new_generator(seed: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


@dataclass
class TrainData:
    """The encoded training table on the training device."""

    x_num: torch.Tensor  # float32 [rows, numeric]
    x_cat: torch.Tensor  # int64 [rows, categorical]

    @property
    def rows(self) -> int:
        return int(self.x_num.shape[0])


class Ema:
    """The exponential moving average of a denoiser's weights (the reference code's `update_ema`:
    `ema <- decay * ema + (1 - decay) * weights` after every optimizer step). Under data-parallel training
    rank 0 alone keeps one: every rank holds the same weights after a step, so one average serves all."""

    def __init__(self, denoiser: Denoiser, decay: float) -> None:
        import copy

        self.decay = decay
        self.model: Denoiser = copy.deepcopy(denoiser)
        self.model.eval()
        for param in self.model.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def update(self, denoiser: torch.nn.Module) -> None:
        ema = list(self.model.parameters())
        torch._foreach_mul_(ema, self.decay)
        torch._foreach_add_(ema, [p.detach() for p in denoiser.parameters()], alpha=1 - self.decay)


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    losses: list[tuple[float, float, float]] = field(default_factory=list)  # per step, LOSS_NAMES order


def batches_per_epoch(rows: int, batch_size: int) -> int:
    return math.ceil(rows / batch_size)


def build_batches(rows: int, batch_size: int, seed: int, start_step: int = 0) -> Iterator[torch.Tensor]:
    """Row indices of the batches of steps `start_step`, `start_step + 1`, ... (forever).

    Each epoch visits every row once in an order drawn from a generator seeded by (seed, epoch); the last
    batch of an epoch may be smaller. So the batch of any step is known without the earlier ones.
    """
    per_epoch = batches_per_epoch(rows, batch_size)
    step, cached_epoch, order = start_step, -1, torch.empty(0, dtype=torch.long)
    while True:
        epoch, index = divmod(step, per_epoch)
        if epoch != cached_epoch:
            order = torch.randperm(
                rows, generator=new_generator(derive_seed(seed, _BATCHES, epoch), torch.device("cpu"))
            )
            cached_epoch = epoch
        yield order[index * batch_size : (index + 1) * batch_size]
        step += 1


def batch_loss(
    denoiser: Denoiser,
    diffusion: Diffusion,
    x_num: torch.Tensor,
    x_cat: torch.Tensor,
    generator: torch.Generator,
    part: RowPart | None = None,
) -> dict[str, torch.Tensor]:
    """The TabDDPM loss of one batch: Gaussian MSE on the noise + the multinomial KL terms (LOSS_NAMES).

    With `part` the rows are one rank's share of a global batch: the random draws are those of the whole
    batch (rows.py) and the losses are this share's part of the global batch mean (sums / global rows), so
    the shares of all ranks add up to the one-process loss.
    """
    rows, device = x_num.shape[0], x_num.device
    t = row_draws.randint(diffusion.num_timesteps, rows, generator, device, part)
    noise = row_draws.randn(tuple(x_num.shape), generator, device, part)
    x_num_t = diffusion.gaussian_q_sample(x_num, t, noise)
    log_x0 = diffusion.log_onehot(x_cat)
    log_x_t = diffusion.multinomial_q_sample(log_x0, t, generator, part) if diffusion.num_classes else log_x0
    out = denoiser(x_num_t, log_x_t, t, generator, part=part)
    zero = torch.zeros((), device=device)
    d, share = diffusion.num_numeric, part is not None
    gaussian = diffusion.gaussian_loss(out[:, :d], noise, share) if d else zero
    multinomial = (
        diffusion.multinomial_loss(out[:, d:], log_x0, log_x_t, t, share) if diffusion.num_classes else zero
    )
    if part is not None:
        gaussian, multinomial = gaussian / part.total, multinomial / part.total
    return {"gaussian": gaussian, "multinomial": multinomial, "total": gaussian + multinomial}


def annealed_lr(lr: float, step: int, steps: int) -> float:
    """The reference code's schedule: linear decay from `lr` at step 0 towards 0 at `steps`."""
    return lr * (1 - step / steps)


def optimizer_step(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()


def train_step(
    denoiser: Denoiser,
    diffusion: Diffusion,
    optimizer: torch.optim.Optimizer,
    x_num: torch.Tensor,
    x_cat: torch.Tensor,
    generator: torch.Generator,
    lr: float,
    part: RowPart | None = None,
    world: int = 1,
    bf16: bool = False,
) -> tuple[float, float, float]:
    """One optimizer step on one batch; the batch's losses in LOSS_NAMES order.

    Data-parallel (`denoiser` wrapped in DistributedDataParallel, `part` this rank's rows): DDP averages the
    gradients over the `world` ranks, so each rank's share of the global mean is scaled by `world`; the
    reported losses are the all-reduced sum of the shares, the global batch's losses. `bf16`: the forward
    pass and losses under bfloat16 autocast (GPU; weights and optimizer stay fp32).
    """
    denoiser.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x_num.device.type, dtype=torch.bfloat16, enabled=bf16):
        losses = batch_loss(denoiser, diffusion, x_num, x_cat, generator, part)  # type: ignore[arg-type]
    (losses["total"] * world).backward()
    optimizer_step(optimizer, lr)
    values = torch.stack([losses[name].detach() for name in LOSS_NAMES])
    if part is not None:
        torch.distributed.all_reduce(values)
    out = values.cpu().tolist()
    return out[0], out[1], out[2]


def fingerprint(config: TabDDPMConfig, seed: int, data: TrainData, num_classes: list[int]) -> str:
    """What a checkpoint must match to be resumed: hyperparameters, seed and the encoded table."""
    digest = hashlib.sha256()
    head = {
        "config": config.fingerprint_fields(),
        "seed": seed,
        "num_classes": num_classes,
        "torch": torch.__version__,
    }
    digest.update(json.dumps(head, sort_keys=True).encode())
    digest.update(data.x_num.cpu().numpy().tobytes())
    digest.update(data.x_cat.cpu().numpy().tobytes())
    return digest.hexdigest()


class Checkpointer:
    """Writes and finds the checkpoints of one fit in `folder` (see the module docstring and
    perfscale/distributed/checkpoint.py)."""

    def __init__(self, folder: Path, every: int, fit_fingerprint: str) -> None:
        self.folder, self.every, self.fingerprint = Path(folder), every, fit_fingerprint
        self.resumed_from = 0  # the step this process's fit started at (> 0: resumed), kept in the metadata

    def due(self, step: int, steps: int) -> bool:
        return step % self.every == 0 or step == steps

    def latest(self) -> Path | None:
        return checkpoint.latest(self.folder)

    def save(
        self,
        state: TrainState,
        denoiser: Denoiser,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        ema: Ema | None = None,
    ) -> Path:
        tensors = checkpoint.module_tensors(denoiser, "model")
        if ema is not None:
            tensors |= checkpoint.module_tensors(ema.model, "ema")
        optim, groups = checkpoint.optimizer_tensors(optimizer)
        tensors |= optim
        # one noise generator state serves every rank: all ranks draw the whole batch's numbers (rows.py)
        tensors["rng.noise"] = generator.get_state().cpu()
        tensors["losses"] = torch.tensor(state.losses, dtype=torch.float64).reshape(-1, len(LOSS_NAMES))
        metadata = {
            "fingerprint": self.fingerprint,
            "step": str(state.step),
            "resumed_from": str(self.resumed_from),
            **groups,
        }
        return checkpoint.write(self.folder, state.step, tensors, metadata)

    def restore(
        self,
        path: Path,
        denoiser: Denoiser,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        ema: Ema | None = None,
    ) -> TrainState:
        """Load `path` into the given objects; BadInput naming the file when it is unusable or foreign."""
        tensors, metadata = checkpoint.read(path, self.fingerprint)
        try:
            denoiser.load_state_dict(checkpoint.prefixed(tensors, "model"))
            if ema is not None:
                ema.model.load_state_dict(checkpoint.prefixed(tensors, "ema"))
            checkpoint.load_optimizer(optimizer, tensors, metadata)
            generator.set_state(tensors["rng.noise"])
            losses = [tuple(row) for row in tensors["losses"].tolist()]
            step = int(metadata["step"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise BadInput(
                f"checkpoint {path} is corrupted ({exc}); delete it to train from scratch"
            ) from exc
        return TrainState(step=step, losses=losses)  # type: ignore[arg-type]


def train_loop(
    denoiser: Denoiser,
    diffusion: Diffusion,
    optimizer: torch.optim.Optimizer,
    data: TrainData,
    batches: Iterator[torch.Tensor],
    generator: torch.Generator,
    config: TabDDPMConfig,
    state: TrainState,
    checkpointer: Checkpointer | None = None,
    rank: int = 0,
    world: int = 1,
    ema: Ema | None = None,
) -> TrainState:
    """Run steps `state.step` .. `config.steps - 1`; `batches` must start at `state.step`.

    With `world` > 1 (`denoiser` wrapped in DDP) each rank takes its contiguous share of every global batch
    (`RowPart.of`: disjoint, and the batch itself is the seeded permutation's) and rank 0 alone writes the
    checkpoints. `ema` (rank 0's) is updated after every step.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("tabddpm"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
    )
    with Progress(*columns, TimeElapsedColumn(), disable=not sys.stderr.isatty(), transient=True) as progress:
        task = progress.add_task("fit", total=config.steps, completed=state.step, loss="-")
        while state.step < config.steps:
            rows = next(batches).to(data.x_num.device)
            part = RowPart.of(len(rows), rank, world) if world > 1 else None
            if part is not None:
                rows = rows[part.lo : part.hi]
            lr = annealed_lr(config.lr, state.step, config.steps)
            losses = train_step(
                denoiser,
                diffusion,
                optimizer,
                data.x_num[rows],
                data.x_cat[rows],
                generator,
                lr,
                part,
                world,
                bf16=config.precision == "bf16" and data.x_num.device.type == "cuda",
            )
            if ema is not None:
                ema.update(denoiser)
            state.losses.append(losses)
            state.step += 1
            progress.update(task, advance=1, loss=f"{losses[2]:.4f}")
            if rank == 0 and checkpointer is not None and checkpointer.due(state.step, config.steps):
                checkpointer.save(state, getattr(denoiser, "module", denoiser), optimizer, generator, ema)
    return state


def fit_diffusion(
    config: TabDDPMConfig, data: TrainData, num_classes: list[int], seed: int
) -> tuple[Denoiser, Diffusion, TrainState, int, Ema | None]:
    """Train a denoiser on `data`, resuming from `config.checkpoint_dir` when it holds this fit's checkpoint.

    Inside a multi-rank task (torch.distributed initialised by perfscale.distributed.session, world > 1) the
    denoiser trains under DistributedDataParallel: every rank builds the same model from the seed, takes its
    share of each global batch, and gradients are all-reduced; rank 0 finds the checkpoint to resume from
    (any rank count may resume it) and writes the new ones; rank 0 alone keeps the EMA of the weights.

    Returns the model (eval mode), the diffusion, the final state, the effective batch size and the EMA
    (None on ranks other than 0).
    """
    import torch.distributed as dist

    parallel = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if parallel else (0, 1)
    device = data.x_num.device
    batch_size = min(config.batch_size, data.rows)
    diffusion = Diffusion.create(config.num_timesteps, data.x_num.shape[1], num_classes, device)
    denoiser = build_denoiser(config, data.x_num.shape[1] + diffusion.num_onehot, derive_seed(seed, _INIT))
    denoiser.to(device)
    optimizer = torch.optim.AdamW(
        denoiser.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=True
    )
    generator = new_generator(derive_seed(seed, _NOISE), device)
    ema = Ema(denoiser, config.ema_decay) if rank == 0 else None
    state, checkpointer = TrainState(), None
    if config.checkpoint_dir is not None:
        checkpointer = Checkpointer(
            Path(config.checkpoint_dir), config.checkpoint_every, fingerprint(config, seed, data, num_classes)
        )
        latest = checkpointer.latest() if rank == 0 else None
        if parallel:
            shared = [latest]
            dist.broadcast_object_list(shared, src=0)
            latest = shared[0]
        if latest is not None:
            state = checkpointer.restore(latest, denoiser, optimizer, generator, ema)
            checkpointer.resumed_from = state.step
    batches = build_batches(data.rows, batch_size, seed, start_step=state.step)
    model: torch.nn.Module = denoiser
    if parallel:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(denoiser, device_ids=None if device.type == "cpu" else [device])
    state = train_loop(
        model, diffusion, optimizer, data, batches, generator, config, state, checkpointer, rank, world, ema
    )  # type: ignore[arg-type]
    denoiser.eval()
    return denoiser, diffusion, state, batch_size, ema


def telemetry_rows(state: TrainState, rows: int, batch_size: int, names: tuple[str, ...]) -> dict[str, Any]:
    """Columns of the telemetry frame: one row per step and loss in `names`."""
    per_epoch = batches_per_epoch(rows, batch_size)
    out: dict[str, list[Any]] = {"epoch": [], "step": [], "loss": [], "value": []}
    for step, values in enumerate(state.losses):
        for name, value in zip(LOSS_NAMES, values, strict=True):
            if name in names:
                out["epoch"].append(step // per_epoch)
                out["step"].append(step)
                out["loss"].append(name)
                out["value"].append(value)
    return out
