"""Dask and Ray engines.

For real on this machine: the end-to-end study (run, rerun nothing, failures by kind, a dying worker) on a
`distributed.LocalCluster` and on a local Ray session (one session for the whole module: Ray takes seconds
to start), and `perfscale run --engine dask` as a command. Without submitting: the dask-jobqueue
configuration and rendered job scripts for quartz (Slurm) and lassen (LSF), the Ray head and worker start
commands through srun and jsrun, and the refusal of Ray on ppc64le.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perfscale.engines import ENGINES, make_engine
from perfscale.engines.dask_engine import dask_cluster_config, jobqueue_cluster
from perfscale.engines.ray_engine import (
    PORT_CEILING,
    PORT_FLOOR,
    allocation,
    ray_cluster_commands,
    ray_environment,
    ray_ports,
)
from perfscale.errors import SpecError
from perfscale.runner import prepare_run, run_plan
from perfscale.spec import load_site
from perfscale.spec.site import Site, available_sites
from perfscale.status import run_status
from perfscale.store import RunStore
from tests.studies import FAILING, STUDY

PYTHON = sys.executable

try:  # a private one-node Slurm on localhost; its fixture skips without root or the Slurm binaries
    from tests.slurm_cluster import slurm
except ImportError:  # pragma: no cover  (tests/ not a package: it is on sys.path itself)
    try:
        from slurm_cluster import slurm
    except ImportError:

        @pytest.fixture(scope="session")
        def slurm():
            pytest.skip("tests/slurm_cluster.py (the private test Slurm) is not available")


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """One local Ray session for the module, with 4 declared GPUs (there are none: Ray only counts them); the
    engines of the tests find it running and reuse it."""
    from tests.test_gpus import gpu_site

    site = gpu_site(tmp_path_factory.mktemp("ray"), engine="ray")
    engine = make_engine("ray", site, Path("."), workers=2)
    engine.start()
    yield engine
    engine.shutdown()


@pytest.fixture(params=["dask", "ray"])
def engine(request):
    if request.param == "ray":
        request.getfixturevalue("ray_session")
    return request.param


# ---------------------------------------------------------------------------------------------- end to end


def test_gpu_tasks_are_bound_apart(write_study, tmp_path, engine):
    """A 4-GPU site (declared; no GPU here): concurrent tasks see disjoint ids (tests/test_gpus.py). Dask:
    worker resources GPU=1 and each worker pinned at its start; Ray: num_gpus=1, Ray's ids."""
    from tests.test_gpus import run_gpu_study

    vendor = "nvidia" if engine == "ray" else "amd"
    # Dask: 6 tasks on 2 pinned workers, each reused for 3 tasks on its one id
    workers = 2 if engine == "dask" else 4
    run_gpu_study(write_study, tmp_path, engine, vendor, 1, 6, 0.2, cpu=engine == "ray", workers=workers)


def test_study_runs_and_reruns_nothing(write_study, tmp_path, engine):
    store = prepare_run(write_study(STUDY), load_site("local"), tmp_path / "run")
    summary = run_plan(store, engine, workers=2, progress=False)
    assert (summary["square"].done, summary["square"].ran, summary["total"].done) == (5, 5, 1)
    squares = store.read_stage("square").to_pandas().sort_values("x")
    assert squares["y"].tolist() == [1, 4, 9, 16, 25]
    assert (squares["seed"] == 3).all() and (squares["_attempt"] == 1).all()
    # the tasks ran in worker processes, not in this one
    assert os.getpid() not in set(store.attempts()["pid"])
    row = store.read_stage("total").to_pylist()[0]
    assert (row["n"], row["sum_y"]) == (5, 55)
    again = run_plan(RunStore(store.root), engine, workers=2, progress=False)
    assert again["square"].ran == 0 and again["total"].ran == 0


