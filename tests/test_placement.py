"""Per-stage placement (`resources.partition`, `resources.site`) and one campaign across two sites.

On the real local Slurm (tests/slurm_cluster.py, whose one node is in two partitions, `debug` and `second`):
a stage in each partition, submitted at once with the dependency kept; and a study whose second stage runs on
a second site file (another partition, another engine), submitted once per site as its upstream finishes,
with the data moving through the file system both site files name. Plan-time refusals need no Slurm.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from perfscale.cli import main
from perfscale.errors import SpecError
from perfscale.runner import prepare_run
from perfscale.sched.submit import submit_run, submitted, wait
from perfscale.spec.site import load_site
from perfscale.store import RunStore
from tests.slurm_cluster import SECOND_PARTITION, SlurmCluster, slurm  # noqa: F401

TWO_STAGES = """\
name: placed
stages:
  square:
    kind: function
    params: {{callable: "fns.py:square"}}
    grid: {{product: {{x: [1, 2, 3]}}}}
    resources: {{walltime: "00:05:00", memory_gb: 0.25}}
  total:
    kind: function
    params: {{callable: "fns.py:total"}}
    inputs: [square]
    resources: {{walltime: "00:05:00", memory_gb: 0.25, {placement}}}
"""


def _sacct_partitions(slurm_: SlurmCluster, job_id: str) -> set[str]:
    out = slurm_.run(["sacct", "-n", "-P", "-X", "--format=Partition,State", f"--jobs={job_id}"])
    return set(out.split())


def _ended(store: RunStore, stage: str) -> float:
    table = store.read_stage(stage, provenance=True).to_pandas()
    return max(t.timestamp() + d for t, d in zip(table["_started_at"], table["_duration_s"], strict=True))


def _started(store: RunStore, stage: str) -> float:
    return min(t.timestamp() for t in store.read_stage(stage, provenance=True).to_pandas()["_started_at"])


@pytest.mark.slow
def test_stages_in_two_partitions_are_submitted_together_with_their_dependency(
    slurm: SlurmCluster,  # noqa: F811
    write_study,
    study_dir: Path,
):
    site = slurm.write_site(study_dir)
    study = write_study(TWO_STAGES.format(placement=f"partition: {SECOND_PARTITION}"))
    run = study_dir / "run"
    assert main(["submit", str(study), "--site", str(site), "--run-dir", str(run)]) == 0
    store = RunStore(run)
    first, second = submitted(store)
    assert (first.stage, second.stage) == ("square", "total")
    scripts = {a.stage: (run / "arrays" / f"{a.name}.sh").read_text().splitlines() for a in (first, second)}
    assert "#SBATCH --partition=debug" in scripts["square"]
    assert f"#SBATCH --partition={SECOND_PARTITION}" in scripts["total"]
    wait(store, every_s=1, timeout_s=180)
    assert store.read_stage("total").to_pandas()["sum_y"].tolist() == [14]  # read all of square
    assert _sacct_partitions(slurm, first.job_id) == {"debug|COMPLETED"}
    assert _sacct_partitions(slurm, second.job_id) == {f"{SECOND_PARTITION}|COMPLETED"}
    assert _started(store, "total") >= _ended(store, "square") - 1.0  # afterok held it (1 s: clock rounding)


def _second_site(slurm_: SlurmCluster, folder: Path, shared: Path, engine: str = "dask") -> Path:
    """A second site file on the same Slurm: another name, default partition and engine."""
    fields = yaml.safe_load(slurm_.site_yaml("testslurm-b", engine=engine))
    fields["partitions"] = {SECOND_PARTITION: {**fields["partitions"][SECOND_PARTITION], "default": True}}
    fields["shared_filesystems"] = [str(shared)]
    path = folder / "testslurm-b.yaml"
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


@pytest.mark.slow
def test_a_campaign_across_two_sites_is_submitted_to_each_as_its_upstream_finishes(
    slurm: SlurmCluster,  # noqa: F811
    write_study,
    study_dir: Path,
    tmp_path: Path,
    monkeypatch,
    caplog,
):
    sites = tmp_path / "sites"
    sites.mkdir()
    _second_site(slurm, sites, tmp_path)
    monkeypatch.setenv("PERFSCALE_SITE_PATH", str(sites))
    run_site = tmp_path / "testslurm.yaml"
    run_site.write_text(slurm.site_yaml(shared_filesystems=[str(tmp_path)]))
    study = write_study(TWO_STAGES.format(placement="site: testslurm-b"))
    store = prepare_run(study, load_site(run_site), study_dir / "run")
    (first,) = submit_run(store)  # the second site cannot wait for the first one's jobs
    assert first.stage == "square" and first.site is None
    assert "stage total waits for stage(s) square on another site" in caplog.text
    wait(store, every_s=1, timeout_s=180)
    (second,) = submit_run(store)  # its upstream is done: now it goes to its own site
    assert (second.stage, second.site) == ("total", "testslurm-b")
    script = (store.root / "arrays" / f"{second.name}.sh").read_text().splitlines()
    assert f"#SBATCH --partition={SECOND_PARTITION}" in script
    wait(store, every_s=1, timeout_s=180)
    total = store.read_stage("total", provenance=True).to_pandas()
    assert total["sum_y"].tolist() == [14] and total["_site"].tolist() == ["testslurm-b"]
    assert set(store.read_stage("square", provenance=True).to_pandas()["_site"]) == {"testslurm"}
    assert _sacct_partitions(slurm, second.job_id) == {f"{SECOND_PARTITION}|COMPLETED"}


# ------------------------------------------------------------------------------------ plan-time refusals


def _site_file(folder: Path, name: str, **fields: object) -> Path:
    body = {
        "name": name,
        "scheduler": "slurm",
        "launcher": "srun",
        "partitions": {"pbatch": {"default": True}},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**body, **fields}))
    return path


@pytest.mark.parametrize(
    ("placement", "message"),
    [
        (
            "partition: pgpu",
            r"stages.total.resources.partition: site 'cpu' has no partition/queue 'pgpu'; "
            "choose one of pbatch",
        ),
        ("site: nosuch", r"stages.total.resources.site: unknown site 'nosuch'; known sites: .*gpu"),
        (
            "site: island",
            r"stages.total.resources.site: stage 'total' runs on site 'island' and the run's data lives "
            r"on site 'cpu', but their site files name no file system both mount",
        ),
        (
            "{site: gpu, partition: pbatch}",
            r"stages.total.resources.partition: site 'gpu' has no partition/queue 'pbatch'",
        ),
        (
            "{site: gpu, gpus: 8}",
            r"stages.total.resources.gpus: each task asks for 8 GPUs and site 'gpu' nodes have 4",
        ),
    ],
)
def test_bad_placements_are_refused_at_plan_time(write_study, tmp_path, monkeypatch, placement, message):
    shared = tmp_path / "shared"
    shared.mkdir()
    _site_file(tmp_path, "cpu", shared_filesystems=[str(shared)])
    _site_file(tmp_path, "island")
    _site_file(
        tmp_path,
        "gpu",
        shared_filesystems=[str(shared)],
        gpus_per_node=4,
        gpu_vendor="nvidia",
        partitions={"pgpu": {"default": True}},
    )
    monkeypatch.setenv("PERFSCALE_SITE_PATH", str(tmp_path))
    text = TWO_STAGES.replace(
        'resources: {{walltime: "00:05:00", memory_gb: 0.25, {placement}}}', "resources: {placement}"
    )
    study = write_study(
        text.format(placement=placement if placement.startswith("{") else "{" + placement + "}")
    )
    with pytest.raises(SpecError, match=r"study.yaml:\d+: " + message):
        prepare_run(study, load_site("cpu"), shared / "run")


def test_a_run_folder_off_the_shared_file_system_is_refused(write_study, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    _site_file(tmp_path, "cpu", shared_filesystems=[str(shared)])
    _site_file(tmp_path, "gpu", shared_filesystems=[str(shared)], partitions={"pgpu": {"default": True}})
    monkeypatch.setenv("PERFSCALE_SITE_PATH", str(tmp_path))
    study = write_study(TWO_STAGES.format(placement="site: gpu"))
    with pytest.raises(
        SpecError,
        match=f"run folder {tmp_path / 'elsewhere'} is not on a file system sites "
        f"'cpu' and 'gpu' both mount \\({shared}\\); put --run-dir under one of them",
    ):
        prepare_run(study, load_site("cpu"), tmp_path / "elsewhere")
    prepare_run(study, load_site("cpu"), shared / "run")  # on it: planned


# ------------------------------------------------------------------------------------- pilot mode


def test_pilot_mode_runs_each_stage_on_the_engine_of_its_placement(
    write_study, tmp_path, monkeypatch, caplog
):
    """Two site files on this machine: the second stage runs on the other one's engine (here both local
    process pools, 1 and 2 workers), and its rows say where they ran."""
    import logging

    from perfscale.runner import run_plan

    sites = tmp_path / "sites"
    sites.mkdir()
    for name, workers in (("here", 1), ("there", 2)):
        (sites / f"{name}.yaml").write_text(
            f"name: {name}\nscheduler: none\nengine: local\nmax_workers: {workers}\n"
            f"shared_filesystems: [{tmp_path}]\n"
        )
    monkeypatch.setenv("PERFSCALE_SITE_PATH", str(sites))
    study = write_study(TWO_STAGES.format(placement="site: there"))
    store = prepare_run(study, load_site("here"), tmp_path / "run")
    # the other site is recorded in the run folder as planned: workers and array elements read it there
    assert (store.root / "sites" / "there.json").is_file()
    monkeypatch.delenv("PERFSCALE_SITE_PATH")
    with caplog.at_level(logging.INFO, logger="perfscale"):
        summary = run_plan(store, progress=False)
    assert (summary["square"].done, summary["total"].done) == (3, 1)
    started = [r.getMessage() for r in caplog.records if "engine: starting" in r.getMessage()]
    assert [m.split(" (run")[0] for m in started] == [
        "local engine: starting 1 workers on site here",
        "local engine: starting 2 workers on site there",
    ]
    assert set(store.read_stage("square", provenance=True).to_pandas()["_site"]) == {"here"}
    assert store.read_stage("total", provenance=True).to_pandas()["_site"].tolist() == ["there"]


def test_a_stage_partition_becomes_the_pilot_block_partition():
    from perfscale.engines.parsl_engine import make_provider
    from perfscale.plan.placement import placed

    quartz = load_site("quartz")
    assert make_provider(quartz, walltime_s=600).partition == "pbatch"  # the site's default
    debug = placed(quartz, "pdebug")
    assert make_provider(debug, walltime_s=600).partition == "pdebug"
    assert [n for n, p in debug.partitions.items() if p.default] == ["pdebug"]
    assert placed(quartz, None) is quartz
