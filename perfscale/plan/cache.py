"""The plan cache: a rerun of an unchanged study reuses its run's plan.parquet instead of planning again.

Planning a million-task grid takes ~25 s (every grid point validated, every task key hashed); a rerun of the
same study with the same site plans the same tasks. `plan_digest` is a digest of everything a plan is made
from, stored in plan.parquet's footer (`plan_digest`); `cached_plan` finds it there and says how many tasks
that plan holds. A run with a matching digest skips `build_plan`.

What planning reads, and so what the digest covers:
- the study text after `--set` overrides (the study is still parsed and validated on every run: its errors
  are cheap to find and must be seen);
- the run's site (its JSON), and the site file of every other site a stage is placed on (resources.site);
- the perfscale version (kinds, params models and task keys are perfscale's code).

Some plan-time checks read more than that: a params model may look for files, import a user's function, or
probe the host (perf, PAPI, mpirun for `ranks > 1`). Such a check must run every time, so a study is
cached only when every stage's kind is one whose checks read nothing but its params and the site
(`CACHEABLE_KINDS`) and no stage is an MPI job; any other study is planned afresh, as before.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from perfscale.errors import SpecError
from perfscale.spec.site import Site
from perfscale.spec.study import Study
from perfscale.version import __version__

log = logging.getLogger(__name__)

#: plan.parquet footer key of the digest
DIGEST_KEY = "plan_digest"

#: kinds whose plan-time checks read only their params, the study and the site: nothing on disk or the host
#: (`function` checks its `callable`'s form, not the file: that is read where the task runs). A kind joins
#: only after a look at its params model and plan_check (and at whatever they call).
CACHEABLE_KINDS = frozenset({"noop", "function"})


@dataclass(frozen=True)
class CachedPlan:
    """A run's plan.parquet that is the plan of the study as it is now."""

    path: Path
    study: str
    stages: list[str]
    tasks: int  # how many


def plan_digest(study: Study, study_text: str, site: Site) -> str | None:
    """A digest of everything the plan of `study` (as `study_text`) on `site` depends on; None when the
    study's plan-time checks read more than that (see the module's docstring), so it must be planned."""
    parts = [f"perfscale {__version__}", study_text, site.model_dump_json()]
    for name, spec in study.stages.items():
        resources = study.resources_of(name)
        if spec.kind not in CACHEABLE_KINDS or resources.ranks > 1 or resources.gpus_per_rank:
            return None
        if resources.site is not None and resources.site != site.name:
            from perfscale.plan.placement import site_named

            try:
                parts.append(site_named(resources.site).model_dump_json())
            except SpecError:
                return None  # build_plan says what is wrong, at its line
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def cached_plan(path: Path, digest: str | None, study: Study) -> CachedPlan | None:
    """The plan at `path` when its footer holds `digest` (of `study`); None when there is none, it differs,
    or the file cannot be read (then the study is planned again and the file rewritten)."""
    if digest is None or not path.is_file():
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
    except (pa.ArrowException, OSError) as exc:
        log.info("plan cache: %s unreadable (%s); planning again", path, exc)
        return None
    found = (meta.metadata or {}).get(DIGEST_KEY.encode(), b"").decode()
    if found != digest:
        return None
    log.info("plan cache: %s is the plan of %s as it is now; not planned again", path, study.name)
    return CachedPlan(path, study.name, list(study.stages), meta.num_rows)