def test_failures_are_recorded_and_retried_by_kind(write_study, tmp_path, engine):
    store = prepare_run(write_study(FAILING.replace("MODE", "raise")), load_site("local"), tmp_path / "run")
    summary = run_plan(store, engine, workers=2, progress=False)
    assert (summary["fail"].done, summary["fail"].failed) == (2, 1)
    assert summary["fail"].failure_kinds == {"app_error": 1}
    attempts = store.attempts()
    failed_key = next(t.key for t in store.plan.of_stage("fail") if t.params["x"] == 2)
    bad = attempts[attempts.task_key == failed_key].sort_values("attempt")
    assert bad["attempt"].tolist() == [1, 2, 3]
    assert set(bad["failure_kind"]) == {"app_error"}
    assert "boom at x=2" in bad["message"].iloc[0]
    flaky = store.read_stage("flaky").to_pandas()
    assert sorted(flaky["seen_attempt"]) == [2, 2] == sorted(flaky["_attempt"])
    states = {s.stage: s for s in run_status(store)}
    assert (states["fail"].done, states["fail"].failed, states["fail"].missing) == (2, 1, 0)


def test_a_dying_worker_is_node_lost_and_the_campaign_goes_on(write_study, tmp_path, engine):
    """os._exit in a task: Dask (allowed-failures 0) and Ray (max_retries 0) fail the future at once, and
    run_plan spends the study's node_lost budget on the task that kills its worker, and only on it."""
    store = prepare_run(write_study(FAILING.replace("MODE", "exit")), load_site("local"), tmp_path / "run")
    summary = run_plan(store, engine, workers=2, progress=False)
    assert summary["fail"].failure_kinds == {"node_lost": 1}
    assert summary["fail"].done == 2 and summary["flaky"].done == 2
    attempts = store.attempts()
    killer = next(t.key for t in store.plan.of_stage("fail") if t.params["x"] == 2)
    lost = attempts[attempts.task_key == killer].sort_values("attempt")
    assert lost["failure_kind"].tolist() == ["node_lost"] * 3
    assert lost["attempt"].tolist() == [1, 2, 3]
    assert "worker lost" in lost["message"].iloc[0]


def test_ray_cpu_calls_run_on_actors_that_live_on_and_a_killed_one_is_replaced(ray_session, tmp_path):
    """The actor pool: calls reuse the actor's process (its model cache); SIGKILL of that process fails the
    call in flight with Ray's RayActorError (the runner's node_lost) and the next call runs on a new actor."""
    from ray.exceptions import RayActorError

    with make_engine("ray", load_site("local"), tmp_path, workers=1) as engine:
        first = engine.submit(os.getpid).result(timeout=60)
        assert engine.submit(os.getpid).result(timeout=60) == first
        in_flight = engine.submit(time.sleep, 60)
        os.kill(first, signal.SIGKILL)
        with pytest.raises(RayActorError):
            in_flight.result(timeout=60)
        assert engine.submit(os.getpid).result(timeout=60) not in (first, os.getpid())


def test_perfscale_run_with_the_dask_engine(write_study, tmp_path):
    """The command, as users start it: LocalCluster's spawned workers re-import the `perfscale` entry
    point, which must not start a second run."""
    study = write_study(STUDY)
    run = tmp_path / "run"
    argv = [str(Path(PYTHON).with_name("perfscale")), "run", str(study), "--engine", "dask"]
    argv += ["--run-dir", str(run), "--workers", "2", "--no-report", "--quiet"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "engine dask" in done.stdout
    assert len(RunStore(run).done_keys("square")) == 5


@pytest.mark.slow
def test_dask_pilot_on_a_real_slurm(slurm, write_study, tmp_path):
    """SLURMCluster built from a site file submits a real job; its workers run the study and are cancelled
    when the engine stops."""
    site_file = tmp_path / "slurm-dask.yaml"
    site_file.write_text(slurm.site_yaml(name="slurmdask").replace("engine: parsl", "engine: dask"))
    store = prepare_run(write_study(STUDY), load_site(site_file), tmp_path / "run")
    summary = run_plan(store, workers=2, progress=False)  # the site's engine: dask
    assert (summary["square"].done, summary["total"].done) == (5, 1)
    jobs = slurm.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobName,State,AllocCPUS", "--name=perfscale-slurmdask"]
    )
    name, state, cpus = jobs.split("\n")[0].split("|")
    assert (name, cpus) == ("perfscale-slurmdask", str(slurm.cpus)) and state.startswith("CANCELLED")
    assert list((tmp_path / "run" / "dask").glob("perfscale-slurmdask-*.err"))  # the job's log


