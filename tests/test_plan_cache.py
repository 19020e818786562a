"""The plan cache (perfscale/plan/cache.py) and a rerun that finds everything done: not planned again, no
Task object built, one done-check per `perfscale run`, the same status counts."""

from __future__ import annotations

from dataclasses import replace

import pyarrow.parquet as pq
import pytest
import yaml

from perfscale.cli import main
from perfscale.errors import FailureKind, SpecError
from perfscale.plan import cache
from perfscale.plan.planner import Plan
from perfscale.runner import prepare_run, run_plan
from perfscale.spec import load_site
from perfscale.status import run_status
from perfscale.store import RunStore
from perfscale.store.attempt import Attempt
from tests.studies import FAILING, NOOP, STUDY


@pytest.fixture
def plans(monkeypatch) -> list[str]:
    """The studies `build_plan` planned, by name (the runner's own reference to it, counted)."""
    import perfscale.runner as runner

    planned: list[str] = []
    real = runner.build_plan

    def counted(study, *args, **kwargs):
        planned.append(study.name)
        return real(study, *args, **kwargs)

    monkeypatch.setattr(runner, "build_plan", counted)
    return planned


def _digest(store: RunStore) -> str | None:
    meta = pq.read_metadata(store.plan_path).metadata
    value = meta.get(cache.DIGEST_KEY.encode())
    return value.decode() if value else None


def test_an_unchanged_study_is_not_planned_again(write_study, tmp_path, plans):
    study, site = write_study(NOOP), load_site("local")
    first = prepare_run(study, site, tmp_path / "run")
    assert plans == ["tiny"] and _digest(first) is not None
    again = prepare_run(study, site, tmp_path / "run")
    assert plans == ["tiny"]  # not planned again
    assert "plan" not in again.__dict__  # ... nor read: the task count is the footer's
    assert again.task_count == 3 and again.manifest()["tasks"] == 3
    assert again.plan_keys == first.plan_keys


@pytest.mark.parametrize(
    "change",
    ["study", "override", "site", "version"],
)
def test_a_change_to_what_planning_reads_plans_again(write_study, tmp_path, plans, monkeypatch, change):
    study, site = write_study(NOOP), load_site("local")
    prepare_run(study, site, tmp_path / "run", overrides=["stages.touch.params.y=1"])
    if change == "study":
        write_study(NOOP.replace("[1, 2, 3]", "[1, 2, 3, 4]"))
    if change == "site":
        site = site.model_copy(update={"description": "the same machine, described again"})
    if change == "version":
        monkeypatch.setattr(cache, "__version__", "0.0.0+other")
    y = 2 if change == "override" else 1
    store = prepare_run(study, site, tmp_path / "run", overrides=[f"stages.touch.params.y={y}"])
    assert plans == ["tiny", "tiny"]
    assert len(store.plan.tasks) == (4 if change == "study" else 3)
    assert {t.params["y"] for t in store.plan.tasks} == {y}
    assert RunStore(store.root).plan.tasks == store.plan.tasks  # what was written is the new plan


def _site_file(folder, name: str, **fields: object) -> None:
    body = {"name": name, "scheduler": "none", "engine": "local", "shared_filesystems": [str(folder)]}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump({**body, **fields}))


def test_another_site_a_stage_is_placed_on_is_part_of_the_key(write_study, tmp_path, monkeypatch):
    sites = tmp_path / "sites"
    sites.mkdir()
    _site_file(sites, "here")
    _site_file(sites, "there")
    monkeypatch.setenv("PERFSCALE_SITE_PATH", str(sites))
    study = NOOP.replace("    kind: noop\n", "    kind: noop\n    resources: {site: there}\n")
    write_study(study)
    parsed = yaml.safe_load(study)
    from perfscale.spec.study import Study

    model = Study.model_validate(parsed)
    here = load_site("here")
    before = cache.plan_digest(model, study, here)
    _site_file(sites, "there", gpus_per_node=2, gpu_vendor="nvidia")
    after = cache.plan_digest(model, study, here)
    assert before is not None and after is not None and before != after


def test_studies_whose_checks_read_the_host_or_files_are_never_cached(write_study, tmp_path, plans):
    site = load_site("local")
    from perfscale.plan.overrides import load_study_text

    mpi = NOOP.replace("    kind: noop\n", "    kind: noop\n    resources: {ranks: 2}\n")
    study, text = load_study_text(write_study(mpi, "mpi.yaml"))
    assert cache.plan_digest(study, text, site) is None  # check_ranks looks for mpirun
    profile = "name: p\nstages:\n  prof:\n    kind: profile\n    params: {command: [true]}\n"
    study, text = load_study_text(write_study(profile, "profile.yaml"))
    assert cache.plan_digest(study, text, site) is None  # its checks probe perf and PAPI on this host


