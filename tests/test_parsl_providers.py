"""Pilot mode from the site file: Parsl providers for Slurm and LSF sites, and a real Slurm pilot.

The provider objects are built from the quartz (Slurm) and lassen (LSF) site files and checked field by
field; the rendered Slurm submit script is checked too. The pilot test runs a small study through
`perfscale run --engine parsl` on the test Slurm (tests/slurm_cluster.py): one SlurmProvider block started
with srun, the tasks run on its workers, and the block is cancelled at shutdown.
"""

from __future__ import annotations

import shlex
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from perfscale.cli import main
from perfscale.engines.parsl_engine import (
    JSRUN_OVERRIDES,
    ParslEngine,
    make_provider,
    parsl_config,
    pilot_walltime,
    worker_init,
)
from perfscale.plan import build_plan
from perfscale.spec import load_site
from perfscale.spec.study import Study
from perfscale.store import RunStore
from tests.slurm_cluster import SlurmCluster, slurm  # noqa: F401

BIN = str(Path(sys.executable).parent)


def test_slurm_provider_from_quartz():
    from parsl.launchers import SrunLauncher
    from parsl.providers import SlurmProvider

    quartz = load_site("quartz").model_copy(update={"accounts": ["mybank", "other"]})
    p = make_provider(quartz, walltime_s=2 * 3600 + 5, nodes_per_block=2)
    assert isinstance(p, SlurmProvider) and isinstance(p.launcher, SrunLauncher)
    assert p.partition == "pbatch"  # the default partition
    assert p.account == "mybank"  # the first account
    assert p.nodes_per_block == 2
    assert p.cores_per_node == 36
    assert p.walltime == "02:00:05"
    assert p.exclusive is False
    assert (p.init_blocks, p.min_blocks, p.max_blocks) == (1, 0, 1)
    assert p.worker_init.splitlines() == [
        "module load gcc/10.3.1",
        "export OMP_PROC_BIND=close",
        f"export PATH={BIN}:$PATH",
    ]
    options = p.scheduler_options.splitlines()
    assert "#SBATCH --partition=pbatch" in options and "#SBATCH --account=mybank" in options
    assert "#SBATCH --exclusive" not in options
    debug = make_provider(quartz, walltime_s=600, partition="pdebug", account="x")
    assert debug.partition == "pdebug" and debug.account == "x" and debug.walltime == "00:10:00"


def submitted_script(provider: Any, folder: Path, reply: str) -> tuple[str, list[str], str]:
    """Let a Parsl provider write its block script and submit it, with the submit command captured instead of
    run (it answers `reply`): the job id it parsed, the command's words and the script."""
    provider.script_dir = str(folder)
    commands = []

    def fake_execute_wait(cmd: str, timeout: int | None = None):
        commands.append(cmd)
        return 0, reply, ""

    provider.execute_wait = fake_execute_wait
    job_id = provider.submit("process_worker_pool.py --flags", tasks_per_node=1)
    argv = shlex.split(commands[0])
    return job_id, argv, Path(argv[-1]).read_text()


def test_slurm_submit_script_from_quartz(tmp_path: Path):
    """The script Parsl would sbatch (written, not submitted: the command is replaced by a fake sbatch)."""
    quartz = load_site("quartz")
    p = make_provider(quartz, walltime_s=3600)
    job_id, _, script = submitted_script(p, tmp_path, "Submitted batch job 4242\n")
    assert job_id == "4242"
    for line in (
        "#SBATCH --nodes=1",
        "#SBATCH --time=60",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --partition=pbatch",
        "#SBATCH --cpus-per-task=36",
        "module load gcc/10.3.1",
        f"export PATH={BIN}:$PATH",
    ):
        assert line in script.splitlines(), line
    assert "srun --ntasks 1 -l" in script and "process_worker_pool.py --flags" in script


def test_lsf_provider_from_lassen():
    from parsl.launchers import JsrunLauncher
    from parsl.providers import LSFProvider

    lassen = load_site("lassen").model_copy(update={"accounts": ["guests"]})
    p = make_provider(lassen, walltime_s=12 * 3600, nodes_per_block=4)
    assert isinstance(p, LSFProvider) and isinstance(p.launcher, JsrunLauncher)
    assert p.queue == "pbatch"
    assert p.project == "guests"
    assert p.nodes_per_block == 4
    assert p.walltime == "12:00:00"
    assert p.bsub_redirection is True and p.request_by_nodes is True
    assert p.launcher.overrides == JSRUN_OVERRIDES
    assert p.worker_init.splitlines() == ["module load cuda/11.8.0", f"export PATH={BIN}:$PATH"]
    options = p.scheduler_options.splitlines()
    assert {"#BSUB -P guests", "#BSUB -q pbatch", "#BSUB -nnodes 4"} <= set(options)
    jsrun = p.launcher("CMD", 1, 4, "/tmp")
    assert f"jsrun -n 4 -r 1 {JSRUN_OVERRIDES} /bin/bash" in jsrun


