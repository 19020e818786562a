"""Typed option sets: a generator's hyperparameters, a metric's options.

Each set is a pydantic model (`OptionsModel`: unknown names are errors, values are strict and finite). Its
problems are reported one per field, an unknown name with the names it could have been, the same way
wherever they are found: by the planner at `perfscale plan` (each at its line in the study file) and by
the Python API (`BadInput`, one line). Standard library and pydantic only: the planner imports it.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from perfscale.errors import BadInput

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


class OptionsModel(BaseModel):
    """Base of hyperparameter models: unknown names are errors, numbers are finite, values keep their JSON
    type (no "5" for 5, no 1 for true, no 2.0 for an integer), and a validated set is immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class Problem(NamedTuple):
    """One problem of an option set: where (inside the set), what is wrong, and the value (None: unquoted)."""

    loc: Loc
    message: str
    value: Any = None


def option_problems(model: type[BaseModel], values: Any, kind: str, owner: str) -> list[Problem]:
    """Every problem of `values` as options of `model`; `kind` ("hyperparameter") and `owner` ("tvae")
    name them in messages. Values are read as JSON reads them back (tuples are lists), as in a study."""
    return _validate(model, values, kind, owner)[1]


def validated_options(model: type[M], values: Any, kind: str, owner: str) -> M:
    """`values` validated by `model`; BadInput naming every problem on one line otherwise."""
    found, problems = _validate(model, values, kind, owner)
    if found is None:
        raise BadInput(f"{owner} {kind}s: " + "; ".join(describe(p) for p in problems))
    return found


def describe(problem: Problem) -> str:
    """`'a.b': message (got value)`, the field named as in the option set."""
    where = f"{'.'.join(map(str, problem.loc))!r}: " if problem.loc else ""
    got = "" if problem.value is None else f" (got {problem.value!r})"
    return f"{where}{problem.message}{got}"


def field_names(model: type[BaseModel]) -> list[str]:
    return sorted(model.model_fields)


def _validate(model: type[M], values: Any, kind: str, owner: str) -> tuple[M | None, list[Problem]]:
    if not isinstance(values, dict):
        what = type(values).__name__
        return None, [Problem((), f"must be a mapping of {kind} names to values, not {what}")]
    plain = {name: _plain(value) for name, value in values.items()}
    try:
        return model.model_validate(plain), []
    except ValidationError as exc:
        return None, _merged([_problem(error, plain, model, kind, owner) for error in exc.errors()])


def _plain(value: Any) -> Any:
    """`value` as JSON reads it back (tuples become lists), or unchanged where JSON cannot hold it (a table
    passed by code, NaN: the model's types decide)."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return value


def _problem(error: Any, values: dict[str, Any], model: type[BaseModel], kind: str, owner: str) -> Problem:
    loc = _in_values(tuple(error["loc"]), values)
    if error["type"] == "extra_forbidden" and len(loc) == 1:
        if not model.model_fields:
            return Problem(loc, f"unknown {kind}: {owner} takes no {kind}s; remove it")
        return Problem(loc, f"unknown {kind} for {owner}; choose one of {', '.join(field_names(model))}")
    message = str(error["msg"]).removeprefix("Value error, ")
    return Problem(loc, message, error.get("input") if error["type"] != "missing" else None)


def _in_values(loc: Loc, values: Any) -> Loc:
    """`loc` without the parts pydantic adds for union members (`str`, `list[str]`...): only keys and
    indexes that exist in `values`, and the last part (a missing or unknown field)."""
    kept: Loc = ()
    for i, part in enumerate(loc):
        inside = (isinstance(values, dict) and part in values) or (
            isinstance(values, list) and isinstance(part, int) and 0 <= part < len(values)
        )
        if inside:
            kept, values = (*kept, part), values[part]  # type: ignore[index]
        elif i == len(loc) - 1 and isinstance(values, dict):  # a missing (required) field
            kept = (*kept, part)
    return kept


def _merged(problems: list[Problem]) -> list[Problem]:
    """One problem per place: a value every member of a union rejects is one problem naming them all
    ("Input should be a valid string or a valid list")."""
    by_loc: dict[Loc, list[Problem]] = {}
    for problem in problems:
        by_loc.setdefault(problem.loc, []).append(problem)
    out = []
    for loc, found in by_loc.items():
        messages = list(dict.fromkeys(p.message for p in found))
        prefix = "Input should be "
        if len(messages) > 1 and all(m.startswith(prefix) for m in messages):
            messages = [prefix + " or ".join(m.removeprefix(prefix) for m in messages)]
        out.append(Problem(loc, "; ".join(messages), found[0].value))
    return out
