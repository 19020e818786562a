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
"""

from __future__ import annotations

import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from perfscale.errors import SpecError
from perfscale.sched.arrays import ArrayJob
from perfscale.sched.mpi import Layout, launch_line
from perfscale.spec.common import export_lines, format_walltime
from perfscale.spec.site import Site

LAUNCHERS = Path(__file__).resolve().parents[2] / "launchers"
TEMPLATES = {"slurm": "slurm_array.sh.j2", "lsf": "lsf_array.sh.j2"}
SIGNAL_LEAD_S = 120  # SIGUSR1 this long before the walltime, so a task can checkpoint and requeue
WARNING_MIN_WALLTIME_S = 5 * SIGNAL_LEAD_S
REQUEUE_EXIT = 75  # LSF: `#BSUB -Q 75` requeues an element that exits with it (EX_TEMPFAIL)


@dataclass(frozen=True)
class Rendered:
    script: str
    index_file: str  # one line per element: the task indices it runs


def _env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(LAUNCHERS)),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["q"] = lambda v: shlex.quote(str(v))
    env.filters["d"] = directive_value
    return env


def directive_value(value: object) -> str:
    """A value for a `#SBATCH`/`#BSUB` line, shell-quoted; a newline is refused (it would start shell code)"""
    text = str(value)
    if "\n" in text or "\r" in text:
        raise SpecError(f"{text!r} cannot go in a job script directive: it holds a newline")
    return shlex.quote(text)


def task_command(site: Site, plan_path: Path, cores: int, gpus: int) -> str:
    """The command an element runs per task, wrapped in the site launcher where the batch script does not run
    on the compute node (LSF's launch node on Lassen-like machines)."""
    argv = [sys.executable, "-m", "perfscale.cli", "task", "run", str(plan_path.resolve())]
    if site.scheduler == "lsf":
        argv = [*launch_line(site, Layout(cores_per_rank=cores, gpus_per_rank=gpus, bind="none")), *argv]
    return shlex.join(argv)


def requeue_check(plan_path: Path) -> str:
    """The command the batch shell runs after a walltime warning: exit 0 = requeue the element."""
    return shlex.join([sys.executable, "-m", "perfscale.sched.requeue", str(plan_path.resolve())])


def lsf_walltime(seconds: float) -> str:
    """LSF -W takes [hours:]minutes, rounded up."""
    minutes = math.ceil(seconds / 60)
    return f"{minutes // 60}:{minutes % 60:02d}"


def render_array(job: ArrayJob, site: Site, run_root: Path) -> Rendered:
    if site.scheduler not in TEMPLATES:
        raise SpecError(f"site {site.name!r} has scheduler {site.scheduler!r}; array mode needs slurm or lsf")
    logs = run_root.resolve() / "logs"
    pattern = f"{job.name}-%A_%a.out" if site.scheduler == "slurm" else f"{job.name}-%J_%I.out"
    values = {
        "job": job,
        "mem_mb": math.ceil(job.memory_gb * 1024),
        "walltime": format_walltime(job.walltime_s),
        "walltime_lsf": lsf_walltime(job.walltime_s),
        "log_pattern": str(logs / pattern),
        "walltime_s": math.ceil(job.walltime_s),
        "signal_lead_s": SIGNAL_LEAD_S if job.walltime_s >= WARNING_MIN_WALLTIME_S else 0,
        "signal_lead_min": max(1, SIGNAL_LEAD_S // 60),
        "requeue_exit": REQUEUE_EXIT,
        "requeue_check": requeue_check(run_root / "plan.parquet"),
        "setup": site.setup,
        "exports": export_lines(site.env),
        "index_file": str(run_root.resolve() / "arrays" / f"{job.name}.idx"),
        "task_command": task_command(site, run_root / "plan.parquet", job.cores, job.gpus),
    }
    script = _env().get_template(TEMPLATES[site.scheduler]).render(**values)
    index_lines = "".join(" ".join(map(str, e.indices)) + "\n" for e in job.elements)
    return Rendered(script, index_lines)
