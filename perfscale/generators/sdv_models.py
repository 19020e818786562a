"""SDV single-table synthesizers as generators: gaussian_copula, ctgan, tvae, copulagan.

sdv (and torch through it) is imported inside methods only: importing sdv takes seconds.

Column types map to SDV sdtypes: numerical -> numerical, integer -> numerical with `decimal_places: 0`
(SDV 2 dropped `computer_representation`; exact integer values and allowed sets are enforced by the shared
post-processing anyway), categorical -> categorical, boolean -> boolean, datetime -> datetime.

Hyperparameters are the keyword arguments of the SDV synthesizer (epochs, batch_size, pac, embedding_dim,
enforce_min_max_values, default_distribution, ...), declared with their types, bounds, choices and SDV's
defaults by one model per synthesizer below (tests/test_generators.py checks each against the synthesizer's
signature); only the ones a study sets are passed to SDV. `batch_size` is adjusted to the table
(`_gan_batch_size` for ctgan/copulagan; tvae caps it at the row count); the values used are stored as
`effective_hyperparameters` in generator.json. SDV's `enable_gpu` defaults to True: on a CUDA node the GANs
and TVAE train on the GPU (pass `enable_gpu: false` to stay on the CPU).

Determinism (on CPU; tests/test_generators.py checks it for gaussian_copula and ctgan): `fit` seeds Python's
`random`, numpy's global generator and torch before training (ctgan draws from these globals; the Gaussian
copula fit is deterministic by itself) and restores them afterwards, so two fits with the same seed, data,
hyperparameters, library versions and thread count give identical models (also checked by hand across
separate processes, whatever the caller's global random state, and with 1 vs 2 torch threads on iris).
`sample(n, seed)` resets SDV's sampling state and seeds the model, so it is a pure function of
(model, n, seed): repeated calls and a saved-then-loaded model give identical rows.
Not promised: identical results on GPU (CUDA kernels are not bit-reproducible), across torch/sdv versions,
or across machines and thread counts (floating-point reduction order).

Offline and quiet: SDV 2.0 (open-source) sends no usage telemetry and makes no network calls outside
`sdv.datasets.demo`, which is never used here; there is no telemetry setting to turn off. Its usage logger
(`log_registry: null` by default) writes no log files, though importing sdv creates
`$XDG_DATA_HOME/sdv/sdv_logger_config.yml` (platformdirs' user data dir) when that folder is writable.
`quiet_sdv` drops the deprecation warnings SDV's own code triggers; SDV's version-mismatch warning on
load is kept. Progress bars stay off (SDV shows one only for batched or constrained sampling, unused here).
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt

from perfscale.errors import BadInput
from perfscale.extras import require
from perfscale.generators._seeding import seeded
from perfscale.generators.base import Generator, model_file
from perfscale.generators.registry import register_generator
from perfscale.options import OptionsModel

if TYPE_CHECKING:
    import pandas as pd

    from perfscale.generators.conditions import Conditions
    from perfscale.tabular.meta import Column, TableMeta

TABLE = "table"  # the single table's name inside SDV's multi-table-shaped metadata and data
SYNTHESIZER_FILE = "synthesizer.pkl"
_SDV_MODULES = r"(sdv|rdt|copulas|ctgan)(\.|$)"
_SDTYPES: dict[str, dict[str, Any]] = {
    "numerical": {"sdtype": "numerical"},
    "integer": {"sdtype": "numerical", "decimal_places": 0},
    "categorical": {"sdtype": "categorical"},
    "boolean": {"sdtype": "boolean"},
    "datetime": {"sdtype": "datetime"},
}
#: the marginal distributions of SDV's Gaussian copula (GaussianCopulaSynthesizer._DISTRIBUTIONS)
Distribution = Literal["norm", "beta", "truncnorm", "gamma", "uniform", "gaussian_kde"]
Widths = list[PositiveInt]


class SDVHyperparameters(OptionsModel):
    """What every SDV synthesizer takes."""

    enforce_min_max_values: bool = Field(True, description="clip numbers to the training min and max")
    enforce_rounding: bool = Field(True, description="round numbers to the training decimal places")


class _Locales(SDVHyperparameters):
    locales: str | list[str] = Field(["en_US"], description="Faker locales of anonymised columns (none here)")


class _Copula(OptionsModel):
    numerical_distributions: dict[str, Distribution] | None = Field(
        None, description="column -> marginal distribution (columns not named use default_distribution)"
    )
    default_distribution: Distribution | None = Field(None, description="marginal distribution (None: beta)")


class GaussianCopulaHyperparameters(_Locales, _Copula):
    """SDV GaussianCopulaSynthesizer."""


class _Networks(OptionsModel):
    embedding_dim: PositiveInt = Field(128, description="size of the latent / noise vector")
    batch_size: PositiveInt = Field(500, description="rows per step (adjusted to the table, see the module)")
    epochs: PositiveInt = Field(300, description="passes over the training table")
    verbose: bool = Field(False, description="print SDV's progress")
    enable_gpu: bool = Field(True, description="train on CUDA when a GPU is visible")


class CTGANHyperparameters(_Locales, _Networks):
    """SDV CTGANSynthesizer."""

    generator_dim: Widths = Field([256, 256], min_length=1, description="generator residual layer widths")
    discriminator_dim: Widths = Field([256, 256], min_length=1, description="discriminator layer widths")
    generator_lr: PositiveFloat = Field(2e-4, description="generator Adam learning rate")
    generator_decay: NonNegativeFloat = Field(1e-6, description="generator Adam weight decay")
    discriminator_lr: PositiveFloat = Field(2e-4, description="discriminator Adam learning rate")
    discriminator_decay: NonNegativeFloat = Field(1e-6, description="discriminator Adam weight decay")
    discriminator_steps: PositiveInt = Field(1, description="discriminator updates per generator update")
    log_frequency: bool = Field(True, description="sample categories by log frequency during training")
    pac: PositiveInt = Field(10, description="rows the discriminator sees together (PacGAN)")


class CopulaGANHyperparameters(CTGANHyperparameters, _Copula):
    """SDV CopulaGANSynthesizer."""


class TVAEHyperparameters(SDVHyperparameters, _Networks):
    """SDV TVAESynthesizer."""

    compress_dims: Widths = Field([128, 128], min_length=1, description="encoder layer widths")
    decompress_dims: Widths = Field([128, 128], min_length=1, description="decoder layer widths")
    l2scale: NonNegativeFloat = Field(1e-5, description="Adam weight decay")
    loss_factor: PositiveFloat = Field(2, description="weight of the reconstruction error")


@contextlib.contextmanager
def quiet_sdv() -> Iterator[None]:
    """Silence deprecation warnings that SDV and the libraries it drives trigger in their own code.

    Only warnings attributed to sdv/rdt/copulas/ctgan modules are dropped (e.g. pandas' "Downcasting object
    dtype arrays on .fillna is deprecated" from sdv.single_table.ctgan): users cannot act on them. Warnings
    about the user's data or setup, such as SDV's version-mismatch warning on load, still show. (rdt already
    silences sklearn's convergence warnings of its Bayesian GMM itself.)
    """
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=_SDV_MODULES)
        yield


@contextlib.contextmanager
def _no_tqdm() -> Iterator[None]:
    """SDV's conditional sampling draws a tqdm bar on sys.stderr (no switch to turn it off): swallow it."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def sdv_column(col: Column) -> dict[str, Any]:
    return dict(_SDTYPES[col.type])


def sdv_metadata(meta: TableMeta) -> Any:
    """An `sdv.metadata.Metadata` with one table named `TABLE`, built from our column types."""
    from sdv.metadata import Metadata

    columns = {name: sdv_column(col) for name, col in meta.columns.items()}
    return Metadata.load_from_dict(
        {"METADATA_SPEC_VERSION": "V2", "tables": {TABLE: {"columns": columns}}, "relationships": []}
    )


def loss_telemetry(losses: pd.DataFrame) -> pd.DataFrame:
    """SDV's loss table (Epoch, [Batch,] '<Name> Loss'...) as long rows: epoch, step, loss, value.

    `step` counts the rows of each loss: the epoch for CTGAN's per-epoch losses, the global batch index for
    TVAE's per-batch loss.
    """
    import numpy as np
    import pandas as pd

    frames = []
    for column in [c for c in losses.columns if str(c).lower().endswith("loss")]:
        name = str(column).lower().removesuffix("loss").strip().replace("distriminator", "discriminator")
        frames.append(
            pd.DataFrame(
                {
                    "epoch": losses["Epoch"].to_numpy(dtype="int64"),
                    "step": np.arange(len(losses), dtype="int64"),
                    "loss": name or "loss",
                    "value": losses[column].to_numpy(dtype=float),
                }
            )
        )
    if not frames:
        return pd.DataFrame(columns=["epoch", "step", "loss", "value"])
    return pd.concat(frames, ignore_index=True).sort_values("step", kind="stable", ignore_index=True)


class SDVGenerator(Generator):
    """Base of the SDV generators: `synthesizer` names a class in `sdv.single_table`."""

    synthesizer: ClassVar[str]
    pickled_files = (SYNTHESIZER_FILE,)
    params: SDVHyperparameters

    def __init__(self, **hyperparameters: Any) -> None:
        super().__init__(**hyperparameters)
        self.effective_hyperparameters: dict[str, Any] = dict(self.hyperparameters)
        self._synthesizer: Any = None

    @classmethod
    def synthesizer_class(cls) -> type:
        single_table = require("synth", "sdv.single_table", f"the {cls.name} generator")
        return getattr(single_table, cls.synthesizer)

    def _effective_hyperparameters(self, rows: int) -> dict[str, Any]:
        """The keyword arguments given to the synthesizer for a table of `rows` rows: those the study set."""
        return self.params.model_dump(exclude_unset=True)

    def _fit(self, table: pd.DataFrame, meta: TableMeta, seed: int) -> pd.DataFrame | None:
        params = self._effective_hyperparameters(len(table))
        with quiet_sdv(), seeded(seed, torch=True):
            synthesizer = _sdv_call(self.name, self.synthesizer_class(), sdv_metadata(meta), **params)
            _sdv_call(self.name, synthesizer.fit, {TABLE: table})
        self._synthesizer, self.effective_hyperparameters = synthesizer, params
        return self._telemetry()

    def _telemetry(self) -> pd.DataFrame | None:
        return None

    def _sample(self, n: int, seed: int) -> pd.DataFrame:
        synthesizer = self._synthesizer
        with quiet_sdv(), seeded(seed, torch=True):
            synthesizer.reset_sampling()  # forget draws made since fit/load: samples depend on the seed only
            synthesizer._set_random_state(seed)  # SDV 2.0 has no public setter; sample() uses a fixed seed
            return synthesizer.sample(n)[TABLE]

    def _sample_conditioned(self, n: int, seed: int, conditions: Conditions) -> pd.DataFrame | None:
        """SDV's own conditional sampling for equalities (the Gaussian copula conditions its distribution;
        the GANs and TVAE reject inside SDV); None when there are no equalities or SDV gives up."""
        from sdv.sampling import Condition

        equal = conditions.equalities()
        if not equal:
            return None
        wanted = [Condition(num_rows=n, column_values=equal)]
        return self._sdv_conditional(seed, "sample_from_conditions", wanted)

    # Imputation uses the generic pool method: SDV's sample_remaining_columns was measured slower (10.6 s vs
    # 0.7 s) and less accurate (0.60 vs 0.70 species accuracy from 30 iris rows, 5 draws) with the copula.

    def _sdv_conditional(self, seed: int, method: str, what: Any) -> pd.DataFrame | None:
        synthesizer = self._synthesizer
        with quiet_sdv(), seeded(seed, torch=True), _no_tqdm():
            synthesizer.reset_sampling()
            synthesizer._set_random_state(seed)
            try:
                return getattr(synthesizer, method)(what, max_tries_per_batch=20)[TABLE]
            except ValueError:  # SDV found no rows meeting the conditions: fall back to our own sampler
                return None

    def _save_model(self, folder: Path) -> None:
        with quiet_sdv():
            self._synthesizer.save(str(folder / SYNTHESIZER_FILE))  # cloudpickle

    def _load_model(self, folder: Path) -> None:
        from sdv.utils import load_synthesizer

        path = model_file(folder, SYNTHESIZER_FILE)
        try:
            with quiet_sdv():
                synthesizer = load_synthesizer(str(path))
        except Exception as exc:  # unpickling fails in many ways (EOFError, UnpicklingError, ImportError...)
            raise BadInput(f"{path} is corrupted or was written by incompatible libraries: {exc!r}") from exc
        if not isinstance(synthesizer, self.synthesizer_class()):
            raise BadInput(f"{path} holds a {type(synthesizer).__name__}, not an SDV {self.synthesizer}")
        self._synthesizer = synthesizer

    def _model_state(self) -> dict[str, Any]:
        from importlib.metadata import version

        return {"sdv_version": version("sdv"), "effective_hyperparameters": self.effective_hyperparameters}

    def _restore_model_state(self, state: dict[str, Any]) -> None:
        self.effective_hyperparameters = dict(state.get("effective_hyperparameters", self.hyperparameters))


class _LossValues(SDVGenerator):
    """SDV synthesizers with `get_loss_values()` (CTGAN, TVAE, CopulaGAN)."""

    def _telemetry(self) -> pd.DataFrame | None:
        return loss_telemetry(self._synthesizer.get_loss_values())


class _GANBatch(_LossValues):
    params: CTGANHyperparameters

    def _effective_hyperparameters(self, rows: int) -> dict[str, Any]:
        batch_size = _gan_batch_size(rows, self.params.batch_size, self.params.pac)
        return super()._effective_hyperparameters(rows) | {"batch_size": batch_size}


@register_generator
class GaussianCopulaGenerator(SDVGenerator):
    """SDV GaussianCopulaSynthesizer: marginals + Gaussian copula; no training loss."""

    name = "gaussian_copula"
    synthesizer = "GaussianCopulaSynthesizer"
    hyperparameters_model = GaussianCopulaHyperparameters


@register_generator
class CTGANGenerator(_GANBatch):
    """SDV CTGANSynthesizer (conditional GAN); telemetry: generator and discriminator loss per epoch."""

    name = "ctgan"
    synthesizer = "CTGANSynthesizer"
    hyperparameters_model = CTGANHyperparameters


@register_generator
class CopulaGANGenerator(_GANBatch):
    """SDV CopulaGANSynthesizer (CTGAN on copula-transformed marginals); same telemetry as ctgan."""

    name = "copulagan"
    synthesizer = "CopulaGANSynthesizer"
    hyperparameters_model = CopulaGANHyperparameters


@register_generator
class TVAEGenerator(_LossValues):
    """SDV TVAESynthesizer (variational autoencoder); telemetry: the loss of every batch."""

    name = "tvae"
    synthesizer = "TVAESynthesizer"
    hyperparameters_model = TVAEHyperparameters
    params: TVAEHyperparameters

    def _effective_hyperparameters(self, rows: int) -> dict[str, Any]:
        batch_size = min(self.params.batch_size, rows)
        return super()._effective_hyperparameters(rows) | {"batch_size": batch_size}


def _gan_batch_size(rows: int, requested: int, pac: int) -> int:
    """A CTGAN batch size: a multiple of lcm(2, pac) (CTGAN asserts both), at most the table rounded up.

    CTGAN draws every batch with replacement, so a batch larger than the table only repeats rows at a
    higher cost per step; a requested size that is not a multiple is rounded down (to at least one unit).
    """
    unit = math.lcm(2, pac)
    return max(unit, min(requested // unit * unit, math.ceil(rows / unit) * unit))


def _sdv_call(generator: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call into SDV, turning its complaints about our data or parameters into BadInput."""
    from sdv.errors import InvalidDataError, InvalidDataTypeError, SynthesizerInputError
    from sdv.metadata.errors import InvalidMetadataError

    try:
        return fn(*args, **kwargs)
    except (InvalidDataError, InvalidDataTypeError, InvalidMetadataError, SynthesizerInputError) as exc:
        raise BadInput(f"generator {generator!r} rejected the table: {exc}") from exc
    except (TypeError, ValueError, AssertionError) as exc:
        if not isinstance(fn, type):  # only building the synthesizer validates hyperparameters
            raise
        raise BadInput(f"invalid hyperparameters for generator {generator!r}: {exc}") from exc
