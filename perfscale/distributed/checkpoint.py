"""A torch training loop's checkpoint as one safetensors file, written atomically, only the newest kept.

Used by TabDDPM (generators/tabddpm/train.py) and by GReaT's plain torch loop (llm/parallel.py; under
DeepSpeed, DeepSpeed keeps its own). safetensors holds tensors and string metadata only, so loading a
checkpoint runs no code (a checkpoint folder may come from anywhere; no pickle is ever read). A checkpoint
holds replicated state only (the model, the optimizer, RNG states), so one written by rank 0 of a
data-parallel fit resumes on any number of ranks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perfscale.errors import BadInput
from perfscale.store.atomic import atomic_write

if TYPE_CHECKING:
    import torch

CHECKPOINT_GLOB = "checkpoint-*.safetensors"
PARAM_GROUPS = "param_groups"  # the metadata key of the optimizer's param groups (JSON)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The optimizer's per-parameter state as tensors `optimizer.<param index>.<name>` (on the CPU) and its
    param groups as metadata."""
    state = optimizer.state_dict()
    tensors = {
        f"optimizer.{index}.{name}": value.detach().cpu().contiguous()
        for index, entries in state["state"].items()
        for name, value in entries.items()
    }
    return tensors, {PARAM_GROUPS: json.dumps(state["param_groups"])}


def load_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> None:
    """Put back what `optimizer_tensors` took (the tensors move to each parameter's device)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata[PARAM_GROUPS])})


def module_tensors(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """The module's state dict as `prefix.<name>` tensors, copied to the CPU (a copy each: tied weights, such
    as a language model's embedding and output head, share memory, which safetensors refuses)."""
    return {
        f"{prefix}.{k}": v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()
    }


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under `prefix.`, without it (a module's state dict saved as `prefix.<name>`)."""
    return {k.removeprefix(f"{prefix}."): v for k, v in tensors.items() if k.startswith(f"{prefix}.")}


def latest(folder: Path | str | None) -> Path | None:
    """The newest checkpoint in `folder` (None: no folder or none there); temp files of a killed write are
    removed."""
    if folder is None:
        return None
    folder = Path(folder)
    for stale in folder.glob(f".{CHECKPOINT_GLOB}.*.tmp"):
        stale.unlink(missing_ok=True)
    paths = sorted(folder.glob(CHECKPOINT_GLOB))
    return paths[-1] if paths else None


def write(folder: Path | str, step: int, tensors: dict[str, Any], metadata: dict[str, str]) -> Path:
    """`checkpoint-<step>.safetensors` in `folder`, atomically; every older checkpoint there is removed."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"checkpoint-{step:09d}.safetensors"
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    for old in folder.glob(CHECKPOINT_GLOB):
        if old != path:
            old.unlink(missing_ok=True)
    return path


def read(path: Path, fingerprint: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of checkpoint `path`; BadInput naming the file when it is unreadable or
    belongs to another fit (its `fingerprint` metadata differs)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise BadInput(f"checkpoint {path} is unreadable ({exc}); delete it to train from scratch") from exc
    if metadata.get("fingerprint") != fingerprint:
        raise BadInput(
            f"checkpoint {path} belongs to another fit (different table, seed or hyperparameters); "
            "delete it or choose another checkpoint_dir"
        )
    return tensors, metadata
