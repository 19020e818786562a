"""Multi-rank tasks on real Open MPI (mpirun --oversubscribe, gloo on CPU): DDP TabDDPM equals one process,
checkpoints resume on another rank count, launch lines. Tiny models (tests/mpi_fit.py)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from perfscale.errors import SpecError
from perfscale.sched.mpi import mpi_program, task_launch_line
from perfscale.spec import load_site
from tests.mpi_fit import HYPERPARAMETERS, fit
from tests.procs import alive, in_session

ROOT = Path(__file__).resolve().parents[1]
MPIRUN = shutil.which("mpirun")
# without Open MPI these tests skip with the reason shown (the plan-time "mpirun is not on PATH" error is
# tested either way); PERFSCALE_REQUIRE_MPI=1 (CI) runs them regardless, so a missing MPI fails there
needs_mpi = pytest.mark.skipif(
    MPIRUN is None and os.environ.get("PERFSCALE_REQUIRE_MPI") != "1",
    reason="Open MPI is not installed (scripts/setup.sh); PERFSCALE_REQUIRE_MPI=1 makes this a failure",
)


def mpirun(ranks: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    line = [MPIRUN, *root, "--oversubscribe", "-n", str(ranks), sys.executable, "-m", "mpi4py", *args]
    return subprocess.run(line, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def assert_same_fit(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=name)


# ---- launch lines and plan-time checks (no processes) ------------------------------------------------------


def test_launch_lines_word_by_word() -> None:
    from perfscale.spec.study import Resources

    local, quartz, lassen = load_site("local"), load_site("quartz"), load_site("lassen")
    two = Resources(ranks=2, cores=1)
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    assert task_launch_line(local, two) == [
        "mpirun", *root, "--oversubscribe", "-n", "2", "--map-by", "ppr:2:node:PE=1", "--bind-to", "core"
    ]  # fmt: skip
    eight = Resources(ranks=8, ranks_per_node=4, cores_per_rank=2, nodes=2)
    assert task_launch_line(quartz, eight) == [
        "srun", "--nodes=2", "--ntasks=8", "--ntasks-per-node=4", "--cpus-per-task=2", "--cpu-bind=cores"
    ]  # fmt: skip
    gpus = Resources(ranks=8, ranks_per_node=4, cores_per_rank=10, gpus_per_rank=1)
    assert task_launch_line(lassen, gpus) == [
        "jsrun", "--nrs=8", "--tasks_per_rs=1", "--cpu_per_rs=10", "--gpu_per_rs=1", "--rs_per_host=4",
        "--bind=packed:10",
    ]  # fmt: skip
    lrun = lassen.model_copy(update={"launcher": "lrun"})
    assert task_launch_line(lrun, gpus) == ["lrun", "-N2", "-T4", "--gpus_per_task=1"]
    assert mpi_program("/r/plan.parquet", "3")[1:] == [
        "-m", "mpi4py", "-m", "perfscale.cli", "task", "run", "/r/plan.parquet", "3"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("resources", "site", "message"),
    [
        ("{ranks: 2, ranks_per_node: 1}", "local", "resources.ranks: 2 ranks at 1 per node need 2 nodes"),
        ("{ranks: 9999}", "local", "resources.ranks_per_node: 9999 ranks x 1 cores_per_rank exceed"),
        ("{ranks: 2, gpus_per_rank: 1}", "local", "resources.gpus_per_rank: site 'local' has no GPUs"),
        ("{ranks: 4, ranks_per_node: 3}", "quartz", "make ranks a multiple of ranks_per_node"),
        ("{ranks: 2}", "no-mpirun", "mpirun is not on PATH; install Open MPI"),
    ],
)
def test_ranks_the_site_cannot_hold_fail_at_plan_time(write_study, monkeypatch, resources, site, message):
    from perfscale.plan.planner import build_plan
    from perfscale.spec.study import load_study

    if site == "no-mpirun":
        monkeypatch.setenv("PATH", "/nonexistent")
        site = "local"
    study = write_study(f"name: r\nstages:\n  a:\n    kind: noop\n    resources: {resources}\n")
    with pytest.raises(SpecError, match=re.escape(message)) as caught:
        build_plan(load_study(study), str(study), load_site(site))
    assert str(caught.value).startswith(f"{study}:")


def test_a_cluster_site_planned_on_a_host_without_mpirun_is_not_refused(write_study, monkeypatch) -> None:
    """MPI is probed on this host for the local site only: a login node without mpirun plans for Slurm."""
    from perfscale.plan.planner import build_plan
    from perfscale.spec.study import load_study

    monkeypatch.setenv("PATH", "/nonexistent")
    study = write_study(
        "name: r\nstages:\n  a:\n    kind: noop\n    resources: {ranks: 4, ranks_per_node: 2}\n"
    )
    plan = build_plan(load_study(study), str(study), load_site("quartz"))
    assert [t.ranks for t in plan.of_stage("a")] == [4]
    with pytest.raises(SpecError, match="mpirun is not on PATH"):
        local = load_site("local")
        wide = local.model_copy(update={"limits": local.limits.model_copy(update={"max_nodes": 2})})
        build_plan(load_study(study), str(study), wide)


DEEPSPEED_STUDY = """\
name: ds
stages:
  data: {kind: ingest, params: {kind: sklearn, source: iris}}
  train:
    kind: train
    inputs: [data]
    params:
      source: data
      generator: great
      hyperparameters:
        zero_stage: 2
        deepspeed: %s
