"""The GPU-machine check of issue 17: one script, under 10 minutes, for a node with NVIDIA GPUs.

    .venv/bin/python benchmarks/gpu_machine.py [--out DIR] [--gpus N] [--engine local|parsl|dask|ray]
    .venv/bin/python benchmarks/gpu_machine.py --quick     (make bench: the same study, short, nothing kept)

It writes a site file for this node (`gpus_per_node` from nvidia-smi, vendor nvidia, the engine given:
local by default; parsl, dask and ray check their own binding, docs/placement.md) and a
study with three stages, runs it, and prints (and writes to DIR/gpu_machine.json, with the machine
description) what happened:

- `profile`: a CUDA run (a torch matmul loop on the task's GPU, ~5 s) profiled with the `gpu` collector:
  gpu_status, samples, peak power, energy;
- `train`: TabDDPM on iris with `device: auto` and `precision: bf16`, one GPU per task: the device and
  precision the train shard records (cuda / bf16 where CUDA works);
- `bound`: two single-GPU tasks that each hold their GPU for 3 s, run together: the CUDA_VISIBLE_DEVICES each
  saw, torch's view of its device (name, PCI bus id), and whether they overlapped in time on distinct GPUs.

On a machine without a GPU, `--gpus N` declares N GPUs anyway: the binding runs (the ids are handed out
and taken back), TabDDPM trains on the CPU and the GPU columns are null with their reason. That is how the
script was run on the 2-core VM without a GPU it was written on (about 1.5 minutes; the two tasks got
CUDA_VISIBLE_DEVICES 1 and 0 and overlapped). No GPU machine was lent for issue 17, so it has not run on one.

`--quick` runs the same three stages short (a 1 s loop, 20 TabDDPM steps, 1 s holds) in a temporary folder.
With fewer than 2 GPUs it declares 2, as `--gpus 2` does, and its summary line says what was not exercised:
with no CUDA GPU, the CUDA loop, the GPU collector's samples and training on CUDA.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FNS = """\
import os, time


def cuda_loop(seconds: float) -> None:
    import torch
    on_gpu = torch.cuda.is_available()  # without one (--gpus N on a CPU machine) the loop runs on the CPU
    n = 4096 if on_gpu else 256
    x = torch.randn(n, n, device="cuda" if on_gpu else "cpu")
    end = time.time() + seconds
    while time.time() < end:
        x = (x @ x).clamp_(-1, 1)
    if on_gpu:
        torch.cuda.synchronize()


def hold_gpu(x: int, seconds: float) -> dict:
    t0 = time.time()  # before torch's import: a reused worker (parsl, dask) has it loaded already
    import torch
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    name = bus = None
    if torch.cuda.is_available():
        y = torch.ones(1024, 1024, device="cuda")
        name = torch.cuda.get_device_name(0)
        bus = torch.cuda.get_device_properties(0).pci_bus_id if hasattr(
            torch.cuda.get_device_properties(0), "pci_bus_id") else None
        while time.time() < t0 + seconds:
            y = y @ y / 1024
        torch.cuda.synchronize()
    else:
        time.sleep(seconds)
    return {"x": x, "cuda_visible_devices": seen, "device_name": name, "pci_bus_id": bus,
            "pid": os.getpid(), "t0": t0, "t1": time.time()}
"""

STUDY = """\
name: gpumachine
seed: 1
stages:
  profile:
    kind: profile
    params:
      command: "{python} -c 'import fns; fns.cuda_loop({loop_s})'"
      cwd: "."
      collectors: [rusage, gpu]
    resources: {{gpus: 1}}
  data: {{kind: ingest, params: {{kind: sklearn, source: iris}}}}
  split: {{kind: split, inputs: [data], params: {{source: data, holdout_fraction: 0.3}}}}
  train:
    kind: train
    inputs: [split]
    resources: {{gpus: 1}}
    params:
      source: split
      generator: tabddpm
      hyperparameters:
        {{device: auto, precision: bf16, num_timesteps: {timesteps}, steps: {steps}, batch_size: 64}}
  bound:
    kind: function
    params: {{callable: "fns.py:hold_gpu", seconds: {hold_s}}}
    resources: {{gpus: 1}}
    grid: {{product: {{x: [1, 2]}}}}
