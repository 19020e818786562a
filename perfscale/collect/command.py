"""Run one command and measure it: wall time, the kernel's resource usage of the child, its I/O and its fate.

Commands never go through a shell: a template is split into argv first and values are substituted into the
words afterwards, so a value such as `; rm -rf /` or `$(reboot)` is one literal argument. Output goes to
files, not pipes, so a chatty child cannot block on a full pipe while we wait for it.

Resource usage comes from wait4() (the command plus every descendant it waited for) and /proc/<pid>/io, read
while the finished command is still a zombie so it covers the whole run. Both are taken by a small C
launcher (kernels/launch.c) that runs the command as its own child: a command exec'd straight from a Python
worker would report the worker's peak RSS as its own. The launcher also takes the command down with it
when the worker dies. Where it cannot be built, commands run as direct children (see run_command).
"""

from __future__ import annotations

import os
import re
import resource
import shlex
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from perfscale.collect.builtin_kernels import launcher_path
from perfscale.errors import BadInput, PerfscaleError

#: The measurement columns of a CommandResult, in the order they appear in a profile row.
USAGE_COLUMNS = (
    "wall_time_s",
    "exit_status",
    "user_time_s",
    "sys_time_s",
    "max_rss_bytes",
    "minor_faults",
    "major_faults",
    "voluntary_ctx_switches",
    "involuntary_ctx_switches",
    "io_read_bytes",
    "io_write_bytes",
)

# ru_maxrss is in KiB on Linux and the BSDs, in bytes on macOS
_RSS_UNIT = 1 if sys.platform == "darwin" else 1024


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]
    returncode: int  # subprocess convention: the exit code, or -N when killed by signal N
    timed_out: bool
    wall_time_s: float
    user_time_s: float
    sys_time_s: float
    max_rss_bytes: int | None  # None where it cannot be told apart from perfscale's own
    minor_faults: int
    major_faults: int
    voluntary_ctx_switches: int
    involuntary_ctx_switches: int
    io_read_bytes: int | None  # storage bytes from /proc/<pid>/io; None where unreadable
    io_write_bytes: int | None
    stdout: str = field(repr=False, default="")
    stderr: str = field(repr=False, default="")
    wrapper_returncode: int | None = None  # the wrapper's own (see run_command); None without one

    @property
    def exit_status(self) -> int | None:
        """The exit code, or None when a signal ended the command."""
        return self.returncode if self.returncode >= 0 else None

    @property
    def term_signal(self) -> int | None:
        """The number of the signal that ended the command, or None when it exited."""
        return -self.returncode if self.returncode < 0 else None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def usage(self) -> dict[str, Any]:
        """The measurement columns (USAGE_COLUMNS); exit_status is the returncode here (-N for signal N)."""
        return {
            name: self.returncode if name == "exit_status" else getattr(self, name) for name in USAGE_COLUMNS
        }

    def stderr_tail(self, lines: int = 20) -> str:
        return "\n".join(self.stderr.rstrip().splitlines()[-lines:])


# ---- templates -----------------------------------------------------------------------------------------
_SENTINEL = "\0{}\0"  # NUL cannot occur in an argv word, so it safely marks a placeholder while splitting
_SENTINEL_RE = re.compile("\0([0-9]+)\0")


def placeholders(template: str, where: str = "template") -> list[str]:
    """The names of the `{name}` placeholders in a template (`{{` and `}}` are literal braces).

    Only plain names are allowed: attribute access or indexing (`{x.__class__}`, `{x[0]}`) and conversions
    (`{x!r}`) are rejected, so a template cannot reach into Python objects. A format spec (`{n:04d}`) is fine.
    """
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise BadInput(
            f"{where}: malformed template {template!r}: {exc}; write literal braces as {{{{ }}}}"
        ) from None
    names = []
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not name.isidentifier() or conversion or (spec and "{" in spec):
            raise BadInput(f"{where}: placeholder {{{name}}} in {template!r} must be a plain {{name}}")
        names.append(name)
    return names


def _substitute(
    template: str, values: Mapping[str, Any], where: str, sentinels: bool
) -> tuple[str, list[str]]:
    """Replace placeholders by their values (or by sentinels, returning the values they stand for)."""
    if "\0" in template:
        raise BadInput(f"{where}: template {template!r} contains a NUL character")
    out: list[str] = []
    fills: list[str] = []
    for literal, name, spec, _ in string.Formatter().parse(template):
        out.append(literal)
        if name is None:
            continue
        if name not in values:
            known = ", ".join(sorted(values)) or "none"
            raise BadInput(f"{where}: unknown placeholder {{{name}}} in {template!r}; known names: {known}")
        text = format(values[name], spec) if spec else str(values[name])
        if "\0" in text:
            raise BadInput(f"{where}: value of {{{name}}} contains a NUL character")
        fills.append(text)
        out.append(_SENTINEL.format(len(fills) - 1) if sentinels else text)
    return "".join(out), fills


