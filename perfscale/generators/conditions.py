"""Conditions on synthetic rows (PERFGEN's central API): equality, numeric ranges and allowed sets.

A `Conditions` is a conjunction of `Condition`s, each on one column. It is written in one of three ways:

* text, clauses joined by ``and``::

      threads in [4, 8, 16, 32, 64] and 5 <= runtime_s <= 10 and kernel == "triad"

  operators ``==`` (or ``=``), ``<``, ``<=``, ``>``, ``>=``, ``in [...]`` and chains ``lo <= col <= hi``
  (``between``); values are numbers, quoted strings or bare words; a column name with spaces or operators is
  written in backquotes (```wall time` < 3``);
* a mapping, the natural spelling in a study file::

      {threads: [4, 8], runtime_s: {between: [5, 10]}, kernel: triad, size: {gt: 100, le: 4000}}

  a list means ``in``, a scalar means ``==``, a mapping holds operators (eq, lt, le, gt, ge, between, in);
* a list of `Condition` objects.

`Conditions.check(spec)` validates them against a fitted generator's table: unknown columns, categories the
generator never saw, ranges on categorical columns, and conditions no allowed value or no value inside the
training range [min, max] can meet are `BadInput` errors that say so (never a sampler that spins forever).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from perfscale.errors import BadInput

if TYPE_CHECKING:
    from perfscale.generators._tables import TableSpec

OPS = ("eq", "lt", "le", "gt", "ge", "between", "in")
_SYMBOLS = {"==": "eq", "=": "eq", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}
_FLIPPED = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "eq": "eq"}
_TEXT = {"eq": "==", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<bq>`(?:[^`]|``)*`)
      | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<op><=|>=|==|=|<|>)
      | (?P<punct>[\[\](),])
      | (?P<word>[^\s\[\](),<>=`"']+)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Condition:
    """One requirement on one column. `value`: a scalar; (lo, hi) for between; a tuple for in."""

    column: str
    op: str
    value: Any

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise BadInput(f"condition on {self.column!r}: unknown operator {self.op!r}; use one of {OPS}")
        if self.op == "between":
            if not (isinstance(self.value, (list, tuple)) and len(self.value) == 2):
                raise BadInput(f"condition on {self.column!r}: between needs [low, high], got {self.value!r}")
            object.__setattr__(self, "value", tuple(self.value))
        elif self.op == "in":
            if isinstance(self.value, (str, bytes)) or not isinstance(self.value, Iterable):
                raise BadInput(f"condition on {self.column!r}: in needs a list of values, got {self.value!r}")
            values = tuple(self.value)
            if not values:
                raise BadInput(f"condition on {self.column!r}: the allowed set is empty")
            object.__setattr__(self, "value", values)

    def __str__(self) -> str:
        name = self.column if re.fullmatch(r"[A-Za-z_][\w.]*", self.column) else f"`{self.column}`"
        if self.op == "between":
            return f"{self.value[0]!r} <= {name} <= {self.value[1]!r}"
        if self.op == "in":
            return f"{name} in [{', '.join(repr(v) for v in self.value)}]"
        return f"{name} {_TEXT[self.op]} {self.value!r}"

    @property
    def is_range(self) -> bool:
        return self.op in ("lt", "le", "gt", "ge", "between")

    def mask(self, series: pd.Series) -> np.ndarray:
        """Which values of `series` meet the condition (missing values never do)."""
        if self.op in ("eq", "in"):
            values = self.value if self.op == "in" else (self.value,)
            wanted = {_key(v) for v in values}
            numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
            if numeric and all(k[0] == "num" for k in wanted):  # vectorised: rejection sampling's hot path
                return np.isin(series.to_numpy(dtype=float, na_value=np.nan), [k[1] for k in wanted])
            return np.fromiter((_key(v) in wanted for v in series.to_numpy(object)), bool, len(series))
        x = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            if self.op == "between":
                lo, hi = self.value
                return (x >= lo) & (x <= hi)
            return {"lt": x < self.value, "le": x <= self.value, "gt": x > self.value, "ge": x >= self.value}[
                self.op
            ]

    def admits(self, value: float) -> bool:
        return bool(self.mask(pd.Series([value]))[0])


@dataclass(frozen=True)
class Conditions:
    """A conjunction of conditions; build with `Conditions.parse`."""

    items: tuple[Condition, ...] = ()

    def __str__(self) -> str:
        return " and ".join(str(c) for c in self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    @classmethod
    def parse(cls, spec: Any) -> Conditions:
        """Conditions from text, a mapping, a list of `Condition`s, another `Conditions` or None."""
        if spec is None:
            return cls()
        if isinstance(spec, Conditions):
            return spec
        if isinstance(spec, str):
            return cls(tuple(_parse_text(spec)))
        if isinstance(spec, Mapping):
            return cls(tuple(_parse_mapping(spec)))
        if isinstance(spec, (list, tuple)) and all(isinstance(c, Condition) for c in spec):
            return cls(tuple(spec))
        raise BadInput(
            f"conditions must be text ('threads in [4, 8] and runtime_s < 10'), a mapping or a list of "
            f"Condition, not {type(spec).__name__}"
        )

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(c.column for c in self.items))

    def on(self, column: str) -> list[Condition]:
        return [c for c in self.items if c.column == column]

    def equalities(self) -> dict[str, Any]:
        """Columns pinned to a single value (`==`, or `in` with one value): what native samplers can fix."""
        out: dict[str, Any] = {}
        for c in self.items:
            if c.op == "eq" or (c.op == "in" and len(c.value) == 1):
                out[c.column] = c.value if c.op == "eq" else c.value[0]
        return out

    def mask(self, table: pd.DataFrame) -> np.ndarray:
        """Rows of `table` that meet every condition."""
        keep = np.ones(len(table), dtype=bool)
        for c in self.items:
            keep &= c.mask(table[c.column])
        return keep

    def check(self, spec: TableSpec) -> Conditions:
        """These conditions with values cast to their columns' types; BadInput for any that cannot be met."""
        unknown = [c for c in self.columns if c not in spec.meta.columns]
        if unknown:
            raise BadInput(
                f"conditions name unknown column(s) {unknown}; the generator's columns are {spec.columns}"
            )
        checked: list[Condition] = []
        for name in self.columns:
            conds = self.on(name)
            col = spec.meta.columns[name]
            if col.type in ("categorical", "boolean"):
                checked += [_check_categorical(c, spec) for c in conds]
            elif col.type in ("numerical", "integer"):
                conds = [_check_numeric(c) for c in conds]
                _check_feasible(name, conds, spec)
                checked += conds
            else:
                raise BadInput(f"condition on {name!r}: {col.type} columns cannot be conditioned on")
        return Conditions(tuple(checked))


