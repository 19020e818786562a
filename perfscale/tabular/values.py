"""Single-value tests shared by generators, conditions and the LLM serializer."""

from __future__ import annotations

from typing import Any


def is_missing(value: Any) -> bool:
    """True for None, NaN, NaT and pd.NA; False for strings (even "nan") and for array-likes."""
    import pandas as pd  # here, not at the top: generator modules that import this must stay light to import

    if value is None or isinstance(value, str):
        return value is None
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # array-likes are not missing scalars
        return False
