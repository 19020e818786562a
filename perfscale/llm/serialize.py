"""Table rows <-> text for LLM generators, in GReaT's form: ``name is value, name is value, ...``.

Each row becomes one line of "fields" (``name is value``) joined by ", ", in a column order drawn at random
per row (GReaT's feature-order permutation: the model learns every column conditioned on any subset of the
others, which is what makes prompt-prefix conditioning work).

Escaping scheme (names and values may hold anything; parsing is exact, never a guess):

* a backslash starts an escape: ``\\\\`` backslash, ``\\,`` comma, ``\\n`` newline, ``\\r`` carriage return,
  ``\\t`` tab, ``\\ `` (backslash space) a space at the start or end of a name or value (the parser strips
  unescaped spaces around fields, so separators may be spaced loosely), ``\\i`` a literal ``i``;
* the whole value ``\\N`` is a missing value (NaN/None/NaT), the whole value or name ``\\E`` the empty string;
* fields are split at unescaped commas; a field splits into name and value at its first unescaped " is ",
  so values may contain " is " freely, while in names every word "is" that follows a space is written
  ``\\is`` (column ``this is it`` -> ``this \\is it is 3``);
* any other backslash sequence makes the row invalid. Unicode, quotes and numbers-as-text pass unchanged;
  categorical values are matched by their exact text, so ``007`` stays distinct from ``7``.

Values: integers as ``str(int)``, floats as Python's shortest round-trip repr (``0.1``, ``1e-05``, ``inf``)
or, with `float_digits`, with that many significant digits (shorter rows, fewer tokens), booleans as
``True``/``False``, datetimes in ISO 8601, categories as their text.

Parsing a generated row (`RowCodec.parse`) checks it against the training table: every column exactly once,
no unknown column, numbers that parse, categories seen in training, missing values only in columns that had
them. Failures raise `RowError`, whose `reason` is one of `REASONS` (counted by the sampler).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from perfscale.tabular.meta import TableMeta
from perfscale.tabular.values import is_missing, json_value

MISSING = "\\N"
EMPTY = "\\E"
IS = " is "
SEPARATOR = ", "
REASONS = (
    "unparseable",
    "unknown column",
    "duplicate column",
    "missing column",
    "bad number",
    "unknown category",
    "unexpected missing value",
    "truncated",
)
_ESCAPES = {"\\": "\\\\", ",": "\\,", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNESCAPES = {"\\": "\\", ",": ",", "n": "\n", "r": "\r", "t": "\t", " ": " ", "i": "i"}
_MARKERS = {"N": MISSING, "E": EMPTY}
_IS_WORD = re.compile(r"(?<= )is(?= |$)")
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf)")
_MISSING_VALUE = object()  # what `_field_value` returns for the missing-value marker

Unit = tuple[str, bool]  # one character after unescaping, and whether it was escaped


class RowError(ValueError):
    """A generated text that is not a valid row; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def escape(text: str, name: bool = False) -> str:
    """`text` escaped for use as a value (or, with `name`, a column name) in a row (see module doc)."""
    if text == "":
        return EMPTY
    out = "".join(_ESCAPES.get(c, c) for c in text)
    if name:
        out = _IS_WORD.sub(r"\\is", out)
    core = out.strip(" ")
    if not core:
        return "\\ " * len(out)
    lead = len(out) - len(out.lstrip(" "))
    trail = len(out) - len(out.rstrip(" "))
    return "\\ " * lead + core + "\\ " * trail


def _units(text: str) -> list[Unit]:
    units: list[Unit] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\":
            units.append((char, False))
            i += 1
            continue
        code = text[i + 1 : i + 2]
        if code in _MARKERS:
            units.append((_MARKERS[code], True))
        elif code in _UNESCAPES:
            units.append((_UNESCAPES[code], True))
        else:
            raise RowError("unparseable", f"unknown escape {text[i : i + 2]!r}")
        i += 2
    return units


def _strip(units: list[Unit]) -> list[Unit]:
    start, end = 0, len(units)
    while start < end and units[start] == (" ", False):
        start += 1
    while end > start and units[end - 1] == (" ", False):
        end -= 1
    return units[start:end]


def _text(units: list[Unit], what: str) -> str | object:
    """The text of a name or value; `_MISSING_VALUE` for the missing marker."""
    if len(units) == 1 and units[0][1] and units[0][0] in (MISSING, EMPTY):
        return _MISSING_VALUE if units[0][0] == MISSING else ""
    if any(esc and char in (MISSING, EMPTY) for char, esc in units):
        raise RowError("unparseable", f"a {what} mixes {MISSING} or {EMPTY} with other text")
    return "".join(char for char, _ in units)


def split_fields(text: str) -> list[tuple[str, str | None]]:
    """The (name, value) pairs of a row's text, unescaped; value None for a missing value.

    RowError("unparseable") for a field without " is ", a bad escape or an empty field.
    """
    fields: list[list[Unit]] = [[]]
    for unit in _units(text):
        if unit == (",", False):
            fields.append([])
        else:
            fields[-1].append(unit)
    out: list[tuple[str, str | None]] = []
    for units in map(_strip, fields):
        at = next((i for i in range(len(units) - 3) if _is_separator(units, i)), None)
        if at is None:
            shown = "".join(c for c, _ in units)[:40]
            raise RowError("unparseable", f"field {shown!r} has no {IS.strip()!r}")
        name = _text(_strip(units[:at]), "name")
        value = _text(_strip(units[at + len(IS) :]), "value")
        if name is _MISSING_VALUE:
            raise RowError("unparseable", f"{MISSING} used as a column name")
        out.append((str(name), None if value is _MISSING_VALUE else str(value)))
    return out


