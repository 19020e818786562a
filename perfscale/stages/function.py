"""Stage kinds that call Python: `function` (any importable callable over a grid) and `noop`."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from pydantic import ConfigDict, field_validator

from perfscale.errors import BadInput
from perfscale.stages.base import StageContext, StageParams, stage_kind


class FunctionParams(StageParams):
    """`callable` is "package.module:function" or "path/to/file.py:function"; other params are its kwargs."""

    model_config = ConfigDict(extra="allow")
    callable: str

    @field_validator("callable")
    @classmethod
    def _form(cls, v: str) -> str:
        if v.count(":") != 1 or not all(v.split(":")):
            raise ValueError("callable must look like 'package.module:function' or 'file.py:function'")
        return v


def resolve_callable(spec: str, base: Path = Path(".")) -> Callable[..., Any]:
    """Import `spec`; a relative file path is taken relative to `base` (the study's folder)."""
    target, name = spec.split(":")
    try:
        if target.endswith(".py"):
            path = (base / target).resolve()
            mod_name = f"perfscale_user_{abs(hash(str(path)))}"
            if mod_name not in sys.modules:
                loader_spec = importlib.util.spec_from_file_location(mod_name, path)
                if loader_spec is None or loader_spec.loader is None:
                    raise ImportError(f"cannot load {path}")
                module = importlib.util.module_from_spec(loader_spec)
                loader_spec.loader.exec_module(module)
                sys.modules[mod_name] = module
            module = sys.modules[mod_name]
        else:
            module = importlib.import_module(target)
        return getattr(module, name)
    except (ImportError, FileNotFoundError, AttributeError) as exc:
        raise BadInput(f"callable {spec!r} cannot be loaded: {exc}") from None


def as_frame(result: Any) -> pd.DataFrame:
    if isinstance(result, pd.DataFrame):
        return result
    if isinstance(result, dict):
        return pd.DataFrame([result])
    if isinstance(result, list):
        return pd.DataFrame(result)
    if result is None:
        return pd.DataFrame()
    raise BadInput(
        f"a function stage must return a DataFrame, a dict (one row) or a list of dicts, "
        f"got {type(result).__name__}"
    )


@stage_kind("function", FunctionParams)
def function(ctx: StageContext, params: FunctionParams) -> pd.DataFrame:
    """Call a Python function with the task's parameters; its result (rows) becomes the shard."""
    fn = resolve_callable(params.callable, ctx.store.study_dir)
    kwargs = dict(params.model_extra or {})
    accepted = inspect.signature(fn).parameters
    for name, value in (("ctx", ctx), ("seed", ctx.seed), ("rep", ctx.task.rep)):
        if name in accepted:
            kwargs[name] = value
    return as_frame(fn(**kwargs))


class NoopParams(StageParams):
    model_config = ConfigDict(extra="allow")


@stage_kind("noop", NoopParams)
def noop(ctx: StageContext, params: NoopParams) -> pa.Table:
    """Do nothing and write an empty shard: measures the framework's own per-task cost."""
    return pa.table({})
