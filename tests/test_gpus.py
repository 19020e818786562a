"""GPU binding on a machine without GPUs, for real up to the variables a CUDA or ROCm program reads.

A site file declares 4 GPUs per node (NVIDIA or AMD). Tasks of a stage record the CUDA_VISIBLE_DEVICES /
ROCR_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES they saw and when they ran, on the local, Parsl, Dask and Ray
engines: tasks that overlapped in time never share an id, each sees exactly its `gpus`, no id exceeds the
node's, and ids are used again once their tasks end (more tasks than the GPUs hold run one after another).
No GPU is touched: whether CUDA honours the variables is NVIDIA's part (the GPU-machine script checks it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from perfscale.errors import SpecError
from perfscale.gpus import ASSIGNED_ENV, GpuAdmission, GpuBinding, GpuShortage, bound, claim, worker_groups
from perfscale.runner import prepare_run, run_plan
from perfscale.spec.site import Site, load_site

GPU_STUDY = """\
name: gpus
stages:
  bound:
    kind: function
    params: {{callable: "fns.py:gpus_seen", hold: {hold}}}
    resources: {{gpus: {gpus}}}
    grid:
      product: {{x: [{xs}]}}
"""
CPU_STAGE = """\
  cpu:
    kind: function
    params: {callable: "fns.py:gpus_seen", hold: 0.0}
    grid:
      product: {x: [1, 2]}
"""


def gpu_site(tmp_path: Path, vendor: str = "nvidia", engine: str = "local", gpus: int = 4) -> Site:
    path = tmp_path / f"gpu-{vendor}.yaml"
    path.write_text(
        f"name: gpu-{vendor}\nscheduler: none\nlauncher: local\nengine: {engine}\ncores_per_node: 4\n"
        f"gpus_per_node: {gpus}\ngpu_vendor: {vendor}\nmax_workers: 4\n"
    )
    return load_site(path)


def check_bound(rows: list[dict], per_task: int, per_node: int, vendor: str) -> None:
    """Exactly `per_task` ids each, within the node's, and disjoint between tasks that overlapped."""
    for row in rows:
        seen = row["cuda"] if vendor == "nvidia" else row["rocr"]
        if (
            vendor == "amd"
        ):  # Parsl's pinned workers also set CUDA_VISIBLE_DEVICES, to the same ids (HIP reads it)
            assert row["hip"] == row["rocr"] and row["cuda"] in (None, row["rocr"])
        ids = {int(i) for i in seen.split(",")}
        assert len(ids) == per_task and ids <= set(range(per_node)), row
        row["ids"] = ids
    for a in rows:
        for b in rows:
            if a is not b and a["t0"] < b["t1"] and b["t0"] < a["t1"]:
                assert not a["ids"] & b["ids"], (a, b)


