"""Small pydantic building blocks shared by the study and site models."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict

_WALLTIME = re.compile(r"^(?:(?:(?P<d>\d+)-)?(?P<h>\d+):)?(?P<m>\d+):(?P<s>\d+)$")


def parse_walltime(value: object) -> float:
    """Seconds from a number or a Slurm-style walltime ("SS"-free forms: "MM:SS", "HH:MM:SS", "D-HH:MM:SS")."""
    if isinstance(value, bool):
        raise ValueError("walltime must be seconds or 'HH:MM:SS', not a boolean")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError("walltime must be positive")
        return float(value)
    if isinstance(value, str):
        m = _WALLTIME.match(value.strip())
        if m:
            d, h, mi, s = (int(m.group(g) or 0) for g in "dhms")
            total = ((d * 24 + h) * 60 + mi) * 60 + s
            if total > 0:
                return float(total)
    raise ValueError(f"walltime must be seconds or 'HH:MM:SS' / 'D-HH:MM:SS', got {value!r}")


def format_walltime(seconds: float) -> str:
    s = int(round(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}-{h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}"


Walltime = Annotated[float, BeforeValidator(parse_walltime)]


class Strict(BaseModel):
    """Base model: unknown fields are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
