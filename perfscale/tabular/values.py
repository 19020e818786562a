"""Single values: the missing-value test and the JSON stand-in of a cell, shared by generators, conditions
and the LLM serializer."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def is_missing(value: Any) -> bool:
    """True for None, NaN, NaT and pd.NA; False for strings (even "nan") and for array-likes."""
    import pandas as pd  # here, not at the top: generator modules that import this must stay light to import

    if value is None or isinstance(value, str):
        return value is None
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # array-likes are not missing scalars
        return False


def json_value(value: Any) -> Any:
    """A JSON-native stand-in for one cell value (numpy scalars unwrapped, timestamps as ISO strings)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    import pandas as pd  # only for values that are none of the above (see is_missing)

    if isinstance(value, (pd.Timestamp, pd.Timedelta)):
        return value.isoformat()
    return str(value)
