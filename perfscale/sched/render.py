"""Array mode, part 2: render job scripts from the templates in launchers/.

Every value that comes from a user (names, paths, partitions, accounts, environment values) passes through
shlex.quote: the `q` filter in shell lines, the `d` filter in `#SBATCH` / `#BSUB` lines. sbatch (22.05, run
here) parses directive lines with shell quoting rules: `--job-name='it'"'"'s'` gives the name `it's`. A
newline would end the directive line and start shell code, so `d` refuses it. Site `setup:` lines are the
one exception, as they are shell by design (module loads) and come from the site file, not from study
parameters.

The walltime warning (`--signal=B:USR1@120`, `-wa USR1 -wt 2`) is asked for only when the element's walltime
is at least WARNING_MIN_WALLTIME_S: Slurm delivers it up to a minute early, so on short elements it would
arrive near the start and turn every element into a timeout.

The template, the log file name and any values only one scheduler uses come from the site's `Scheduler`
(perfscale.sched.base); nothing here branches on a scheduler's name.
"""

from __future__ import annotations

import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from perfscale.errors import SpecError
from perfscale.resources import launchers_dir
from perfscale.sched.arrays import ArrayJob
from perfscale.sched.base import Scheduler, scheduler_class
from perfscale.sched.lsf import lsf_walltime  # noqa: F401  (kept importable from here for older callers)
from perfscale.sched.mpi import Layout, launch_line
from perfscale.spec.common import export_lines, format_walltime
from perfscale.spec.site import Site

SIGNAL_LEAD_S = 120  # SIGUSR1 this long before the walltime, so a task can checkpoint and requeue
WARNING_MIN_WALLTIME_S = 5 * SIGNAL_LEAD_S


@dataclass(frozen=True)
class Rendered:
    script: str
    index_file: str  # one line per element: the task indices it runs


def _env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(launchers_dir())),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["q"] = lambda v: shlex.quote(str(v))
    env.filters["d"] = directive_value
    return env


def _one_line(text: str) -> str:
    if "\n" in text or "\r" in text:
        raise SpecError(f"{text!r} cannot go in a job script directive: it holds a newline")
    return text


def directive_value(value: object) -> str:
    """A value for a `#SBATCH`/`#BSUB` line, shell-quoted; a newline is refused (it would start shell code)"""
    return shlex.quote(_one_line(str(value)))


def task_command(site: Site, plan_path: Path, cores: int, gpus: int, job: ArrayJob | None = None) -> str:
    """The command an element runs per task, wrapped in the site launcher where the batch script does not run
    on the compute node (`Scheduler.wraps_tasks`: LSF's launch node on Lassen-like machines). A multi-rank
    stage's task line is the MPI launch: every rank runs `perfscale task run PLAN INDEX`."""
    argv = [sys.executable, "-m", "perfscale.cli", "task", "run", str(plan_path.resolve())]
    if job is not None and job.ranks > 1:
        from perfscale.sched.mpi import mpi_program, task_launch_line

        return shlex.join([*task_launch_line(site, job), *mpi_program(str(plan_path.resolve()))])
    if scheduler_class(site.scheduler).wraps_tasks:
        argv = [*launch_line(site, Layout(cores_per_rank=cores, gpus_per_rank=gpus, bind="none")), *argv]
    return shlex.join(argv)


def pack_command(plan_path: Path) -> str:
    """The command an element runs to pack its tasks' loose shards (their indices on its stdin)."""
    return shlex.join([sys.executable, "-m", "perfscale.cli", "task", "pack", str(plan_path.resolve())])


def requeue_check(plan_path: Path) -> str:
    """The command the batch shell runs after a walltime warning: exit 0 = requeue the element."""
    return shlex.join([sys.executable, "-m", "perfscale.sched.requeue", str(plan_path.resolve())])


def batch_scheduler(site: Site) -> type[Scheduler]:
    """The site's scheduler class; a site without a batch scheduler is an error naming the choices."""
    sched = scheduler_class(site.scheduler)
    if not sched.batch:
        from perfscale.sched.base import SCHEDULERS

        choices = ", ".join(n for n in sorted(SCHEDULERS) if scheduler_class(n).batch)
        raise SpecError(
            f"site {site.name!r} has scheduler {site.scheduler!r}; array mode needs a batch scheduler "
            f"({choices}); use `perfscale run` for this site"
        )
    return sched


def render_array(job: ArrayJob, site: Site, run_root: Path, pack_every: int = 0) -> Rendered:
    """`job`'s script and index file. `pack_every` > 0: each element packs its tasks' loose shards every
    that many tasks and after its last (launchers/element.sh.j2)."""
    sched = batch_scheduler(site)()
    run_root = run_root.resolve()
    values = {
        "job": job,
        "mem_mb": math.ceil(job.memory_gb * 1024),
        "walltime": format_walltime(job.walltime_s),
        "log_pattern": str(run_root / "logs" / sched.log_name(job)),
        "walltime_s": math.ceil(job.walltime_s),
        "signal_lead_s": SIGNAL_LEAD_S if job.walltime_s >= WARNING_MIN_WALLTIME_S else 0,
        "signal_lead_min": max(1, SIGNAL_LEAD_S // 60),
        "requeue_check": requeue_check(run_root / "plan.parquet"),
        "setup": site.setup,
        "exports": export_lines(site.env),
        "directives": [_one_line(d) for d in site.directives],
        "index_file": str(run_root.resolve() / "arrays" / f"{job.name}.idx"),
        "script_file": str(run_root.resolve() / "arrays" / f"{job.name}.sh"),
        "task_command": task_command(site, run_root / "plan.parquet", job.cores, job.gpus, job),
        "pack_every": pack_every,
        "pack_command": pack_command(run_root / "plan.parquet"),
        **sched.template_values(job, site, run_root),
    }
    script = _env().get_template(sched.template).render(**values)
    index_lines = "".join(" ".join(map(str, e.indices)) + "\n" for e in job.elements)
    return Rendered(script, index_lines)