"""
FULL = {"loop_s": 5, "timesteps": 100, "steps": 300, "hold_s": 3.0}
QUICK = {"loop_s": 1, "timesteps": 20, "steps": 20, "hold_s": 1.0}


def gpu_count() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the run and the results")
    parser.add_argument("--gpus", type=int, default=None, help="declare this many GPUs (default: nvidia-smi)")
    parser.add_argument("--engine", default="local", choices=["local", "parsl", "dask", "ray"])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short stages, 2 GPUs declared if fewer, nothing kept (make bench)",
    )
    args = parser.parse_args()
    if args.quick:
        with tempfile.TemporaryDirectory(prefix="perfscale-gpu-") as tmp:
            return quick(Path(tmp), args.engine)
    gpus = gpu_count() if args.gpus is None else args.gpus
    if gpus < 2:
        print(
            f"this check needs 2 GPUs (found {gpus}); pass --gpus 2 to run it without them", file=sys.stderr
        )
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="perfscale-gpu-"))
    out.mkdir(parents=True, exist_ok=True)
    result = check(out, gpus, args.engine, FULL)
    text = json.dumps(result, indent=1, default=str)
    (out / "gpu_machine.json").write_text(text)
    print(text)
    return 0 if not result["failed"] else 1


def quick(out: Path, engine: str) -> int:
    """The check's stages, short; fewer than 2 GPUs: 2 declared, and the line names what did not run."""
    import time

    import torch
    from machine import quick_line

    started = time.perf_counter()
    found = gpu_count()
    result = check(out, max(found, 2), engine, QUICK)
    cuda = torch.cuda.is_available()
    figures = {
        "gpus_found": found,
        "gpus_declared": result["gpus_declared"],
        "failed": result["failed"],
        "gpu_status": result["profile"]["gpu_status"],
        "train": result["train"],
        "cuda_visible_devices": [b["cuda_visible_devices"] for b in result["bound"]],
        "bound_apart": result["bound_apart"],
    }
    if not cuda:
        figures["not_exercised"] = (
            "no CUDA GPU here: the CUDA loop ran on the CPU, the gpu collector sampled nothing and TabDDPM "
            "trained on the CPU; only the GPU binding (ids handed out and taken back) was exercised"
        )
    elif found < 2:
        figures["not_exercised"] = f"{found} GPU: the second bound task's id names no device"
    quick_line("gpu_machine", started, **figures)
    return 0 if not result["failed"] else 1


def check(out: Path, gpus: int, engine: str, sizes: dict[str, float]) -> dict[str, object]:
    """Write the site and study into `out`, run them there, and read back what happened."""
    from machine import describe

    from perfscale.runner import prepare_run, run_plan
    from perfscale.spec.site import load_site

    (out / "fns.py").write_text(FNS)
    site = out / "gpunode.yaml"
    site.write_text(
        f"name: gpunode\nscheduler: none\nengine: {engine}\ngpus_per_node: {gpus}\ngpu_vendor: nvidia\n"
        "max_workers: 4\n"
    )
    study = out / "study.yaml"
    study.write_text(STUDY.format(python=sys.executable, **sizes))
    store = prepare_run(study, load_site(site), out / "run")
    summary = run_plan(store, engine, workers=4, progress=False)
    profile = store.read_stage("profile").to_pandas().iloc[0]
    train = store.read_stage("train").to_pandas()
    bound = store.read_stage("bound").to_pandas().sort_values("x").to_dict("records")
    a, b = bound
    return {
        "machine": describe(),
        "gpus_declared": gpus,
        "engine": engine,
        "failed": {s: v.failed for s, v in summary.items() if v.failed},
        "profile": {
            c: (None if profile.get(c) != profile.get(c) else profile.get(c))
            for c in ("gpu_status", "gpu_samples", "gpu_power_w_peak", "gpu_energy_j", "wall_time_s")
        },
        "train": {"device": sorted(set(train["device"])), "precision": sorted(set(train["precision"]))},
        "bound": bound,
        "bound_apart": a["cuda_visible_devices"] != b["cuda_visible_devices"]
        and a["t0"] < b["t1"]
        and b["t0"] < a["t1"],
    }


if __name__ == "__main__":
    sys.exit(main())
