"""Damaged run files: moved to RUN/quarantine/, recorded, and rebuilt from what the run folder still holds.

- A shard that fails its check (see `perfscale.store.shards`) is moved to `RUN/quarantine/stages/<stage>/`
  and gets a `corrupt_output` attempt row saying why; its task is then not done and runs again.
- An attempts file that cannot be read is moved to `RUN/quarantine/attempts/` with a warning; every other
  file is still read. Done tasks whose rows it held are explained by their shards' footers.
- A finished shard without an `ok` attempt row (rows are buffered for 2 s, so a SIGKILLed `perfscale run`
  loses the last ones) gets its row back from its footer, where the attempt that wrote it left its record.
- `manifest.json` is rebuilt from `plan.parquet` and `site.json`; `site.json` from the site config the
  manifest names. Each is moved to quarantine first, with a warning.

Quarantined files keep their path under `RUN/quarantine/`, with a time stamp appended to their name, so that
no reader of `*.parquet` picks them up again.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import ValidationError

from perfscale.errors import CorruptFile, FailureKind, PerfscaleError
from perfscale.spec.site import Site, load_site
from perfscale.store.atomic import atomic_write_text
from perfscale.store.attempt import Attempt
from perfscale.store.shards import check_shard, one_line

if TYPE_CHECKING:
    from perfscale.store.run import RunStore

logger = logging.getLogger("perfscale.store")

RECOVERED_MESSAGE = (
    "recovered from the shard's footer: the attempt row was lost (run killed before writing it)"
)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def quarantine(store: RunStore, path: Path) -> Path | None:
    """Move `path` (inside the run folder) to RUN/quarantine/; None if another process moved it first."""
    rel = path.relative_to(store.root)
    dest = (
        store.root / "quarantine" / rel.parent / f"{rel.name}.{_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(path, dest)
    except FileNotFoundError:
        return None
    return dest


def _moved(dest: Path | None) -> str:
    return f"moved to {dest}" if dest else "already moved to quarantine by another process"


def quarantine_shards(store: RunStore, stage: str, bad: dict[str, str], warn: bool = True) -> list[str]:
    """Quarantine the shards of `bad` ({key: why}), record a `corrupt_output` attempt for each, and return
    one message per shard naming the file, what is wrong and where it went (logged as warnings if `warn`)."""
    attempts = store.attempts()  # read before moving: a shard's own (recovered) record counts
    last = attempts.groupby("task_key")["attempt"].max() if len(attempts) else {}
    index = store.plan_keys.get(stage, {})
    messages, records = [], []
    for key, why in bad.items():
        path = store.shard_path(stage, key)
        dest = quarantine(store, path)
        message = f"{path}: {why}; {_moved(dest)}; `perfscale run` runs its task again"
        if warn:
            logger.warning("corrupt shard: %s", message)
        messages.append(message)
        if dest is None:
            continue
        attempt = int(last.get(key, 0)) + 1
        kind = FailureKind.CORRUPT_OUTPUT
        records.append(Attempt.recorded(key, stage, index.get(key, -1), attempt, kind, message, here=True))
    store.append_task_attempts(records)
    return messages


def quarantine_packs(store: RunStore, bad: list[tuple[Path, str]]) -> None:
    """Quarantine packs that cannot be read (store/packs.py), with a warning each: their tasks are not done
    and run again at the next `perfscale run`."""
    for path, why in bad:
        dest = quarantine(store, path)
        logger.warning(
            "corrupt pack: %s: %s; %s; `perfscale run` runs its tasks again", path, why, _moved(dest)
        )


def corrupt_shards_error(store: RunStore, stage: str, bad: dict[str, str]) -> CorruptFile:
    """Quarantine `bad` and return the error that names it (no warning as well: the error is the message)."""
    messages = quarantine_shards(store, stage, bad, warn=False)
    more = f" (and {len(messages) - 1} more bad shards of stage {stage!r})" if len(messages) > 1 else ""
    return CorruptFile(messages[0] + more)


def unreadable_shards(store: RunStore, stage: str, paths: list[str]) -> dict[str, str]:
    """{key: why} of the shards whose data pages cannot be read (their footers parsed)."""
    bad = {}
    for path in paths:
        try:
            pq.read_table(path)
        except FileNotFoundError:
            continue
        except (pa.ArrowException, OSError) as exc:
            bad[Path(path).name.removesuffix(".parquet")] = f"its data cannot be read ({one_line(exc)})"
    return bad


def read_attempt_files(store: RunStore, files: list[str], schema: pa.Schema) -> pa.Table:
    """All rows of the attempts files; an unreadable file is quarantined with a warning and skipped."""
    import pyarrow.dataset as ds  # here: importing it imports pandas

    try:
        return ds.dataset(files, schema=schema, format="parquet").to_table()
    except (pa.ArrowException, OSError):
        pass  # find the bad file(s): read one by one
    tables = []
    for f in files:
        try:
            tables.append(ds.dataset([f], schema=schema, format="parquet").to_table())
        except FileNotFoundError:
            continue  # quarantined by another process meanwhile
        except (pa.ArrowException, OSError) as exc:
            dest = quarantine(store, Path(f))
            logger.warning(
                "unreadable attempts file %s (%s): %s; its rows are skipped, and finished tasks are "
                "explained by their shards' footers",
                f,
                one_line(exc),
                _moved(dest),
            )
    return pa.concat_tables(tables) if tables else schema.empty_table()


def recovered_attempts(store: RunStore, table: pa.Table) -> list[Attempt]:
    """Attempt rows, read from their shards' footers, of finished tasks that have no `ok` row in `table`."""
    if not store.plan_path.exists():
        return []
    # in Arrow: a million keys are not made Python strings to learn that every one has its `ok` row
    ok_keys = pc.unique(pc.filter(table.column("task_key"), table.column("ok")))
    rows = []
    for stage, wanted in store.plan_keys.items():
        keys = pa.array(list(wanted), pa.string())
        without_ok = pc.filter(keys, pc.invert(pc.is_in(keys, value_set=ok_keys))).to_pylist()
        if not without_ok:
            continue  # the usual case: no listing of the stage folder needed
        listed = store.listed_keys(stage)
        for key in sorted(k for k in without_ok if k in listed):
            footer, problem = check_shard(store.shard_path(stage, key), key, None)
            record = footer.attempt() if footer is not None and problem is None else None
            if record is not None:
                rows.append(replace(record, message=RECOVERED_MESSAGE))
        rows += _packed_records(store, stage, {k for k in without_ok if k not in listed})
    return rows


