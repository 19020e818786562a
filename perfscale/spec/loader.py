"""Safe YAML loading into pydantic models, with errors that name the file, the field, the line and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from perfscale.errors import SpecError

M = TypeVar("M", bound=BaseModel)
Loc = tuple[Any, ...]


def _line_map(node: yaml.Node, loc: Loc = (), out: dict[Loc, int] | None = None) -> dict[Loc, int]:
    """Map every key path in a composed YAML document to its 1-based line number."""
    out = {} if out is None else out
    out.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*loc, key)] = key_node.start_mark.line + 1
            _line_map(value_node, (*loc, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, (*loc, i), out)
    return out


def _line_of(lines: dict[Loc, int], loc: Loc) -> int | None:
    for end in range(len(loc), -1, -1):
        # pydantic adds non-field parts to locations (e.g. union tags); skip those that the YAML lacks
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def read_yaml(path: Path) -> tuple[Any, dict[Loc, int]]:
    """Read a YAML file safely; return the data and a key-path -> line map."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read file ({exc.strerror}). Check the path.") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(
            f"{path}{where}: malformed YAML: {problem}. Fix the syntax at that position."
        ) from None
    return data, (_line_map(node) if node is not None else {})


def format_validation_error(
    path: Path | str, exc: ValidationError, lines: dict[Loc, int] | None = None
) -> str:
    """One line per problem: `file:line: field.path: message (got X)`."""
    out = [f"{path}: {exc.error_count()} problem(s):"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        line = _line_of(lines or {}, loc)
        field = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        elif err["type"] == "missing":
            msg = "required field is missing; add it"
        got = "" if err["type"] in ("missing", "extra_forbidden") else f" (got {err.get('input')!r})"
        out.append(f"  {path}{':' + str(line) if line else ''}: {field}: {msg}{got}")
    return "\n".join(out)


def load_model(path: Path | str, model: type[M], context: dict[str, Any] | None = None) -> M:
    """Load `path` into `model`, turning YAML and validation problems into one SpecError."""
    path = Path(path)
    data, lines = read_yaml(path)
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of fields at the top level, got {type(data).__name__}.")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise SpecError(format_validation_error(path, exc, lines)) from None
