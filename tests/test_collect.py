"""The collection layer for real: the C kernels built and run, commands measured, killed and classified, and
the `profile` stage run through execute_task like an engine would."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from perfscale.collect.builtin_kernels import BUILD_INFO, KERNEL_FOMS, KERNELS, build_kernels
from perfscale.collect.command import (
    USAGE_COLUMNS,
    compile_foms,
    extract_foms,
    render_command,
    render_text,
    run_command,
)
from perfscale.collect.machine import MACHINE_COLUMNS, machine_metadata
from perfscale.errors import BadInput, PerfscaleError, SpecError
from perfscale.execute import execute_task
from perfscale.runner import prepare_run
from perfscale.spec import load_site
from perfscale.stages.profile import ProfileParams

MiB = 2**20


# ---- numpy references of the kernels' checksums ------------------------------------------------------------
def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def ref_triad(n: int, iters: int) -> float:
    i = np.arange(n)
    return float((1.0 + i % 10 + 3.0 * (0.5 * (i % 7))).sum())


def ref_matmul(n: int, iters: int) -> float:
    i, j = np.indices((n, n))
    a, b = ((3 * i + j) % 11 - 5).astype(float), ((i + 2 * j) % 13 - 6).astype(float)
    return float(iters * (a @ b).sum())


def ref_jacobi2d(n: int, iters: int) -> float:
    i, j = np.indices((n, n))
    u = ((7 * i + 3 * j) % 10).astype(float)
    for _ in range(iters):
        v = u.copy()
        v[1:-1, 1:-1] = 0.25 * (u[:-2, 1:-1] + u[2:, 1:-1] + u[1:-1, :-2] + u[1:-1, 2:])
        u = v
    return float(u.sum())


def ref_spmv(n: int, iters: int) -> float:
    i, k = np.arange(n)[:, None], np.arange(16)[None, :]
    band = ((i + k - 4) % n + n) % n
    rand = (_mix64((i * 16 + k).astype(np.uint64)) % np.uint64(n)).astype(np.int64)
    cols = np.where(k < 8, band, rand)
    x = (np.arange(n) % 5 + 1).astype(float)
    return float(((k % 4 + 1) * x[cols]).sum())


def ref_nbody(n: int, iters: int) -> float:
    i = np.arange(n)
    pos = np.stack([(i * 37 % 101) / 101.0, (i * 53 % 103) / 103.0, (i * 71 % 107) / 107.0])
    vel, m = np.zeros_like(pos), 1.0 + i % 3
    for _ in range(iters):
        d = pos[:, None, :] - pos[:, :, None]  # d[:, i, j] = pos_j - pos_i
        inv = 1.0 / np.sqrt((d * d).sum(axis=0) + 0.01)
        vel += 0.001 * (m[None, :] * inv**3 * d).sum(axis=2)
        pos += 0.001 * vel
    return float(pos.sum() + vel.sum())


CASES = {  # kernel: (size, iters, reference checksum)
    "triad": (200_000, 3, ref_triad),
    "matmul": (96, 2, ref_matmul),
    "jacobi2d": (128, 5, ref_jacobi2d),
    "spmv": (50_000, 3, ref_spmv),
    "nbody": (300, 2, ref_nbody),
}


# ---- kernels ---------------------------------------------------------------------------------------------
def test_build_is_cached_and_complete(kernel_dir: Path, cache_base: Path) -> None:
    assert (kernel_dir / BUILD_INFO).exists()
    assert all(os.access(kernel_dir / name, os.X_OK) for name in KERNELS)
    assert build_kernels(cache_base / "kernels") == kernel_dir
    assert not [p for p in kernel_dir.parent.iterdir() if p.name.startswith(".build-")]


def test_concurrent_builds_agree(tmp_path: Path) -> None:
    results: list[Path | BaseException] = []

    def build() -> None:
        try:
            results.append(build_kernels(tmp_path))
        except BaseException as exc:  # reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1] and isinstance(results[0], Path)
    assert [p.name for p in tmp_path.iterdir()] == [results[0].name]  # no temp folders left behind
    assert (results[0] / BUILD_INFO).exists()


def test_build_failures_name_the_compiler_and_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", "/no/such/compiler")
    with pytest.raises(PerfscaleError, match="cannot run the C compiler '/no/such/compiler'"):
        build_kernels(tmp_path)
    monkeypatch.setenv("CC", "cc -include no_such_header.h")
    with pytest.raises(PerfscaleError, match=r"(?s)'cc -include no_such_header\.h'.*no_such_header\.h"):
        build_kernels(tmp_path)
    assert list(tmp_path.iterdir()) == []  # a failed build leaves nothing behind


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_runs_and_verifies(kernel_dir: Path, kernel: str) -> None:
    size, iters, reference = CASES[kernel]
    result = run_command(
        [str(kernel_dir / kernel), str(size), str(iters)], {"OMP_NUM_THREADS": "2"}, None, 60
    )
    assert result.ok, result.stderr
    foms = extract_foms(result.stdout, {"kernel": r"^kernel:\s*(\S+)", **KERNEL_FOMS})
    assert foms["kernel"] == kernel and foms["omp_threads"] == 2
    assert isinstance(foms["kernel_time_s"], float) and foms["kernel_time_s"] >= 0
    assert isinstance(foms["gflops"], float) and foms["gflops"] >= 0
    assert (foms["gbytes_per_s"] is not None) == (kernel in ("triad", "spmv"))
    assert foms["checksum"] == pytest.approx(reference(size, iters), rel=1e-9)
    assert result.user_time_s >= 0 and result.sys_time_s >= 0 and result.wall_time_s > 0
    assert result.max_rss_bytes > MiB and result.minor_faults > 0
    if sys.platform == "linux":
        assert isinstance(result.io_read_bytes, int) and isinstance(result.io_write_bytes, int)


def test_kernels_reject_bad_arguments(kernel_dir: Path) -> None:
    for kernel in KERNELS:
        for args in ([], ["10"], ["0", "1"], ["10", "0"], ["ten", "1"], ["10", "1x"], ["10", "1", "2"]):
            result = run_command([str(kernel_dir / kernel), *args], timeout_s=30)
            assert result.returncode == 2 and "usage:" in result.stderr, (kernel, args)


# ---- commands ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("isolate", [True, False], ids=["launcher", "direct"])
def test_timeout_kills_the_whole_process_group(isolate: bool) -> None:
    result = run_command(["sh", "-c", "sleep 30 & echo $!; wait"], timeout_s=1.0, isolate=isolate)
    assert result.timed_out and not result.ok
    assert result.term_signal == signal.SIGKILL and result.exit_status is None
    assert result.wall_time_s < 20
    if result.stdout.strip():  # (on a very busy machine the timer may fire before the shell got to echo)
        assert _dies(int(result.stdout.split()[0]))  # the shell's own child got the SIGKILL too


def _dies(pid: int, within_s: float = 10.0) -> bool:
    """Whether the process is gone or a zombie within a while (SIGKILL is delivered asynchronously)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_max_rss_is_the_commands_own() -> None:
    """A child exec'd from a big process inherits its peak RSS; the launcher keeps that out of the data."""
    ballast = b"x" * (256 * MiB)  # make sure this process has peaked well above what the commands use
    del ballast
    small = run_command(["sh", "-c", "exit 0"], timeout_s=30)
    assert small.max_rss_bytes is not None and small.max_rss_bytes < 32 * MiB
    assert run_command(["sh", "-c", "exit 0"], timeout_s=30, isolate=False).max_rss_bytes is None
    code = "import time; b = b'x' * (64 * 2**20); time.sleep(0.05)"
    big = run_command([sys.executable, "-c", code], timeout_s=60)
    assert big.max_rss_bytes is not None and 64 * MiB < big.max_rss_bytes < 256 * MiB


