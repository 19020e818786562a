"""TabDDPM hyperparameters: names, types, bounds and defaults (pydantic only: registering stays light)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from perfscale.devices import check_device, check_precision
from perfscale.options import OptionsModel

# hyperparameters that change neither the model nor the samples: left out of the checkpoint fingerprint
NOT_IN_FINGERPRINT = (
    "checkpoint_dir",
    "checkpoint_every",
    "sample_batch_size",
    "threads",
    "repaint_resample",
    "sample_with",
)


Device = Annotated[str, AfterValidator(check_device)]


class TabDDPMConfig(OptionsModel):
    """The hyperparameters of a TabDDPM generator (all JSON values).

    num_timesteps: diffusion steps T (the paper uses 1000; tiny tests use ~50).
    steps: training iterations (optimizer steps); `epoch` in the telemetry is `step // batches_per_epoch`.
    batch_size: rows per step, capped at the table's row count.
    lr, weight_decay: AdamW; the learning rate decays linearly to 0 over `steps` as in the reference code.
    d_layers: widths of the denoiser MLP's hidden layers; dim_t: width of the timestep embedding and of the
        input projection.
    dropout: dropout of the hidden layers (drawn from the fit's own generator, so fits stay repeatable).
    checkpoint_dir: a folder (created if needed; relative to the working directory) to checkpoint into every
        `checkpoint_every` steps and after the last step, and to resume from when it already holds a
        checkpoint of the same fit (same table, seed and model hyperparameters; another fit's checkpoint is
        BadInput). Only the latest checkpoint is kept, and it stays after the fit: fitting again with the
        folder loads it and trains no more. None (default): no checkpoints. A pipeline gives each fit its
        own folder (e.g. one inside the task's artifacts); see `train.py` for what a checkpoint holds.
    ema_decay: the exponential moving average of the weights kept during training, as in the reference code
        (`ema <- decay * ema + (1 - decay) * weights` after every step; 0.999 there). Under data-parallel
        training rank 0 alone keeps it; it is in every checkpoint and in the saved model.
    sample_with: "model" (default, what the reference code's sample.py loads) or "ema": the weights sampling,
        imputation and conditioned sampling use.
    discrete_as_categories: model integer columns with an `allowed` set (a few distinct values) with the
        categorical diffusion instead of the Gaussian one (see `transform.py` for why; default true).
    device: "cpu" (default), "auto" (the task's GPU when it sees one, else the CPU), "cuda" or "cuda:N". A
        model fitted on CUDA samples on the CPU where no GPU is. The train shard's `device` column says
        which ran.
    precision: "fp32" (default) or "bf16": training steps under bfloat16 autocast on a GPU (weights and
        sampling stay fp32). "bf16" with device "cpu" is refused (CPU autocast is slower than fp32 on most
        CPUs and changes the results); with "auto" on a machine without a GPU it trains in fp32, and the
        train shard's `precision` column says so.
    repaint_resample: RePaint's r for imputation and equality conditions: each reverse step is done r times
        (see `sample.py`); the cost of conditioned sampling is r times that of plain sampling.
    sample_batch_size: rows denoised at once when sampling (bounds memory; changing it changes the rows).
    threads: torch CPU threads during fit and sample (restored afterwards); None (default) keeps torch's
        setting. Small models run fastest on 1 thread, and on a shared node more threads than free cores
        slow every step down; results are repeatable for a given thread count.
    """

    num_timesteps: int = Field(1000, ge=2)
    steps: PositiveInt = 2000
    batch_size: PositiveInt = 1024
    lr: PositiveFloat = 0.002
    weight_decay: NonNegativeFloat = 1e-4
    d_layers: list[PositiveInt] = Field(default_factory=lambda: [256, 256], min_length=1)
    dim_t: PositiveInt = 128
    dropout: float = Field(0.0, ge=0, lt=1)
    checkpoint_dir: str | None = Field(None, min_length=1)
    checkpoint_every: PositiveInt = 500
    ema_decay: float = Field(0.999, ge=0, lt=1)
    sample_with: Literal["model", "ema"] = "model"
    device: Device = "cpu"
    precision: Literal["fp32", "bf16"] = "fp32"
    discrete_as_categories: bool = True
    repaint_resample: PositiveInt = 10
    sample_batch_size: PositiveInt = 8192
    threads: PositiveInt | None = None

    @field_validator("dim_t")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("must be even (half cosines, half sines)")
        return value

    @model_validator(mode="after")
    def _bf16_on_gpu(self) -> TabDDPMConfig:
        check_precision(self.precision, self.device)
        return self

    def fingerprint_fields(self) -> dict[str, Any]:
        """The values a checkpoint must agree on to be resumed."""
        return self.model_dump(exclude=set(NOT_IN_FINGERPRINT))
