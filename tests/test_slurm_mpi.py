"""A 2-rank TabDDPM task launched by srun inside a Slurm array element, on the real local Slurm.

tests/slurm_cluster.py sets `MpiDefault=pmix`: of the MPI plugins Debian's Slurm 22.05 lists (`srun
--mpi=list`: none, cray_shasta, pmi2, pmix, pmix_v4), Debian's Open MPI 4.1 (built with external PMIx, no
PMI-1/2 support) starts under pmix only; with none or pmi2 each rank aborts in MPI_Init ("OMPI was not built
with SLURM's PMI support"). `--cpu-bind=cores` makes srun warn "cluster configuration lacks support for cpu
binding" under the test cluster's task/none, and goes on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from perfscale.cli import main
from perfscale.execute import execute_task
from perfscale.runner import prepare_run
from perfscale.sched.submit import submitted, wait
from perfscale.spec.site import load_site
from perfscale.store import RunStore
from tests.slurm_cluster import SlurmCluster, slurm  # noqa: F401

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI is not installed (scripts/setup.sh)"),
]

STUDY = """\
name: srunmpi
seed: 3
resources: {walltime: "00:10:00", memory_gb: 0.5}
stages:
  data: {kind: ingest, params: {kind: sklearn, source: iris}}
  train:
    kind: train
    inputs: [data]
    resources: {ranks: 2, walltime: "00:10:00", memory_gb: 0.5}
    params:
      source: data
      generator: tabddpm
      hyperparameters: {num_timesteps: 4, steps: 2, batch_size: 32, d_layers: [8], dim_t: 8, threads: 1}
"""


def test_a_two_rank_tabddpm_task_runs_through_srun_in_an_array_element(
    slurm: SlurmCluster,  # noqa: F811
    write_study,
    study_dir: Path,
):
    site = slurm.write_site(study_dir)
    run, study = study_dir / "run", write_study(STUDY)
    # the data stage runs here, in-process: only the 2-rank train stage goes to Slurm (one array, no wait on
    # a dependency), as `perfscale submit` skips the tasks whose shards are written
    store = prepare_run(study, load_site(site), run)
    assert execute_task(run, 0).ok
    assert main(["submit", str(study), "--site", str(site), "--run-dir", str(run)]) == 0
    store = RunStore(run)
    assert [a.stage for a in submitted(store)] == ["train"]
    train = next(a for a in submitted(store) if a.stage == "train")
    script = (run / "arrays" / f"{train.name}.sh").read_text()
    assert "#SBATCH --ntasks=2" in script.splitlines()
    assert "  srun --nodes=1 --ntasks=2 --ntasks-per-node=2 --cpus-per-task=1 --cpu-bind=cores " in script
    states = wait(store, every_s=1, timeout_s=400)
    attempts = store.attempts()
    assert attempts["ok"].all(), attempts[["stage", "failure_kind", "message"]].to_string()
    assert {s.state for s in states.values()} == {"COMPLETED"}
    telemetry = store.read_stage("train").to_pandas()
    assert telemetry["step"].max() == 1 and set(telemetry["device"]) == {"cpu"}
    # both ranks ran: perfscale's bootstrap refuses a rank that finds itself alone in a 2-rank task (an MPI
    # singleton, what srun without PMIx starts), so the fit ran in a world of 2
    (log,) = run.glob(f"logs/{train.name}-*.out")
    assert "srun: error" not in log.read_text()