def test_commands_die_with_their_worker(tmp_path: Path) -> None:
    """A killed worker (node lost, run cancelled) must not leave its command running (see launch.c)."""
    pidfile = tmp_path / "pid"
    worker_code = (
        "import sys; from perfscale.collect.command import run_command; "
        "run_command(['sh', '-c', 'echo $$ > ' + sys.argv[1] + '; exec sleep 30'])"
    )
    worker = subprocess.Popen([sys.executable, "-c", worker_code, str(pidfile)])
    try:
        deadline = time.monotonic() + 30
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert time.monotonic() < deadline and worker.poll() is None, "the command never started"
            time.sleep(0.05)
        command = int(pidfile.read_text())
        assert not _dies(command, within_s=0.2)
    finally:
        worker.kill()
        worker.wait()
    assert _dies(command)


@pytest.mark.parametrize("isolate", [True, False], ids=["launcher", "direct"])
def test_exit_status_signal_and_output_are_captured(tmp_path: Path, isolate: bool) -> None:
    argv = ["sh", "-c", 'echo "out $GREETING in $PWD"; echo oops >&2; exit 3']
    result = run_command(argv, {"GREETING": "hi"}, tmp_path, 30, isolate=isolate)
    assert (result.returncode, result.exit_status, result.term_signal) == (3, 3, None)
    assert (
        result.stdout == f"out hi in {tmp_path}\n" and result.stderr_tail() == "oops" and not result.timed_out
    )
    assert result.usage()["exit_status"] == 3 and list(result.usage()) == list(USAGE_COLUMNS)
    killed = run_command(["sh", "-c", "kill -SEGV $$"], timeout_s=30, isolate=isolate)
    assert (killed.term_signal, killed.timed_out) == (signal.SIGSEGV, False)