def render_text(template: str, values: Mapping[str, Any], where: str = "template") -> str:
    """Fill a template into one string (for environment values and paths, where no splitting happens)."""
    placeholders(template, where)
    return _substitute(template, values, where, sentinels=False)[0]


def render_command(template: str, values: Mapping[str, Any], where: str = "command") -> list[str]:
    """Split a command template into argv with shell-like quoting, then fill each `{name}` with its value.

    Same result as quoting every value with shlex.quote and splitting, but values are never parsed at all,
    so they stay literal even where the template puts a placeholder inside quotes (`"{x}"`); a placeholder
    inside a word fills in place (`--n={size}` -> `--n=100`), and an empty value is an empty argument.
    """
    placeholders(template, where)
    marked, fills = _substitute(template, values, where, sentinels=True)
    try:
        words = shlex.split(marked)
    except ValueError as exc:
        raise BadInput(f"{where}: cannot split {template!r} into arguments: {exc}") from None
    if not words:
        raise BadInput(f"{where}: the command is empty")
    return [_SENTINEL_RE.sub(lambda m: fills[int(m.group(1))], w) for w in words]


# ---- figures of merit ----------------------------------------------------------------------------------
def compile_foms(patterns: Mapping[str, str | re.Pattern[str]]) -> dict[str, re.Pattern[str]]:
    """Compile FOM regexes in multi-line mode (`^`, `$` match at each line); each needs one capture group."""
    compiled = {}
    for name, pattern in patterns.items():
        try:
            regex = pattern if isinstance(pattern, re.Pattern) else re.compile(pattern, re.MULTILINE)
        except re.error as exc:
            raise BadInput(f"fom {name!r}: invalid regular expression {pattern!r}: {exc}") from None
        if regex.groups != 1:
            raise BadInput(
                f"fom {name!r}: pattern {regex.pattern!r} has {regex.groups} capture groups; it needs "
                "exactly one (use (?:...) for grouping without capturing)"
            )
        compiled[name] = regex
    return compiled


def typed(text: str) -> int | float | str:
    """The value as int, else float, else the string itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


Fom = int | float | str | None


def extract_foms(text: str, patterns: Mapping[str, str | re.Pattern[str]]) -> dict[str, Fom]:
    """Each FOM's value from its pattern's capture group; the LAST match wins (programs often print progress
    before the final figure); None where the pattern does not match."""
    out: dict[str, Fom] = {}
    for name, regex in compile_foms(patterns).items():
        matches = list(regex.finditer(text))
        value = matches[-1].group(1) if matches else None
        out[name] = typed(value.strip()) if value is not None else None
    return out


# ---- running -------------------------------------------------------------------------------------------
class WrapperFailed(PerfscaleError):
    """A wrapper (perf stat, papi_run) ended without running the command to its end: it refused its
    arguments, could not start the command, or died. The command may not have run at all."""

    def __init__(self, message: str, returncode: int | None, stderr: str):
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


def _read_proc_io(pid: int) -> tuple[int | None, int | None]:
    try:
        with open(f"/proc/{pid}/io") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["read_bytes"]), int(fields["write_bytes"])
    except (OSError, KeyError, ValueError):
        return None, None


class _Killer:
    """Kills the child's process group when the timeout fires; the lock keeps it from racing the reaper."""

    def __init__(self, pid: int, timeout_s: float | None):
        self.pid = pid
        self.fired = False
        self.done = False
        self.lock = threading.Lock()
        self.timer = threading.Timer(timeout_s, self.kill) if timeout_s is not None else None
        if self.timer is not None:
            self.timer.daemon = True
            self.timer.start()

    def kill(self) -> None:
        with self.lock:
            if self.done:
                return
            self.fired = True
            # the group still exists while its leader is an unreaped zombie, so its id cannot be reused yet
            with suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)

    def finish(self) -> bool:
        """Stop the timer; True when it fired."""
        if self.timer is not None:
            self.timer.cancel()
        with self.lock:
            self.done = True
            return self.fired


@dataclass
class _Reaped:
    """What waiting for our direct child gave: its status and usage, our wall time, its /proc io."""

    returncode: int
    rusage: Any
    wall_s: float
    io: tuple[int | None, int | None]
    timed_out: bool


def _wait_exited(pid: int) -> bool:
    """Block until the child exits, leaving it a zombie so /proc/<pid>/io can still be read.

    False where waitid() is missing (macOS): the caller then learns of the exit only by reaping."""
    if not hasattr(os, "waitid"):
        return False
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    return True


