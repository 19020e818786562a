"""The `profile` stage kind: run a command at each grid point and record its time, resource usage and FOMs.

    stages:
      kernels:
        kind: profile
        params:
          command: "{kernels}/{kernel} {size} 10"
          env: {OMP_NUM_THREADS: "{threads}"}
          fom: {gflops: '^gflops:\\s*(\\S+)'}
        grid:
          product: {kernel: [triad, spmv], size: [100000, 1000000], threads: [1, 2, 4]}
        repetitions: 5

Every parameter besides the fields of ProfileParams is a *variable*: a `{name}` placeholder in `command`,
`env` values and `cwd`, and a column of the result. perfscale adds `{kernels}` (the folder of the built-in
OpenMP kernels, compiled on first use), `{rep}`, `{seed}` and `{artifacts}` (the task's own folder, where the
measured run's stdout.txt and stderr.txt are kept). Commands run in the study's folder, or in `cwd` taken
relative to it. Each task runs the command `warmup` times, discarding those runs, then once more measured;
repetitions are separate tasks (`repetitions:` in the study). A failed run fails the task with the kind
that fits: timeout, oom (SIGKILL we did not send, or exit 137), app_error, or bad_input (no such command).
"""

from __future__ import annotations

import difflib
import shlex
import signal
import time
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ConfigDict, Field, field_validator, model_validator

from perfscale.collect.command import (
    USAGE_COLUMNS,
    CommandResult,
    compile_foms,
    extract_foms,
    placeholders,
    render_command,
    render_text,
    run_command,
)
from perfscale.collect.kernels import build_kernels
from perfscale.collect.machine import MACHINE_COLUMNS, machine_metadata
from perfscale.errors import BadInput, FailureKind, PerfscaleError, TaskFailure
from perfscale.stages.base import StageContext, StageParams, stage_kind
from perfscale.store.run import PROVENANCE_COLUMNS

#: placeholders perfscale fills itself; variables may not use these names
BUILTIN_NAMES = ("kernels", "rep", "seed", "artifacts")
_RESERVED_COLUMNS = frozenset((*USAGE_COLUMNS, *MACHINE_COLUMNS, *PROVENANCE_COLUMNS))
_SCALAR = (str, int, float, bool, type(None))
_STDERR_LINES = 20
_SIGNALS = {s.value for s in signal.Signals}


