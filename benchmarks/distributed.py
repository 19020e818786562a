"""Strong scaling of TabDDPM training and GReaT fine-tuning under DDP (gloo on CPU) at 1, 2 and 4 MPI ranks.

    .venv/bin/python benchmarks/distributed.py [--model tabddpm|great] [--ranks 1 2 4] [--steps 3]
    .venv/bin/python benchmarks/distributed.py --quick  # make bench: both models small, 1 and 2 ranks, 1 step

GReaT (`--model great`, results to benchmarks/results/distributed-great.json): a GPT-2 of 4 layers, width 256
(3.4 M parameters with its 512-token vocabulary) fine-tuned on a global batch of 64 sequences of 96 tokens
with perfscale's own loop pieces (perfscale.llm.parallel: each rank's share, the global mean token loss,
AdamW, norm clipping); `samples_per_s` counts sequences. TabDDPM:

One global batch of 4096 rows (8 numeric columns, 2 categorical of 3 classes: synthetic), a denoiser with
d_layers [1024, 1024, 1024, 1024] (dim_t 128: 3.4 M parameters), T = 1000. Each rank count runs under
`mpirun -n R python -m mpi4py benchmarks/distributed.py --worker`; every rank uses `--threads` torch threads.
Per rank count, after one warm-up step:

- `samples_per_s`: global rows per second of training steps (forward, backward, gradient all-reduce, AdamW);
- `efficiency`: samples/s at R ranks / (R x samples/s at 1 rank);
- `allreduce_share`: 1 - (step time without the gradient all-reduce (DDP `no_sync`) / step time with it):
  the share of a step spent on the all-reduce that is not hidden behind the backward pass;
- `rank0_cpu_share`: rank 0's CPU time / wall time over the timed steps (1 = it had a core all along);
- `efficiency_per_cpu_second`: the efficiency of samples per CPU-second received (every rank assumed to get
  rank 0's share): what distribution costs apart from waiting for a core on a shared machine.

Results go to benchmarks/results/distributed.json with the machine description. Not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))

BATCH, D_LAYERS, DIM_T, T = 4096, [1024] * 4, 128, 1000
NUMERIC, CLASSES = 8, [3, 3]
LLM = {
    "n_layer": 4,
    "n_head": 4,
    "n_embd": 256,
    "n_positions": 128,
    "vocab_size": 512,
    "bos_token_id": 0,
    "eos_token_id": 1,
}
LLM_BATCH, LLM_TOKENS = 64, 96
# --quick (make bench): the same steps on small models, nothing written
QUICK_BATCH, QUICK_D_LAYERS, QUICK_DIM_T, QUICK_T = 256, [128, 128], 32, 100
QUICK_LLM = LLM | {"n_layer": 2, "n_head": 2, "n_embd": 64}
QUICK_LLM_BATCH, QUICK_LLM_TOKENS = 8, 32


def time_steps(step: Callable[[], None], model: Any, world: int, steps: int) -> tuple[float, float, float]:
    """(seconds per step, the same without the gradient all-reduce (DDP `no_sync`), rank 0's CPU share over
    the timed steps): each after one warm-up step, between barriers."""
    import contextlib

    import torch

    cpu: list[float] = []

    def timed(sync: bool) -> float:
        quiet = contextlib.nullcontext() if sync or world == 1 else model.no_sync()
        with quiet:
            step()  # warm-up
            torch.distributed.barrier()
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                step()
            torch.distributed.barrier()
            wall = time.perf_counter() - t0
            cpu.append((time.process_time() - c0) / wall)
            return wall / steps

    with_sync = timed(True)
    without = timed(False) if world > 1 else with_sync
    return with_sync, without, cpu[0]


def write_run(out: Path, world: int, timing: tuple[float, float, float], batch: int, parameters: int) -> None:
    with_sync, without, cpu_share = timing
    run = {
        "ranks": world,
        "step_s": with_sync,
        "step_s_no_allreduce": without,
        "samples_per_s": batch / with_sync,
        "allreduce_share": max(0.0, 1 - without / with_sync),
        # rank 0's CPU time / wall time while timed: below 1, the rank waited for a core (or the all-reduce)
        "rank0_cpu_share": cpu_share,
        "parameters": parameters,
    }
    out.write_text(json.dumps(run))


def great_worker(steps: int, threads: int, out: Path, quick: bool) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from perfscale.distributed import session
    from perfscale.distributed.shares import batch_share
    from perfscale.llm.parallel import TorchStepper, World, share_loss

    torch.set_num_threads(threads)
    from mpi4py import MPI

    world_size = MPI.COMM_WORLD.Get_size()
    llm, batch_size, tokens = (
        (QUICK_LLM, QUICK_LLM_BATCH, QUICK_LLM_TOKENS) if quick else (LLM, LLM_BATCH, LLM_TOKENS)
    )
    with session("benchmark-distributed-great", ranks=world_size) as s:
        torch.manual_seed(1)
        model = GPT2LMHeadModel(GPT2Config(**llm, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
        world = World.current()
        stepper = TorchStepper(model, 1e-4, 10**6, world, "cpu")
        ids = torch.randint(
            0, llm["vocab_size"], (batch_size, tokens), generator=torch.Generator().manual_seed(2)
        )
        lo, hi = batch_share(batch_size, s.rank, world_size)
        batch = (ids[lo:hi], torch.ones_like(ids[lo:hi]), ids[lo:hi])

        def step() -> None:
            stepper.step(share_loss(stepper.model, batch, world)[0])

        timing = time_steps(step, stepper.model, world_size, steps)
        if s.is_root:
            write_run(out, world_size, timing, batch_size, sum(p.numel() for p in model.parameters()))


def worker(steps: int, threads: int, out: Path, quick: bool) -> None:
    import torch

    from perfscale.distributed import session
    from perfscale.generators.tabddpm.config import TabDDPMConfig
    from perfscale.generators.tabddpm.diffusion import Diffusion
    from perfscale.generators.tabddpm.model import build_denoiser
    from perfscale.generators.tabddpm.rows import RowPart
    from perfscale.generators.tabddpm.train import new_generator, train_step

    torch.set_num_threads(threads)
    from mpi4py import MPI

    world = MPI.COMM_WORLD.Get_size()
    batch, d_layers, dim_t, t = (
        (QUICK_BATCH, QUICK_D_LAYERS, QUICK_DIM_T, QUICK_T) if quick else (BATCH, D_LAYERS, DIM_T, T)
    )
    with session("benchmark-distributed", ranks=world) as s:
        config = TabDDPMConfig(d_layers=d_layers, dim_t=dim_t, num_timesteps=t)
        device = torch.device("cpu")
        diffusion = Diffusion.create(t, NUMERIC, CLASSES, device)
        denoiser = build_denoiser(config, NUMERIC + diffusion.num_onehot, seed=1)
        data = new_generator(2, device)
        x_num = torch.randn((batch, NUMERIC), generator=data)
        x_cat = torch.stack([torch.randint(0, k, (batch,), generator=data) for k in CLASSES], dim=1)
        optimizer = torch.optim.AdamW(denoiser.parameters(), lr=1e-4, foreach=True)
        model: torch.nn.Module = denoiser
        part = None
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(denoiser)
            part = RowPart.of(batch, s.rank, world)
        lo, hi = (part.lo, part.hi) if part else (0, batch)
        noise = new_generator(3, device)

        def step() -> None:
            train_step(model, diffusion, optimizer, x_num[lo:hi], x_cat[lo:hi], noise, 1e-4, part, world)  # type: ignore[arg-type]

        timing = time_steps(step, model, world, steps)
        if s.is_root:
            write_run(out, world, timing, batch, sum(p.numel() for p in denoiser.parameters()))


def derive(runs: list[dict[str, float]]) -> None:
    """Parallel efficiency against 1 rank; the same per CPU-second each rank received (a shared machine
    gives a process a share of a core: this part of the loss is contention, not distribution)."""
    base = next((r for r in runs if r["ranks"] == 1), None)
    for r in runs:
        r["efficiency"] = r["samples_per_s"] / (r["ranks"] * base["samples_per_s"]) if base else None
        per_cpu = r["samples_per_s"] / (r["ranks"] * r["rank0_cpu_share"])
        r["efficiency_per_cpu_second"] = (
            per_cpu / (base["samples_per_s"] / base["rank0_cpu_share"]) if base else None
        )


def measure(model: str, ranks: list[int], steps: int, threads: int, quick: bool) -> list[dict[str, Any]]:
    """One `mpirun` per rank count, its rank 0 writing the run's figures to a file read back here."""
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise SystemExit("mpirun not found: install Open MPI (scripts/setup.sh)")
    runs = []
    with tempfile.TemporaryDirectory(prefix="perfscale-distributed-") as tmp:
        for count in ranks:
            out = Path(tmp) / f"{model}-{count}.json"
            root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
            line = [mpirun, *root, "--oversubscribe", "-n", str(count), sys.executable, "-m", "mpi4py"]
            line += [__file__, "--worker", str(out), "--steps", str(steps), "--threads", str(threads)]
            line += ["--model", model, *(["--quick"] if quick else [])]
            subprocess.run(line, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            runs.append(json.loads(out.read_text()))
            print(runs[-1], flush=True)
    derive(runs)
    return runs


def main() -> None:
    from machine import describe, quick_line, write_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tabddpm", "great"], default="tabddpm")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--quick", action="store_true", help="both models, small, 1 and 2 ranks, 1 step, nothing written"
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        (great_worker if args.model == "great" else worker)(args.steps, args.threads, args.worker, args.quick)
        return
    if args.quick:
        started = time.perf_counter()
        efficiency = {
            model: {r["ranks"]: round(r["efficiency"], 2) for r in measure(model, [1, 2], 1, 1, quick=True)}
            for model in ("tabddpm", "great")
        }
        quick_line("distributed", started, ranks=[1, 2], steps=1, efficiency=efficiency)
        return
    runs = measure(args.model, args.ranks, args.steps, args.threads, quick=False)
    great = args.model == "great"
    model = (
        {"gpt2": LLM, "batch": LLM_BATCH, "tokens": LLM_TOKENS}
        if great
        else {"d_layers": D_LAYERS, "dim_t": DIM_T, "num_timesteps": T, "batch": BATCH}
    )
    result = {
        "benchmark": "distributed-great" if great else "distributed",
        "model": model,
        "threads_per_rank": args.threads,
        "steps": args.steps,
        "cores": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "runs": runs,
        "machine": describe(),
    }
    name = "distributed-great.json" if great else "distributed.json"
    print(write_results(ROOT / "benchmarks" / "results" / name, result))


if __name__ == "__main__":
    main()
