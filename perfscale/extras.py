"""Optional dependency groups (`pip install 'perfscale[NAME]'`) and the one error for a missing one.

The core (`profile`) plans, profiles, ingests, stores and reports. The rest is optional, each group behind
one extra that pyproject.toml declares:

| extra | modules | what needs them |
|---|---|---|
| `engines` | parsl, distributed / dask_jobqueue, ray | the parsl, dask and ray engines (`local` needs none) |
| `synth` | sdv, torch, safetensors, xgboost, umap | SDV generators, TabDDPM, the ML-efficacy metric, UMAP |
| `llm` | transformers, gguf, accelerate | the GReaT generator |
| `mpi` | mpi4py | multi-rank tasks that find their rank with mpi4py |

`require(extra, module)` is called where an optional module is first imported; a missing one raises
`MissingExtra`, which names the extra and the command that installs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from perfscale.errors import BadInput

EXTRAS = ("profile", "engines", "synth", "llm", "mpi", "all")


class MissingExtra(BadInput, ImportError):
    """An optional dependency is not installed. A task fails with it as `bad_input`: no retry can help."""

    def __init__(self, message: str, extra: str, module: str) -> None:
        super().__init__(message)
        self.extra, self.name = extra, module

    def __reduce__(self) -> tuple[Any, ...]:  # engines pickle exceptions back from their workers
        return type(self), (str(self), self.extra, self.name)


def install_command(extra: str) -> str:
    return f"pip install 'perfscale[{extra}]'"


def require(extra: str, module: str, what: str | None = None, hint: str = "") -> ModuleType:
    """Import `module` and return it, or raise MissingExtra naming `extra`.

    `what` says who needs it ("the parsl engine"; default: the module); `hint` is appended (an
    alternative that needs nothing more, such as `--engine local`).
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; extras: {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:  # a broken install (ImportError of a name) is shown as it is
        missing = (exc.name or module).split(".")[0]
        message = (
            f"{what or module} needs perfscale[{extra}] (module {missing} is not installed): "
            f"{install_command(extra)}{hint}"
        )
        raise MissingExtra(message, extra, missing) from None
