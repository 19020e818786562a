"""Safe YAML loading into pydantic models, with errors that name the file, the field, the line and the fix.

Hostile files are refused before anything walks them: aliases that expand to more than MAX_ALIAS_EXPANSION
nodes (a "billion laughs" bomb), recursive aliases, and documents nested deeper than the parser can follow.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from perfscale.errors import SpecError

M = TypeVar("M", bound=BaseModel)
Loc = tuple[Any, ...]

#: nodes a document may gain through aliases (each use of `*name` counts its whole subtree again)
MAX_ALIAS_EXPANSION = 100_000


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _expanded_sizes(root: yaml.Node, path: Path) -> dict[int, int]:
    """Node id -> size of its subtree with every alias expanded, computed once per distinct node (so in
    linear time, however far the aliases expand). A recursive alias is refused."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise SpecError(
                f"{path}:{node.start_mark.line + 1}: an alias refers to the node that contains it "
                "(a recursive structure); write the value out instead of aliasing its parent"
            )
        active.add(key)
        sizes[key] = 1 + sum(size(child) for child in _children(node))
        active.discard(key)
        return sizes[key]

    size(root)
    return sizes


def _check_aliases(root: yaml.Node, path: Path) -> None:
    """Refuse a document whose aliases add more than MAX_ALIAS_EXPANSION nodes, naming the biggest field."""
    sizes = _expanded_sizes(root, path)
    expansion = sizes[id(root)] - len(sizes)  # nodes that exist only as copies made by aliases
    if expansion <= MAX_ALIAS_EXPANSION:
        return
    where, field = root.start_mark.line + 1, ""
    if isinstance(root, yaml.MappingNode) and root.value:
        key, _ = max(root.value, key=lambda kv: sizes[id(kv[1])])
        where, field = key.start_mark.line + 1, f" {key.value}:"
    raise SpecError(
        f"{path}:{where}:{field} YAML aliases expand to {expansion:,} nodes, more than the limit of "
        f"{MAX_ALIAS_EXPANSION:,}; write the values out instead of nesting aliases (*name) of anchors (&name)"
    )


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_duplicate_keys(root: yaml.Node, path: Path) -> None:
    """Refuse a mapping that gives a key twice (YAML would keep the last silently), naming both lines."""
    problems: list[tuple[int, str]] = []
    seen: set[int] = set()
    todo: list[tuple[yaml.Node, Loc]] = [(root, ())]
    while todo:
        node, loc = todo.pop()
        if id(node) in seen:  # an aliased node is checked once
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                key = (key_node.tag, key_node.value)
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                    line = key_node.start_mark.line + 1
                    if key in first:
                        field = ".".join(map(str, (*loc, key_node.value)))
                        msg = f"given twice (lines {first[key]} and {line}); keep one"
                        problems.append((line, f"{path}:{line}: {field}: {msg}"))
                    first.setdefault(key, line)
                todo.append((value_node, (*loc, key_node.value)))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend((item, (*loc, i)) for i, item in enumerate(node.value))
    if len(problems) == 1:
        raise SpecError(problems[0][1])
    if problems:
        lines = [f"{path}: {len(problems)} duplicate keys:", *(f"  {msg}" for _, msg in sorted(problems))]
        raise SpecError("\n".join(lines))


def _line_map(node: yaml.Node, loc: Loc = (), out: dict[Loc, int] | None = None) -> dict[Loc, int]:
    """Map every key path in a composed YAML document to its 1-based line number. Aliased nodes are walked
    once per use: call it only on documents that passed _check_aliases."""
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


def line_prefix(path: Path | str, lines: dict[Loc, int], loc: Loc) -> str:
    """`file:line` of the field at `loc` (or of its nearest parent in the file), `file` alone without one."""
    line = _line_of(lines, loc)
    return f"{path}:{line}" if line else str(path)


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read file ({exc.strerror}). Check the path.") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8"
        ) from None


def _compose(text: str, path: Path) -> tuple[Any, dict[Loc, int]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        _check_aliases(node, path)
        _check_duplicate_keys(node, path)
        lines = _line_map(node)  # before construction, which rewrites merge keys (<<) in place
        return loader.construct_document(node), lines
    finally:
        loader.dispose()


def read_yaml(path: Path) -> tuple[Any, dict[Loc, int]]:
    """Read a YAML file safely; return the data and a key-path -> line map."""
    text = _read_text(path)
    try:
        return _compose(text, path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(
            f"{path}{where}: malformed YAML: {problem}. Fix the syntax at that position."
        ) from None
    except RecursionError:
        raise SpecError(
            f"{path}: the YAML is nested too deeply to read; flatten its lists and mappings"
        ) from None


def _field_path(lines: dict[Loc, int], loc: Loc) -> Loc:
    """`loc` without the parts pydantic adds for union members (`dict`, `list`, `float`, `literal['auto']`)
    where the YAML has no such key."""
    kept: Loc = ()
    for i, part in enumerate(loc):
        tag = isinstance(part, str) and (part in _UNION_TAGS or "[" in part)
        if tag and (*kept, part) not in lines and i + 1 < len(loc):
            continue
        kept = (*kept, part)
    if kept and isinstance(kept[-1], str) and kept[-1] in _UNION_TAGS and kept not in lines:
        kept = kept[:-1]
    return kept


_UNION_TAGS = frozenset({"dict", "list", "str", "int", "float", "bool", "none"})


def format_validation_error(
    path: Path | str,
    exc: ValidationError,
    lines: dict[Loc, int] | None = None,
    locate: Callable[[Loc], Loc] | None = None,
    what: str = "",
) -> str:
    """One line per problem: `file:line: field.path: message (got X)`. `locate` maps an error's location
    to where the field is in the file (for a model validated from part of it); `what` follows the file
    name in the heading."""
    out = [f"{path}{what}: {exc.error_count()} problem(s):"]
    for err in exc.errors():
        own = tuple(err["loc"])
        loc = _field_path(lines or {}, locate(own) if locate else own)
        field = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"].removeprefix(".".join(map(str, own)) + ": ")  # messages that name their field
        if err["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        elif err["type"] == "missing":
            msg = "required field is missing; add it"
        elif err["type"] == "invalid-json-value":
            msg = "not a plain value (YAML read a date or a timestamp?); quote it to make it text"
        elif err["type"] == "finite_number":
            msg = "must be a finite number; give a finite bound"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        quiet = err["type"] in ("missing", "extra_forbidden") or (
            err["type"] == "problem" and err["input"] is None
        )
        got = "" if quiet else f" (got {err.get('input')!r})"
        out.append(f"  {line_prefix(path, lines or {}, loc)}: {field}: {msg}{got}")
    return "\n".join(out)


def load_model(path: Path | str, model: type[M], context: dict[str, Any] | None = None) -> M:
    """Load `path` into `model`, turning YAML and validation problems into one SpecError."""
    path = Path(path)
    data, lines = read_yaml(path)
    return validate_model(path, data, lines, model, context)


def validate_model(
    path: Path, data: Any, lines: dict[Loc, int], model: type[M], context: dict[str, Any] | None = None
) -> M:
    """`data` read from `path` (`lines`: its line map) validated into `model`; problems are one SpecError."""
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of fields at the top level, got {type(data).__name__}.")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise SpecError(format_validation_error(path, exc, lines)) from None