"""


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            "{train_batch_sizee: 8}",
            "DeepSpeed {v} knows no config key 'train_batch_sizee'; correct the spelling",
        ),
        (
            "{zero_optimization: {overlap_comms: true}}",
            "zero_optimization.overlap_comms: DeepSpeed {v} knows no such field; correct the spelling",
        ),
        ("{gradient_clipping: 0.5}", "'gradient_clipping' is set by perfscale; remove it"),
        (
            "{zero_optimization: {stage: 3}}",
            "'zero_optimization.stage' is set by perfscale; remove it and set",
        ),
        ("{zero_optimization: {overlap_comm: true}, wall_clock_breakdown: false}", None),
    ],
)
def test_deepspeed_keys_deepspeed_does_not_know_fail_at_plan_time(write_study, keys, message) -> None:
    """The known keys are DeepSpeed's own (its config class reads them), not a list kept by perfscale."""
    from deepspeed import __version__

    from perfscale.plan.planner import build_plan
    from perfscale.spec.study import load_study

    study = write_study(DEEPSPEED_STUDY % keys)
    if message is None:
        build_plan(load_study(study), str(study), load_site("local"))
        return
    with pytest.raises(SpecError) as caught:
        build_plan(load_study(study), str(study), load_site("local"))
    text = str(caught.value)
    assert f"{study}:12: stages.train.params.hyperparameters.deepspeed: " in text
    assert message.format(v=__version__) in text


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("one") / "fit.safetensors"
    fit(out)
    return load_file(str(out))


