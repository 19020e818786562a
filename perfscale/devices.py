"""The `device` and `precision` hyperparameters that TabDDPM, GReaT and the inference engine share."""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda")


def check_device(value: str) -> str:
    """A pydantic after-validator: `auto`, `cpu`, `cuda` or `cuda:N`."""
    if value in DEVICES or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise ValueError('must be "auto", "cpu", "cuda" or "cuda:N"')


def check_precision(precision: str, device: str) -> None:
    """bf16 runs on a GPU only (with `auto` on a machine without one, training falls back to fp32)."""
    if precision == "bf16" and device == "cpu":
        raise ValueError(
            'precision "bf16" runs on a GPU only: set device "auto" or "cuda", or precision "fp32"'
        )