def _supervise(proc: subprocess.Popen[bytes], start: float, timeout_s: float | None) -> _Reaped:
    killer = _Killer(proc.pid, timeout_s)
    try:
        waited = _wait_exited(proc.pid)
        end = time.perf_counter()
        io = _read_proc_io(proc.pid) if waited else (None, None)
    except BaseException:  # interrupted while waiting: do not leave the command running
        killer.kill()
        raise
    finally:
        fired = killer.finish()
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen never polls a reused pid
    wall = (end if waited else time.perf_counter()) - start
    # a timer that fired just as the command ended on its own did not time it out
    return _Reaped(proc.returncode, ru, wall, io, fired and proc.returncode == -signal.SIGKILL)


def _resolve_program(program: str, env: Mapping[str, str], cwd: Path | None) -> str:
    """The absolute path the command's first word names (the launcher does no PATH search)."""
    if "/" in program:
        path = Path(program) if cwd is None else cwd / program  # an absolute program ignores cwd
        if not path.is_file():
            raise BadInput(f"command not found: {program!r}")
    else:
        found = shutil.which(program, path=env.get("PATH", os.defpath))
        if found is None:
            raise BadInput(f"command not found: {program!r} (not on PATH)")
        path = Path(found)
    if not os.access(path, os.X_OK):
        raise BadInput(f"command is not executable: {program!r}")
    return str(path.absolute())


def _spawn(
    argv: list[str],
    env: dict[str, str],
    cwd: Path | None,
    out: IO[bytes],
    err: IO[bytes],
    pass_fds: tuple[int, ...] = (),
) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            pass_fds=pass_fds,
        )
    except FileNotFoundError:
        raise BadInput(f"command not found: {argv[0]!r} (check the command and PATH)") from None
    except PermissionError:
        raise BadInput(f"command is not executable: {argv[0]!r}") from None
    except OSError as exc:
        raise BadInput(f"cannot start {argv[0]!r}: {exc}") from None


def _open_output(stack: ExitStack, path: Path | None) -> IO[bytes]:
    if path is None:
        return stack.enter_context(tempfile.TemporaryFile())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return stack.enter_context(open(path, "w+b"))


def _text(f: IO[bytes]) -> str:
    f.seek(0)
    return f.read().decode(errors="replace")


def _parse_report(f: IO[bytes]) -> dict[str, int] | None:
    """The launcher's `name: value` report, or None when it did not finish one (it was killed)."""
    values = {}
    for line in _text(f).splitlines():
        name, _, value = line.partition(":")
        with suppress(ValueError):
            values[name.strip()] = int(value)
    return values if "write_bytes" in values else None  # the last line it writes


def _usage_from_report(r: dict[str, int]) -> dict[str, Any]:
    return {
        "returncode": os.waitstatus_to_exitcode(r["status"]),
        "wall_time_s": r["wall_ns"] / 1e9,
        "user_time_s": r["utime_us"] / 1e6,
        "sys_time_s": r["stime_us"] / 1e6,
        "max_rss_bytes": r["maxrss_kib"] * 1024,
        "minor_faults": r["minflt"],
        "major_faults": r["majflt"],
        "voluntary_ctx_switches": r["nvcsw"],
        "involuntary_ctx_switches": r["nivcsw"],
        "io_read_bytes": r["read_bytes"] if r["read_bytes"] >= 0 else None,
        "io_write_bytes": r["write_bytes"] if r["write_bytes"] >= 0 else None,
    }


def _usage_from_rusage(reaped: _Reaped) -> dict[str, Any]:
    ru = reaped.rusage
    rss = ru.ru_maxrss * _RSS_UNIT
    # a child exec'd straight from this process inherits our peak RSS as its own (see launch.c): a peak
    # above ours is the child's, anything else is unknown
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RSS_UNIT
    return {
        "returncode": reaped.returncode,
        "wall_time_s": reaped.wall_s,
        "user_time_s": ru.ru_utime,
        "sys_time_s": ru.ru_stime,
        "max_rss_bytes": rss if rss > own_peak else None,
        "minor_faults": ru.ru_minflt,
        "major_faults": ru.ru_majflt,
        "voluntary_ctx_switches": ru.ru_nvcsw,
        "involuntary_ctx_switches": ru.ru_nivcsw,
        "io_read_bytes": reaped.io[0],
        "io_write_bytes": reaped.io[1],
    }