@needs_mpi
@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_ddp_fit_equals_one_process(reference, ranks, tmp_path) -> None:
    """Loss curve, weights and rank 0's EMA of the weights equal one process's to 1e-5 (1 rank: the session
    under mpirun with world size 1, which trains without DDP)."""
    out = tmp_path / "fit.safetensors"
    done = mpirun(ranks, str(ROOT / "tests" / "mpi_fit.py"), str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    got = load_file(str(out))
    assert len(got["losses"]) == HYPERPARAMETERS["steps"] and got["losses"].isfinite().all()
    assert_same_fit(reference, got)
    assert any(name.startswith("ema.") for name in got)
    assert not list(tmp_path.glob("*.rank*"))  # rank 0 alone wrote


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL mpirun's whole session and wait until every process of it is gone: a rank outside mpirun's
    process group would otherwise go on checkpointing (and rotating the latest away) while the test reads."""
    deadline = time.monotonic() + 30
    while pids := in_session(proc.pid):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert time.monotonic() < deadline, f"still running after SIGKILL: {alive(pids)}"
        time.sleep(0.01)
    proc.wait()
    proc.stderr.close()


def kill_at_first_checkpoint(
    script: str, *args: str, folder: Path, env: dict[str, str] | None = None
) -> None:
    """Run tests/`script` on 2 ranks under mpirun and SIGKILL the whole job once a checkpoint is in
    `folder`."""
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    line = [MPIRUN, *root, "--oversubscribe", "-n", "2", sys.executable, "-m", "mpi4py"]
    line += [str(ROOT / "tests" / script), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.Popen(line, env=env, stderr=subprocess.PIPE, start_new_session=True)
    try:
        while not list(folder.glob("checkpoint-*.safetensors")):
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.005)
    finally:
        kill_session(proc)


@needs_mpi
def test_a_checkpoint_of_two_ranks_resumes_in_one_process(reference, tmp_path) -> None:
    folder, out = tmp_path / "checkpoints", tmp_path / "fit.safetensors"
    kill_at_first_checkpoint("mpi_fit.py", str(out), str(folder), folder=folder)
    (checkpoint,) = folder.glob("checkpoint-*.safetensors")
    assert int(checkpoint.stem.split("-")[1]) < HYPERPARAMETERS["steps"]  # really mid-training
    with safe_open(str(checkpoint), framework="pt") as handle:  # the EMA is checkpointed with the weights
        assert any(k.startswith("ema.") for k in handle.keys())  # noqa: SIM118 (not a dict)
    assert not out.exists()
    fit(out, str(folder))  # one process resumes what two ranks checkpointed
    assert_same_fit(reference, load_file(str(out)))


# ---- a multi-rank task through `perfscale run`: a lost rank, the retry resumes ----------------------------

DDP_STUDY = """\
name: ddp
seed: 1
stages:
  data: {kind: ingest, params: {kind: sklearn, source: iris}}
  split: {kind: split, inputs: [data], params: {source: data, holdout_fraction: 0.3}}
  train:
    kind: train
    inputs: [split]
    resources: {ranks: 2}
    params:
      source: split
      generator: tabddpm
      hyperparameters:
        {num_timesteps: 20, steps: 400, batch_size: 32, d_layers: [32, 32], dim_t: 16, threads: 1,
         checkpoint_every: 5}
"""
# 400 steps: the kill lands after the first checkpoint (step 5) and long before the end, even on a loaded
# machine (with 60 steps it sometimes landed after training had finished, and nothing was lost)


def run_study(study: Path, run: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "perfscale.cli", "run", str(study), "--run-dir", str(run)]
    cmd += ["--engine", "local", "--workers", "1", "--no-report", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def rank_pid(plan: Path, rank: int) -> int | None:
    """The process of `rank` of a task of `plan` (found by its command line and Open MPI's rank variable)."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"task run {plan}" in cmdline and f"OMPI_COMM_WORLD_RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


def model_weights(run: Path) -> dict[str, torch.Tensor]:
    """The denoiser's tensors and their EMA (`ema.`) of the train task's saved model (the table encoder's are
    left out)."""
    (path,) = run.glob("artifacts/train/*/model/model.safetensors")
    return {k: v for k, v in load_file(str(path)).items() if not k.startswith("encoder.")}


@needs_mpi
def test_a_killed_rank_is_node_lost_and_the_retry_resumes_to_the_same_weights(write_study, tmp_path) -> None:
    from perfscale.store import RunStore

    run = tmp_path / "run"
    proc = run_study(write_study(DDP_STUDY), run)
    try:
        while not list(run.glob("checkpoints/train/*/checkpoint-*.safetensors")):
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.01)
        pid = rank_pid((run / "plan.parquet").resolve(), 1)
        assert pid is not None, "rank 1 not found"
        os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)  # a lost rank ends the launch: nobody waits forever
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    attempts = RunStore(run).attempts()
    train = attempts[attempts.stage == "train"].sort_values("attempt")
    assert train.failure_kind.tolist() == ["node_lost", None], train.message.tolist()
    # rank 0 either saw its peer's socket close (gloo) or was ended with the job before it could record
    assert "Connection reset by peer" in train.message.iloc[0] or "rank was lost" in train.message.iloc[0]
    logs = sorted(p.name for p in run.glob("checkpoints/train/*/mpi-attempt-*.log"))
    assert logs == ["mpi-attempt-1.log", "mpi-attempt-2.log"]
    # the retry resumed from the killed attempt's checkpoint and ends with the weights of an uninterrupted
    # fit (one process: DDP equals it, test above)
    (last,) = run.glob("checkpoints/train/*/checkpoint-*.safetensors")
    with safe_open(str(last), framework="pt") as handle:
        assert int(handle.metadata()["resumed_from"]) >= 5

    assert_same_fit(one_process_fit(RunStore(run)), model_weights(run))


def one_process_fit(store) -> dict[str, torch.Tensor]:
    """The train task's fit in this process, uninterrupted, on the table the stage reads."""
    from perfscale.generators import get_generator
    from perfscale.stages import StageContext
    from perfscale.stages.train import real_table
    from perfscale.tabular.meta import infer_meta

    (task,) = store.plan.of_stage("train")
    ctx = StageContext(store, task, attempt=1)
    real = real_table(ctx, "split")
    generator = get_generator("tabddpm")(**task.params["hyperparameters"])
    generator.fit(real, infer_meta(real), seed=ctx.seed)
    weights = {k: v.contiguous() for k, v in generator._denoiser.state_dict().items()}
    return weights | {f"ema.{k}": v.contiguous() for k, v in generator._ema.state_dict().items()}