class ProfileParams(StageParams):
    """A command template and how to run and read it; extra fields are the task's variables."""

    model_config = ConfigDict(extra="allow")

    command: str = Field(description="command template, split like a shell would but run without one")
    env: dict[str, str] = Field(
        default_factory=dict, description="environment additions; values are templates"
    )
    cwd: str | None = Field(None, description="working folder (template), relative to the study's folder")
    timeout_s: float | None = Field(None, gt=0, description="per run; default: what is left of the walltime")
    warmup: int = Field(0, ge=0, description="runs before the measured one, discarded")
    fom: dict[str, str] = Field(default_factory=dict, description="figure of merit name -> regex, one group")

    @property
    def variables(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def templates(self) -> dict[str, str]:
        """Every template field, by the name errors use for it."""
        out = {"command": self.command, **{f"env.{k}": v for k, v in self.env.items()}}
        return out | ({"cwd": self.cwd} if self.cwd is not None else {})

    def referenced(self) -> set[str]:
        return {name for where, text in self.templates().items() for name in placeholders(text, where)}

    @field_validator("env", mode="before")
    @classmethod
    def _numbers_as_text(cls, env: Any) -> Any:
        """Let YAML say `OMP_NUM_THREADS: 4`: numbers become text, as the environment holds only text."""
        if isinstance(env, dict):
            return {
                k: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
                for k, v in env.items()
            }
        return env

    @model_validator(mode="after")
    def _check(self) -> ProfileParams:
        try:
            _check_variables(self.variables)
            _check_env_names(self.env)
            _check_foms(self.fom, self.variables)
            known = set(self.variables) | set(BUILTIN_NAMES)
            for where, text in self.templates().items():
                unknown = [n for n in placeholders(text, where) if n not in known]
                if unknown:
                    names = ", ".join(sorted(known))
                    raise ValueError(f"{where}: unknown placeholder {{{unknown[0]}}}; known names: {names}")
        except BadInput as exc:  # pydantic reports ValueErrors as validation errors
            raise ValueError(str(exc)) from None
        return self


def _check_variables(variables: dict[str, Any]) -> None:
    fields = list(ProfileParams.model_fields)
    for name, value in variables.items():
        if not name.isidentifier():
            raise ValueError(f"variable {name!r}: not a valid name; use letters, digits and underscores")
        typo = difflib.get_close_matches(name, fields, n=1, cutoff=0.8)
        if typo:
            raise ValueError(
                f"{name!r}: unknown field; did you mean {typo[0]!r}? (rename it if it is a variable)"
            )
        if name in BUILTIN_NAMES or name in _RESERVED_COLUMNS:
            raise ValueError(f"variable {name!r}: the name is reserved by perfscale; rename it")
        if not isinstance(value, _SCALAR):
            kind = type(value).__name__
            raise ValueError(f"variable {name!r}: must be a string, number or boolean, not a {kind}")


def _check_env_names(env: dict[str, str]) -> None:
    for name in env:
        if not name or "=" in name or "\0" in name:
            raise ValueError(f"env.{name}: not a valid environment variable name")


def _check_foms(foms: dict[str, str], variables: dict[str, Any]) -> None:
    for name in foms:
        if not name.isidentifier():
            raise ValueError(f"fom.{name}: not a valid column name; use letters, digits and underscores")
        if name in variables or name in _RESERVED_COLUMNS:
            raise ValueError(
                f"fom.{name}: the column name is already taken by a variable or perfscale; rename it"
            )
    compile_foms(foms)


# ---- running -------------------------------------------------------------------------------------------
def _template_values(ctx: StageContext, params: ProfileParams) -> dict[str, Any]:
    values: dict[str, Any] = {**params.variables, "rep": ctx.task.rep, "seed": ctx.seed}
    referenced = params.referenced()
    if "artifacts" in referenced:
        values["artifacts"] = str(ctx.artifacts)
    if "kernels" in referenced:  # compiling takes a moment: only when the command uses them
        try:
            values["kernels"] = str(build_kernels())
        except PerfscaleError as exc:
            raise TaskFailure(FailureKind.APP_ERROR, str(exc)) from None
    return values


def _working_dir(ctx: StageContext, params: ProfileParams, values: dict[str, Any]) -> Path | None:
    """The rendered `cwd` against the study's folder; by default the study's folder itself, where visible."""
    base = ctx.store.study_dir
    if params.cwd is None:
        return base if base.is_dir() else None
    return base / render_text(params.cwd, values, "cwd")


def _timeout(params: ProfileParams, deadline: float) -> float:
    if params.timeout_s is not None:
        return params.timeout_s
    left = deadline - time.monotonic()
    if left <= 0:
        raise TaskFailure(FailureKind.TIMEOUT, "the task's walltime was used up by the warm-up runs")
    return left


def check_result(result: CommandResult, what: str = "command") -> CommandResult:
    """Raise the TaskFailure that fits a failed run: timeout, likely OOM, other signal, non-zero exit."""
    if result.ok:
        return result
    cmd = shlex.join(result.argv)
    rc = result.returncode
    if result.timed_out:
        raise TaskFailure(
            FailureKind.TIMEOUT, f"{what} `{cmd}` timed out after {result.wall_time_s:.1f} s", rc
        )
    stderr = result.stderr_tail(_STDERR_LINES)
    tail = f"; last lines of stderr:\n{stderr}" if stderr else " (stderr is empty)"
    # SIGKILL that we did not send is almost always the OOM killer (or the scheduler's memory limit); 137 is
    # how a wrapper (shell, srun, container) reports that its child got SIGKILL
    if result.term_signal == signal.SIGKILL or rc == 128 + signal.SIGKILL:
        rss = "?" if result.max_rss_bytes is None else f"{result.max_rss_bytes / 2**20:.0f}"
        msg = f"{what} `{cmd}` was killed by SIGKILL, most likely out of memory (max RSS {rss} MiB)"
        raise TaskFailure(FailureKind.OOM, msg + tail, rc)
    if result.term_signal is not None:
        name = signal.Signals(result.term_signal).name if result.term_signal in _SIGNALS else "?"
        raise TaskFailure(FailureKind.APP_ERROR, f"{what} `{cmd}` was killed by signal {name}{tail}", rc)
    raise TaskFailure(FailureKind.APP_ERROR, f"{what} `{cmd}` exited with status {rc}{tail}", rc)


def _foms(result: CommandResult, params: ProfileParams) -> dict[str, Any]:
    """FOMs from stdout; a FOM that stdout lacks is looked for in stderr."""
    patterns = compile_foms(params.fom)
    values = extract_foms(result.stdout, patterns)
    missing = {name: patterns[name] for name, value in values.items() if value is None}
    return values | extract_foms(result.stderr, missing)


@stage_kind("profile", ProfileParams)
def profile(ctx: StageContext, params: ProfileParams) -> pd.DataFrame:
    """Run a command (warm-ups, then one measured run); record its time, resource usage and FOMs."""
    deadline = time.monotonic() + ctx.task.walltime_s
    values = _template_values(ctx, params)
    argv = render_command(params.command, values)
    env = {name: render_text(text, values, f"env.{name}") for name, text in params.env.items()}
    cwd = _working_dir(ctx, params, values)
    for i in range(params.warmup):
        result = run_command(argv, env, cwd, _timeout(params, deadline))
        check_result(result, f"command (warm-up run {i + 1} of {params.warmup})")
    logs = ctx.artifacts
    result = run_command(
        argv, env, cwd, _timeout(params, deadline),
        stdout_path=logs / "stdout.txt", stderr_path=logs / "stderr.txt",
    )  # fmt: skip
    check_result(result)
    row = {**params.variables, **result.usage(), **_foms(result, params), **machine_metadata()}
    return pd.DataFrame([row])