def test_output_files_are_kept_and_large_output_does_not_block(tmp_path: Path) -> None:
    code = "import sys; sys.stdout.write('x' * 5_000_000); sys.stderr.write('y' * 1_000_000)"
    result = run_command(
        [sys.executable, "-c", code],
        timeout_s=60,
        stdout_path=tmp_path / "o.txt",
        stderr_path=tmp_path / "e.txt",
    )
    assert result.ok and len(result.stdout) == 5_000_000 and len(result.stderr) == 1_000_000
    assert (tmp_path / "o.txt").stat().st_size == 5_000_000


def test_commands_that_cannot_start_are_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="command not found"):
        run_command(["/no/such/program", "x"])
    with pytest.raises(BadInput, match="does not exist"):
        run_command(["true"], cwd=tmp_path / "missing")


HOSTILE = [
    "; rm -rf /", "a b  c", "'", '"', "$(echo pwned)", "`id`", "x' ; echo 'y", "", "\\", "*", "$HOME",
    "line\nbreak", "{other}", "--flag=1 --evil", "\t",
]  # fmt: skip


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_stay_one_literal_argument(value: str) -> None:
    printf = shutil.which("printf") or "/usr/bin/printf"
    for template, expected in (
        ("{printf} '%s\\n' {x}", value),
        ('{printf} "%s\\n" "{x}"', value),  # a quoted placeholder does not re-parse the value either
        ("{printf} '%s\\n' --opt={x}", f"--opt={value}"),
    ):
        argv = render_command(template, {"printf": printf, "x": value})
        assert argv == [printf, "%s\\n", expected]
        result = run_command(argv, timeout_s=30)
        assert result.ok and result.stdout == expected + "\n"


def test_templates_reject_unknown_and_unsafe_placeholders() -> None:
    with pytest.raises(BadInput, match=r"unknown placeholder \{size\}"):
        render_command("bench {size}", {"threads": 2})
    with pytest.raises(BadInput, match="plain"):
        render_command("bench {x.__class__}", {"x": 1})
    with pytest.raises(BadInput, match="plain"):
        render_text("{x!r}", {"x": 1})
    assert render_command("a {{literal}} {n:03d}", {"n": 7}) == ["a", "{literal}", "007"]
    assert render_text("{n}-{m}", {"n": 1, "m": "x y"}) == "1-x y"


def test_foms_are_validated_typed_and_take_the_last_match() -> None:
    with pytest.raises(BadInput, match=r"fom 'broken'.*invalid regular expression"):
        compile_foms({"ok": r"(\d+)", "broken": r"time: ([0-9"})
    with pytest.raises(BadInput, match="exactly one"):
        compile_foms({"two": r"(a)(b)"})
    text = "step 1 time: 9.5\nstep 2 time: 1.25\niters: 40\nname: fast-run\n"
    foms = extract_foms(text, {"time": r"time: (\S+)", "iters": r"^iters: (\d+)$", "name": r"name: (.*)",
                               "absent": r"^nothing: (\d+)"})  # fmt: skip
    assert foms == {"time": 1.25, "iters": 40, "name": "fast-run", "absent": None}


def test_machine_metadata() -> None:
    meta = machine_metadata()
    assert list(meta) == list(MACHINE_COLUMNS)
    assert meta["hostname"] and isinstance(meta["cpu_cores"], int) and meta["cpu_cores"] >= 1
    if sys.platform == "linux":
        assert meta["kernel_release"] and isinstance(meta["perf_event_paranoid"], int)
    meta["hostname"] = "changed"
    assert machine_metadata()["hostname"] != "changed"  # callers get a copy of the cache


# ---- the profile stage -------------------------------------------------------------------------------------
def test_profile_params_validation() -> None:
    ok = ProfileParams.model_validate(
        {"command": "{kernels}/{kernel} {size} 1", "env": {"OMP_NUM_THREADS": "{threads}"}, "kernel": "triad",
         "size": 10, "threads": 2, "fom": KERNEL_FOMS}
    )  # fmt: skip
    assert ok.variables == {"kernel": "triad", "size": 10, "threads": 2}
    assert ProfileParams.model_validate(ok.model_dump(mode="json")) == ok  # the planner's copy re-validates
    bad = {
        "command": {"command": "run {nope}"},
        "env.OMP_NUM_THREADS": {"command": "run", "env": {"OMP_NUM_THREADS": "{threads}"}},
        "cwd": {"command": "run", "cwd": "{where}"},
        "timeout_s": {"command": "run", "timeout": 5},  # a misspelt field is not taken for a variable
        "warmup": {"command": "run", "warmups": 2},
        "fom 'x'": {"command": "run", "fom": {"x": "(unclosed"}},
        "fom.wall_time_s": {"command": "run", "fom": {"wall_time_s": "(.*)"}},
        "variable 'max_rss_bytes'": {"command": "run", "max_rss_bytes": 1},
        "variable 'seed'": {"command": "run", "seed": 1},
        "variable 'sizes'": {"command": "run", "sizes": [1, 2]},
    }
    for field, params in bad.items():
        with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
            ProfileParams.model_validate(params)
    assert ProfileParams.model_validate({"command": "run", "env": {"OMP_NUM_THREADS": 4}}).env == {
        "OMP_NUM_THREADS": "4"
    }
    with pytest.raises(ValidationError, match="command"):
        ProfileParams.model_validate({"comand": "run"})
    with pytest.raises(ValidationError, match="warmup"):
        ProfileParams.model_validate({"command": "run", "warmup": -1})