def run_gpu_study(
    write_study,
    tmp_path,
    engine: str,
    vendor: str,
    gpus: int,
    tasks: int,
    hold: float,
    cpu: bool = True,
    workers: int = 4,
):
    """`tasks` tasks of `gpus` GPUs on a declared 4-GPU node, then (`cpu`) two tasks without GPUs. Parsl and
    Dask start a second engine for the CPU stage (engines that bind GPUs are built per stage shape): the
    tests of those engines leave it out, the local and Ray tests keep it."""
    site = gpu_site(tmp_path, vendor, engine)
    xs = ", ".join(str(i) for i in range(tasks))
    study = write_study(GPU_STUDY.format(gpus=gpus, xs=xs, hold=hold) + (CPU_STAGE if cpu else ""))
    store = prepare_run(study, site, tmp_path / "run")
    summary = run_plan(store, engine, workers=workers, progress=False)
    assert summary["bound"].done == tasks and (not cpu or summary["cpu"].done == 2)
    rows = store.read_stage("bound").to_pandas().to_dict("records")
    check_bound(rows, gpus, 4, vendor)
    ids_of: dict[int, set[frozenset[int]]] = {}
    for row in rows:
        ids_of.setdefault(row["pid"], set()).add(frozenset(row["ids"]))
    if engine in ("parsl", "dask"):
        # workers pinned for life, one per group of `gpus` ids: a reused worker always sees the same GPUs
        assert all(len(seen) == 1 for seen in ids_of.values()), ids_of
        assert len(ids_of) <= min(workers, 4 // gpus) < tasks  # so workers ran several tasks each
    else:  # local and Ray run each GPU task in a fresh process
        assert len(ids_of) == tasks
    # tasks without GPUs on a GPU node see none: the variables are set, empty
    for row in store.read_stage("cpu").to_pandas().to_dict("records") if cpu else []:
        assert row["rocr" if vendor == "amd" else "cuda"] == ""
    return rows


def test_local_engine_binds_tasks_apart_and_reuses_ids(write_study, tmp_path):
    # 6 tasks of 2 GPUs on 4 GPUs and 4 workers: at most 2 at once, so the ids are handed back and reused
    rows = run_gpu_study(write_study, tmp_path, "local", "nvidia", gpus=2, tasks=6, hold=0.4)
    at_once = max(sum(b["t0"] <= a["t0"] < b["t1"] for b in rows) for a in rows)  # tasks running at a start
    assert at_once <= 2
    assert sum(len(r["ids"]) for r in rows) == 12 > 4  # ids were used again once their tasks ended
    assert len({r["pid"] for r in rows}) == 6  # a fresh worker process per task on a GPU site


def test_parsl_engine_pins_workers_to_amd_gpu_pairs(write_study, tmp_path):
    # available_accelerators ["0,1", "2,3"]: two workers, each on its pair for life, 4 tasks on them
    rows = run_gpu_study(write_study, tmp_path, "parsl", "amd", gpus=2, tasks=4, hold=0.2, cpu=False)
    assert {frozenset(r["ids"]) for r in rows} <= {frozenset({0, 1}), frozenset({2, 3})}


# Dask and Ray: tests/test_engines_dask_ray.py (its Ray session is started once per module)


# ------------------------------------------------------------------------------------- the pool itself


def test_claims_are_disjoint_and_come_back_when_the_holder_dies(tmp_path, monkeypatch):
    monkeypatch.setenv("PERFSCALE_GPU_LOCKS", str(tmp_path / "locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    binding = GpuBinding("nvidia", 4)
    # another process holds 3 of the 4 ids until it is killed
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from perfscale.gpus import GpuBinding, claim\n"
            "with claim(GpuBinding('nvidia', 4), 3) as ids:\n"
            "    print(','.join(ids), flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        held = set(holder.stdout.readline().strip().split(","))
        assert held == {"0", "1", "2"}
        with claim(binding, 1) as ids:
            assert ids == ["3"]
        holder.send_signal(signal.SIGKILL)  # the kernel drops its locks
        holder.wait()
        with claim(binding, 4) as ids:
            assert ids == ["0", "1", "2", "3"]
    finally:
        holder.kill()
        holder.wait()


def test_allocation_mask_is_the_pool_and_variables_are_restored(tmp_path, monkeypatch):
    monkeypatch.setenv("PERFSCALE_GPU_LOCKS", str(tmp_path / "locks"))
    monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "4,6")  # what the scheduler gave the allocation
    monkeypatch.delenv("HIP_VISIBLE_DEVICES", raising=False)
    binding = GpuBinding("amd", 8, allocation="1234")
    assert binding.node_ids() == ["4", "6"]
    with bound(binding, 1) as ids:
        assert ids == ["4"] and os.environ["ROCR_VISIBLE_DEVICES"] == os.environ["HIP_VISIBLE_DEVICES"] == "4"
    assert os.environ["ROCR_VISIBLE_DEVICES"] == "4,6" and "HIP_VISIBLE_DEVICES" not in os.environ
    with pytest.raises(GpuShortage, match="asks for 3 GPUs; this node's pool has 2"), claim(binding, 3):
        pass
    monkeypatch.delenv("PERFSCALE_GPU_LOCKS")
    assert binding.lock_dir().name == "1234"  # one pool per allocation on a shared node


def test_an_engines_assignment_is_taken_as_it_is(tmp_path, monkeypatch):
    """Ids the engine assigned (Parsl accelerator, Dask pin, Ray) are used without a claim: a Dask worker
    holds their locks itself. Parsl's groups cut the node's ids per task size."""
    monkeypatch.setenv("PERFSCALE_GPU_LOCKS", str(tmp_path / "locks"))
    monkeypatch.setenv(ASSIGNED_ENV, "2,3")
    binding = GpuBinding("nvidia", 4)
    with claim(binding, 4) as held, bound(binding, 2) as ids:  # every lock is held elsewhere
        assert (
            held == ["0", "1", "2", "3"] and ids == ["2", "3"] and os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
        )
    with pytest.raises(GpuShortage, match="the engine assigned its worker 2"), bound(binding, 3):
        pass
    assert worker_groups(4, 1) == ["0", "1", "2", "3"] and worker_groups(4, 2) == ["0,1", "2,3"]
    assert worker_groups(8, 3) == ["0,1,2", "3,4,5"]


class T:
    def __init__(self, index: int, gpus: int):
        self.index, self.gpus = index, gpus

    def __repr__(self) -> str:
        return f"T{self.index}g{self.gpus}"


def test_admission_lets_cpu_tasks_past_and_keeps_gpu_order():
    tasks = [T(0, 2), T(1, 2), T(2, 0), T(3, 2), T(4, 0), T(5, 1)]
    queue = GpuAdmission(tasks, capacity=4)
    started = []
    while (source := queue.next_source()) is not None:
        t = source.popleft()
        queue.started([t])
        started.append(t.index)
    # two 2-GPU tasks fill the node; CPU tasks still start; T3 and T5 wait (T5 never overtakes T3)
    assert started == [0, 1, 2, 4] and queue.used == 4
    queue.ended([tasks[0]])
    assert queue.next_source()[0] is tasks[3]
    queue.started([queue.next_source().popleft()])
    assert queue.next_source() is None  # T5 waits for a GPU
    queue.ended([tasks[1]])
    assert queue.next_source().popleft() is tasks[5] and not queue
    # a task asking for more than the engine has is let through alone (its claim then names the problem)
    assert GpuAdmission([T(0, 8)], capacity=4).next_source() is not None


def test_gpu_tasks_are_never_bundled():
    from perfscale.bundles import Bundler
    from perfscale.plan.planner import Task

    def task(i: int, gpus: int) -> Task:
        return Task(i, "s", "noop", f"k{i}", {}, 0, 0, gpus=gpus, walltime_s=3600, expected_runtime_s=0.001)

    bundler = Bundler(workers=1)
    from collections import deque

    assert len(bundler.take(deque(task(i, 0) for i in range(8)))) > 1  # short CPU tasks share a call
    assert len(bundler.take(deque(task(i, 1) for i in range(8)))) == 1


# ------------------------------------------------------------------------------------- plan-time errors


def test_gpus_beyond_the_node_are_refused_at_plan_time(write_study, tmp_path):
    study = write_study(GPU_STUDY.format(gpus=5, xs="1", hold=0))
    with pytest.raises(
        SpecError, match=r"study.yaml:\d+: stages.bound.resources.gpus: each task asks for 5 GPUs"
    ):
        prepare_run(study, gpu_site(tmp_path), tmp_path / "run")
    with pytest.raises(SpecError, match=r"site 'local' has no GPUs \(gpus_per_node: 0\)"):
        prepare_run(
            write_study(GPU_STUDY.format(gpus=1, xs="1", hold=0)), load_site("local"), tmp_path / "r2"
        )
    bad = tmp_path / "novendor.yaml"
    bad.write_text("name: novendor\ngpus_per_node: 4\n")
    with pytest.raises(SpecError, match="gpu_vendor is not set; add 'gpu_vendor: nvidia'"):
        load_site(bad)


# ------------------------------------------------------------------------------------- device choice

DEVICE_STUDY = """\
name: device
seed: 1
stages:
  data: {{kind: ingest, params: {{kind: sklearn, source: iris}}}}
  split: {{kind: split, inputs: [data], params: {{source: data, holdout_fraction: 0.3}}}}
  train:
    kind: train
    inputs: [split]
    resources: {{gpus: {gpus}}}
    params:
      source: split
      generator: tabddpm
      hyperparameters: {{device: {device}, precision: {precision}, num_timesteps: 8, steps: 3, batch_size: 32,
                         d_layers: [8], dim_t: 8, threads: 1}}
"""


def test_tabddpm_on_device_auto_trains_where_a_gpu_is_visible():
    """auto trains on a visible GPU, else on the CPU; bf16 only where a GPU ran (both sides probed)."""
    import torch

    from perfscale.generators import get_generator
    from perfscale.tabular.meta import infer_meta
    from tests.tables import iris_table

    table = iris_table().head(40)
    small = dict(num_timesteps=8, steps=3, batch_size=32, d_layers=[8], dim_t=8, threads=1)
    generator = get_generator("tabddpm")(device="auto", precision="bf16", **small)
    generator.fit(table, infer_meta(table), seed=1)
    on_gpu = torch.cuda.is_available()
    assert generator.device_used == ("cuda" if on_gpu else "cpu")
    assert generator.precision_used == ("bf16" if on_gpu else "fp32")
    assert len(generator.sample(5, seed=2)) == 5


@pytest.mark.parametrize(
    ("gpus", "device", "precision", "site", "message"),
    [
        (
            0,
            "cuda",
            "fp32",
            "gpu",
            r"train.params.hyperparameters.device: device 'cuda' needs a GPU, and the "
            r"stage's tasks get none \(resources.gpus: 0 on site 'gpu-nvidia'\)",
        ),
        (0, "cuda:1", "fp32", "local", "device 'cuda:1' needs a GPU"),
        (1, "cpu", "bf16", "gpu", 'precision "bf16" runs on a GPU only'),
    ],
)
def test_device_choices_are_checked_at_plan_time(
    write_study, tmp_path, gpus, device, precision, site, message
):
    study = write_study(DEVICE_STUDY.format(gpus=gpus, device=device, precision=precision))
    where = gpu_site(tmp_path) if site == "gpu" else load_site("local")
    with pytest.raises(SpecError, match=message):
        prepare_run(study, where, tmp_path / "run")
    # the same study on a GPU site with a GPU per task plans (cuda is forced there, as asked)
    if device.startswith("cuda"):
        ok = write_study(DEVICE_STUDY.format(gpus=1, device=device, precision=precision), "ok.yaml")
        prepare_run(ok, gpu_site(tmp_path), tmp_path / "ok")


# ------------------------------------------------------------------------------------- array mode


def test_an_array_of_gpu_tasks_asks_slurm_for_their_gpus(tmp_path):
    """The sbatch header of a 2-GPU stage on a Corona-like (Slurm, AMD) site, word by word; inside the
    element each task claims its GPUs from those Slurm gives the element (ROCR_VISIBLE_DEVICES), as above.
    (bsub + jsrun, PBS and Flux GPU lines: tests/test_sched_render.py, tests/test_sched_pbs_flux.py.)"""
    from perfscale.sched.arrays import stage_arrays
    from perfscale.sched.render import render_array
    from tests.test_sched_render import _tasks

    corona = load_site("corona")
    (job,) = stage_arrays("s", "p", _tasks(3, cores=4, memory_gb=2, gpus=2), corona, partition="pdebug")
    header = [
        line for line in render_array(job, corona, tmp_path).script.splitlines() if line.startswith("#SBATCH")
    ]
    assert header[:9] == [
        "#SBATCH --job-name=s-p-0",
        "#SBATCH --array=0-2%3",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=2048M",
        "#SBATCH --time=00:10:00",
        "#SBATCH --partition=pdebug",
        "#SBATCH --gpus-per-node=2",
    ]


def test_an_allocation_with_fewer_gpus_than_the_task_asks_is_bad_input(write_study, tmp_path, monkeypatch):
    """The site says 4 GPUs a node, the allocation gave this process 1: a 2-GPU task fails at once, named."""
    from perfscale.execute import execute_task

    monkeypatch.setenv("PERFSCALE_GPU_LOCKS", str(tmp_path / "locks"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    store = prepare_run(
        write_study(GPU_STUDY.format(gpus=2, xs="1", hold=0)), gpu_site(tmp_path), tmp_path / "r"
    )
    outcome = execute_task(store.root, 0)
    assert not outcome.ok and outcome.failure_kind == "bad_input"
    assert outcome.message == "GpuShortage: the task asks for 2 GPUs; this node's pool has 1 (['3'])"
    assert [a.failure_kind for a in outcome.attempts] == ["bad_input"]


def test_the_llm_generator_takes_the_same_device_and_precision_rules():
    from perfscale.generators import hyperparameter_problems

    (problem,) = hyperparameter_problems("great", {"device": "cpu", "precision": "bf16"})
    assert 'precision "bf16" runs on a GPU only' in problem.message
    assert hyperparameter_problems("great", {"device": "auto", "precision": "bf16"}) == []
