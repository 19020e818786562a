"""Task functions used by the end-to-end tests (loaded by `function` stages as `fns.py:<name>`)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def square(x: int, seed: int) -> dict:
    return {"x": x, "y": x * x, "seed": seed}


def total(ctx) -> dict:
    """Reads the whole `square` stage: checks that whole-stage inputs arrive complete."""
    table = ctx.input("square")
    return {"n": len(table), "sum_y": int(table["y"].sum())}


def slow_square(x: int, delay: float) -> dict:
    time.sleep(delay)
    return {"x": x, "y": x * x, "z": float(x) / 7.0}


def fail_on(x: int, bad: int, mode: str = "raise") -> dict:
    """Fails for x == bad: `raise` -> app_error, `bad_input` -> bad_input, `exit` -> worker death."""
    if x == bad:
        if mode == "bad_input":
            from perfscale.errors import BadInput

            raise BadInput(f"x={x} is not allowed")
        if mode == "exit":
            os._exit(9)
        raise RuntimeError(f"boom at x={x}")
    return {"x": x}


def flaky(x: int, ctx) -> dict:
    """Fails on the first attempt, succeeds on the next (retry policy test)."""
    marker = Path(ctx.store.root) / f"flaky-{x}"
    if not marker.exists():
        marker.write_text("seen")
        raise RuntimeError("first attempt fails")
    return {"x": x, "seen_attempt": ctx.attempt}


def write_model(x: int, ctx) -> dict:
    """A train-like task: leaves a model file in its artifact folder."""
    (ctx.artifacts / "model.txt").write_text(f"model of x={x}")
    return {"x": x}


def read_model(ctx) -> dict:
    """A sample-like task: reads its upstream task's model, bad input when it is missing."""
    from perfscale.errors import BadInput

    model = ctx.upstream_artifacts() / "model.txt"
    if not model.exists():
        raise BadInput(f"{model} is missing")
    return {"model": model.read_text()}


def break_pool(x: int) -> dict:
    """Breaks the Parsl worker pool running it: SIGKILLs the pool's multiprocessing Manager and every worker,
    itself last (the pool's resource tracker is spared). The pool process itself lives on, broken."""
    import signal

    from tests.procs import processes

    pool, me = os.getppid(), os.getpid()
    for p in processes().values():
        if p.ppid == pool and p.pid != me and "resource_tracker" not in p.cmdline:
            os.kill(p.pid, signal.SIGKILL)
    os.kill(me, signal.SIGKILL)
    return {"x": x}


def sleep_marked(x: int, seconds: float, ctx) -> dict:
    """Leaves RUN/started-<x> (holding its pid), then sleeps: a long task a test can wait for and kill."""
    (Path(ctx.store.root) / f"started-{x}").write_text(str(os.getpid()))
    time.sleep(seconds)
    return {"x": x}


def gated(x: int, ctx) -> dict:
    """Leaves RUN/started-<x>, then waits for RUN/go-<x> or RUN/go-all (at most 120 s): a test decides when
    the task may end."""
    root = Path(ctx.store.root)
    (root / f"started-{x}").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not ((root / f"go-{x}").exists() or (root / "go-all").exists()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no go for x={x}")
        time.sleep(0.02)
    return {"x": x}


def held(x: int, hold: str) -> dict:
    """Waits while the file `hold` exists (at most 120 s): a test decides when the task writes its shard."""
    deadline = time.monotonic() + 120
    while Path(hold).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{hold} still there")
        time.sleep(0.02)
    return {"x": x}


def die_once(x: int, kill: int, ctx) -> dict:
    """SIGKILLs its own worker process the first time x == kill (RUN/died-<x> marks it), else returns."""
    import signal

    marker = Path(ctx.store.root) / f"died-{x}"
    if x == kill and not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return {"x": x}


def gpus_seen(x: int, hold: float) -> dict:
    """Records the GPU variables the task saw, its process and when it ran (GPU binding tests)."""
    started = time.time()
    time.sleep(hold)
    return {
        "x": x,
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "rocr": os.environ.get("ROCR_VISIBLE_DEVICES"),
        "hip": os.environ.get("HIP_VISIBLE_DEVICES"),
        "pid": os.getpid(),
        "t0": started,
        "t1": time.time(),
    }


def rows_of(x: int) -> list[dict]:
    """x rows (none for x = 0): `v` is an int for even x and a float for odd x (a schema to unify), `tag`
    is only there for x divisible by 3 (a column some shards lack)."""
    rows = [{"x": x, "i": i, "v": (x * i if x % 2 == 0 else x * i + 0.5)} for i in range(x)]
    for row in rows:
        if x % 3 == 0:
            row["tag"] = f"t{x}-{row['i']}"
    return rows
