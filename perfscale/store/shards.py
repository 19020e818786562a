"""What a shard says about itself, and the cheap check that it is what it says.

Every shard carries one JSON object in its Parquet footer's key-value metadata, under `perfscale.shard`:

    {"key": task key, "rows": row count, "artifacts": {path under the task's artifact folder: bytes},
     "attempt": the attempt record of the attempt that wrote it}

The done-check (`check_shard`) reads only the footer (a few kB at the end of the file, ~0.1 ms locally),
never the data pages: the footer must parse, name the task and hold as many rows as the metadata says, and
every artifact it lists must still be there with its size (a train task whose model folder was deleted is
not done, so it runs again and its downstream tasks can run). A shard written before footers carried this
metadata passes when its footer parses. Corrupt data pages under an intact footer are found when the shard
is read (`RunStore.read_stage`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from perfscale.store.attempt import Attempt

SHARD_META = b"perfscale.shard"


class BadShard(Exception):
    """The file at a shard's path is not a shard this run can trust (the message says why)."""


@dataclass(frozen=True)
class Footer:
    """A shard's Parquet footer: its row count and perfscale metadata (None for older shards)."""

    parquet: pq.FileMetaData
    meta: dict[str, Any] | None

    @property
    def num_rows(self) -> int:
        return self.parquet.num_rows

    @property
    def schema(self) -> pa.Schema:
        return self.parquet.schema.to_arrow_schema()

    def attempt(self) -> Attempt | None:
        """The record of the attempt that wrote the shard."""
        record = (self.meta or {}).get("attempt")
        return Attempt.from_json(record) if record else None


def list_artifacts(folder: Path) -> dict[str, int]:
    """Every file under `folder` (relative POSIX path -> size in bytes); empty if there is no folder."""
    found: dict[str, int] = {}
    for parent, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(parent) / name
            found[path.relative_to(folder).as_posix()] = path.stat().st_size
    return found


def shard_metadata(
    key: str, rows: int, artifacts: Mapping[str, int], attempt: Attempt | None
) -> dict[bytes, bytes]:
    record = None if attempt is None else attempt.to_json()
    meta = {"key": key, "rows": rows, "artifacts": dict(artifacts), "attempt": record}
    return {SHARD_META: json.dumps(meta, sort_keys=True).encode()}


def read_footer(path: str | Path) -> Footer:
    """Parse the footer of the shard at `path`. FileNotFoundError if it is gone; BadShard if it is garbage."""
    try:
        with pa.OSFile(str(path)) as source:  # an explicit file skips pyarrow's filesystem inference
            md = pq.read_metadata(source)
        raw = (md.metadata or {}).get(SHARD_META)
        meta = json.loads(raw) if raw is not None else None
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:  # ValueError: bad JSON or UTF-8 in the metadata
        raise BadShard(f"not a readable Parquet file ({one_line(exc)})") from None
    if meta is not None and not isinstance(meta, dict):
        raise BadShard(f"its {SHARD_META.decode()} footer metadata is not a JSON object")
    return Footer(md, meta)


def footer_problem(footer: Footer, key: str, artifact_dir: str | Path | None) -> str | None:
    """Why a parsed footer does not make its task done (None: it does). Artifacts are checked when
    `artifact_dir` is given."""
    meta = footer.meta
    if meta is None:
        return None  # a shard from before footers carried metadata: its footer parsed, nothing more to check
    if meta.get("key") != key:
        return f"its footer names task {meta.get('key')!r}, not {key!r}"
    if meta.get("rows") != footer.num_rows:
        return f"its footer metadata says {meta.get('rows')} rows but the file holds {footer.num_rows}"
    if artifact_dir is not None:
        return artifact_problem(artifact_dir, meta.get("artifacts") or {})
    return None


def artifact_problem(artifact_dir: str | Path, artifacts: Mapping[str, int]) -> str | None:
    """Why the artifacts a shard lists ({path under `artifact_dir`: bytes}) are not all there (None if they
    are)."""
    for name, size in artifacts.items():
        path = Path(artifact_dir, name)
        try:
            found = path.stat().st_size
        except FileNotFoundError:
            return f"its artifact {path} is missing"
        if found != size:
            return f"its artifact {path} has {found} bytes, the shard recorded {size}"
    return None


def check_shard(
    path: str | Path, key: str, artifact_dir: str | Path | None
) -> tuple[Footer | None, str | None]:
    """(footer, problem) of the shard at `path`; the task is done when footer is set and problem is None.
    A file that vanished (another reader moved it) gives (None, None): not done, nothing to quarantine."""
    try:
        footer = read_footer(path)
    except FileNotFoundError:
        return None, None
    except BadShard as exc:
        return None, str(exc)
    return footer, footer_problem(footer, key, artifact_dir)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