def _key(value: Any) -> Any:
    """A comparison key under which 8, 8.0 and "8" differ but numpy/python scalars of one value agree."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("num", float(value)) if not (isinstance(value, float) and math.isnan(value)) else ("nan",)
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ("nan",)
    return ("str", str(value))


def _check_categorical(cond: Condition, spec: TableSpec) -> Condition:
    name = cond.column
    if cond.is_range:
        raise BadInput(
            f"condition {cond}: {name!r} is categorical; use == or in [...] with its values, not a range"
        )
    seen = {str(v): v for v, _ in spec.category_values.get(name, [])}
    if name in spec.constants:
        seen = {str(spec.constants[name]): spec.constants[name]}
    values = cond.value if cond.op == "in" else (cond.value,)
    unseen = [v for v in values if str(v) not in seen]
    if unseen:
        raise BadInput(
            f"condition {cond}: {unseen} never occur in column {name!r} of the training table, so the "
            f"generator cannot produce them; seen values: {sorted(seen)[:20]}"
        )
    cast = tuple(seen[str(v)] for v in values)
    return Condition(name, cond.op, cast if cond.op == "in" else cast[0])


def _number(cond: Condition, value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
        raise BadInput(f"condition {cond}: {cond.column!r} is numeric, so {value!r} must be a finite number")
    return int(value) if isinstance(value, (int, np.integer)) else float(value)


def _check_numeric(cond: Condition) -> Condition:
    if cond.op in ("between", "in"):
        values = tuple(_number(cond, v) for v in cond.value)
        if cond.op == "between" and values[0] > values[1]:
            raise BadInput(f"condition {cond}: the low end {values[0]} is above the high end {values[1]}")
        return Condition(cond.column, cond.op, values)
    return Condition(cond.column, cond.op, _number(cond, cond.value))


def _check_feasible(name: str, conds: list[Condition], spec: TableSpec) -> None:
    """BadInput when no value the generator can produce for `name` meets all of `conds`."""
    col = spec.meta.columns[name]
    text = " and ".join(str(c) for c in conds)
    if name in spec.constants:
        candidates = np.asarray([float(spec.constants[name])])
        where = f"is constant ({spec.constants[name]!r}) in the training table"
    elif col.allowed:
        candidates = np.asarray(sorted(float(v) for v in col.allowed))
        where = f"only takes the values {[_plain(v) for v in candidates]}"
    else:
        lo = -math.inf if col.min is None else col.min
        hi = math.inf if col.max is None else col.max
        if not _interval_meets(conds, lo, hi):
            raise BadInput(
                f"condition {text}: no value in {name!r}'s training range [{_plain(lo)}, {_plain(hi)}] meets "
                "it, and generated values are kept inside that range; widen the condition"
            )
        return
    ok = np.ones(len(candidates), dtype=bool)
    for c in conds:
        ok &= c.mask(pd.Series(candidates))
    if not ok.any():
        raise BadInput(f"condition {text}: no value meets it, since {name!r} {where}")


def _interval_meets(conds: list[Condition], lo: float, hi: float) -> bool:
    """Whether some x in [lo, hi] meets every condition (conditions on one continuous column)."""
    points = [c.value[0] if c.op == "between" else c.value for c in conds if c.op != "in"]
    points += [v for c in conds if c.op in ("in", "between") for v in c.value]
    candidates = {lo, hi, *(p for p in points if lo <= p <= hi)}
    cuts = sorted(candidates)
    candidates |= {(a + b) / 2 for a, b in itertools.pairwise(cuts) if math.isfinite(a + b)}
    return any(all(c.admits(x) for c in conds) for x in candidates if math.isfinite(x))


def _plain(x: float) -> Any:
    return int(x) if math.isfinite(x) and float(x).is_integer() else x


# ---- parsing --------------------------------------------------------------------------------------------


def _parse_mapping(spec: Mapping[Any, Any]) -> list[Condition]:
    out = []
    for column, value in spec.items():
        if not isinstance(column, str):
            raise BadInput(f"conditions: column names must be strings, got {column!r}")
        if isinstance(value, Mapping):
            if not value:
                raise BadInput(f"conditions: {column!r} has an empty operator mapping; use e.g. {{lt: 10}}")
            for op, operand in value.items():
                if op not in OPS:
                    raise BadInput(f"conditions: {column!r} uses unknown operator {op!r}; use one of {OPS}")
                out.append(Condition(column, op, operand))
        elif isinstance(value, (list, tuple)):
            out.append(Condition(column, "in", value))
        else:
            out.append(Condition(column, "eq", value))
    return out


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise BadInput(f"conditions {text!r}: cannot read from {text[pos:]!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return tokens


def _value(kind: str, token: str) -> Any:
    if kind == "str":
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    if kind != "word":
        raise BadInput(f"expected a value, found {token!r}")
    low = token.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        number = float(token)
    except ValueError:
        return token
    return int(number) if re.fullmatch(r"[+-]?\d+", token) else number


def _name(kind: str, token: str) -> str:
    if kind == "bq":
        return token[1:-1].replace("``", "`")
    if kind == "word":
        return token
    raise BadInput(f"expected a column name, found {token!r}")


def _parse_text(text: str) -> list[Condition]:
    tokens = _tokens(text)
    clauses: list[list[tuple[str, str]]] = [[]]
    depth = 0
    for kind, token in tokens:
        depth += token in "[(" if kind == "punct" else 0
        depth -= token in "])" if kind == "punct" else 0
        if kind == "word" and token.lower() == "and" and depth == 0:
            clauses.append([])
        else:
            clauses[-1].append((kind, token))
    if any(not c for c in clauses):
        raise BadInput(f"conditions {text!r}: an 'and' has nothing on one side")
    out = []
    for clause in clauses:
        try:
            out += _parse_clause(clause)
        except BadInput as exc:
            shown = " ".join(t for _, t in clause)
            raise BadInput(f"conditions {text!r}: cannot read {shown!r}: {exc}") from None
    return out


def _parse_clause(clause: list[tuple[str, str]]) -> list[Condition]:
    kinds = [k for k, _ in clause]
    if len(clause) >= 3 and clause[1] == ("word", "in"):
        return [Condition(_name(*clause[0]), "in", _parse_list(clause[2:]))]
    if len(clause) == 5 and kinds[1] == kinds[3] == "op":
        lo, (_, op1), name, (_, op2), hi = clause
        if op1 not in ("<", "<=") or op2 not in ("<", "<="):
            raise BadInput("a chained comparison must read low <= column <= high (or with <)")
        column = _name(*name)
        if op1 == op2 == "<=":
            return [Condition(column, "between", (_value(*lo), _value(*hi)))]
        low = Condition(column, _FLIPPED[_SYMBOLS[op1]], _value(*lo))
        return [low, Condition(column, _SYMBOLS[op2], _value(*hi))]
    if len(clause) == 3 and kinds[1] == "op":
        left, (_, op), right = clause
        if left[0] in ("word", "bq") and not _looks_numeric(left):
            return [Condition(_name(*left), _SYMBOLS[op], _value(*right))]
        return [Condition(_name(*right), _FLIPPED[_SYMBOLS[op]], _value(*left))]
    raise BadInput("expected 'column OP value', 'column in [values]' or 'low <= column <= high'")


def _looks_numeric(token: tuple[str, str]) -> bool:
    return token[0] == "word" and isinstance(_value(*token), (int, float))


def _parse_list(tokens: list[tuple[str, str]]) -> tuple[Any, ...]:
    if len(tokens) < 2 or tokens[0][1] not in "[(" or tokens[-1][1] not in "])":
        raise BadInput("'in' needs a bracketed list, e.g. threads in [4, 8, 16]")
    inner = tokens[1:-1]
    values = [_value(*t) for i, t in enumerate(inner) if i % 2 == 0]
    commas = [t for i, t in enumerate(inner) if i % 2 == 1]
    if any(t != ("punct", ",") for t in commas) or (inner and len(inner) % 2 == 0):
        raise BadInput("list values must be separated by commas")
    return tuple(values)