@needs_mpi
def test_sites_probe_says_whether_mpi_works() -> None:
    from perfscale.spec.probe import check_mpi

    check = check_mpi(load_site("local"))
    assert check.found.endswith("2 ranks here: works"), check.found


def test_an_array_element_of_a_multi_rank_stage_launches_mpi(tmp_path) -> None:
    from perfscale.plan import build_plan
    from perfscale.sched.arrays import stage_arrays
    from perfscale.sched.render import render_array
    from perfscale.spec.study import Study

    res = {"ranks": 8, "ranks_per_node": 4, "cores_per_rank": 2, "walltime": "00:10:00"}
    study = Study.model_validate({"name": "s", "stages": {"p": {"kind": "noop", "resources": res}}})
    quartz = load_site("quartz")
    (job,) = stage_arrays("s", "p", build_plan(study).of_stage("p"), quartz)
    script = render_array(job, quartz, tmp_path).script
    header = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert {"#SBATCH --nodes=2", "#SBATCH --ntasks=8", "#SBATCH --ntasks-per-node=4"} <= set(header)
    assert "#SBATCH --cpus-per-task=2" in header
    plan = str((tmp_path / "plan.parquet").resolve())
    line = ["srun", "--nodes=2", "--ntasks=8", "--ntasks-per-node=4", "--cpus-per-task=2", "--cpu-bind=cores"]
    task_line = shlex.join([*line, *mpi_program(plan)]) + ' "$index" &'
    assert f"  {task_line}" in script.splitlines()


BOOTSTRAP = """\
import json, socket
from perfscale.distributed.bootstrap import candidate_ports, job_id, session
from perfscale.errors import TaskFailure
import torch.distributed as dist
ports = candidate_ports("k", job_id())
busy = socket.socket()
busy.bind(("", ports[0]))
busy.listen()
with session("k", 1) as s:
    out = {"ports": ports[:2], "port": s.master_port, "addr": s.master_addr, "backend": s.backend}
    print(json.dumps(out))
print(json.dumps({"destroyed": not dist.is_initialized()}))
try:
    with session("k", 2):
        pass
except TaskFailure as e:
    print(json.dumps({"kind": e.kind.value, "message": str(e)}))
"""


