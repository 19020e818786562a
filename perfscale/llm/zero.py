"""DeepSpeed ZeRO (stage 0-3) for GReaT fine-tuning: the engine's config, the plan-time check of a study's
extra DeepSpeed keys, and the engine's own checkpoints.

- Config: perfscale sets the batch sizes (the global batch is the generator's `batch_size`, split over the
  ranks), `gradient_clipping` 1 and `zero_optimization.stage`; the study's `deepspeed` dict adds any other
  DeepSpeed key. The optimizer and schedule are perfscale's (torch AdamW, linear decay to 0) handed to the
  engine, so ZeRO shards the same optimizer the one-process and DDP paths step.
- Check: unknown keys are found by DeepSpeed's own config class. `DeepSpeedConfig` is built from the study's
  dict wrapped in a dict that records every key the class reads; a top-level key never read is unknown to
  this DeepSpeed, and nested blocks with a pydantic model (zero_optimization, ...) reject unknown fields
  themselves. So the known keys follow the installed DeepSpeed, with no list kept here.
- Checkpoints: `engine.save_checkpoint` (every rank writes its shard; `latest` names the newest tag) every
  `checkpoint_every` steps and at the end; the two newest tags are kept. A fit finds the newest with
  `engine.load_checkpoint` and resumes from its step; its client state holds the fit's fingerprint (another
  fit's checkpoint is BadInput), the step, the telemetry and torch's RNG state. DeepSpeed writes these files
  with torch.save and reads them with torch.load: they are the task's own files in its checkpoint folder,
  written by this fit, never files from elsewhere.

DeepSpeed is installed with DS_BUILD_OPS=0 (no compiled ops); on the CPU its first initialisation on a
machine compiles a small shared-memory extension (about 30 s, cached in ~/.cache/torch_extensions).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from perfscale.environ import environ
from perfscale.errors import BadInput
from perfscale.llm.parallel import World

log = logging.getLogger(__name__)

MANAGED = {
    "train_batch_size": "batch_size (the global batch)",
    "train_micro_batch_size_per_gpu": "batch_size (split over the ranks)",
    "gradient_accumulation_steps": "batch_size (one step per global batch)",
    "gradient_clipping": "nothing (perfscale clips the gradient norm at 1 on every path)",
}
TAG_PREFIX = "step-"
KEEP = 2  # newest checkpoints kept: the one before the newest stays usable if that one is damaged


class _Recording(dict):  # type: ignore[type-arg]
    """A dict that notes every key looked up in it (DeepSpeedConfig reads its keys through these)."""

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__(data)
        self.read: set[str] = set()  # a copy.copy of this dict shares the set

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)

    def keys(self) -> Any:  # `key in d.keys()` must be noted too
        outer = self

        class _Keys:
            def __contains__(self, key: object) -> bool:
                return key in outer

            def __iter__(self) -> Any:
                return iter(list(dict.keys(outer)))

            def __len__(self) -> int:
                return len(outer)

        return _Keys()


def config_problem(extra: dict[str, Any]) -> str | None:
    """Why DeepSpeed would not take the study's `deepspeed` keys (None when it would): an unknown top-level
    key, an unknown or invalid field of a nested block, a key perfscale sets itself, or no DeepSpeed."""
    for key, instead in MANAGED.items():
        if key in extra:
            return f"{key!r} is set by perfscale; remove it and set {instead}"
    if "stage" in extra.get("zero_optimization", {}):
        return (
            "'zero_optimization.stage' is set by perfscale; remove it and set the zero_stage hyperparameter"
        )
    try:
        from deepspeed import __version__
        from deepspeed.runtime.config import DeepSpeedConfig
    except ImportError:
        return "DeepSpeed is not installed; DS_BUILD_OPS=0 pip install 'perfscale[llm]'"
    config = _Recording({**extra, "train_batch_size": 1, "train_micro_batch_size_per_gpu": 1})
    try:
        DeepSpeedConfig(config)
    except Exception as exc:  # DeepSpeedConfigError, pydantic's ValidationError, AssertionError...
        return _refused(exc, extra, __version__)
    unknown = sorted(set(extra) - config.read)
    if unknown:
        return (
            f"DeepSpeed {__version__} knows no config key {', '.join(map(repr, unknown))}; correct the "
            "spelling or remove it (the keys are those of DeepSpeed's config documentation)"
        )
    return None


def _refused(exc: Exception, extra: dict[str, Any], version: str) -> str:
    """DeepSpeed's refusal, with a nested block's field named by its path in the study's dict."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return f"DeepSpeed {version} refuses this config: {' '.join(str(exc).split())}"
    found = []
    for error in errors():
        loc = [str(part) for part in error["loc"]]
        blocks = [k for k, v in extra.items() if isinstance(v, dict) and loc and loc[0] in v]
        path = ".".join([*blocks[:1], *loc])
        if error["type"] == "extra_forbidden":
            found.append(
                f"{path}: DeepSpeed {version} knows no such field; correct the spelling or remove it"
            )
        else:
            found.append(f"{path}: {error['msg']} (DeepSpeed {version})")
    return "; ".join(found)