def _is_separator(units: list[Unit], i: int) -> bool:
    return all(units[i + k] == (char, False) for k, char in enumerate(IS))


@dataclass
class ColumnCodec:
    """How one column is written and read back."""

    name: str
    type: str  # a perfscale.tabular.meta.ColumnType
    nullable: bool = False
    categories: list[Any] | None = None  # categorical/boolean: training values (JSON-native)
    _lookup: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._lookup = {self._category_text(v): v for v in self.categories or []}

    @staticmethod
    def _category_text(value: Any) -> str:
        return str(bool(value)) if isinstance(value, (bool, np.bool_)) else str(value)

    def format(self, value: Any, float_digits: int | None) -> str:
        """The escaped text of one cell."""
        if is_missing(value):
            return MISSING
        if self.type == "numerical" or (self.type == "integer" and not float(value).is_integer()):
            if float_digits:
                return f"{float(value):.{float_digits}g}"
            # numpy's str is the shortest text for the value's own precision (float32 5.1 -> "5.1")
            return str(value) if isinstance(value, np.floating) else repr(float(value))
        if self.type == "integer":
            return str(int(value))
        if self.type == "datetime":
            return escape(pd.Timestamp(value).isoformat())
        return escape(self._category_text(json_value(value)))

    def parse(self, text: str | None) -> Any:
        """The typed value of unescaped `text` (None = missing); RowError when it is not a valid cell."""
        if text is None:
            if not self.nullable:
                raise RowError("unexpected missing value", f"column {self.name!r} had no missing values")
            return None
        if self.type in ("numerical", "integer"):
            if self.type == "integer" and _INT.fullmatch(text):
                return int(text)
            if not _FLOAT.fullmatch(text):
                raise RowError("bad number", f"column {self.name!r}: {text[:40]!r} is not a number")
            return float(text)
        if self.type == "datetime":
            try:
                return pd.Timestamp(text)
            except (ValueError, TypeError) as exc:
                raise RowError("bad number", f"column {self.name!r}: {text[:40]!r} is not a date") from exc
        if text not in self._lookup:
            raise RowError("unknown category", f"column {self.name!r} never had {text[:40]!r}")
        return self._lookup[text]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "nullable": self.nullable,
            "categories": self.categories,
        }


@dataclass
class RowCodec:
    """Rows of one table <-> GReaT text, with the columns in training order."""

    columns: list[ColumnCodec]
    float_digits: int | None = None

    @classmethod
    def from_table(cls, table: pd.DataFrame, meta: TableMeta, float_digits: int | None = None) -> RowCodec:
        columns = []
        for name in table.columns:
            ctype, series = meta.columns[name].type, table[name]
            categories = None
            if ctype in ("categorical", "boolean"):
                categories = [json_value(v) for v in pd.unique(series.dropna())]
            columns.append(ColumnCodec(str(name), ctype, bool(series.isna().any()), categories))
        return cls(columns, float_digits)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnCodec:
        return self.columns[self.names.index(name)]

    def fields(self, table: pd.DataFrame) -> list[list[str]]:
        """Per row, the text of each field (``name is value``) in column order."""
        per_column = []
        for col in self.columns:
            prefix = escape(col.name, name=True) + IS
            values = table[col.name].to_numpy()  # numpy scalars keep their precision (float32 stays short)
            per_column.append([prefix + col.format(v, self.float_digits) for v in values])
        return [list(row) for row in zip(*per_column, strict=True)]

    def texts(self, table: pd.DataFrame, permutations: int, rng: np.random.Generator) -> list[str]:
        """Each row `permutations` times, each time in a fresh random column order (row-major)."""
        out = []
        for row in self.fields(table):
            for _ in range(permutations):
                out.append(SEPARATOR.join(row[i] for i in rng.permutation(len(row))))
        return out

    def prefix(self, values: dict[str, Any]) -> str:
        """The prompt that fixes `values` (column -> value): ``a is 1, b is x,`` (empty for no values).

        It ends with the comma, not the space after it: BPE tokenizers glue the space to the next word, so a
        prompt ending in a space would ask the model for a token split it never saw in training.
        """
        parts = [
            escape(name, name=True) + IS + self.column(name).format(value, self.float_digits)
            for name, value in values.items()
        ]
        return SEPARATOR.join(parts) + "," if parts else ""

    def parse(self, text: str) -> dict[str, Any]:
        """A complete row (every column once) from its text; RowError saying why when it is not one."""
        row: dict[str, Any] = {}
        known = {c.name: c for c in self.columns}
        for name, value in split_fields(text):
            if name not in known:
                raise RowError("unknown column", f"{name[:40]!r} is not a column")
            if name in row:
                raise RowError("duplicate column", f"{name[:40]!r} appears twice")
            row[name] = known[name].parse(value)
        missing = [n for n in known if n not in row]
        if missing:
            raise RowError("missing column", f"no value for {missing[:5]}")
        return {name: row[name] for name in known}

    def to_json(self) -> dict[str, Any]:
        return {"float_digits": self.float_digits, "columns": [c.to_json() for c in self.columns]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RowCodec:
        columns = [
            ColumnCodec(str(c["name"]), str(c["type"]), bool(c["nullable"]), c.get("categories"))
            for c in data["columns"]
        ]
        digits = data.get("float_digits")
        return cls(columns, None if digits is None else int(digits))


def describe_counts(counts: dict[str, int]) -> str:
    """Invalid-row counts as text: "3 unparseable, 1 unknown category"."""
    return ", ".join(f"{v} {k}" for k, v in counts.items()) or "none"