def _packed_records(store: RunStore, stage: str, keys: set[str]) -> list[Attempt]:
    """The attempt records that the stage's packs hold for `keys` (from the pack whose copy counts)."""
    packs = store.packs(stage)
    found = []
    for key in sorted(keys):
        pack = packs.pack_of(key)
        record = pack.attempt(key) if pack is not None else None
        if record is not None:
            found.append(replace(record, message=RECOVERED_MESSAGE))
    return found


def read_manifest(store: RunStore) -> dict[str, Any]:
    """manifest.json, rebuilt (with a warning) from plan.parquet and site.json when it is unreadable."""
    path = store.manifest_path
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and {"study", "site"} <= data.keys():
            return data
        why = "not a JSON object with `study` and `site`"
    except FileNotFoundError:
        why = "missing"
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        why = f"not valid JSON ({one_line(exc)})"
    plan = store.plan  # a folder without a plan is no run: PerfscaleError naming it
    dest = quarantine(store, path) if path.exists() else None
    now = _now().isoformat()
    manifest = {
        "study": plan.study,
        "site": _site_name(store) or "unknown",
        "perfscale_version": plan.version,
        "host": "unknown",
        "created_at": None,
        "updated_at": now,
        "stages": plan.stages,
        "tasks": len(plan.tasks),
        "rebuilt_at": now,  # study_dir is unknown until the next `perfscale run` writes it
    }
    atomic_write_text(json.dumps(manifest, indent=2), path)
    logger.warning(
        "%s: %s; %s; rebuilt from plan.parquet and site.json", path, why, _moved(dest) if dest else "no copy"
    )
    return manifest


def _site_name(store: RunStore) -> str | None:
    try:
        name = json.loads((store.root / "site.json").read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def read_site(store: RunStore) -> Site:
    """site.json, rebuilt (with a warning) from the site config the manifest names when it is unreadable."""
    path = store.root / "site.json"
    try:
        return Site.model_validate_json(path.read_text())
    except FileNotFoundError:
        why = "missing"
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(map(str, err["loc"])) or "file"
        why = f"not a valid site ({field}: {err['msg']})"
    except ValueError as exc:  # UnicodeDecodeError
        why = f"not valid JSON ({one_line(exc)})"
    dest = quarantine(store, path) if path.exists() else None
    name = store.manifest().get("site")
    try:
        site = load_site(str(name))
    except PerfscaleError as exc:
        raise CorruptFile(
            f"{path}: {why}; {_moved(dest) if dest else 'no copy'}; it cannot be rebuilt ({one_line(exc)}): "
            f"rerun `perfscale run STUDY --site SITE --run-dir {store.root}` to write it again"
        ) from None
    atomic_write_text(json.dumps(site.model_dump(mode="json"), indent=2), path)
    logger.warning(
        "%s: %s; %s; rebuilt from the site config %r as it is now",
        path,
        why,
        _moved(dest) if dest else "no copy",
        name,
    )
    return site