def engine_config(stage: int, batch_size: int, world: World, extra: dict[str, Any]) -> dict[str, Any]:
    if batch_size % world.size:
        raise BadInput(
            f"great hyperparameter batch_size {batch_size} does not split over {world.size} ranks under "
            f"DeepSpeed (each rank takes batch_size / ranks rows); make batch_size a multiple of {world.size}"
        )
    zero = {**extra.get("zero_optimization", {}), "stage": stage}
    return {
        **extra,
        "train_batch_size": batch_size,
        "train_micro_batch_size_per_gpu": batch_size // world.size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # torch's AdamW, the optimizer of the other paths
        "steps_per_print": extra.get("steps_per_print", 10**9),
    }


@contextlib.contextmanager
def _this_interpreters_ninja() -> Iterator[None]:
    """The interpreter's own bin folder first on PATH while DeepSpeed builds its shared-memory extension.

    torch builds extensions with whichever `ninja` PATH finds, and rebuilds (about 100 s) whenever the cached
    build was made by another ninja version: with the venv's ninja (a DeepSpeed dependency) and a system one
    (Debian's ninja-build), runs with different PATHs kept rebuilding it. The venv's ninja is always there."""
    here = str(Path(sys.executable).parent)
    rest = (p for p in os.environ.get("PATH", "").split(os.pathsep) if p != here)
    with environ({"PATH": os.pathsep.join([here, *rest])}):
        yield


class ZeroStepper:
    """The DeepSpeed engine around the model, perfscale's AdamW and schedule (see the module doc)."""

    def __init__(self, model: Any, lr: float, total: int, world: World, stage: int, batch_size: int,
                 extra: dict[str, Any]) -> None:  # fmt: skip
        import deepspeed
        import torch

        self.stage, self.world = stage, world
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / total))
        config = engine_config(stage, batch_size, world, extra)
        log.info("DeepSpeed ZeRO-%d engine on %d ranks: %s", stage, world.size, config)
        with _this_interpreters_ninja():
            self.engine, *_ = deepspeed.initialize(
                model=model, optimizer=optimizer, lr_scheduler=schedule, config=config
            )
        self.model = self.engine

    def step(self, loss: Any) -> None:
        self.engine.backward(loss)
        self.engine.step()

    def load(self, folder: str | None, fingerprint: str) -> dict[str, Any] | None:
        """The client state of the newest checkpoint in `folder` (None when there is none); BadInput when
        it belongs to another fit."""
        if folder is None or not (Path(folder) / "latest").is_file():
            return None
        path, client = self.engine.load_checkpoint(folder)
        if path is None:
            return None
        if (client or {}).get("fingerprint") != fingerprint:
            raise BadInput(
                f"the DeepSpeed checkpoint in {folder} belongs to another fit (different table, seed or "
                "hyperparameters); delete it or choose another checkpoint_dir"
            )
        log.info("resumed DeepSpeed checkpoint %s", path)
        return dict(client or {})

    def save(self, folder: str | None, step: int, client: dict[str, Any]) -> None:
        """A checkpoint tagged with `step` (every rank writes its part); rank 0 then removes all but the
        newest KEEP tags."""
        import torch.distributed as dist

        if folder is None:
            return
        tag = f"{TAG_PREFIX}{step:09d}"
        self.engine.save_checkpoint(folder, tag=tag, client_state=client)
        if dist.is_initialized():
            dist.barrier()
        if self.world.rank == 0:
            tags = sorted(p for p in Path(folder).glob(f"{TAG_PREFIX}*") if p.is_dir())
            for old in tags[:-KEEP]:
                shutil.rmtree(old, ignore_errors=True)

    def trained(self) -> Any:
        """A plain copy of the trained model (ZeRO-3's partitioned weights gathered first)."""
        import deepspeed

        module = self.engine.module
        params = list(module.parameters())
        with deepspeed.zero.GatheredParameters(params, enabled=self.stage == 3):
            state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        plain = type(module)(module.config)
        plain.load_state_dict(state)
        return plain