def _spawn_argv(
    argv: list[str],
    wrapper: list[str],
    launcher: Path | None,
    reports: list[IO[bytes]],
    env: Mapping[str, str],
    workdir: Path | None,
) -> tuple[list[str], tuple[int, ...]]:
    """What to start, and the report fds it inherits: launch -> command, or launch -> wrapper -> launch ->
    command. The inner launcher (parent check off: its parent is the wrapper) measures the command alone; the
    outer one reports on the wrapper and takes the whole group down if this process dies."""
    if launcher is None:
        return [*wrapper, *argv], ()
    fds = tuple(r.fileno() for r in reports)
    program = _resolve_program(argv[0], env, workdir)
    inner = [str(launcher), str(fds[-1]), "0" if wrapper else str(os.getpid()), program, *argv]
    if not wrapper:
        return inner, fds
    return [str(launcher), str(fds[0]), str(os.getpid()), wrapper[0], *wrapper, *inner], fds


def _wrapper_returncode(wrapper: list[str], outer: dict[str, int] | None, reaped: _Reaped) -> int | None:
    if not wrapper:
        return None
    return os.waitstatus_to_exitcode(outer["status"]) if outer is not None else reaped.returncode


def run_command(
    argv: list[str],
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout_s: float | None = None,
    *,
    inherit_env: bool = True,
    stdout_path: Path | None = None,
    stderr_path: Path | None = None,
    isolate: bool = True,
    wrapper: list[str] | None = None,
) -> CommandResult:
    """Run argv (no shell) to completion and measure it.

    `env` is added to this process's environment (or is the whole environment with inherit_env=False).
    Past `timeout_s` the child's whole process group is killed with SIGKILL and the result says timed_out.
    stdout/stderr are kept in stdout_path/stderr_path when given (else in temp files) and returned as text.
    A command that cannot be started (not found, not executable, missing cwd) raises BadInput.

    With `isolate` (the default) the command runs under perfscale's small C launcher (see launch.c), which
    makes max_rss_bytes the command's own; without it, or where the launcher cannot be built, the command is
    this process's child and max_rss_bytes is None unless it exceeds this process's own peak.

    `wrapper` is a tool that runs the command as its child and measures it, given as its absolute path and
    arguments up to the command (`[/usr/bin/perf, stat, ..., --]`). The measurements above stay the
    command's own: a second launcher runs between the wrapper and the command (see _spawn_argv), and
    `wrapper_returncode` is the wrapper's exit status. A wrapper that ends without the command running to its
    end (and not by the timeout) raises WrapperFailed. Without the launcher the wrapper is simply put in
    front of the command, and the usage figures include the wrapper's own.
    """
    argv = [str(a) for a in argv]
    wrapper = [str(w) for w in wrapper or ()]
    if not argv:
        raise BadInput("empty command")
    if wrapper and not Path(wrapper[0]).is_absolute():
        raise ValueError(f"wrapper program must be an absolute path, got {wrapper[0]!r}")
    if timeout_s is not None and timeout_s <= 0:
        raise BadInput(f"timeout must be positive, got {timeout_s}")
    full_env = {**(os.environ if inherit_env else {}), **(env or {})}
    workdir = Path(cwd) if cwd is not None else None
    if workdir is not None and not workdir.is_dir():
        raise BadInput(f"working directory {str(workdir)!r} does not exist")
    launcher = launcher_path() if isolate else None
    with ExitStack() as stack:
        out, err = _open_output(stack, stdout_path), _open_output(stack, stderr_path)
        reports = [stack.enter_context(tempfile.TemporaryFile()) for _ in range(2 if wrapper else 1)]
        spawn_argv, fds = _spawn_argv(argv, wrapper, launcher, reports, full_env, workdir)
        start = time.perf_counter()
        proc = _spawn(spawn_argv, full_env, workdir, out, err, fds)
        reaped = _supervise(proc, start, timeout_s)
        measured = _parse_report(reports[-1]) if launcher is not None else None
        outer = _parse_report(reports[0]) if launcher is not None and wrapper else None
        wrapper_rc = _wrapper_returncode(wrapper, outer, reaped)
        if measured is not None and measured["exec_errno"]:
            raise BadInput(f"cannot execute {argv[0]!r}: {os.strerror(measured['exec_errno'])}")
        if wrapper and launcher is not None and measured is None and not reaped.timed_out:
            tail = "\n".join(_text(err).rstrip().splitlines()[-20:])
            msg = f"{Path(wrapper[0]).name} exited with status {wrapper_rc} before the command ended"
            raise WrapperFailed(msg + (f":\n{tail}" if tail else ""), wrapper_rc, _text(err))
        usage = _usage_from_report(measured) if measured is not None else _usage_from_rusage(reaped)
        return CommandResult(
            argv=argv, timed_out=reaped.timed_out, stdout=_text(out), stderr=_text(err),
            wrapper_returncode=wrapper_rc, **usage,
        )  # fmt: skip