def test_validation_still_runs_and_a_broken_plan_file_is_replanned(write_study, tmp_path, plans):
    study, site = write_study(NOOP), load_site("local")
    store = prepare_run(study, site, tmp_path / "run")
    write_study(NOOP.replace("stages:", "stagez:"))
    with pytest.raises(SpecError, match="stagez"):
        prepare_run(study, site, tmp_path / "run")
    write_study(NOOP)
    store.plan_path.write_bytes(b"not parquet")
    again = prepare_run(study, site, tmp_path / "run")
    assert plans == ["tiny", "tiny"] and len(RunStore(again.root).plan.tasks) == 3


def _no_plan_read(*_args, **_kwargs):
    raise AssertionError("a whole plan was read")


def test_a_rerun_with_everything_done_builds_no_task(write_study, tmp_path, monkeypatch):
    study, site = write_study(STUDY), load_site("local")
    store = prepare_run(study, site, tmp_path / "run")
    assert run_plan(store, "local", workers=2, progress=False)["square"].ran == 5

    monkeypatch.setattr(Plan, "read", _no_plan_read)
    again = prepare_run(study, site, tmp_path / "run")
    summary = run_plan(again, "local", workers=2, progress=False)
    assert {s: (x.done, x.ran) for s, x in summary.items()} == {"square": (5, 0), "total": (1, 0)}
    assert "plan" not in again.__dict__
    # one shard gone: only its task runs (read from its row group), and the whole-stage input after it
    key = next(iter(again.plan_keys["square"]))
    again.shard_path("square", key).unlink()
    summary = run_plan(RunStore(again.root), "local", workers=2, progress=False)
    assert (summary["square"].ran, summary["square"].done, summary["total"].ran) == (1, 5, 0)
    assert key in summary["square"].done_keys


def test_perfscale_run_checks_shards_once_and_reads_no_plan(write_study, tmp_path, monkeypatch):
    study = write_study(STUDY)
    argv = ["run", str(study), "--run-dir", str(tmp_path / "run"), "--quiet", "--no-report"]
    assert main(argv) == 0
    checked: list[str] = []
    real = RunStore.done_keys

    def counted(self, stage, keys=None):
        if keys is None:
            checked.append(stage)
        return real(self, stage, keys)

    monkeypatch.setattr(RunStore, "done_keys", counted)
    monkeypatch.setattr(Plan, "read", _no_plan_read)
    assert main(argv) == 0
    assert sorted(checked) == ["square", "total"]


def _status_the_long_way(store: RunStore) -> list[tuple[str, int, int, int, int, dict[str, int]]]:
    """run_status's counts from the whole attempts table in pandas, as it was computed before."""
    attempts = store.attempts()
    last = attempts.sort_values("attempt", kind="stable").drop_duplicates("task_key", keep="last")
    bad = last[~last.ok.astype(bool)]
    failed = dict(zip(bad.task_key, bad.failure_kind, strict=True))
    rows = []
    for stage, keys in store.plan_keys.items():
        done = store.done_keys(stage)
        kinds: dict[str, int] = {}
        for k in keys:
            if k not in done and k in failed:
                kinds[failed[k]] = kinds.get(failed[k], 0) + 1
        missing = sum(k not in done and k not in failed for k in keys)
        rows.append((stage, len(keys), len(done), sum(kinds.values()), missing, kinds))
    return rows


def test_status_counts_are_unchanged(write_study, tmp_path):
    store = prepare_run(write_study(FAILING.replace("MODE", "raise")), load_site("local"), tmp_path / "run")
    run_plan(store, "local", workers=2, progress=False, stages=["fail"])
    fresh = RunStore(store.root)
    states = [(s.stage, s.total, s.done, s.failed, s.missing, s.failure_kinds) for s in run_status(fresh)]
    assert states == _status_the_long_way(fresh)
    assert states[0][1:5] == (3, 2, 1, 0) and states[0][5] == {"app_error": 1}
    assert states[1][1:5] == (2, 0, 0, 2)  # never attempted
    # an `ok` attempt after the failed ones (its shard lost): the task is missing, no longer failed
    failed_key = next(k for k in fresh.plan_keys["fail"] if k not in fresh.done_keys("fail"))
    last = Attempt.recorded(failed_key, "fail", 0, 9, FailureKind.APP_ERROR, "")
    fresh.append_attempts([replace(last, ok=True, failure_kind=None)])
    again = RunStore(store.root)
    states = [(s.stage, s.total, s.done, s.failed, s.missing, s.failure_kinds) for s in run_status(again)]
    assert states == _status_the_long_way(RunStore(store.root))
    assert states[0][1:6] == (3, 2, 0, 1, {})