def test_bootstrap_skips_a_taken_port_and_refuses_a_singleton_of_a_two_rank_task() -> None:
    """A process started without mpirun is an MPI singleton: what a launcher starting N singletons makes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", BOOTSTRAP], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    started, destroyed, refused = (json.loads(line) for line in done.stdout.splitlines())
    assert started["port"] == started["ports"][1] != started["ports"][0]  # EADDRINUSE: the next candidate
    assert started["addr"] == "127.0.0.1" and started["backend"] == "gloo"
    assert destroyed == {"destroyed": True}
    assert refused["kind"] == "bad_input"
    assert refused["message"].startswith("the task asks for 2 ranks but MPI started 1")


# ---- GReaT (tiny GPT-2): DDP and DeepSpeed ZeRO-2 equal one process --------------------------------------


@pytest.fixture(scope="module")
def great_reference() -> dict[str, torch.Tensor]:
    from tests.mpi_great import fit as fit_great

    weights, losses, _ = fit_great({})
    return {f"model.{k}": v for k, v in weights.items()} | {"losses": losses}


@needs_mpi
def test_great_ddp_on_two_ranks_equals_one_process(great_reference, tmp_path) -> None:
    out = tmp_path / "great.safetensors"
    done = mpirun(2, str(ROOT / "tests" / "mpi_great.py"), str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_fit(great_reference, load_file(str(out)))


class _Killed(Exception):
    """Raised in place of a kill right after a checkpoint is written."""


def test_a_great_checkpoint_resumes_after_a_crash_and_refuses_another_fit(
    great_reference, tmp_path, monkeypatch
) -> None:
    """GReaT without DeepSpeed, one process (no MPI needed): a fit that dies right after its step-4
    checkpoint (one safetensors file) is resumed from step 4 and ends with the losses and weights of an
    uninterrupted fit; a fit of another seed refuses the folder, and so does a damaged checkpoint."""
    from perfscale.distributed import checkpoint
    from perfscale.errors import BadInput
    from perfscale.generators import get_generator
    from perfscale.tabular.meta import infer_meta
    from tests.mpi_great import HYPERPARAMETERS
    from tests.mpi_great import fit as fit_great
    from tests.tables import iris_table

    folder = tmp_path / "checkpoints"
    extra = {"checkpoint_dir": str(folder), "checkpoint_every": 4}
    write = checkpoint.write

    def write_then_die(*args, **kwargs):
        write(*args, **kwargs)
        raise _Killed

    monkeypatch.setattr(checkpoint, "write", write_then_die)
    with pytest.raises(_Killed):
        fit_great(extra)
    monkeypatch.setattr(checkpoint, "write", write)
    assert [p.name for p in folder.iterdir()] == ["checkpoint-000000004.safetensors"]
    with safe_open(str(folder / "checkpoint-000000004.safetensors"), framework="pt") as handle:
        assert handle.metadata()["step"] == "4" and "optimizer.0.exp_avg" in handle.keys()  # noqa: SIM118

    weights, losses, resumed_from = fit_great(extra)
    assert resumed_from == 4
    assert_same_fit(great_reference, {f"model.{k}": v for k, v in weights.items()} | {"losses": losses})
    assert [p.name for p in folder.iterdir()] == ["checkpoint-000000012.safetensors"]  # the newest kept

    table = iris_table()
    other = get_generator("great")(**HYPERPARAMETERS, **extra)
    with pytest.raises(BadInput, match="belongs to another fit"):
        other.fit(table, infer_meta(table), seed=4)
    (folder / "checkpoint-000000012.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(BadInput, match=r"checkpoint-000000012\.safetensors is unreadable"):
        fit_great(extra)


@needs_mpi
def test_a_great_checkpoint_of_two_ddp_ranks_resumes_in_one_process(great_reference, tmp_path) -> None:
    """Rank 0 of a 2-rank DDP fit checkpoints at step 4 and the whole job is SIGKILLed there; one process
    resumes it from step 4 and ends with the losses and weights of an uninterrupted fit."""
    from tests.mpi_great import fit as fit_great

    folder = tmp_path / "checkpoints"
    extra = {"checkpoint_dir": str(folder), "checkpoint_every": 4}
    out = str(tmp_path / "out.safetensors")
    kill_at_first_checkpoint("mpi_great.py", out, json.dumps(extra), folder=folder, env={"GREAT_PAUSE": "1"})
    assert [p.name for p in folder.iterdir()] == ["checkpoint-000000004.safetensors"]

    weights, losses, resumed_from = fit_great(extra)  # one process
    assert resumed_from == 4
    assert_same_fit(great_reference, {f"model.{k}": v for k, v in weights.items()} | {"losses": losses})


@needs_mpi
def test_great_zero2_on_two_ranks_equals_one_process_and_resumes_deepspeed_checkpoints(
    great_reference, tmp_path
) -> None:
    """DeepSpeed ZeRO-2 on 2 CPU ranks (gloo): the same losses and weights as one process; its own
    checkpoints are written, and a fit from the one before the last ends with the same weights. (The first
    DeepSpeed start on a machine compiles its shared-memory extension, about 30 s.)"""
    from tests.mpi_great import HYPERPARAMETERS as GREAT

    out, folder = tmp_path / "zero2.safetensors", tmp_path / "deepspeed"
    extra = {"zero_stage": 2, "checkpoint_dir": str(folder), "checkpoint_every": 4}
    done = mpirun(2, str(ROOT / "tests" / "mpi_great.py"), str(out), json.dumps(extra), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = load_file(str(out))
    assert got["checkpoint_steps"].tolist() == [GREAT["steps"] - 4, GREAT["steps"]]  # the newest two kept
    assert {p.name for p in folder.glob("step-*/*_optim_states.pt")} == {
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    }  # ZeRO-2: each rank saved its shard of the optimizer
    assert_same_fit(great_reference, {k: v for k, v in got.items() if k in great_reference})
    assert int(got["resumed_from"]) == GREAT["steps"] - 4
    resumed = {k.removeprefix("resumed."): v for k, v in got.items() if k.startswith("resumed.")}
    assert_same_fit(
        {k: v for k, v in got.items() if k.startswith("model.")},
        {f"model.{k}": v for k, v in resumed.items()},
    )
    torch.testing.assert_close(got["resumed_losses"], got["losses"], rtol=0, atol=1e-5)
