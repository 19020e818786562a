"""The generator protocol: fit on a real table, sample synthetic rows, save to and load from a folder.

Every generator (SDV models, SMOTE, TabDDPM, an LLM...) subclasses `Generator` and implements four hooks:
`_fit`, `_sample`, `_save_model`, `_load_model`. The public methods here do everything shared around them:
input checks, timing and memory telemetry, post-processing of samples (columns, dtypes, allowed values) and
the `generator.json` manifest.

Hyperparameters: each generator declares them as a pydantic model (`hyperparameters_model`, a subclass of
`perfscale.options.OptionsModel`: names, types, bounds and choices), which `__init__` validates into
`self.params`; the planner checks a study's hyperparameters against the same model before anything runs.

This module imports only the standard library and pydantic at import time (pandas, numpy and the model
libraries are imported when a generator is used), so `import perfscale.generators` stays cheap for the CLI
and planner.
"""

from __future__ import annotations

import json
import numbers
import os
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from perfscale.errors import BadInput
from perfscale.options import OptionsModel, validated_options
from perfscale.store.atomic import atomic_write_text
from perfscale.version import __version__

if TYPE_CHECKING:
    import pandas as pd

    from perfscale.generators._tables import TableSpec
    from perfscale.generators.conditional import ImputationReport, SamplingReport
    from perfscale.generators.conditions import Conditions
    from perfscale.tabular.meta import TableMeta

GENERATOR_JSON = "generator.json"
FORMAT_VERSION = 1
MAX_SEED = 2**32 - 1  # numpy's legacy seeding accepts [0, 2**32 - 1]
_MANIFEST_KEYS = {
    "format": int,
    "generator": str,
    "perfscale_version": str,
    "seed": int,
    "hyperparameters": dict,
    "training_rows": int,
    "table": dict,
}

G = TypeVar("G", bound="Generator")


class NoHyperparameters(OptionsModel):
    """The hyperparameters of a generator that takes none."""


@dataclass
class TrainingLog:
    """What one `fit` recorded.

    telemetry: one row per recorded loss value, columns `epoch`, `step` (int; the position of the value in
        its loss's series: the epoch for per-epoch losses, the global batch index for per-batch ones),
        `loss` (its name, e.g. "generator", "discriminator") and `value` (float). Empty for models without
        a training loss (e.g. Gaussian copula).
    elapsed_s: wall-clock seconds of the fit, checks and post-fit bookkeeping included.
    peak_rss_bytes: the process's peak resident set size (`getrusage(RUSAGE_SELF).ru_maxrss`) when fit
        returned: an upper bound of what fitting needed, interpreter and libraries included. It is the
        number to compare between tasks that each run in a fresh worker process.
    peak_rss_delta_bytes: how much fit raised that peak: a lower bound of fit's own memory (0 when fit
        stayed under a peak the process had reached before). tracemalloc is not used: it misses torch
        tensors and slows training down.
    """

    telemetry: pd.DataFrame
    elapsed_s: float
    peak_rss_bytes: int
    peak_rss_delta_bytes: int


