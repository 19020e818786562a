"""`--set stages.NAME.params.KEY=VALUE`: one study file, many runs (another data set, another size).

Overrides apply to the study as read from YAML, before validation, so an overridden value is checked like a
written one. VALUE is read as one YAML scalar or flow value with `yaml.safe_load`: `5` is an int, `0.5` a
float, `true` a bool, `a.csv` a string, `[1, 2]` a list, `{x: 1}` a mapping, `'5'` the string 5. KEY may be
dotted (`params.hyperparameters.epochs=3`) to reach into a mapping parameter.

A study run with overrides records the overridden study as RUN/study.yaml (a comment on top names the file
and the flags), so the run folder still holds the exact input it was made from.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from perfscale.errors import SpecError
from perfscale.spec.loader import read_yaml, validate_model
from perfscale.spec.study import Study

FLAG = "--set"
FORM = "stages.NAME.params.KEY=VALUE"


@dataclass(frozen=True)
class Override:
    text: str  # as given on the command line
    stage: str
    key: tuple[str, ...]  # the path under the stage's params
    value: Any


def parse_override(text: str) -> Override:
    """`stages.NAME.params.KEY=VALUE` -> Override; a malformed one is a SpecError naming the flag."""
    target, sep, raw = text.partition("=")
    parts = target.strip().split(".")
    if not sep or len(parts) < 4 or parts[0] != "stages" or parts[2] != "params" or not all(parts):
        raise SpecError(f"{FLAG} {text!r}: give {FORM} (only stage parameters can be set)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{FLAG} {text!r}: VALUE is not a YAML value ({problem}); quote it") from None
    return Override(text, parts[1], tuple(parts[3:]), value)


def _unshared(value: Any) -> Any:
    """A copy in which no two places share a mapping or list (YAML aliases construct shared objects: a
    --set on one stage must not change the stage that aliases it)."""
    if isinstance(value, dict):
        return {k: _unshared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unshared(v) for v in value]
    return value


def _check_parameter(o: Override, stage: dict[str, Any]) -> None:
    """Refuse a KEY that the stage kind does not take, or that the stage's grid sets."""
    grid = stage.get("grid") if isinstance(stage.get("grid"), dict) else {}
    for part in ("product", "zip"):
        if isinstance(grid.get(part), dict) and o.key[0] in grid[part]:
            raise SpecError(
                f"{FLAG} {o.text!r}: {o.key[0]!r} is a grid parameter of stage {o.stage!r} (grid.{part}); "
                "a --set replaces params only: edit the grid, or make it a parameter in the study"
            )
    from perfscale.plan.kinds import RENAMED, get_stage_kind

    try:
        kind = str(stage.get("kind"))
        model = get_stage_kind(RENAMED.get(kind, kind)).params  # the planner warns of an old name
    except SpecError:
        return  # an unknown kind is reported by the study's own validation
    fields = set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
    if model.model_config.get("extra") != "allow" and o.key[0] not in fields:
        raise SpecError(
            f"{FLAG} {o.text!r}: stage {o.stage!r} (kind {stage.get('kind')}) has no parameter "
            f"{o.key[0]!r}; its parameters: {', '.join(sorted(fields)) or 'none'}"
        )


def apply_overrides(
    data: dict[str, Any], overrides: Sequence[Override], source: Path | str
) -> dict[str, Any]:
    """A copy of the study data `data` (read from `source`) with `overrides` applied."""
    data = _unshared(data)
    stages = data.get("stages")
    for o in overrides:
        if not isinstance(stages, dict) or not isinstance(stages.get(o.stage), dict):
            names = ", ".join(stages) if isinstance(stages, dict) and stages else "none"
            raise SpecError(f"{FLAG} {o.text!r}: {source} has no stage {o.stage!r}; its stages: {names}")
        stage = stages[o.stage]
        _check_parameter(o, stage)
        node = stage.setdefault("params", {})
        for depth, part in enumerate(o.key[:-1]):
            node = node.setdefault(part, {}) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                where = ".".join(("params", *o.key[: depth + 1]))
                raise SpecError(f"{FLAG} {o.text!r}: stages.{o.stage}.{where} is not a mapping in {source}")
        if not isinstance(node, dict):
            raise SpecError(f"{FLAG} {o.text!r}: stages.{o.stage}.params is not a mapping in {source}")
        node[o.key[-1]] = o.value
    return data


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def load_study_text(path: Path | str, overrides: Sequence[str] = ()) -> tuple[Study, str]:
    """The study in `path` with `overrides` (`--set` texts) applied, and the text to record as study.yaml:
    the file as it is when there are none, else the overridden study with a comment naming the flags."""
    path = Path(path)
    parsed = [parse_override(o) for o in overrides]
    data, lines = read_yaml(path)
    if parsed and isinstance(data, dict):  # not a mapping: validate_model says so
        data = apply_overrides(data, parsed, path)
    study = validate_model(path, data, lines, Study)
    if not parsed:
        return study, path.read_text(encoding="utf-8")
    flags = " ".join(f"{FLAG} {shlex.quote(o)}" for o in overrides)
    header = f"# {path} with {flags}\n"
    return study, header + yaml.dump(data, Dumper=_NoAliases, sort_keys=False, allow_unicode=True)
