"""Small pydantic building blocks shared by the study and site models."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator

from perfscale.errors import SpecError

_SLURM_TIME = [  # Slurm's --time formats, in its own order of precedence
    (re.compile(r"^(?P<m>\d+)$"), "m"),
    (re.compile(r"^(?P<m>\d+):(?P<s>\d+)$"), "ms"),
    (re.compile(r"^(?P<h>\d+):(?P<m>\d+):(?P<s>\d+)$"), "hms"),
    (re.compile(r"^(?P<d>\d+)-(?P<h>\d+)$"), "dh"),
    (re.compile(r"^(?P<d>\d+)-(?P<h>\d+):(?P<m>\d+)$"), "dhm"),
    (re.compile(r"^(?P<d>\d+)-(?P<h>\d+):(?P<m>\d+):(?P<s>\d+)$"), "dhms"),
]


def parse_walltime(value: object) -> float:
    """Seconds from a number (seconds) or a string in Slurm's --time formats.

    Strings read as Slurm reads them: "90" is 90 minutes; also "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM"
    and "D-HH:MM:SS".
    """
    if isinstance(value, bool):
        raise ValueError("walltime must be seconds or 'HH:MM:SS', not a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"walltime must be a finite, positive number of seconds, got {value!r}")
        return float(value)
    if isinstance(value, str):
        for pattern, parts in _SLURM_TIME:
            m = pattern.match(value.strip())
            if m:
                d, h, mi, s = (int(m.group(g)) if g in parts else 0 for g in "dhms")
                total = ((d * 24 + h) * 60 + mi) * 60 + s
                if total > 0:
                    return float(total)
    raise ValueError(
        f"walltime must be seconds (a number) or a Slurm time string like 'HH:MM:SS' or "
        f"'D-HH:MM:SS', got {value!r}"
    )


def format_walltime(seconds: float) -> str:
    s = round(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}-{h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}"


def format_hms(seconds: float) -> str:
    """HH:MM:SS, rounded up, with hours past 24 (PBS walltimes and Parsl's providers; no `D-` prefix)."""
    s = math.ceil(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


Walltime = Annotated[float, BeforeValidator(parse_walltime)]


def _auto_or_number(integer: bool, minimum: float, inclusive: bool) -> PlainValidator:
    """'auto', or a finite number (a whole one if `integer`) above `minimum` (or equal, if `inclusive`)."""
    rule = f"{'a whole number' if integer else 'a number'} {'>=' if inclusive else '>'} {minimum:g}"

    def validate(value: object) -> object:
        if value == "auto":
            return value
        number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ok = number and (value >= minimum if inclusive else value > minimum)  # type: ignore[operator]
        if not ok or (integer and not float(value).is_integer()):  # type: ignore[arg-type]
            raise ValueError(f"must be 'auto' or {rule}; fix it in the site file")
        return int(value) if integer else float(value)  # type: ignore[arg-type]

    return PlainValidator(validate)


#: a count a machine has at least one of (cores, workers), or 'auto' (read where the tasks run)
AutoCount = Annotated[int | Literal["auto"], _auto_or_number(integer=True, minimum=1, inclusive=True)]
#: a positive size (GiB of memory), or 'auto'
AutoSize = Annotated[float | Literal["auto"], _auto_or_number(integer=False, minimum=0, inclusive=False)]


_NAME = re.compile(r"[A-Za-z0-9_.-]+")
MAX_NAME_LENGTH = 100  # names become folder names (runs/<study>-<site>, stages/<stage>): below NAME_MAX


def check_name(value: str) -> str:
    """A name that is safe as one path component: letters, digits, '_', '-' and '.', never '.' or '..'."""
    if not _NAME.fullmatch(value) or value in (".", ".."):
        raise ValueError(
            "names may hold only letters, digits, '_', '-' and '.' (and may not be '.' or '..'): they "
            "become folder names; rename it"
        )
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"names are at most {MAX_NAME_LENGTH} characters long; rename it shorter")
    return value


#: study, stage and site names: each becomes a folder name in the run folder
SafeName = Annotated[str, AfterValidator(check_name)]


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_NAME_RULE = "not an environment variable name (letters, digits and '_', not starting with a digit)"


def check_env_name(value: str) -> str:
    """An environment variable name a shell accepts in `export NAME=...`"""
    if not _ENV_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is {_ENV_NAME_RULE}; rename it")
    return value


#: keys of a site's `env:`, which become `export NAME=value` lines in shell scripts
EnvName = Annotated[str, AfterValidator(check_env_name)]


def export_lines(env: Mapping[str, str]) -> list[str]:
    """`export NAME=value` lines, sorted by name: every name checked, every value shell-quoted. The one way
    perfscale writes environment variables into shell (Parsl worker_init, Dask prologues, job scripts)."""
    bad = [k for k in env if not _ENV_NAME.fullmatch(k)]
    if bad:
        raise SpecError(f"env: {bad[0]!r} is {_ENV_NAME_RULE}; rename it in the site file")
    return [f"export {k}={shlex.quote(str(v))}" for k, v in sorted(env.items())]


#: seeds of studies and stages: what numpy's legacy seeding (and every library built on it) accepts
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class Strict(BaseModel):
    """Base model: unknown fields are errors, numbers are finite, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
