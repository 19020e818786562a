"""Hyperparameters of the GReaT generator (pydantic only: registering the generator stays light)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from perfscale.devices import check_device, check_precision
from perfscale.options import OptionsModel

TINY_LR, PRETRAINED_LR = 1e-3, 5e-5


def _deepspeed(value: dict[str, Any]) -> dict[str, Any]:
    """The study's extra DeepSpeed keys, checked by the installed DeepSpeed's own config class (zero.py)."""
    if value:
        from perfscale.llm.zero import config_problem

        problem = config_problem(value)
        if problem:
            raise ValueError(problem)
    return value


class Params(OptionsModel):
    """GReaT hyperparameters (defaults follow Borisov et al. where they apply: temperature 0.7).

    base_model: "tiny" (a GPT-2 built in code, char tokenizer), "smollm2" (SmolLM2-135M-Instruct, offline) or
        the path of a local Hugging Face causal-LM folder.
    epochs / steps: training length; `steps` (optimizer steps), when set, replaces `epochs`.
    batch_size, lr: training batch and AdamW learning rate (default 1e-3 for "tiny", which starts from
        random weights, 5e-5 for pretrained models), decayed linearly to 0.
    max_length: the longest token sequence (row plus start/end tokens) allowed; default the model's context.
    permutations: random column orders per training row (each a training sequence).
    temperature, top_k, top_p: sampling; top_k None means no top-k cut.
    max_new_tokens: the longest generated continuation; default 1.25 x the longest training row + 8 tokens
        (capped by what the prompt leaves of max_length): longer texts are not rows.
    sample_batch_size: the most texts in one batch of the generation engine (perfscale.llm.inference).
    max_attempts: regeneration budget: a call wanting n rows generates at most max_attempts * n.
    float_digits: significant digits written for floats (default: the shortest exact repr); fewer digits
        give shorter rows, the fix for tables too wide for the context.
    max_train_seconds: stop training after this many seconds (a time-bounded campaign); the steps run are
        recorded in the model state.
    tiny_config: GPT-2 config overrides for base_model "tiny" (n_layer, n_head, n_embd, n_positions...).
    tiny_merges: BPE merges learnt from the training text for the "tiny" tokenizer (0: characters only).
    cache_dir: where "smollm2" is converted to (default $PERFSCALE_CACHE/models or ~/.cache/perfscale/models).
    device: "cpu" (default, deterministic), "cuda" or "auto" (cuda when available).
    zero_stage: None (default): plain torch training, DistributedDataParallel in a multi-rank task; 0, 1, 2 or
        3: the DeepSpeed engine with that ZeRO stage (optimizer states, + gradients, + weights partitioned
        over the ranks), gloo on the CPU and NCCL on GPUs; `batch_size` must be a multiple of the ranks.
    deepspeed: further DeepSpeed config keys for zero_stage (e.g. {"zero_optimization": {"overlap_comm":
        true}}); keys this DeepSpeed does not know are refused at plan time. perfscale sets the batch sizes,
        gradient clipping and the stage.
    checkpoint_dir, checkpoint_every: checkpoints are written there every `checkpoint_every` steps and at
        the end, and a fit resumes from the newest (the train stage passes the task's checkpoint folder, kept
        across attempts): DeepSpeed's own with zero_stage, else one safetensors file (the model, AdamW, the
        schedule, torch's RNG and the loss curve; perfscale/distributed/checkpoint.py) written by rank 0,
        which resumes on any number of ranks.
    precision: "fp32" (default) or "bf16": training steps under bfloat16 autocast on a GPU (refused with
        device "cpu"; with "auto" on a machine without a GPU, fp32). The train shard records what ran.
    torch_threads: torch's intra-op threads while fitting and sampling (restored after); default 1 for "tiny"
        (faster for a model that small, and immune to busy cores), torch's own setting otherwise.
    """

    base_model: str = Field("tiny", min_length=1)
    epochs: PositiveInt = 20
    steps: PositiveInt | None = None
    batch_size: PositiveInt = 16
    lr: PositiveFloat | None = None
    max_length: PositiveInt | None = None
    permutations: PositiveInt = 1
    temperature: PositiveFloat = 0.7
    top_k: PositiveInt | None = None
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: PositiveInt | None = None
    sample_batch_size: PositiveInt = 64
    max_attempts: PositiveInt = 10
    float_digits: int | None = Field(None, ge=1, le=17)
    max_train_seconds: PositiveFloat | None = None
    tiny_config: dict[str, Any] = Field(default_factory=dict)
    tiny_merges: NonNegativeInt = 256
    cache_dir: str | None = None
    device: Annotated[str, AfterValidator(check_device)] = "cpu"
    precision: Literal["fp32", "bf16"] = "fp32"
    torch_threads: PositiveInt | None = None
    zero_stage: Literal[0, 1, 2, 3] | None = None
    deepspeed: Annotated[dict[str, Any], AfterValidator(_deepspeed)] = Field(default_factory=dict)
    checkpoint_dir: str | None = Field(None, min_length=1)
    checkpoint_every: PositiveInt = 100

    @model_validator(mode="after")
    def _deepspeed_needs_a_stage(self) -> Params:
        if self.deepspeed and self.zero_stage is None:
            raise ValueError("deepspeed keys are given but zero_stage is not; set zero_stage: 0, 1, 2 or 3")
        return self

    @model_validator(mode="after")
    def _bf16_on_gpu(self) -> Params:
        check_precision(self.precision, self.device)
        if self.precision == "bf16" and self.zero_stage is not None:
            raise ValueError(
                'precision "bf16" is for plain torch training; under zero_stage set DeepSpeed\'s own: '
                "deepspeed: {bf16: {enabled: true}}"
            )
        return self

    @property
    def threads(self) -> int | None:
        if self.torch_threads is not None:
            return self.torch_threads
        return 1 if self.base_model == "tiny" else None

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return TINY_LR if self.base_model == "tiny" else PRETRAINED_LR