class Generator(ABC):
    """A synthetic-data generator for one table.

    Subclasses set `name` (the registry key) and implement the `_fit`, `_sample`, `_save_model` and
    `_load_model` hooks; they see only the non-constant columns, and their samples are post-processed here:
    the output has exactly the training columns in order with the training dtypes; numeric columns with an
    allowed set are snapped to the nearest allowed value, other integer columns are rounded, and numeric
    columns are clipped to the meta's [min, max]; categorical/boolean values outside the allowed set are
    redrawn from the training frequencies. Constant columns (one value, no missing) are allowed: they are
    not modelled and are reproduced as that constant.

    `hyperparameters_model` declares the hyperparameters (see the module doc); `__init__` validates them
    into `self.params` (BadInput naming each bad one) and keeps them as given in `self.hyperparameters`.
    `pickled_files` names model files that are Python pickles: `load` refuses them unless `trust=True`.
    """

    name: ClassVar[str]
    hyperparameters_model: ClassVar[type[OptionsModel]] = NoHyperparameters
    pickled_files: ClassVar[tuple[str, ...]] = ()
    # takes a `checkpoint_dir` hyperparameter and resumes from it: the train stage passes a folder that
    # survives failed attempts, so a retried (e.g. preempted) fit continues instead of starting over
    resumable: ClassVar[bool] = False
    # where the last fit ran ("cpu", "cuda") and in which precision: set by generators that can use a GPU
    device_used: str = "cpu"
    precision_used: str = "fp32"

    def __init__(self, **hyperparameters: Any) -> None:
        _check_json("hyperparameters", hyperparameters)
        self.hyperparameters: dict[str, Any] = dict(hyperparameters)
        self.params = validated_options(
            self.hyperparameters_model, self.hyperparameters, "hyperparameter", self.name
        )
        self.seed: int | None = None
        self.training_rows: int | None = None
        self.training_log: TrainingLog | None = None
        self.last_sampling: SamplingReport | None = None
        self.last_imputation: ImputationReport | None = None
        self._spec: TableSpec | None = None

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        return f"{type(self).__name__}({params})"

    @property
    def is_fitted(self) -> bool:
        return self._spec is not None

    @property
    def meta(self) -> TableMeta:
        """The column metadata the generator was fitted with."""
        return self._require_fitted("describe the columns").meta

    # ---- public API -------------------------------------------------------------------------------------

    def fit(self, table: pd.DataFrame, meta: TableMeta, seed: int) -> TrainingLog:
        """Learn `table` (described by `meta`); the same seed, data and machine give the same model."""
        from perfscale.generators import _tables

        self._spec = None  # a failed fit leaves the generator unfitted, not half-fitted
        seed = _check_seed(seed)
        _tables.check_table(table, meta)
        rss_before, start = max_rss_bytes(), time.perf_counter()
        spec = _tables.TableSpec.from_table(table, meta)
        telemetry = None
        if spec.model_columns:
            telemetry = self._fit(_tables.model_table(table, spec), spec.model_meta(), seed)
        rss_after = max_rss_bytes()
        self._spec, self.seed, self.training_rows = spec, seed, len(table)
        self.training_log = TrainingLog(
            telemetry=_tables.telemetry_frame(telemetry),
            elapsed_s=time.perf_counter() - start,
            peak_rss_bytes=rss_after,
            peak_rss_delta_bytes=max(0, rss_after - rss_before),
        )
        return self.training_log

    def sample(self, n: int, seed: int, conditions: Any = None, max_draws: int | None = None) -> pd.DataFrame:
        """Draw `n` rows shaped like the training table; the same seed gives the same rows.

        `conditions` (text, a mapping or `Conditions`; see perfscale.generators.conditions) restricts the
        rows: the generator's native conditioning is used where it has one, rejection sampling otherwise,
        drawing at most `max_draws` rows (default `default_max_draws(n)`). How it went: `self.last_sampling`.
        """
        from perfscale.generators import _tables, conditional

        n, seed = _check_n(n), _check_seed(seed)
        spec = self._require_fitted("sample")
        if conditions is not None:
            return conditional.sample_conditioned(self, spec, n, seed, conditions, max_draws)
        raw = self._sample(n, seed) if spec.model_columns else None
        self.last_sampling = conditional.SamplingReport.unconditioned(n)
        return _tables.postprocess(raw, spec, n, seed)

    def impute(
        self, table: pd.DataFrame, seed: int, draws: int = 1, relax_unseen: bool = False
    ) -> pd.DataFrame:
        """Fill the missing cells of `table` conditioned on each row's set cells (PERFGEN use case II).

        `table` has the training columns; NaN/None marks what to generate. With `draws` > 1 every missing
        cell gets the mean (numeric, then snapped to allowed values) or the most frequent value (categorical)
        of `draws` conditional draws: a point prediction. Rows whose set cells the model makes too rarely
        fall back to a relaxed match; `self.last_imputation` names them. A categorical value never seen in
        training is an error, or with `relax_unseen` no condition (the row then counts as a fallback too).
        See perfscale.generators.conditional.impute.
        """
        from perfscale.generators import conditional

        spec = self._require_fitted("impute")
        return conditional.impute(self, spec, table, _check_seed(seed), draws, relax_unseen)

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write the model files and `generator.json` into `folder` (created if needed).

        generator.json is written last, atomically, so a folder that has it holds a complete generator.
        """
        spec = self._require_fitted("save")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if spec.model_columns:
            self._save_model(folder)
        manifest = {
            "format": FORMAT_VERSION,
            "generator": self.name,
            "perfscale_version": __version__,
            "seed": self.seed,
            "hyperparameters": self.hyperparameters,
            "training_rows": self.training_rows,
            "table": spec.to_json(),
            "model": self._model_state(),
        }
        atomic_write_text(json.dumps(manifest, indent=2) + "\n", folder / GENERATOR_JSON)

    @classmethod
    def load(cls: type[G], folder: str | os.PathLike[str], trust: bool = False) -> G:
        """Read a generator written by `save`. Pickled model files are read only with `trust=True`."""
        from perfscale.generators._tables import TableSpec

        folder = Path(folder)
        path = folder / GENERATOR_JSON
        manifest = read_manifest(folder)
        if manifest["generator"] != cls.name:
            raise BadInput(
                f"{path} holds a {manifest['generator']!r} generator, not {cls.name!r}; "
                "use perfscale.generators.load_generator() to load any generator"
            )
        try:
            spec = TableSpec.from_json(manifest["table"])
        except (KeyError, TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            raise BadInput(f"{path} is corrupted: its 'table' entry is invalid ({exc})") from exc
        generator = cls(**manifest["hyperparameters"])
        if spec.model_columns:
            _check_trust(cls, folder, trust)
            generator._load_model(folder)
        generator._restore_model_state(manifest.get("model") or {})
        generator._spec, generator.seed = spec, manifest["seed"]
        generator.training_rows = manifest["training_rows"]
        return generator

    # ---- hooks for subclasses ---------------------------------------------------------------------------

    @abstractmethod
    def _fit(self, table: pd.DataFrame, meta: TableMeta, seed: int) -> pd.DataFrame | None:
        """Fit the model; return telemetry rows (epoch, step, loss, value) or None when there is no loss.

        `table` has only the non-constant columns, a RangeIndex and no pandas categoricals.
        """

    @abstractmethod
    def _sample(self, n: int, seed: int) -> pd.DataFrame:
        """Exactly `n` raw rows with the columns `_fit` saw; post-processing is done by the caller."""

    @abstractmethod
    def _save_model(self, folder: Path) -> None:
        """Write the model files into `folder` (generator.json is written by `save`)."""

    @abstractmethod
    def _load_model(self, folder: Path) -> None:
        """Read the model files written by `_save_model`; use `model_file` to name missing files."""

    def _sample_conditioned(self, n: int, seed: int, conditions: Conditions) -> pd.DataFrame | None:
        """Native conditional sampling: about `n` raw rows drawn under `conditions`, or None.

        None (the default) means the generator has no native way for these conditions and `sample` uses
        rejection sampling. Returned rows need not all satisfy the conditions: `sample` post-processes them,
        keeps those that do and tops up (natively again, then by rejection) within its draw budget.
        """
        return None

    def _impute(self, known: pd.DataFrame, seed: int) -> pd.DataFrame | None:
        """Native imputation: fill the NaN cells of `known` conditioned on its set cells, or None.

        `known` has the model columns (constants removed) in training order, NaN/None where a value is to be
        generated. Return a frame of the same shape and index (set cells may be returned unchanged: the
        caller restores them), or None (the default) to use the generic method of `impute`. Cells left
        missing (e.g. rows an LLM could not complete within its budget) are filled by the generic method.
        """
        return None

    def _model_state(self) -> dict[str, Any]:
        """Small JSON facts about the fitted model stored under generator.json's "model" key."""
        return {}

    def _restore_model_state(self, state: dict[str, Any]) -> None:
        """Take back what `_model_state` returned, after `_load_model`."""
        return None

    # ---- helpers ----------------------------------------------------------------------------------------

    def _require_fitted(self, action: str) -> TableSpec:
        if self._spec is None:
            raise BadInput(
                f"cannot {action}: generator {self.name!r} is not fitted; call fit(table, meta, seed) "
                "or load a saved generator first"
            )
        return self._spec


