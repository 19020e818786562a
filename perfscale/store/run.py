"""The run directory: one folder per stage of Parquet shards named by task key, plus plan, manifest, attempts.

RUN/
  manifest.json            run metadata (study, site, host, created, perfscale version)
  study.yaml  site.yaml    the exact inputs the run was started from
  plan.parquet             one row per task (see perfscale.plan)
  stages/<stage>/<key>.parquet     one shard per finished task: the completion marker (its footer
                                   says which task, how many rows and which artifacts; see store/shards.py)
  stages/<stage>/packs/*.parquet   many tasks' shards merged into one file with a key index in its footer
                                   (`perfscale compact`, store/packs.py): a packed task is done too
  index/<stage>.done               shards already checked (key, size, mtime): the done-check's cache
                                   (store/done_index.py)
  artifacts/<stage>/<key>/         files a task leaves besides its shard (trained models, logs)
  attempts/*.parquet               attempts table, appended in batches (the runner)
  attempts/tasks/<kkk>/<key>.a<N>.*.parquet   ... and per task (array elements, store/task_attempts.py)
  quarantine/                      damaged files moved out of the way (see store/recover.py)
  report/index.html
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from perfscale.errors import PerfscaleError
from perfscale.plan.cache import CachedPlan
from perfscale.plan.planner import Plan, PlanRows, Task
from perfscale.spec.site import Site
from perfscale.store import done_index, recover, task_attempts
from perfscale.store.atomic import atomic_write_table, atomic_write_text
from perfscale.store.attempt import ATTEMPT_SCHEMA, Attempt, utcnow
from perfscale.store.lock import LOCK_NAME
from perfscale.store.packs import StagePacks, in_key_order, read_packed
from perfscale.store.shards import artifact_problem, check_shard, list_artifacts, shard_metadata
from perfscale.tabular.arrow import to_arrow
from perfscale.tabular.columns import PROVENANCE_COLUMNS
from perfscale.version import __version__

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow.dataset as ds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Provenance:
    task_key: str
    site: str
    host: str
    started_at: datetime
    duration_s: float
    attempt: int
    perfscale_version: str = __version__

    def append_to(self, table: pa.Table, metadata: dict[bytes, bytes]) -> pa.Table:
        """`table` with the provenance columns (PROVENANCE_COLUMNS: each field's name with a leading `_`) on
        every row, and `metadata` added to its schema's."""
        values = (
            self.task_key,
            self.site,
            self.host,
            self.started_at,
            self.duration_s,
            self.attempt,
            self.perfscale_version,
        )  # not dataclasses.astuple, which deep-copies every field (~10% of a one-row shard's write)
        # one conversion for the seven columns (rows of a struct, flattened): half the cost of seven
        columns = pa.array([values] * table.num_rows, _STRUCT).flatten()
        schema = pa.schema([*table.schema, *_FIELDS], metadata={**(table.schema.metadata or {}), **metadata})
        return pa.Table.from_arrays([*table.columns, *columns], schema=schema)


# the provenance columns, in field order
_FIELDS = tuple(
    pa.field(name, t)
    for name, t in zip(
        PROVENANCE_COLUMNS,
        (
            pa.string(),
            pa.string(),
            pa.string(),
            pa.timestamp("us", tz="UTC"),
            pa.float64(),
            pa.int64(),
            pa.string(),
        ),
        strict=True,
    )
)
_STRUCT = pa.struct(_FIELDS)


class RunStore:
    """Everything a run keeps on disk, behind one object. Safe for many concurrent writers (one per task)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self._packs: dict[str, StagePacks] = {}

    # ---- layout -------------------------------------------------------------------------------------
    @property
    def plan_path(self) -> Path:
        return self.root / "plan.parquet"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def stage_dir(self, stage: str) -> Path:
        return self.root / "stages" / stage

    def shard_path(self, stage: str, key: str) -> Path:
        return self.stage_dir(stage) / f"{key}.parquet"

    def artifact_dir(self, stage: str, key: str) -> Path:
        return self.root / "artifacts" / stage / key

    def checkpoint_dir(self, stage: str, key: str) -> Path:
        """A task's checkpoints: kept across its attempts (unlike artifacts), so a retry can resume."""
        return self.root / "checkpoints" / stage / key

    # ---- creation -----------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        root: Path | str,
        study_text: str,
        site: Site,
        plan: Plan | CachedPlan,
        study_dir: Path | None = None,
        digest: str | None = None,
    ) -> RunStore:
        """Create or re-open a run; the plan is rewritten (with `digest`, see perfscale.plan.cache), shards
        of unchanged tasks are kept. A CachedPlan is the run's own plan.parquet, kept as it is."""
        store = cls(root)
        store.refuse_foreign(plan.study)
        store.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(study_text, store.root / "study.yaml")
        atomic_write_text(json.dumps(site.model_dump(mode="json"), indent=2), store.root / "site.json")
        if isinstance(plan, Plan):
            plan.write(store.plan_path, digest)
            store.__dict__["plan"] = plan  # the plan just written: not read back (3.5 s at 10^5 tasks)
            count = len(plan.tasks)
        else:
            count = plan.tasks
        manifest = store.manifest() if store.manifest_path.exists() else {"created_at": utcnow().isoformat()}
        manifest.update(
            {
                "study": plan.study,
                "site": site.name,
                "perfscale_version": __version__,
                "host": socket.gethostname(),
                "updated_at": utcnow().isoformat(),
                "stages": plan.stages,
                "tasks": count,
                "study_dir": str(Path(study_dir or ".").resolve()),
            }
        )
        atomic_write_text(json.dumps(manifest, indent=2), store.manifest_path)
        return store

    def refuse_foreign(self, study: str) -> None:
        """Raise unless the run folder is new, empty, or a run of `study`: a run never writes into a folder
        that holds something else (it would overwrite its study.yaml and merge into its manifest.json)."""
        if self.root.exists() and not self.root.is_dir():
            raise PerfscaleError(f"run folder {self.root} is a file, not a folder; give another --run-dir")
        if not self.root.exists() or all(p.name == LOCK_NAME for p in self.root.iterdir()):
            return  # new, empty, or left with only the lock file of a run that stopped before writing
        if not self.manifest_path.exists():
            raise PerfscaleError(
                f"run folder {self.root} is not empty and is not a perfscale run (no manifest.json); "
                "give a new or empty --run-dir"
            )
        try:
            theirs = json.loads(self.manifest_path.read_text()).get("study")
        except (OSError, ValueError, AttributeError):
            return  # a run whose manifest is damaged: not a foreign folder
        if theirs != study:
            raise PerfscaleError(
                f"run folder {self.root} holds a run of study {theirs!r}, not {study!r}; give another "
                "--run-dir (or remove that run)"
            )

    def manifest(self) -> dict[str, Any]:
        """manifest.json; rebuilt with a warning when it is unreadable (see store/recover.py)."""
        return recover.read_manifest(self)

    def check(self) -> RunStore:
        if not self.plan_path.exists():
            raise PerfscaleError(f"{self.root} is not a perfscale run (no plan.parquet); give a run folder")
        return self

    @cached_property
    def study_dir(self) -> Path:
        """Where the study file was: relative paths in stage parameters are resolved against it."""
        manifest = self.manifest()
        if "study_dir" not in manifest and "rebuilt_at" in manifest:
            raise PerfscaleError(
                f"{self.manifest_path}: was rebuilt and does not know the study's folder (study_dir): "
                f"run `perfscale run STUDY --run-dir {self.root}` once to record it"
            )
        return Path(manifest.get("study_dir", "."))

    @cached_property
    def plan(self) -> Plan:
        return Plan.read(self.check().plan_path)

    @cached_property
    def plan_rows(self) -> PlanRows:
        return PlanRows(self.check().plan_path)

    @property
    def task_count(self) -> int:
        """How many tasks the plan holds: from the loaded plan, else plan.parquet's footer (not its rows)."""
        if "plan" in self.__dict__:
            return len(self.plan.tasks)
        return len(self.plan_rows)

    def task(self, index: int) -> Task:
        """Task `index` of the plan: from the plan when it is loaded, else from the one row group holding
        it (a worker or array element never parses a million-task plan for one task)."""
        if "plan" in self.__dict__:
            return self.plan.tasks[index]
        return self.plan_rows[index]

    @cached_property
    def site(self) -> Site:
        """site.json; rebuilt with a warning when it is unreadable (see store/recover.py)."""
        return recover.read_site(self)

    @cached_property
    def plan_keys(self) -> dict[str, dict[str, int]]:
        """{stage: {task key: task index}} of the plan, in plan order: from the loaded plan, else from three
        columns of plan.parquet (a status of a million tasks does not build a million Task objects)."""
        keys: dict[str, dict[str, int]] = {}
        if "plan" in self.__dict__:
            for t in self.plan.tasks:
                keys.setdefault(t.stage, {})[t.key] = t.index
            return keys
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        # the file, not pq.read_table, which imports pyarrow.dataset and pandas (~0.5 s)
        table = pq.ParquetFile(self.check().plan_path).read(columns=["index", "stage", "key"])
        # one filter per stage, its dict built by zip: no Python loop over a million rows
        stages = pc.unique(table.column("stage")).to_pylist()
        for stage in stages:
            rows = table if len(stages) == 1 else table.filter(pc.equal(table.column("stage"), stage))
            keys[stage] = dict(
                zip(rows.column("key").to_pylist(), rows.column("index").to_pylist(), strict=True)
            )
        return keys

    # ---- shards -------------------------------------------------------------------------------------
    def listed_keys(self, stage: str) -> set[str]:
        """Keys with a file at their shard path, from one directory listing, unchecked (temp files are
        hidden: they start with a dot)."""
        try:
            names = os.listdir(self.stage_dir(stage))
        except FileNotFoundError:
            return set()
        return {n[: -len(".parquet")] for n in names if n.endswith(".parquet") and not n.startswith(".")}

    def packs(self, stage: str) -> StagePacks:
        """The stage's packs (store/packs.py), re-listed on each call and their indexes cached; a pack that
        cannot be read is quarantined with a warning (its tasks are then not done and run again)."""
        packs = self._packs.get(stage)
        if packs is None:
            packs = self._packs[stage] = StagePacks(self.stage_dir(stage))
        bad = packs.refresh()
        if bad:
            recover.quarantine_packs(self, bad)
            packs.refresh()
        return packs

    def done_keys(self, stage: str, keys: Iterable[str] | None = None) -> set[str]:
        """The plan's tasks of `stage` (or `keys`) that are done: their shard's footer names the task, holds
        its row count, and every artifact it lists is there (store/shards.py). A shard that fails is moved to
        RUN/quarantine/ with a `corrupt_output` attempt row, and its task is not done.

        A shard in the stage's done index (store/done_index.py) whose size and mtime are unchanged passed
        this check before and lists no artifacts: it is not opened again; every other one is checked, and
        added to the index when it passes. A task with no loose shard is done when a pack lists it and the
        artifacts its entry lists are there."""
        shards, artifacts = str(self.stage_dir(stage)), str(self.root / "artifacts" / stage)
        if keys is None:
            # one stat per indexed shard; the folder is listed only if some plan key is not indexed
            indexed, lines = done_index.read_index(self.root, stage)
            plan_keys = self.plan_keys.get(stage, {})
            listed: set[str] | None = None
            candidates = []
            for key in plan_keys:  # string paths: pathlib costs ~10 us a shard here
                if key not in indexed:
                    if listed is None:
                        listed = self.listed_keys(stage)
                    if key not in listed:
                        continue
                candidates.append(key)
        else:
            # given keys (one task's own check): its footer is read; the index, which grows with the stage,
            # is not
            indexed, lines, candidates = {}, 0, list(keys)
        good, bad, new, kept = set(), {}, [], {}
        for key in candidates:
            path = f"{shards}/{key}.parquet"
            now = done_index.stat_entry(path)
            if now is None:
                continue  # gone (moved by another reader), or never written
            if indexed.get(key) == now:
                good.add(key)
                kept[key] = now
                continue
            footer, problem = check_shard(path, key, f"{artifacts}/{key}")
            if problem is not None:
                bad[key] = problem
            elif footer is not None:
                good.add(key)
                if not (footer.meta or {}).get("artifacts"):
                    new.append((key, now))
        if bad:
            recover.quarantine_shards(self, stage, bad)
        unsure = None if keys is None else [k for k in candidates if k not in good]
        if unsure is None or unsure:  # a task's own check opens no pack when its loose shard is there
            good |= self._packed_done(stage, unsure, artifacts)
        if keys is not None:
            return good
        if lines > 2 * len(kept) + 1000:  # mostly stale lines: keep the valid ones only
            done_index.rewrite_index(self.root, stage, {**kept, **dict(new)})
        else:
            done_index.append_index(self.root, stage, new)
        return good

    def _packed_done(self, stage: str, keys: Iterable[str] | None, artifacts: str) -> set[str]:
        """Keys of `keys` (default: the plan's) that a pack of the stage holds, with the artifacts its entry
        lists still there. (A packed task may also have a loose shard, newer: it is read instead.)"""
        packs = self.packs(stage)
        if not packs.keys():
            return set()
        found = packs.keys().intersection(self.plan_keys.get(stage, {}) if keys is None else keys)
        for name, pack in packs.packs.items():
            for key, listed in pack.with_artifacts.items():
                if key in found and packs.owner()[key] == name:
                    problem = artifact_problem(f"{artifacts}/{key}", listed)
                    if problem is not None:
                        log.warning("packed task %s of stage %s is not done: %s", key, stage, problem)
                        found.discard(key)
        return found

    def shard_done(self, stage: str, key: str) -> bool:
        """Is this one task done? (The check of `done_keys`, for one shard.)"""
        return key in self.done_keys(stage, [key])

    def finished_attempt(self, stage: str, key: str) -> Attempt | None:
        """The record of the attempt that wrote this task's shard if the task is done (its footer has it)."""
        if not self.shard_done(stage, key):
            return None
        footer, _problem = check_shard(self.shard_path(stage, key), key, None)
        if footer is not None:
            return footer.attempt()
        pack = self.packs(stage).pack_of(key)
        return pack.attempt(key) if pack is not None else None

    def _present(self, stage: str, keys: Iterable[str] | None) -> Iterable[str]:
        """The plan's keys of `stage` that have a file, from one listing; given `keys` are not listed: each
        is opened, and a missing file costs one failed open (a stage folder may hold 100k shards)."""
        if keys is None:
            listed = self.listed_keys(stage)
            return [k for k in self.plan_keys.get(stage, {}) if k in listed]  # plan order
        return keys

    def write_shard(
        self,
        stage: str,
        key: str,
        data: pa.Table | pd.DataFrame,
        prov: Provenance,
        attempt: Attempt | None = None,
    ) -> Path:
        """Write the task's shard; its footer records the key, row count, the task's artifacts (files and
        sizes) and `attempt`, the record of the attempt writing it."""
        table = to_arrow(data)
        clash = set(table.column_names) & set(PROVENANCE_COLUMNS)
        if clash:
            raise ValueError(f"stage {stage!r} output uses reserved provenance column names {sorted(clash)}")
        artifacts = list_artifacts(self.artifact_dir(stage, key))
        table = prov.append_to(table, shard_metadata(key, table.num_rows, artifacts, attempt))
        path = atomic_write_table(table, self.shard_path(stage, key))
        if not artifacts:  # the done-check need not open it again (store/done_index.py)
            entry = done_index.stat_entry(str(path))
            if entry is not None:
                done_index.append_index(self.root, stage, [(key, entry)])
        return path

    def read_stage(
        self,
        stage: str,
        keys: Iterable[str] | None = None,
        provenance: bool = True,
        filter: ds.Expression | None = None,
        _retry: int = 3,
    ) -> pa.Table:
        """Read the shards of `keys` (default: the plan's tasks of `stage`) as one table.

        Shards from different tasks may have different columns; the schemas are unified (missing columns
        become nulls, int64/float64 promote to float64). Shards of keys not in the plan are ignored.
        `provenance=False` leaves out every `_`-prefixed column: the store's own (PROVENANCE_COLUMNS) and
        an importer's (`_source_file`), which say where rows came from and are never data.
        A shard that cannot be read is quarantined (its task runs again at the next `perfscale run`) and
        raises CorruptFile naming it. Shards packed by a compaction while they are read are read again,
        from their pack (`_retry` times).
        """
        folder = str(self.stage_dir(stage))
        wanted = list(self.plan_keys.get(stage, {})) if keys is None else list(dict.fromkeys(keys))
        files, loose, bad = [], {}, {}
        for key in self._present(stage, None if keys is None else wanted):
            path = f"{folder}/{key}.parquet"
            footer, problem = check_shard(path, key, None)
            if problem is not None:
                bad[key] = problem
            elif footer is not None:
                files.append(path)
                loose[key] = footer.schema
        if bad:
            raise recover.corrupt_shards_error(self, stage, bad)
        packs = self.packs(stage)
        in_packs = packs.keys()
        packed = [k for k in wanted if k in in_packs and k not in loose]  # a loose shard is the newer copy
        # each task's own schema, in the order of `wanted`: the union is what reading its shards gives
        schemas = [
            loose[k] if k in loose else packs.schema_of(k) for k in wanted if k in loose or k in in_packs
        ]
        if not schemas:
            return pa.table({})
        distinct = list(dict.fromkeys(s.remove_metadata() for s in schemas))
        schema = pa.unify_schemas(distinct, promote_options="permissive")
        import pyarrow.dataset as ds  # here: importing it imports pandas, which the store needs only to read

        columns = None if provenance else [n for n in schema.names if not n.startswith("_")]
        if packed and columns is not None:  # the rows are put in plan order below, by their task key
            columns = [*columns, "_task_key"]
        parts = []
        if files:
            dataset = ds.dataset(files, schema=schema, format="parquet")
            try:
                parts.append(dataset.to_table(columns=columns, filter=filter))
            except (pa.ArrowException, OSError):
                if _retry and not all(map(os.path.exists, files)):  # packed meanwhile by a compaction
                    return self.read_stage(stage, keys, provenance, filter, _retry=_retry - 1)
                bad = recover.unreadable_shards(self, stage, files)  # footers parsed, a data page did not
                if bad:
                    raise recover.corrupt_shards_error(self, stage, bad) from None
                raise
        if not packed:
            return parts[0]
        parts += read_packed(packs, packed, schema, columns, filter)
        return in_key_order(pa.concat_tables(parts), wanted, provenance)

    # ---- attempts -----------------------------------------------------------------------------------
    def append_attempts(self, records: Iterable[Attempt]) -> None:
        rows = [r.row() for r in records]
        if rows:
            table = pa.Table.from_pylist(rows, schema=ATTEMPT_SCHEMA)
            name = f"{utcnow():%Y%m%dT%H%M%S}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
            atomic_write_table(table, self.root / "attempts" / name)

    def append_task_attempts(self, records: Iterable[Attempt]) -> None:
        """Append the records of single tasks, each into its task's bucket (store/task_attempts.py), so that
        `next_attempt` and `task_attempts` find them without reading the whole table."""
        task_attempts.append_task_attempts(self.root, records)

    def next_attempt(self, key: str) -> int:
        """The number of task `key`'s next attempt, read from its bucket and the batch files only."""
        return task_attempts.next_attempt(self.root, key)

    def task_attempts(self, key: str) -> pd.DataFrame:
        """Task `key`'s attempt rows, sorted by attempt (its bucket and the batch files only)."""
        rows = task_attempts.task_attempts(self.root, key).to_pandas()
        return rows.sort_values("attempt", kind="stable").reset_index(drop=True)

    def attempts(self) -> pd.DataFrame:
        """Every attempt row. An unreadable attempts file is quarantined with a warning and skipped; a done
        task without an `ok` row gets the row its shard's footer recorded (store/recover.py)."""
        return self.attempts_table().to_pandas()

    def attempts_table(self, columns: list[str] | None = None) -> pa.Table:
        """`attempts()` as an Arrow table, of `columns` only where given (a million rows of every column
        cost seconds to read and more to turn into pandas)."""
        files = task_attempts.attempt_files(self.root)
        schema = ATTEMPT_SCHEMA
        if columns is not None:
            schema = pa.schema([schema.field(c) for c in dict.fromkeys([*columns, "task_key", "ok"])])
        table = recover.read_attempt_files(self, files, schema) if files else schema.empty_table()
        recovered = recover.recovered_attempts(self, table)
        if recovered:
            rows = [{c: row[c] for c in schema.names} for row in (r.row() for r in recovered)]
            table = pa.concat_tables([table, pa.Table.from_pylist(rows, schema=schema)])
        return table

    def clear_artifacts(self, stage: str, key: str) -> Path:
        """A fresh, empty artifact folder for a task attempt (leftovers of a killed attempt are removed)."""
        path = self.artifact_dir(stage, key)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path
