"""TabDDPM hyperparameters: names, defaults and checks (standard library only: registering stays light)."""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any, NoReturn

from perfscale.errors import BadInput

# hyperparameters that change neither the model nor the samples: left out of the checkpoint fingerprint
NOT_IN_FINGERPRINT = (
    "checkpoint_dir",
    "checkpoint_every",
    "sample_batch_size",
    "threads",
    "repaint_resample",
)


@dataclass(frozen=True)
class TabDDPMConfig:
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
    discrete_as_categories: model integer columns with an `allowed` set (a few distinct values) with the
        categorical diffusion instead of the Gaussian one (see `transform.py` for why; default true).
    device: "cpu" (default), "cuda" or "cuda:N". A model fitted on CUDA samples on the CPU where no GPU is.
    repaint_resample: RePaint's r for imputation and equality conditions: each reverse step is done r times
        (see `sample.py`); the cost of conditioned sampling is r times that of plain sampling.
    sample_batch_size: rows denoised at once when sampling (bounds memory; changing it changes the rows).
    threads: torch CPU threads during fit and sample (restored afterwards); None (default) keeps torch's
        setting. Small models run fastest on 1 thread, and on a shared node more threads than free cores
        slow every step down; results are repeatable for a given thread count.
    """

    num_timesteps: int = 1000
    steps: int = 2000
    batch_size: int = 1024
    lr: float = 0.002
    weight_decay: float = 1e-4
    d_layers: list[int] = field(default_factory=lambda: [256, 256])
    dim_t: int = 128
    dropout: float = 0.0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 500
    device: str = "cpu"
    discrete_as_categories: bool = True
    repaint_resample: int = 10
    sample_batch_size: int = 8192
    threads: int | None = None

    @classmethod
    def from_hyperparameters(cls, hyperparameters: dict[str, Any]) -> TabDDPMConfig:
        """Check the user's hyperparameters; BadInput names the bad one and what it must be."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(hyperparameters) - set(valid))
        if unknown:
            raise BadInput(
                f"unknown hyperparameters {unknown} for generator 'tabddpm'; valid: {', '.join(valid)}"
            )
        params = dict(hyperparameters)
        for name in (
            "num_timesteps",
            "steps",
            "batch_size",
            "dim_t",
            "checkpoint_every",
            "sample_batch_size",
            "repaint_resample",
        ):
            if name in params:
                params[name] = _int(name, params[name], low=2 if name == "num_timesteps" else 1)
        if not isinstance(params.get("discrete_as_categories", True), bool):
            _bad("discrete_as_categories", params["discrete_as_categories"], "true or false")
        if params.get("threads") is not None:
            params["threads"] = _int("threads", params["threads"], low=1)
        for name in ("lr", "weight_decay", "dropout"):
            if name in params:
                params[name] = _float(name, params[name])
        if "lr" in params and params["lr"] <= 0:
            _bad("lr", params["lr"], "a positive number")
        if "dropout" in params and not 0 <= params["dropout"] < 1:
            _bad("dropout", params["dropout"], "a number in [0, 1)")
        if "d_layers" in params:
            layers = params["d_layers"]
            if not isinstance(layers, list) or not layers:
                _bad("d_layers", layers, "a non-empty list of positive integers (hidden layer widths)")
            params["d_layers"] = [_int("d_layers", v, low=1) for v in layers]
        if "dim_t" in params and params["dim_t"] % 2:
            _bad("dim_t", params["dim_t"], "an even integer (half cosines, half sines)")
        if params.get("checkpoint_dir") is not None and not (
            isinstance(params["checkpoint_dir"], str) and params["checkpoint_dir"]
        ):
            _bad("checkpoint_dir", params["checkpoint_dir"], "a folder path (string) or null")
        device = params.get("device", "cpu")
        if not isinstance(device, str) or not (
            device in ("cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
        ):
            _bad("device", device, '"cpu", "cuda" or "cuda:N"')
        return cls(**params)

    def fingerprint_fields(self) -> dict[str, Any]:
        """The values a checkpoint must agree on to be resumed."""
        data = dataclasses.asdict(self)
        return {k: v for k, v in data.items() if k not in NOT_IN_FINGERPRINT}


def _bad(name: str, value: Any, what: str) -> NoReturn:
    raise BadInput(f"tabddpm hyperparameter {name!r} must be {what}, got {value!r}")


def _int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        _bad(name, value, f"an integer >= {low}")
    return int(value)


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        _bad(name, value, "a non-negative number")
    return float(value)