STUDY = """\
name: collect
retry: {app_error: 0}
stages:
  kernels:
    kind: profile
    params:
      command: "{kernels}/{kernel} {size} 2"
      env: {OMP_NUM_THREADS: "{threads}"}
      warmup: 1
      fom:
        omp_threads: '^threads:\\s*(\\d+)'
        gflops: '^gflops:\\s*(\\S+)'
        checksum: '^checksum:\\s*(\\S+)'
        from_stderr: 'never printed: (\\S+)'
    grid:
      product: {kernel: [triad, spmv], size: [20000], threads: [1, 2]}
  fails:
    kind: profile
    params: {command: "sh -c 'echo boom >&2; exit {code}'"}
    grid: {product: {code: [3]}}
  slow:
    kind: profile
    params: {command: "sleep 30", timeout_s: 0.5}
  killed:
    kind: profile
    params: {command: "sh -c 'kill -KILL $$'"}
  missing:
    kind: profile
    params: {command: "./no-such-program --size {size}", size: 1}
"""


@pytest.fixture
def profile_run(tmp_path: Path, kernel_dir: Path):
    (tmp_path / "study.yaml").write_text(STUDY)
    return prepare_run(tmp_path / "study.yaml", load_site("local"), tmp_path / "run")


def test_profile_stage_rows(profile_run) -> None:
    store = profile_run
    for task in store.plan.of_stage("kernels"):
        outcome = execute_task(store.root, task.index)
        assert outcome.ok, outcome.message
    table = store.read_stage("kernels", provenance=False).to_pandas().sort_values(["kernel", "threads"])
    assert list(table.columns[:3]) == ["kernel", "size", "threads"]
    assert list(table.columns[3 : 3 + len(USAGE_COLUMNS)]) == list(USAGE_COLUMNS)
    assert set(MACHINE_COLUMNS) <= set(table.columns)
    assert table["kernel"].tolist() == ["spmv", "spmv", "triad", "triad"]
    # the env template reached the program: it ran on the requested number of threads
    assert table["omp_threads"].tolist() == table["threads"].tolist() == [1, 2, 1, 2]
    assert (table["exit_status"] == 0).all() and (table["max_rss_bytes"] > MiB).all()
    assert (table["wall_time_s"] > 0).all() and (table["user_time_s"] >= 0).all()
    assert table["checksum"].notna().all() and table["from_stderr"].isna().all()
    for kernel, checksum in zip(table["kernel"], table["checksum"], strict=True):
        assert checksum == pytest.approx(CASES[kernel][2](20000, 2), rel=1e-9)
    task = store.plan.of_stage("kernels")[0]
    assert "checksum:" in (store.artifact_dir("kernels", task.key) / "stdout.txt").read_text()


def test_profile_stage_failures_are_classified(profile_run) -> None:
    store = profile_run
    expected = {"fails": "app_error", "slow": "timeout", "killed": "oom", "missing": "bad_input"}
    outcomes = {stage: execute_task(store.root, store.plan.of_stage(stage)[0].index) for stage in expected}
    for stage, kind in expected.items():
        assert (outcomes[stage].ok, outcomes[stage].failure_kind) == (False, kind), outcomes[stage].message
    fails = outcomes["fails"]
    assert "status 3" in fails.message and "boom" in fails.message
    assert fails.attempts[-1].exit_status == 3


def test_profile_errors_surface_at_planning(tmp_path: Path) -> None:
    study = textwrap.dedent("""\
        name: bad
        stages:
          p:
            kind: profile
            params: {command: "bench {size} {threads}"}
            grid: {product: {size: [1, 2]}}
        """)
    (tmp_path / "study.yaml").write_text(study)
    with pytest.raises(SpecError, match=r"unknown placeholder \{threads\}"):
        prepare_run(tmp_path / "study.yaml", load_site("local"), tmp_path / "run")
