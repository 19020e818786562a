"""The built-in OpenMP kernel suite: C sources shipped with perfscale, compiled once per machine and cached.

The cache folder is named by a hash of the sources, the compiler (its command and `--version`), the flag
choices and the CPU's feature flags, so a new compiler or a node with another CPU (`-march=native`!) gets its
own build, while the many tasks of a run on one kind of node share one. A build happens in a private temp
folder that is renamed into place, so tasks building at once never see half a build.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from perfscale.collect.machine import cpu_flags
from perfscale.errors import PerfscaleError

KERNELS = ("triad", "matmul", "jacobi2d", "spmv", "nbody")
HELPERS = ("launch",)  # built along: the launcher run_command measures commands through
#: helpers built only where the header they need is found: name -> (header, libraries it links)
OPTIONAL_HELPERS = {"papi_run": ("papi.h", ("-lpapi",))}  # the PAPI collector's wrapper (papi.py)
SOURCE_DIR = Path(__file__).with_name("kernels")
BUILD_INFO = "build.json"  # written last into a build folder: its presence marks a complete build
FLAG_CHOICES = (("-O3", "-fopenmp", "-march=native"), ("-O3", "-fopenmp"))
COMPILE_TIMEOUT_S = 300.0

#: FOM patterns for the `name: value` lines every kernel prints, usable as a profile stage's `fom`
#: (named so as not to clash with the usual grid variable `threads` or the measured `wall_time_s`).
KERNEL_FOMS = {
    "omp_threads": r"^threads:\s*(\d+)\s*$",
    "kernel_time_s": r"^time_s:\s*(\S+)\s*$",
    "gflops": r"^gflops:\s*(\S+)\s*$",
    "gbytes_per_s": r"^gbytes_per_s:\s*(\S+)\s*$",
    "checksum": r"^checksum:\s*(\S+)\s*$",
}


def compiler() -> list[str]:
    """The C compiler command: `$CC` (which may hold words, e.g. `ccache gcc`), else `cc`."""
    return shlex.split(os.environ.get("CC") or "cc") or ["cc"]


def default_cache_root() -> Path:
    """`$PERFSCALE_CACHE/kernels`, else `~/.cache/perfscale/kernels`."""
    env = os.environ.get("PERFSCALE_CACHE")
    return Path(env).expanduser() / "kernels" if env else Path.home() / ".cache" / "perfscale" / "kernels"


@lru_cache(maxsize=8)
def _compiler_identity(cc: tuple[str, ...]) -> str:
    """The compiler's resolved path and first `--version` line; fails clearly when there is no compiler."""
    what = " ".join(cc)
    try:
        out = subprocess.run(
            [*cc, "--version"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PerfscaleError(
            f"cannot run the C compiler {what!r} ({exc}); install one or set $CC to a C compiler with OpenMP"
        ) from None
    first = (out.stdout or out.stderr).strip().splitlines()
    return f"{shutil.which(cc[0]) or cc[0]}: {first[0] if first else '?'}"


def _sources() -> list[Path]:
    return sorted([*SOURCE_DIR.glob("*.c"), *SOURCE_DIR.glob("*.h")])


def _has_header(cc: tuple[str, ...], header: str) -> bool:
    """Whether the compiler finds `header` (the preprocessor alone: quick, and no library is needed)."""
    try:
        out = subprocess.run(
            [*cc, "-E", "-x", "c", "-o", os.devnull, "-"],
            input=f"#include <{header}>\n", capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


@lru_cache(maxsize=8)
def optional_helpers(cc: tuple[str, ...]) -> tuple[str, ...]:
    """The OPTIONAL_HELPERS whose header this compiler finds (part of the cache key: installing libpapi-dev
    later gives a new build that has papi_run)."""
    return tuple(name for name, (header, _) in OPTIONAL_HELPERS.items() if _has_header(cc, header))


def cache_key(cc: list[str], identity: str) -> str:
    digest = hashlib.sha256()
    optional = ",".join(optional_helpers(tuple(cc)))
    for part in (
        json.dumps(cc),
        identity,
        json.dumps(FLAG_CHOICES),
        platform.machine(),
        cpu_flags(),
        optional,
    ):
        digest.update(part.encode() + b"\0")
    for path in _sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _programs(cc: list[str]) -> dict[str, tuple[str, ...]]:
    """Every program to build here, with the libraries it links."""
    optional = {name: OPTIONAL_HELPERS[name][1] for name in optional_helpers(tuple(cc))}
    return {name: ("-lm",) for name in (*KERNELS, *HELPERS)} | optional


def _compile(cc: list[str], flags: tuple[str, ...], out_dir: Path) -> dict[str, str]:
    """Compile every program (in parallel) into out_dir; return {program: compiler output} of the failures."""
    procs = {
        name: subprocess.Popen(
            [*cc, *flags, "-o", str(out_dir / name), str(SOURCE_DIR / f"{name}.c"), *libs],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for name, libs in _programs(cc).items()
    }
    failures = {}
    try:
        for name, proc in procs.items():
            output, _ = proc.communicate(timeout=COMPILE_TIMEOUT_S)
            if proc.returncode != 0:
                failures[name] = output.strip() or f"exit status {proc.returncode}"
    except subprocess.TimeoutExpired:
        failures["(all)"] = f"compilation took longer than {COMPILE_TIMEOUT_S:.0f} s"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return failures


def _compile_all(cc: list[str], identity: str, out_dir: Path) -> tuple[list[str], dict[str, str]]:
    """Compile with the first flag choice that works (`-march=native` is not known to every compiler).

    Returns the flags and {optional helper: why it was not built}: an optional helper that fails to build
    (its header is there but its library is not, say) is left out rather than failing the build."""
    for flags in FLAG_CHOICES:
        failures = _compile(cc, flags, out_dir)
        skipped = {name: failures.pop(name) for name in OPTIONAL_HELPERS if name in failures}
        if not failures:
            return list(flags), skipped
    name, output = next(iter(failures.items()))
    tail = "\n".join(output.splitlines()[-30:])
    raise PerfscaleError(
        f"cannot compile the perfscale kernels with the C compiler {' '.join(cc)!r} ({identity}); "
        f"{name}.c failed with `{' '.join(flags)}` (and with {' '.join(FLAG_CHOICES[0])}):\n{tail}\n"
        "Set $CC to a C compiler that supports OpenMP (-fopenmp)."
    )


def build_kernels(cache_dir: Path | None = None) -> Path:
    """Compile the kernel suite unless this machine's build is cached; return the folder of executables.

    `cache_dir` is the root of the cache (default: `default_cache_root()`); the build lands in
    `<root>/<hash>/`, one executable per name in KERNELS and HELPERS, plus build.json. Safe to call from
    many processes at once: each builds privately, the first rename wins and the others use its result.
    """
    cc = compiler()
    identity = _compiler_identity(tuple(cc))
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    final = root / cache_key(cc, identity)
    if (final / BUILD_INFO).exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=root))
    try:
        flags, skipped = _compile_all(cc, identity, tmp)
        programs = [name for name in _programs(cc) if name not in skipped]
        info = {
            "compiler": cc,
            "identity": identity,
            "flags": flags,
            "programs": programs,
            "skipped": skipped,
        }
        (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2))
        tmp.chmod(0o755)  # mkdtemp makes it private; a shared cache must be readable by the group too
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / BUILD_INFO).exists():  # not a lost race: something else is in the way
                msg = f"cannot store the kernel build in {final}; remove that folder"
                raise PerfscaleError(msg) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only still there when the build failed or lost the race
    return final


@lru_cache(maxsize=8)
def _build_dir(root: Path, cc: tuple[str, ...]) -> Path | None:
    try:
        return build_kernels(root)
    except PerfscaleError:
        return None


def helper_path(name: str) -> Path | None:
    """A helper program (HELPERS or OPTIONAL_HELPERS) from the default cache, built on first use; None where
    it cannot be built. Build failures are remembered for the rest of the process, so a machine without a
    compiler pays only once."""
    folder = _build_dir(default_cache_root(), tuple(compiler()))
    if folder is not None and not (folder / BUILD_INFO).exists():  # the cache was cleared under us
        _build_dir.cache_clear()
        folder = _build_dir(default_cache_root(), tuple(compiler()))
    path = folder / name if folder is not None else None
    return path if path is not None and path.exists() else None


def launcher_path() -> Path | None:
    """The launcher from the default cache (built on first use), or None where it cannot be built."""
    return helper_path("launch")
