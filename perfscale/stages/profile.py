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

Collectors (`collectors:`, default [rusage]): wall time and rusage are always taken (the launcher, see
collect/command.py). `perf` wraps the measured run in `perf stat` with `perf_events`; `papi` counts
`papi_events` in extra runs after it, one per event group (collect/papi.py). Where the site turns a counter
source off (`counters:` in the site file), or this machine cannot count (no perf, paranoia, no PMU), the row
still comes, with those columns null and `perf_status` / `papi_status` saying why; `counters_required: true`
fails the task with unsupported_counter instead. `gpu` samples the task's GPUs (nvidia-smi, else rocm-smi)
while the measured run runs: peak and mean power, utilisation, memory and SM clock, and energy
(collect/gpu.py); null with `gpu_status` saying why where there is no GPU or tool. `ncu` runs the command
once more under Nsight Compute for `ncu_metrics` per kernel (ncu-kernels.csv; ncu_status, ncu_kernels).
Every row also gets the derived features (collect/derived.py) when a counter collector is on, the machine's
description and the captured environment variables (`env_<name>`; ENV_CAPTURE plus `env_capture`).
docs/profile-schema.md lists every column.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import os
import shlex
import shutil
import signal
import time
from collections.abc import Callable, Hashable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import (
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from perfscale.collect import gpu, papi, perf
from perfscale.collect.builtin_kernels import build_kernels
from perfscale.collect.command import (
    USAGE_COLUMNS,
    CommandResult,
    WrapperFailed,
    compile_foms,
    extract_foms,
    placeholders,
    render_command,
    render_text,
    run_command,
)
from perfscale.collect.derived import DERIVED_COLUMNS, derive
from perfscale.collect.machine import MACHINE_COLUMNS, captured_env, check_env_patterns, machine_metadata
from perfscale.errors import BadInput, FailureKind, PerfscaleError, TaskFailure
from perfscale.spec.site import Site
from perfscale.stages.base import Problems, StageContext, StageParams, checked_once, freeze, stage_kind
from perfscale.tabular.columns import PROVENANCE_COLUMNS

#: placeholders perfscale fills itself; variables may not use these names
BUILTIN_NAMES = ("kernels", "rep", "seed", "artifacts")
_RESERVED_COLUMNS = frozenset((*USAGE_COLUMNS, *MACHINE_COLUMNS, *PROVENANCE_COLUMNS, *DERIVED_COLUMNS))
#: column prefixes of the collectors and the captured environment: variables and FOMs may not use them
RESERVED_PREFIXES = ("perf_", "papi_", "env_")
Collector = Literal["rusage", "perf", "papi", "gpu", "ncu"]
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
    collectors: list[Collector] = Field(
        default_factory=lambda: ["rusage"],
        description="rusage (always on), perf, papi, gpu (the task's GPUs sampled during the measured run), "
        "ncu (Nsight Compute's ncu_metrics per kernel, in one more run)",
    )
    perf_events: list[str] = Field(
        default_factory=lambda: list(perf.DEFAULT_PERF_EVENTS), description="events for `perf stat -e`"
    )
    papi_events: list[str] = Field(
        default_factory=lambda: list(papi.DEFAULT_PAPI_EVENTS), description="PAPI preset or native events"
    )
    ncu_metrics: list[str] = Field(
        default_factory=lambda: list(gpu.DEFAULT_NCU_METRICS),
        min_length=1,
        description="Nsight Compute metrics collected per kernel with the ncu collector",
    )
    env_capture: list[str] = Field(
        default_factory=list,
        description="more environment variables (names or OMP_*-style patterns) to record",
    )
    counters_required: bool = Field(
        False, description="fail with unsupported_counter when a requested counter cannot be counted"
    )

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

    @field_validator("collectors")
    @classmethod
    def _no_repeats(cls, collectors: list[str]) -> list[str]:
        if len(set(collectors)) != len(collectors):
            raise ValueError(f"collectors: each collector once, got {collectors}")
        return collectors

    @model_validator(mode="wrap")
    @classmethod
    def _check(
        cls, data: Any, handler: ModelWrapValidatorHandler[ProfileParams], info: ValidationInfo
    ) -> Any:
        """Every problem at once, each at its field: the variables' (read from the raw input, so they are
        reported with the fields' own errors), then those that need valid fields."""
        problems = Problems()
        fields = cls.model_fields
        if isinstance(data, Mapping):
            _check_variables({k: v for k, v in data.items() if k not in fields}, problems)
        try:
            params = handler(data)
        except ValidationError as exc:
            problems.raise_all(cls, exc)
            raise

        if isinstance(data, Mapping):  # the planner's case: keyed by what _field_problems reads, the fields
            # as given (cheaper than a dump) and the variables' names, not their values

            def key() -> Hashable:
                return freeze({k: v for k, v in data.items() if k in fields}), tuple(sorted(params.variables))

            problems.extend(checked_once(info, key, lambda: params._field_problems(info)))
        else:
            problems.extend(params._field_problems(info))
        problems.raise_all(cls)
        return params

    def _field_problems(self, info: ValidationInfo) -> list[InitErrorDetails]:
        """Problems that need valid fields: env names, FOMs, events (against the site), templates."""
        site = (info.context or {}).get("site")  # the planner passes the site the study will run on
        problems = Problems()
        for name in self.env:
            if not name or "=" in name or "\0" in name:
                problems.add(("env", name), "not a valid environment variable name", name)
        _check_foms(self.fom, self.variables, problems)
        with problems.check("perf_events"):
            _check_perf_events(self)
        with problems.check("papi_events"):
            _check_papi_events(self, site)
        with problems.check("env_capture"):
            check_env_patterns(self.env_capture)
        known = set(self.variables) | set(BUILTIN_NAMES)
        for where, text in self.templates().items():
            loc = tuple(where.split(".", 1))
            with problems.check(*loc, value=text):
                unknown = [n for n in placeholders(text, where) if n not in known]
                if unknown:
                    names = ", ".join(sorted(known))
                    raise ValueError(f"unknown placeholder {{{unknown[0]}}}; known names: {names}")
        return problems.found


@functools.lru_cache(maxsize=4096)
def _variable_name_problem(name: str) -> str | None:
    """What is wrong with a variable's name (a pure function of it: planning asks once per name)."""
    if not name.isidentifier():
        return "not a valid variable name; use letters, digits and underscores"
    typo = difflib.get_close_matches(name, list(ProfileParams.model_fields), n=1, cutoff=0.8)
    if typo:
        return f"unknown field; did you mean {typo[0]!r}? (rename it if it is a variable)"
    if name in BUILTIN_NAMES or name in _RESERVED_COLUMNS or name.startswith(RESERVED_PREFIXES):
        return f"variable {name!r}: the name is reserved by perfscale; rename it"
    return None


def _check_variables(variables: Mapping[str, Any], problems: Problems) -> None:
    for name, value in variables.items():
        problem = _variable_name_problem(name) if isinstance(name, str) else "not a valid variable name"
        if problem is not None:
            problems.add((name,), problem)
        elif not isinstance(value, _SCALAR):
            kind = type(value).__name__
            problems.add(
                (name,), f"variable {name!r}: must be a string, number or boolean, not a {kind}", value
            )


def _check_foms(foms: dict[str, str], variables: dict[str, Any], problems: Problems) -> None:
    for name, pattern in foms.items():
        if not name.isidentifier():
            problems.add(("fom", name), "not a valid column name; use letters, digits and underscores")
        elif name in variables or name in _RESERVED_COLUMNS or name.startswith(RESERVED_PREFIXES):
            problems.add(
                ("fom", name), "the column name is already taken by a variable or perfscale; rename it"
            )
        else:
            with problems.check("fom", name, value=pattern):
                compile_foms({name: pattern})


def _check_perf_events(params: ProfileParams) -> None:
    """perf event names, before anything runs: always checked for form; where the perf collector is on and
    this machine has perf, names it does not know are rejected too."""
    perf_here = perf.find_perf(os.environ) if "perf" in params.collectors else None
    perf.check_perf_events(params.perf_events, "perf_events", perf_here)
    taken = sorted(set(perf.perf_columns(params.perf_events)) & set(MACHINE_COLUMNS))
    if taken:
        raise BadInput(f"perf_events: column {taken[0]} is taken by the machine description; drop that event")


def _check_papi_events(params: ProfileParams, site: Site | None) -> None:
    """PAPI event names: native ones are checked against the site (papi_native_check), never against a
    planning host that will not run the tasks."""
    native = papi_native_check(params, site) if "papi" in params.collectors else None
    papi.check_papi_events(params.papi_events, "papi_events", native)


def papi_native_check(params: ProfileParams, site: Site | None) -> papi.NativeCheck | None:
    """How native PAPI names are checked at plan time, by what the site says about its compute nodes:
    - the site's `counters.papi_native_events` patterns, where it lists them;
    - else, on a site without a scheduler (tasks run on this machine), this machine's PAPI, with the study's
      literal env (LIBPFM_* and PAPI_* change what PAPI sees), where its perf_event component is on;
    - else nothing: the name is only checked for form, and the row says why it could not be counted.
    No site (a task re-validating its params where it runs) or a site with PAPI off: form only."""
    if site is None or not site.counters.papi:
        return None
    patterns = site.counters.papi_native_events
    if patterns is not None:

        def listed(name: str) -> str | None:
            if any(fnmatch.fnmatchcase(name, p) for p in patterns):
                return None
            known = ", ".join(patterns) or "none"
            return (
                f"is not among the events site {site.name!r} lists (counters.papi_native_events: "
                f"{known}); fix it, or add it to the site file if its nodes know it (papi_native_avail)"
            )

        return listed
    if site.scheduler != "none":
        return None
    literal_env = {k: v for k, v in params.env.items() if "{" not in v}
    return papi.host_native_check({**os.environ, **literal_env})


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


# ---- collectors ----------------------------------------------------------------------------------------
#: runs the task's command once more: (wrapper or None, keep_output) -> result
Runner = Callable[[list[str] | None, bool], CommandResult]


def _disabled(ctx: StageContext, source: Literal["perf", "papi"]) -> str | None:
    if getattr(ctx.site.counters, source):
        return None
    return f"disabled: site {ctx.site.name!r} sets counters.{source}: false"


def _measured_run(
    ctx: StageContext, params: ProfileParams, run: Runner, env: Mapping[str, str]
) -> tuple[CommandResult, dict[str, Any]]:
    """The measured run, under `perf stat` when perf is a collector and can count here; its perf columns."""
    if "perf" not in params.collectors:
        return run(None, True), {}
    events = params.perf_events
    why = _disabled(ctx, "perf")
    perf_path = None
    if why is None:
        perf_path, problem = perf.perf_problem(env, events)
        why = None if problem is None else f"unavailable: {problem}"
    if perf_path is None:
        return run(None, True), perf.perf_row(events, None, why or "unavailable")
    out_file = ctx.artifacts / "perf-stat.csv"
    try:
        result = run(perf.perf_wrapper(perf_path, events, out_file), True)
    except WrapperFailed as exc:  # perf refused to run the command: run it without perf
        return run(None, True), perf.perf_row(events, None, "failed: " + " ".join(str(exc).split()))
    if not out_file.exists():
        status = f"failed: perf wrote no output (perf exit status {result.wrapper_returncode})"
        return result, perf.perf_row(events, None, status)
    return result, perf.perf_row(events, perf.parse_perf_csv(out_file.read_text()), "ok")


def _papi_columns(
    ctx: StageContext, params: ProfileParams, run: Runner, env: Mapping[str, str]
) -> dict[str, Any]:
    """Count the PAPI events, one extra run of the command per event group; the papi_* columns."""
    events = params.papi_events
    disabled = _disabled(ctx, "papi")
    if disabled is not None:
        return papi.papi_row(events, {}, disabled, 0)
    plan = papi.plan_papi(env, events)
    if plan.problem is not None or plan.papi_run is None:
        return papi.papi_row(events, {}, f"unavailable: {plan.problem}", 0)
    counts: dict[str, int] = {}
    failed: dict[str, str] = {}
    runs = 0
    for i, group in enumerate(plan.groups, 1):
        out_file = ctx.artifacts / f"papi-group-{i}.txt"
        what = f"command (PAPI run {i} of {len(plan.groups)})"
        try:
            result = run(papi.papi_wrapper(plan.papi_run, out_file, group), False)
        except WrapperFailed as exc:  # PAPI could not count this group; the command did not run
            output = papi.parse_papi_output(out_file.read_text()) if out_file.exists() else None
            failed |= dict.fromkeys(group, (output.error if output else None) or " ".join(str(exc).split()))
            continue
        runs += 1
        check_result(result, what)
        output = papi.parse_papi_output(out_file.read_text())
        if output.error is not None:  # the command ran, but PAPI could not read its counters
            failed |= dict.fromkeys(group, output.error)
        counts |= output.counts
    status = "ok"
    problems = papi.by_reason(failed) + papi.by_reason(plan.unavailable)
    if problems:
        status = ("partial: not counted: " if counts else "unavailable: ") + " | ".join(problems)
    return papi.papi_row(events, counts, status, runs)


def _ncu_columns(
    ctx: StageContext, params: ProfileParams, run: Runner, env: Mapping[str, str]
) -> dict[str, Any]:
    """One more run under Nsight Compute: `ncu_metrics` per kernel into ncu-kernels.csv; the ncu_* columns."""
    tool = shutil.which("ncu", path=env.get("PATH"))
    if tool is None:
        return gpu.ncu_row(None, "unavailable: ncu (Nsight Compute) is not on PATH")
    out_file = ctx.artifacts / "ncu.csv"
    try:
        result = run(gpu.ncu_wrapper(tool, params.ncu_metrics, out_file), False)
    except WrapperFailed as exc:
        return gpu.ncu_row(None, "failed: " + " ".join(str(exc).split()))
    check_result(result, "command (ncu run)")
    records = gpu.parse_ncu_csv(out_file.read_text(errors="replace")) if out_file.exists() else []
    gpu.write_kernel_table(records, ctx.artifacts / "ncu-kernels.csv")
    return gpu.ncu_row(records, "ok" if records else "failed: ncu profiled no kernel (see ncu.csv)")


def _counter_problems(params: ProfileParams, row: Mapping[str, Any]) -> list[str]:
    problems = []
    if "perf" in params.collectors:
        if row["perf_status"] != "ok":
            problems.append(f"perf: {row['perf_status']}")
        for event in params.perf_events:
            status = row.get(f"perf_{perf.snake(event)}_status")
            if status in ("not_supported", "not_counted"):
                problems.append(f"perf event {event}: {status}")
    if "papi" in params.collectors and row["papi_status"] != "ok":
        problems.append(f"papi: {row['papi_status']}")
    return problems


@stage_kind("profile", ProfileParams)
def profile(ctx: StageContext, params: ProfileParams) -> pd.DataFrame:
    """Run a command (warm-ups, then one measured run); record its time, resource usage, FOMs and counters."""
    deadline = time.monotonic() + ctx.task.walltime_s
    values = _template_values(ctx, params)
    argv = render_command(params.command, values)
    env = {name: render_text(text, values, f"env.{name}") for name, text in params.env.items()}
    cwd = _working_dir(ctx, params, values)
    full_env = {**os.environ, **env}
    for i in range(params.warmup):
        result = run_command(argv, env, cwd, _timeout(params, deadline))
        check_result(result, f"command (warm-up run {i + 1} of {params.warmup})")
    logs = ctx.artifacts

    def run(wrapper: list[str] | None, keep_output: bool) -> CommandResult:
        out, err = (logs / "stdout.txt", logs / "stderr.txt") if keep_output else (None, None)
        timeout = _timeout(params, deadline)
        return run_command(argv, env, cwd, timeout, stdout_path=out, stderr_path=err, wrapper=wrapper)

    sampled = "gpu" in params.collectors
    with gpu.sampling(full_env, logs / "gpu-samples.txt") if sampled else nullcontext({}) as gpu_columns:
        result, perf_columns = _measured_run(ctx, params, run, full_env)
    check_result(result)
    row = {**params.variables, **result.usage(), **_foms(result, params), **perf_columns, **gpu_columns}
    if "papi" in params.collectors:
        row |= _papi_columns(ctx, params, run, full_env)
    if "ncu" in params.collectors:
        row |= _ncu_columns(ctx, params, run, full_env)
    if "perf" in params.collectors or "papi" in params.collectors:
        row |= derive(row)
    row |= machine_metadata() | captured_env(full_env, params.env_capture)
    problems = _counter_problems(params, row) if params.counters_required else []
    if problems:
        raise TaskFailure(FailureKind.UNSUPPORTED_COUNTER, "counters_required: " + "; ".join(problems))
    return pd.DataFrame([row])