@pytest.mark.slow
def test_ray_inside_a_real_slurm_allocation(slurm, write_study, tmp_path):
    """`perfscale run --engine ray` under salloc: the head starts through srun on the allocated node with the
    ports of its job id, the driver connects with the session token, and the step ends with the run."""
    site_file = tmp_path / "slurm-ray.yaml"
    site_file.write_text(slurm.site_yaml(name="slurmray").replace("engine: parsl", "engine: ray"))
    run = tmp_path / "run"
    argv = ["salloc", "--nodes=1", "--ntasks=1", f"--cpus-per-task={slurm.cpus}", "--time=5", PYTHON, "-m"]
    argv += ["perfscale.cli", "run", str(write_study(STUDY)), "--site", str(site_file), "--run-dir", str(run)]
    argv += ["--workers", "2", "--no-report", "--quiet"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=slurm.env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(RunStore(run).done_keys("square")) == 5
    job_id = done.stderr.split("Granted job allocation ")[1].split()[0]
    head_log = (run / "ray" / "head.log").read_text()
    assert "Ray runtime started" in head_log
    assert f":{ray_ports(job_id, slurm.cpus).gcs}'" in head_log  # "ray start --address='IP:PORT'"
    steps = slurm.run(["sacct", "-j", job_id, "-n", "-P", "-o", "JobID,JobName"])
    assert f"{job_id}.0|ray" in steps  # the head ran as a job step (srun)
    shutil.rmtree(f"/tmp/ray-{os.getuid()}-{job_id}", ignore_errors=True)


def test_engines_are_registered():
    assert ENGINES["dask"] == "perfscale.engines.dask_engine:DaskEngine"
    assert ENGINES["ray"] == "perfscale.engines.ray_engine:RayEngine"


# ------------------------------------------------------------------------------------- dask-jobqueue config


def test_dask_cluster_config_for_quartz_field_by_field(tmp_path):
    quartz = load_site("quartz")
    config = dask_cluster_config(quartz, tmp_path / "dask")
    assert config == {
        "cores": 36,
        "processes": 36,  # max_workers: one single-threaded worker process per concurrent task
        "memory": "128GiB",
        "queue": "pbatch",  # the default partition
        "account": None,  # quartz lists no account
        "walltime": "1-00:00:00",  # pbatch's limit
        "job_name": "perfscale-quartz",
        "job_script_prologue": [
            "module load gcc/10.3.1",
            "export DASK_DISTRIBUTED__WORKER__DAEMON=False",
            "export OMP_PROC_BIND=close",
        ],
        "log_directory": str(tmp_path / "dask"),
        "python": PYTHON,
        "job_extra_directives": [],
        "scheduler_options": {"dashboard": False, "dashboard_address": ":0"},
    }
    chosen = dask_cluster_config(quartz, partition="pdebug", account="bank1", walltime_s=600)
    assert (chosen["queue"], chosen["account"], chosen["walltime"]) == ("pdebug", "bank1", "00:10:00")
    with pytest.raises(SpecError, match="walltime 01:00:00 requested, the limit is 00:30:00"):
        dask_cluster_config(quartz, partition="pdebug", walltime_s=3600)
    # GPU nodes (corona: 8 MI50 per node) ask Slurm for their GPUs, so tasks can use them
    corona = dask_cluster_config(load_site("corona"))
    assert corona["job_extra_directives"] == ["--gpus-per-node=8"] and "worker_extra_args" not in corona
    # a stage of 2-GPU tasks: 4 workers a job (8 GPUs in pairs), each with the resource GPU=2
    pairs = dask_cluster_config(load_site("corona"), task_gpus=2)
    assert pairs["processes"] == 4 and pairs["worker_extra_args"] == ["--resources", "GPU=2"]


def test_slurm_job_script_has_the_right_sbatch_lines(tmp_path):
    quartz = load_site("quartz")
    cluster = jobqueue_cluster(quartz, **dask_cluster_config(quartz, tmp_path / "dask", account="bank1"))
    try:
        lines = cluster.job_script().splitlines()
        address = cluster.scheduler_address
    finally:
        cluster.close()
    sbatch = [x for x in lines if x.startswith("#SBATCH")]
    logs = tmp_path / "dask"
    assert sbatch == [
        "#SBATCH -J perfscale-quartz",
        f"#SBATCH -e {logs}/perfscale-quartz-%J.err",
        f"#SBATCH -o {logs}/perfscale-quartz-%J.out",
        "#SBATCH -p pbatch",
        "#SBATCH -A bank1",
        "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=36",
        "#SBATCH --mem=128G",
        "#SBATCH -t 1-00:00:00",
    ]
    body = lines[lines.index(sbatch[-1]) + 1 :]
    assert body[:3] == [
        "module load gcc/10.3.1",
        "export DASK_DISTRIBUTED__WORKER__DAEMON=False",
        "export OMP_PROC_BIND=close",
    ]
    worker = shlex.split(body[3])
    assert worker[:4] == [PYTHON, "-m", "distributed.cli.dask_worker", address]
    opts = dict(zip(worker[4::2], worker[5::2], strict=False))
    assert opts["--nthreads"] == "1" and opts["--nworkers"] == "36" and opts["--memory-limit"] == "3.56GiB"


def test_dask_cluster_config_for_lassen_field_by_field():
    lassen = load_site("lassen")
    config = dask_cluster_config(lassen)
    launcher = "jsrun --nrs=1 --tasks_per_rs=1 --cpu_per_rs=44 --gpu_per_rs=4 --rs_per_host=1 --bind=none"
    assert config == {
        "cores": 44,
        "processes": 40,
        "memory": "256GiB",
        "queue": "pbatch",
        "walltime": "12:00",  # LSF -W is [hours:]minutes
        "job_name": "perfscale-lassen",
        "job_script_prologue": ["module load cuda/11.8.0", "export DASK_DISTRIBUTED__WORKER__DAEMON=False"],
        "log_directory": None,
        # the job script runs on a launch node: the worker goes through jsrun onto the compute node
        "python": f"{launcher} {PYTHON}",
        "job_extra_directives": ["-nnodes 1"],
        "job_directives_skip": ["#BSUB -n ", '#BSUB -R "span', "#BSUB -M "],
        "lsf_units": "mb",
        "use_stdin": True,  # LSF reads #BSUB lines only from standard input
        "scheduler_options": {"dashboard": False, "dashboard_address": ":0"},
    }
    assert dask_cluster_config(lassen, account="guests")["job_extra_directives"] == ["-nnodes 1", "-G guests"]


def test_lsf_job_script_has_the_right_bsub_lines():
    lassen = load_site("lassen")
    cluster = jobqueue_cluster(lassen, **dask_cluster_config(lassen, account="guests", partition="pdebug"))
    try:
        lines = cluster.job_script().splitlines()
    finally:
        cluster.close()
    bsub = [x for x in lines if x.startswith("#BSUB")]
    assert bsub == [
        "#BSUB -J perfscale-lassen",
        "#BSUB -q pdebug",
        "#BSUB -W 2:00",
        "#BSUB -nnodes 1",
        "#BSUB -G guests",
    ]
    worker = shlex.split(lines[-1])
    assert worker[:7] == ["jsrun", "--nrs=1", "--tasks_per_rs=1", "--cpu_per_rs=44", "--gpu_per_rs=4",
                          "--rs_per_host=1", "--bind=none"]  # fmt: skip
    assert (
        worker[7:9] == [PYTHON, "-m"]
        and "--nworkers" in worker
        and worker[worker.index("--nworkers") + 1] == "40"
    )


def test_dask_cluster_config_refuses_what_cannot_be_sized():
    with pytest.raises(SpecError, match=r"dask-jobqueue needs one of .*lsf.*slurm"):
        dask_cluster_config(load_site("local"))
    auto = load_site("quartz").model_copy(update={"memory_gb_per_node": "auto"})
    with pytest.raises(SpecError, match="needs numbers for cores_per_node and memory_gb_per_node"):
        dask_cluster_config(auto)


# ------------------------------------------------------------------------------------- Ray cluster commands


def _opts(argv: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)


def test_ray_ports_come_from_the_job_id_and_stay_in_their_block():
    p = ray_ports("1234567", 36)
    named = [p.gcs, p.ray_client_server, p.node_manager, p.object_manager, p.dashboard_agent_grpc,
             p.dashboard_agent_listen, p.metrics_export, p.runtime_env_agent]  # fmt: skip
    assert named == list(range(p.gcs, p.gcs + 8))
    assert (p.min_worker, p.max_worker - p.min_worker + 1) == (p.gcs + 8, 80 - 8)  # block of 80: 8 + 72
    assert p.gcs >= PORT_FLOOR and p.max_worker < PORT_CEILING
    assert ray_ports("1234567", 36) == p  # every node of the job computes the same ports
    nxt = ray_ports("1234568", 36)
    assert nxt.gcs == p.gcs + 80  # jobs submitted together get neighbouring, disjoint blocks
    assert ray_ports("4242[3]", 36).gcs >= PORT_FLOOR  # non-numeric ids hash into a block


def test_ray_cluster_commands_for_quartz_field_by_field(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    quartz = load_site("quartz").model_copy(update={"engine": "ray"})
    hosts = ["quartz1", "quartz2", "quartz3"]
    cmds = ray_cluster_commands(quartz, 3, job_id="777", hosts=hosts, head_ip="10.0.0.1", token="t" * 64)
    ports = ray_ports("777", 36)
    ray = str(Path(PYTHON).with_name("ray"))
    srun = ["srun", "--ntasks-per-node=1", "--cpus-per-task=36", "--cpu-bind=none", "--overlap"]
    head = cmds.head
    assert head[:8] == [srun[0], "--nodes=1", "--ntasks=1", *srun[1:], "--nodelist=quartz1"]
    assert head[8:12] == [ray, "start", "--block", "--head"]
    common = {
        "num-cpus": "36",
        "num-gpus": "0",
        "temp-dir": f"/tmp/ray-{os.getuid()}-777",
        "node-manager-port": str(ports.node_manager),
        "object-manager-port": str(ports.object_manager),
        "dashboard-agent-grpc-port": str(ports.dashboard_agent_grpc),
        "dashboard-agent-listen-port": str(ports.dashboard_agent_listen),
        "metrics-export-port": str(ports.metrics_export),
        "runtime-env-agent-port": str(ports.runtime_env_agent),
        "min-worker-port": str(ports.min_worker),
        "max-worker-port": str(ports.max_worker),
    }
    assert _opts(head[8:]) == {
        "node-ip-address": "10.0.0.1",
        "port": str(ports.gcs),
        "ray-client-server-port": str(ports.ray_client_server),
        "include-dashboard": "false",
        **common,
    }
    assert "--disable-usage-stats" in head
    workers = cmds.workers
    assert workers is not None
    assert workers[:8] == [srun[0], "--nodes=2", "--ntasks=2", *srun[1:], "--nodelist=quartz2,quartz3"]
    assert workers[8:11] == [ray, "start", "--block"] and "--head" not in workers
    assert _opts(workers[8:]) == {"address": f"10.0.0.1:{ports.gcs}", **common}
    assert cmds.address == f"10.0.0.1:{ports.gcs}"
    # the token travels in the environment, never in argv (which ps shows to every user of the node)
    assert cmds.env == {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "t" * 64}
    assert not any("t" * 64 in a for a in head + workers)


def test_ray_cluster_commands_for_one_node_and_through_jsrun(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    quartz = load_site("quartz")
    single = ray_cluster_commands(quartz, 1, job_id="5", hosts=["q1"], head_ip="10.0.0.5")
    assert single.workers is None and single.address == f"10.0.0.5:{ray_ports('5', 36).gcs}"
    assert len(single.env["RAY_AUTH_TOKEN"]) == 64  # a fresh token when none is given
    # an x86_64 LSF machine with jsrun (Lassen itself is ppc64le, see below)
    lsf = Site(**{**load_site("lassen").model_dump(), "name": "lsfx86", "arch": "x86_64", "engine": "ray"})
    cmds = ray_cluster_commands(lsf, 2, job_id="99", hosts=["c1", "c2"], head_ip="10.0.1.1")
    rs = ["--tasks_per_rs=1", "--cpu_per_rs=44", "--gpu_per_rs=4", "--rs_per_host=1", "--bind=none"]
    assert cmds.head[:7] == ["jsrun", "--nrs=1", *rs]
    assert cmds.workers is not None and cmds.workers[:7] == ["jsrun", "--nrs=1", *rs]
    assert _opts(cmds.head)["num-gpus"] == "4" and _opts(cmds.head)["num-cpus"] == "40"
    with pytest.raises(SpecError, match="3 nodes requested but the allocation lists 2"):
        ray_cluster_commands(quartz, 3, job_id="5", hosts=["q1", "q2"], head_ip="10.0.0.5")
    with pytest.raises(SpecError, match="no scheduler"):
        ray_cluster_commands(load_site("local"), 1, job_id="5", hosts=["h"], head_ip="127.0.0.1")


def test_ray_environment_respects_an_explicit_auth_mode(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert ray_environment() == {"RAY_USAGE_STATS_ENABLED": "0"}


def test_lassen_refuses_ray(tmp_path):
    lassen = load_site("lassen")
    # the site model: engine ray on ppc64le is invalid
    path = tmp_path / "lassen-ray.yaml"
    path.write_text(available_sites()["lassen"].read_text().replace("engine: parsl", "engine: ray"))
    with pytest.raises(SpecError, match="engine 'ray' has no wheels for ppc64le"):
        load_site(path)
    # and the engine itself, for `perfscale run --engine ray --site lassen`
    with pytest.raises(SpecError, match="ppc64le: Ray has no wheels"):
        make_engine("ray", lassen, tmp_path)
    with pytest.raises(SpecError, match="ppc64le"):
        ray_cluster_commands(lassen, 1, job_id="1", hosts=["l1"], head_ip="10.0.0.1")


def test_ray_on_a_cluster_site_outside_an_allocation_says_what_to_do(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(SpecError, match="runs inside an allocation"):
        allocation(load_site("quartz"))


def test_lsf_allocation_hosts_leave_out_the_launch_node(monkeypatch):
    """LSB_MCPU_HOSTS lists the launch node (where the job script and the driver run) before the compute
    nodes on Lassen-like machines; the Ray head must go to the first compute node."""
    lsf = Site(**{**load_site("lassen").model_dump(), "arch": "x86_64"})
    monkeypatch.setenv("LSB_JOBID", "4242")
    monkeypatch.setenv("LSB_MCPU_HOSTS", f"{socket.gethostname().split('.')[0]} 1 c12 40 c13 40")
    assert allocation(lsf) == ("4242", ["c12", "c13"])