def test_requests_are_checked_against_the_site():
    from perfscale.errors import SpecError

    with pytest.raises(SpecError, match="walltime 01:00:00 requested, the limit is 00:30:00"):
        make_provider(load_site("quartz"), walltime_s=3600, partition="pdebug")
    with pytest.raises(SpecError, match="300 nodes requested, the limit is 256"):
        make_provider(load_site("lassen"), walltime_s=60, nodes_per_block=300)


def test_config_and_pilot_walltime(tmp_path: Path):
    cfg = parsl_config(load_site("quartz"), tmp_path, workers=36, walltime_s=1800)
    (htex,) = cfg.executors
    assert htex.max_workers_per_node == 36 and htex.address is None  # workers probe every address
    assert cfg.strategy == "simple"
    local = parsl_config(load_site("local"), tmp_path, workers=2)
    assert local.strategy == "none" and local.executors[0].address == "127.0.0.1"
    assert worker_init(load_site("local")) == f"export PATH={BIN}:$PATH"
    assert htex.available_accelerators == []
    # a stage of 2-GPU tasks on Lassen (4 V100 a node): two workers a node, each pinned to its pair for life
    gpu = parsl_config(load_site("lassen"), tmp_path, workers=40, walltime_s=1800, task_gpus=2)
    assert gpu.executors[0].available_accelerators == ["0,1", "2,3"]
    assert gpu.executors[0].workers_per_node == 2

    study = Study.model_validate(
        {
            "name": "w",
            "stages": {
                "s": {
                    "kind": "noop",
                    "grid": {"product": {"i": list(range(100))}},
                    "resources": {"walltime": "00:10:00", "expected_runtime": "00:01:00"},
                }
            },
        }
    )
    tasks = build_plan(study).tasks
    # 100 tasks x 60 s over 10 slots + the worst overrun (9 min) = 19 min
    assert pilot_walltime(tasks, slots=10, limit_s=86400) == 1140
    assert pilot_walltime(tasks, slots=10, limit_s=900) == 900  # capped at the partition limit
    assert pilot_walltime(tasks[:1], slots=10, limit_s=86400) == 600  # floor: 10 min
    assert pilot_walltime([], slots=10, limit_s=3600) == 3600


@pytest.mark.slow
def test_slurm_pilot_runs_a_study(slurm: SlurmCluster, write_study, study_dir: Path):  # noqa: F811
    """`perfscale run --engine parsl` on the test Slurm: a SlurmProvider block (srun-launched worker pool)."""
    site = slurm.write_site(study_dir, max_workers=2)
    study = write_study(
        textwrap.dedent(
            """\
            name: pilot
            stages:
              square:
                kind: function
                params: {callable: "fns.py:square"}
                grid: {product: {x: [1, 2, 3, 4, 5]}}
                resources: {walltime: "00:05:00"}
              total:
                kind: function
                inputs: [square]
                params: {callable: "fns.py:total"}
                resources: {walltime: "00:05:00"}
            """
        )
    )
    run = study_dir / "run"
    before = set(slurm.run(["sacct", "-n", "-X", "-P", "--format=JobID"]).splitlines())
    code = main(["run", str(study), "--site", str(site), "--engine", "parsl", "--run-dir", str(run)])
    assert code == 0
    store = RunStore(run)
    assert store.read_stage("total").to_pandas()[["n", "sum_y"]].values.tolist() == [[5, 55]]
    assert store.attempts()["ok"].all() and len(store.attempts()) == 6
    hosts = set(store.read_stage("square", provenance=True).to_pandas()["_host"])
    assert len(hosts) == 1

    # exactly one pilot block was submitted, ran under Slurm, and was cancelled at shutdown
    def blocks() -> list[list[str]]:
        out = slurm.run(["sacct", "-n", "-X", "-P", "--format=JobID,JobName,State,Timelimit"])
        return [ln.split("|") for ln in out.splitlines() if ln.split("|")[0] not in before]

    def settled() -> bool:  # sacct lists a job seconds after the controller knows it, and it must have ended
        found = blocks()
        return bool(found) and found[0][2] not in ("PENDING", "RUNNING", "REQUEUED")

    deadline = time.monotonic() + 60
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.5)
    (block,) = blocks()
    assert block[1].startswith("parsl.perfscale.block-0") and block[2].startswith("CANCELLED"), block
    # 6 tasks x 5 min over 2 workers: the pilot asked for 15 minutes (pilot_walltime)
    assert block[3] == "00:15:00"
    assert ParslEngine(store.site, run, 2).config().executors[0].provider.walltime == "00:15:00"
