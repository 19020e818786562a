"""The `tabddpm` generator: TabDDPM (Kotelnikov et al. 2023) behind the `Generator` protocol.

torch, numpy, pandas and scikit-learn are imported inside methods only, so registering it is cheap.

Files: `model.safetensors` (denoiser weights, their EMA under `ema.`, and the quantile transformer's arrays)
and `tabddpm.json`
(column encoding); nothing is pickled, so loading needs no trust. Native imputation and equality-conditioned
sampling inpaint the known cells (see `sample.py`). Checkpointing and resume: see `train.py` and the
`checkpoint_dir` hyperparameter in `config.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perfscale.errors import BadInput
from perfscale.extras import require
from perfscale.generators.base import Generator, model_file
from perfscale.generators.registry import register_generator
from perfscale.generators.tabddpm.config import TabDDPMConfig

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from perfscale.generators.conditions import Conditions
    from perfscale.generators.tabddpm.diffusion import Diffusion
    from perfscale.generators.tabddpm.model import Denoiser
    from perfscale.generators.tabddpm.sample import Known
    from perfscale.generators.tabddpm.transform import TableEncoder
    from perfscale.tabular.meta import TableMeta

MODEL_FILE = "model.safetensors"
ENCODING_FILE = "tabddpm.json"
_ENCODER_PREFIX = "encoder."
_EMA_PREFIX = "ema."


@register_generator
class TabDDPMGenerator(Generator):
    """Gaussian diffusion on quantile-normalised numbers + multinomial diffusion on categories, one MLP.

    Hyperparameters: see `TabDDPMConfig`. Telemetry: the "gaussian" (when the table has numeric columns),
    "multinomial" (when it has categorical ones) and "total" loss of every training step.
    """

    name = "tabddpm"
    pickled_files = ()
    resumable = True  # takes checkpoint_dir; the train stage passes a folder kept across attempts
    hyperparameters_model = TabDDPMConfig
    params: TabDDPMConfig

    def __init__(self, **hyperparameters: Any) -> None:
        super().__init__(**hyperparameters)
        self.effective_batch_size: int | None = None
        self._encoder: TableEncoder | None = None
        self._denoiser: Denoiser | None = None
        self._ema: Denoiser | None = None  # the weights' moving average (None on ranks other than 0)
        self._diffusion: Diffusion | None = None

    # ---- fit ---------------------------------------------------------------------------------------------

    def _fit(self, table: pd.DataFrame, meta: TableMeta, seed: int) -> pd.DataFrame | None:
        torch = require("synth", "torch", "the tabddpm generator")
        import pandas as pd

        from perfscale.generators._seeding import torch_threads
        from perfscale.generators.tabddpm.train import TrainData, fit_diffusion, telemetry_rows
        from perfscale.generators.tabddpm.transform import TableEncoder

        device = self._device(fitting=True)
        self.device_used = device.type
        self.precision_used = "bf16" if self.params.precision == "bf16" and device.type == "cuda" else "fp32"
        encoder = TableEncoder.fit(table, meta, seed, self.params.discrete_as_categories)
        x_num, x_cat = encoder.encode(table)
        data = TrainData(torch.as_tensor(x_num, device=device), torch.as_tensor(x_cat, device=device))
        with torch_threads(self.params.threads):
            denoiser, diffusion, state, batch_size, ema = fit_diffusion(
                self.params, data, encoder.num_classes, seed
            )
        self._encoder, self._denoiser, self._diffusion = encoder, denoiser, diffusion
        self._ema = ema.model if ema is not None else None
        self.effective_batch_size = batch_size
        names = ("gaussian",) * bool(encoder.numeric) + ("multinomial",) * bool(encoder.categorical)
        return pd.DataFrame(telemetry_rows(state, data.rows, batch_size, (*names, "total")))

    # ---- sampling, imputation, conditions ----------------------------------------------------------------

    def _sample(self, n: int, seed: int) -> pd.DataFrame:
        return self._generate(n, seed, None)

    def _impute(self, known: pd.DataFrame, seed: int) -> pd.DataFrame | None:
        """Fill the NaN cells of `known` by inpainting (RePaint, see `sample.py`): the set cells are held at
        their values (numbers quantile-transformed first) while the others are generated."""
        from perfscale.generators.tabddpm.sample import Known

        assert self._encoder is not None
        encoded = self._encoder.encode_known(known)
        out = self._generate(len(known), seed, Known(*encoded))
        out.index = known.index
        for name in out.columns:  # exact known values: the quantile transform's round trip is not
            is_set = known[name].notna()
            if is_set.any():
                out[name] = out[name].astype(object).where(~is_set, known[name].astype(object))
        return out

    def _sample_conditioned(self, n: int, seed: int, conditions: Conditions) -> pd.DataFrame | None:
        """Equality conditions are inpainted as known cells; other conditions are left to rejection sampling
        (None when there is no equality on a modelled column)."""
        import pandas as pd

        assert self._encoder is not None
        equalities = {c: v for c, v in conditions.equalities().items() if c in self._encoder.columns}
        if not equalities:
            return None
        known = pd.DataFrame(
            {c: pd.Series([equalities.get(c)] * n, dtype=object) for c in self._encoder.columns}
        )
        return self._impute(known, seed)

    def _generate(self, n: int, seed: int, known: Known | None) -> pd.DataFrame:
        from perfscale.generators._seeding import torch_threads
        from perfscale.generators.tabddpm.sample import reverse_sample
        from perfscale.generators.tabddpm.train import new_generator

        assert self._encoder is not None and self._denoiser is not None and self._diffusion is not None
        generator = new_generator(seed, self._diffusion.device)
        with torch_threads(self.params.threads):
            x_num, x_cat = reverse_sample(
                self._sampling_denoiser(),
                self._diffusion,
                n,
                generator,
                self.params.sample_batch_size,
                known,
                self.params.repaint_resample,
            )
        return self._encoder.decode(x_num, x_cat)

    def _sampling_denoiser(self) -> Denoiser:
        """The weights `sample_with` names."""
        assert self._denoiser is not None
        if self.params.sample_with == "model":
            return self._denoiser
        if self._ema is None:
            raise BadInput(
                "tabddpm hyperparameter sample_with is 'ema' but this model holds no EMA (saved before EMAs "
                "were kept); fit it again or use sample_with: model"
            )
        return self._ema

    # ---- files -------------------------------------------------------------------------------------------

    def _save_model(self, folder: Path) -> None:
        import numpy as np
        import torch
        from safetensors.torch import save_file

        assert self._encoder is not None and self._denoiser is not None
        tensors = {k: v.detach().cpu().contiguous() for k, v in self._denoiser.state_dict().items()}
        if self._ema is not None:
            tensors |= {
                _EMA_PREFIX + k: v.detach().cpu().contiguous() for k, v in self._ema.state_dict().items()
            }
        tensors |= {
            _ENCODER_PREFIX + k: torch.as_tensor(np.ascontiguousarray(v))
            for k, v in self._encoder.arrays().items()
        }
        save_file(tensors, str(folder / MODEL_FILE))
        encoding = {"encoder": self._encoder.to_json(), "num_numeric": len(self._encoder.numeric)}
        (folder / ENCODING_FILE).write_text(json.dumps(encoding, indent=2) + "\n", encoding="utf-8")

    def _load_model(self, folder: Path) -> None:
        require("synth", "torch", "the tabddpm generator")
        from safetensors.torch import load_file

        from perfscale.generators.tabddpm.diffusion import Diffusion
        from perfscale.generators.tabddpm.model import build_denoiser
        from perfscale.generators.tabddpm.transform import TableEncoder

        encoding_path, model_path = model_file(folder, ENCODING_FILE), model_file(folder, MODEL_FILE)
        try:
            tensors = load_file(str(model_path))
        except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
            raise BadInput(f"{model_path} is corrupted: not a readable safetensors file ({exc})") from exc
        arrays = {
            k.removeprefix(_ENCODER_PREFIX): v.numpy()
            for k, v in tensors.items()
            if k.startswith(_ENCODER_PREFIX)
        }
        try:
            data = json.loads(encoding_path.read_text(encoding="utf-8"))
            encoder = TableEncoder.from_json(data["encoder"], arrays)
        except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadInput(f"{encoding_path} (or the arrays in {MODEL_FILE}) is corrupted: {exc!r}") from exc
        device = self._device(fitting=False)
        diffusion = Diffusion.create(
            self.params.num_timesteps, len(encoder.numeric), encoder.num_classes, device
        )
        d_in = len(encoder.numeric) + diffusion.num_onehot
        weights = {k: v for k, v in tensors.items() if not k.startswith((_ENCODER_PREFIX, _EMA_PREFIX))}
        averaged = {k.removeprefix(_EMA_PREFIX): v for k, v in tensors.items() if k.startswith(_EMA_PREFIX)}
        denoiser, ema = build_denoiser(self.params, d_in, seed=0), None
        try:
            denoiser.load_state_dict(weights)
            if averaged:
                ema = build_denoiser(self.params, d_in, seed=0)
                ema.load_state_dict(averaged)
                ema.to(device).eval()
        except RuntimeError as exc:
            raise BadInput(f"{model_path} does not hold this generator's denoiser: {exc}") from exc
        denoiser.to(device).eval()
        self._encoder, self._denoiser, self._diffusion, self._ema = encoder, denoiser, diffusion, ema

    def _model_state(self) -> dict[str, Any]:
        import torch

        return {"effective_batch_size": self.effective_batch_size, "torch_version": torch.__version__}

    def _restore_model_state(self, state: dict[str, Any]) -> None:
        self.effective_batch_size = state.get("effective_batch_size")

    # ---- helpers -----------------------------------------------------------------------------------------

    def _device(self, fitting: bool) -> torch.device:
        """The configured device; a CUDA model loaded where no GPU is samples on the CPU."""
        import torch

        if self.params.device == "cpu":
            return torch.device("cpu")
        if torch.cuda.is_available():
            return torch.device("cuda" if self.params.device == "auto" else self.params.device)
        if self.params.device == "auto":
            return torch.device("cpu")
        if fitting:
            raise BadInput(
                f"tabddpm hyperparameter 'device' is {self.params.device!r} but CUDA is not available here; "
                'use "cpu"'
            )
        return torch.device("cpu")