def model_file(folder: Path, name: str) -> Path:
    """`folder / name`, or BadInput naming the file when it is missing."""
    path = folder / name
    if not path.is_file():
        raise BadInput(f"{path} is missing: the generator folder is incomplete; save the generator again")
    return path


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed `generator.json` of a saved generator folder; BadInput naming the file when unusable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"generator folder {folder} does not exist (or is not a folder)")
    path = folder / GENERATOR_JSON
    if not path.is_file():
        raise BadInput(f"{path} is missing: {folder} does not hold a saved generator")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{path} is corrupted: it is not readable JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise BadInput(f"{path} is corrupted: it holds a {type(manifest).__name__}, not a JSON object")
    for key, kind in _MANIFEST_KEYS.items():
        if not isinstance(manifest.get(key), kind):
            raise BadInput(f"{path} is corrupted: {key!r} is missing or not a {kind.__name__}")
    if manifest["format"] > FORMAT_VERSION:
        raise BadInput(f"{path} has format {manifest['format']}, newer than this perfscale reads; upgrade")
    return manifest


def max_rss_bytes() -> int:
    """The process's peak resident set size so far, in bytes (0 where getrusage is unavailable)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB, macOS bytes


def _check_trust(cls: type[Generator], folder: Path, trust: bool) -> None:
    if cls.pickled_files and not trust:
        files = ", ".join(str(folder / f) for f in cls.pickled_files)
        raise BadInput(
            f"{files} is a Python pickle ({cls.name} models are saved with pickle), and loading a pickle can "
            "run arbitrary code; load it only if you wrote it or trust its source, by passing trust=True "
            "(load_generator(folder, trust=True))"
        )


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise BadInput(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    return int(seed)


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
        raise BadInput(f"the number of rows to sample must be a positive integer, got {n!r}")
    return int(n)


def _check_json(what: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"{what} must be plain JSON values (numbers, strings, lists, dicts): {exc}") from exc
