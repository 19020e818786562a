"""The `perfscale` command. Heavy modules (parsl, sdv, torch) load only in the commands that use them."""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.table import Table

from perfscale.engines.base import ENGINES
from perfscale.errors import PerfscaleError
from perfscale.logs import LEVEL_ENV, LEVELS, configure, default_level
from perfscale.version import __version__

if TYPE_CHECKING:
    from perfscale.store import RunStore

# written out so that `--help` need not import every importer (pandas, pyarrow); a test keeps it complete
IMPORTER_NAMES = "caliper, rajaperf, sacct, sacct-steps, alibaba, alibaba-instances, sklearn, csv, parquet"

console = Console()
err_console = Console(stderr=True)


def _site(args: argparse.Namespace):
    from perfscale.spec.site import load_site

    return load_site(args.site)


def _count(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"must be a whole number >= {least}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    """argparse type of counts (--workers, --throttle): a whole number >= 1."""
    return _count(text, 1)


def _non_negative_int(text: str) -> int:
    """argparse type of counts where 0 turns a feature off (--compact-every)."""
    return _count(text, 0)


def cmd_plan(args: argparse.Namespace) -> int:
    from perfscale.plan import build_plan
    from perfscale.plan.overrides import load_study_text

    study, _ = load_study_text(args.study, args.set)
    site = _site(args)
    plan = build_plan(study, str(args.study), site)
    out = Path(args.out or f"{study.name}.plan.parquet")
    if out.is_dir():
        suggestion = out / f"{study.name}.plan.parquet"
        raise PerfscaleError(f"--out {out} is a folder; give a file path, such as {suggestion}")
    plan.write(out)
    title = f"plan of {study.name}: {len(plan.tasks)} tasks -> {out}"
    table = Table("stage", "kind", "tasks", "site", "partition", "GPUs per task", title=title)
    for stage in plan.stages:
        tasks = plan.of_stage(stage)
        first = tasks[0]
        where = (first.site or site.name, first.partition or "default", str(first.gpus))
        table.add_row(stage, first.kind, str(len(tasks)), *where)
    console.print(table)
    return 0


def _scheduler_states(store) -> dict:
    """One poll of the site's scheduler for runs submitted in array mode (else nothing)."""
    from perfscale.sched.submit import poll, record_scheduler_failures, submitted

    if store.site.scheduler == "none" or not submitted(store):
        return {}
    states = poll(store)
    record_scheduler_failures(store, states)
    return states


def _print_status(store, done: dict[str, set[str]] | None = None) -> int:
    """The status table; `done`: each stage's done keys when the caller has just checked them."""
    from perfscale.status import run_status

    sched = _scheduler_states(store)
    states = run_status(store, done)
    columns = [
        "stage",
        "total",
        "done",
        "failed",
        "missing",
        *(["queued", "running"] if sched else []),
        "failure kinds",
    ]
    table = Table(*columns, title=f"run {store.root}")
    for st in states:
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(st.failure_kinds.items()))
        row = [
            st.stage,
            str(st.total),
            str(st.done),
            f"[red]{st.failed}" if st.failed else "0",
            str(st.missing),
        ]
        if sched:
            mine = [sched[i] for i in store.plan_keys[st.stage].values() if i in sched]
            row += [
                str(sum(s.active and s.state.startswith("PEND") for s in mine)),
                str(sum(s.active and not s.state.startswith("PEND") for s in mine)),
            ]
        table.add_row(*row, kinds)
    console.print(table)
    recovered = sum(st.recovered for st in states)
    if recovered:
        lost = f"{recovered} finished task(s) had lost their attempt row"
        console.print(f"[dim]{lost}: read back from their shards' footers")
    return 1 if any(st.failed for st in states) else 0


def cmd_submit(args: argparse.Namespace) -> int:
    """Array mode: plan, render job scripts, submit them with dependencies between stages."""
    from perfscale.runner import prepare_run
    from perfscale.sched.submit import dry_run, submit_run

    run_dir = Path(args.run_dir) if args.run_dir else None
    store = prepare_run(Path(args.study), _site(args), run_dir, overrides=args.set)
    if args.dry_run:
        _print_scripts(store, dry_run(store, args.partition, args.account, args.throttle))
        return 0
    arrays = submit_run(store, partition=args.partition, account=args.account, throttle=args.throttle)
    _print_arrays(store, arrays)
    return 0


def _print_scripts(store, rendered) -> None:
    title = f"dry run for {store.root}: rendered, nothing submitted"
    table = Table("array", "stage", "elements", "tasks", "script", title=title)
    for job, script in rendered:
        tasks = sum(len(e.indices) for e in job.elements)
        table.add_row(job.name, job.stage, str(len(job.elements)), str(tasks), str(script))
    console.print(table if rendered else "nothing to submit: every task has its shard")


def _print_arrays(store, arrays) -> None:
    table = Table("array", "stage", "job id", "elements", "tasks", title=f"submitted for {store.root}")
    for a in arrays:
        table.add_row(a.name, a.stage, a.job_id, str(len(a.elements)), str(sum(map(len, a.elements))))
    console.print(table if arrays else "nothing to submit: every task has its shard")


def cmd_resubmit(args: argparse.Namespace) -> int:
    from perfscale.sched.submit import failed_or_missing, poll, record_scheduler_failures, submit_run
    from perfscale.store import RunStore

    store = RunStore(args.run).check()
    states = poll(store)
    record_scheduler_failures(store, states)
    indices = failed_or_missing(store, states)
    arrays = (
        submit_run(
            store, indices=indices, partition=args.partition, account=args.account, throttle=args.throttle
        )
        if indices
        else []
    )
    _print_arrays(store, arrays)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from perfscale.sched.submit import cancel
    from perfscale.store import RunStore

    ids = cancel(RunStore(args.run).check())
    console.print(f"cancelled {len(ids)} array job(s): {' '.join(ids)}")
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like SIGINT: the run stops cleanly (attempts recorded, workers stopped)."""


def _terminate(signum: int, _frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only the first counts: a second must not cut the cleanup
    raise Terminated


def cmd_run(args: argparse.Namespace) -> int:
    from perfscale.runner import open_run, run_plan

    signal.signal(signal.SIGTERM, _terminate)

    run_dir = Path(args.run_dir) if args.run_dir else None
    with open_run(Path(args.study), _site(args), run_dir, args.wait_lock, args.set) as store:
        console.print(
            f"run folder: [bold]{store.root}[/] ({store.task_count} tasks, engine "
            f"{args.engine or store.site.engine})"
        )
        summary = run_plan(
            store,
            args.engine,
            args.workers,
            progress=not args.quiet,
            bundle=not args.no_bundle,
            compact_every=args.compact_every,
        )
        code = _print_status(store, {stage: s.done_keys for stage, s in summary.items()})
        if not args.no_report:
            from perfscale.report import build_report

            path = build_report(store)
            console.print(f"report: [bold]{path.resolve()}[/]")
    return code


def cmd_status(args: argparse.Namespace) -> int:
    from perfscale.store import RunStore

    return _print_status(RunStore(args.run).check())


def cmd_compact(args: argparse.Namespace) -> int:
    """Merge each stage's loose shards into packs, under the run's lock (one compaction at a time)."""
    from perfscale.store import RunStore
    from perfscale.store.compact import compact_run
    from perfscale.store.lock import run_lock

    store = RunStore(args.run).check()
    unknown = sorted(set(args.stages) - set(store.plan_keys))
    if unknown:
        raise PerfscaleError(
            f"{store.plan_path}: no stage {', '.join(map(repr, unknown))} in the plan; its stages are "
            f"{', '.join(store.plan_keys)}"
        )
    with run_lock(store.root, wait=args.wait_lock):
        results = compact_run(store, args.stages or None)
    table = Table(
        "stage",
        "shards packed",
        "packs written",
        "loose files before",
        "after",
        title=f"compacted {store.root}",
    )
    for r in results:
        table.add_row(r.stage, str(r.packed), str(r.packs), str(r.loose_before), str(r.loose_after))
    console.print(table)
    return 0


def _plan_store(plan: Path) -> RunStore:
    """The run whose plan file is `plan` (what `perfscale task` commands are given)."""
    from perfscale.execute import open_store

    if not plan.is_file():
        raise PerfscaleError(
            f"{plan}: no such plan file; give RUN/plan.parquet of a run made by `perfscale run` or "
            "`perfscale submit`"
        )
    return open_store(plan.parent)


def cmd_task_pack(args: argparse.Namespace) -> int:
    """What an array element runs after its tasks: their loose shards merged into packs (store/compact.py
    `pack_element`); the element's task indices come on stdin (an element may hold 100,000)."""
    from perfscale.store.compact import pack_element

    store = _plan_store(args.plan)
    text = sys.stdin.read().split()
    bad = [w for w in text if not w.isdigit()]
    if bad:
        raise PerfscaleError(f"task pack: stdin must hold task indices, not {bad[0]!r}")
    for r in pack_element(store, map(int, text)):
        console.print(f"stage {r.stage}: {r.packed} shards packed into {r.packs} packs")
    return 0


def cmd_task_run(args: argparse.Namespace) -> int:
    """One task, as a job-array element runs it: attempts are appended to the run's attempts table."""
    from perfscale.execute import execute_task
    from perfscale.store.space import disk_full_named

    store = _plan_store(args.plan)
    count = len(store.plan_rows)  # the plan's footer; one task is read from its row group
    if not 0 <= args.index < count:
        raise PerfscaleError(f"{args.plan}: index {args.index} out of range 0..{count - 1}")
    task = store.task(args.index)
    attempt = store.next_attempt(task.key) if args.attempt is None else args.attempt
    if task.ranks > 1:  # this process is one rank of the task's MPI job (perfscale/distributed/task.py)
        from perfscale.execute import execute_rank

        rank, outcome = execute_rank(store.root, args.index, attempt)
        if rank != 0:
            return 0 if outcome.ok else 1
    else:
        outcome = execute_task(store.root, args.index, attempt)
    with disk_full_named(store.root):
        if args.outcome is not None:
            from perfscale.distributed.task import write_records

            write_records(args.outcome, outcome.attempts)
        else:
            store.append_task_attempts(outcome.attempts)  # its task's bucket: O(1) to number
    if outcome.ok:
        console.print(
            f"task {args.index} ({outcome.stage} {outcome.key}): "
            + ("already done" if outcome.skipped else "done")
        )
        return 0
    err_console.print(
        f"task {args.index} ({outcome.stage} {outcome.key}) failed: {outcome.failure_kind}\n"
        f"{outcome.message}",
        markup=False,  # the message is the task's: "[...]" in it is not rich markup
    )
    return 1


def cmd_show(args: argparse.Namespace) -> int:
    import pandas as pd

    from perfscale.store import RunStore

    store = RunStore(args.run).check()
    if args.stage not in store.plan.stages:
        raise PerfscaleError(
            f"run {args.run} has no stage {args.stage!r}; stages: {', '.join(store.plan.stages)}"
        )
    df = store.read_stage(args.stage, provenance=args.provenance).to_pandas()
    if args.columns:
        columns = [c.strip() for c in args.columns.split(",")]
        unknown = [c for c in columns if c not in df.columns]
        if unknown:
            raise PerfscaleError(
                f"--columns: stage {args.stage!r} of run {args.run} has no column(s) {', '.join(unknown)}; "
                + (f"its columns are {', '.join(df.columns)}" if len(df.columns) else "it has no columns")
            )
        df = df[columns]
    if args.format == "csv":
        df.to_csv(sys.stdout, index=False)
        return 0
    with pd.option_context("display.max_columns", None, "display.width", console.width):
        console.print(df.head(args.limit).to_string(index=False))
    console.print(f"[dim]{len(df)} rows x {df.shape[1]} columns[/]")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from perfscale.report import build_report
    from perfscale.store import RunStore

    path = build_report(RunStore(args.run).check())
    console.print(f"report: [bold]{path.resolve()}[/]")
    return 0


def cmd_sites(args: argparse.Namespace) -> int:
    """list, show NAME, or probe [NAME]: what a site claims vs this machine (exit status 1 on a mismatch)."""
    from perfscale.spec.site import available_sites, load_site

    if args.action == "list":
        table = Table("site", "scheduler", "launcher", "engine", "file")
        for name, path in available_sites().items():
            s = load_site(path)
            table.add_row(name, s.scheduler, s.launcher, s.engine, str(path))
        console.print(table)
        return 0
    if args.action == "show":
        if not args.name:
            raise PerfscaleError("`perfscale sites show` needs a site name")
        console.print_json(load_site(args.name).model_dump_json())
        return 0
    from perfscale.spec.probe import probe

    site = load_site(args.name or "local")
    checks = probe(site)
    table = Table("check", "site claims", "found here", "ok", title=f"site {site.name!r} on this machine")
    for c in checks:
        table.add_row(c.name, c.expected, c.found, "[green]ok" if c.ok else "[red]MISMATCH")
    console.print(table)
    bad = [c.name for c in checks if not c.ok]
    console.print(f"[red]{len(bad)} mismatch(es): {', '.join(bad)}" if bad else "[green]all checks pass")
    return 1 if bad else 0


def cmd_ingest(args: argparse.Namespace) -> int:
    """Import SOURCE with one importer and write it as a Parquet dataset under --out."""
    from perfscale.ingest import read_source
    from perfscale.store.atomic import atomic_write_table

    table = read_source(args.kind, Path(args.source))
    out = Path(args.out)
    path = atomic_write_table(table, out / f"{args.kind}-{Path(args.source).name or 'source'}.parquet")
    console.print(f"{table.num_rows} rows x {table.num_columns} columns -> [bold]{path}[/]")
    return 0


def _add_log_level(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument(
        "--log-level",
        choices=LEVELS,
        default=argparse.SUPPRESS if default is None else default,
        help=f"log records shown on stderr (default: ${LEVEL_ENV} or warning); runs also log to "
        "RUN/perfscale.log",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="perfscale", description=__doc__)
    p.add_argument("--version", action="version", version=f"perfscale {__version__}")
    _add_log_level(p, default_level())
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="plan a study and run its missing tasks")
    r.add_argument("study", type=Path)
    r.add_argument("--site", default="local", help="site name or path to a site YAML (default: local)")
    r.add_argument("--run-dir", help="run folder (default: runs/<study>-<site>)")
    r.add_argument("--engine", choices=sorted(ENGINES), help="override the site's engine")
    r.add_argument("--workers", type=_positive_int, help="concurrent tasks (default: the site's max_workers)")
    r.add_argument("--no-report", action="store_true")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument(
        "--no-bundle",
        action="store_true",
        help="one task per engine call (default: short tasks are bundled, several per call)",
    )
    r.add_argument(
        "--compact-every",
        type=_non_negative_int,
        help="merge a stage's shards into packs each time it has this many new ones, and at its end "
        "(default: the site's compact_every, 10000; 0: never)",
    )
    r.add_argument(
        "--wait-lock", action="store_true", help="if another run holds the run folder, wait for it to end"
    )
    r.set_defaults(fn=cmd_run)

    co = sub.add_parser(
        "compact", help="merge a run's small shards into a few packs (Parquet files with a key index)"
    )
    co.add_argument("run", type=Path)
    co.add_argument("stages", nargs="*", help="stages to compact (default: all)")
    co.add_argument(
        "--wait-lock", action="store_true", help="if a run holds the run folder, wait for it to end"
    )
    co.set_defaults(fn=cmd_compact)

    sb = sub.add_parser("submit", help="array mode: submit a study's missing tasks as scheduler job arrays")
    sb.add_argument("study", type=Path)
    sb.add_argument("--site", required=True, help="a site with a batch scheduler (`perfscale sites list`)")
    sb.add_argument("--run-dir", help="run folder (default: runs/<study>-<site>)")
    sb.add_argument(
        "--dry-run",
        action="store_true",
        help="render the job scripts into RUN/arrays/ and stop: no scheduler command runs",
    )
    rs = sub.add_parser("resubmit", help="array mode: resubmit only failed or missing tasks")
    rs.add_argument("run", type=Path)
    rs.add_argument("--failed", action="store_true", required=True, help="failed or missing tasks (required)")
    for p_ in (sb, rs):
        p_.add_argument("--partition", help="partition / queue (default: the site's default)")
        p_.add_argument("--account", help="account / bank (default: the site's first)")
        p_.add_argument("--throttle", type=_positive_int, help="array elements running at once (%%K)")
    sb.set_defaults(fn=cmd_submit)
    rs.set_defaults(fn=cmd_resubmit)
    ca = sub.add_parser("cancel", help="array mode: cancel every array job of a run")
    ca.add_argument("run", type=Path)
    ca.set_defaults(fn=cmd_cancel)

    pl = sub.add_parser("plan", help="expand a study into a plan (Parquet) without running it")
    pl.add_argument("study", type=Path)
    pl.add_argument("--out", help="plan file (default: <study>.plan.parquet)")
    pl.add_argument("--site", default="local", help="the site the study is checked against (default: local)")
    pl.set_defaults(fn=cmd_plan)

    st = sub.add_parser("status", help="per-stage counts: done, failed (with kinds), missing")
    st.add_argument("run", type=Path)
    st.set_defaults(fn=cmd_status)

    t = sub.add_parser("task", help="run one task of a plan (what a job-array element calls)")
    tsub = t.add_subparsers(dest="task_command", required=True)
    tr = tsub.add_parser("run")
    tr.add_argument("plan", type=Path, help="RUN/plan.parquet")
    tr.add_argument("index", type=int)
    tr.add_argument("--attempt", type=int, help="the attempt's number (default: the next after the table's)")
    tr.add_argument("--outcome", type=Path, help="write the attempt records here, not to the attempts table")
    tr.set_defaults(fn=cmd_task_run)
    tp = tsub.add_parser("pack", help="pack the loose shards of an element's tasks (indices read from stdin)")
    tp.add_argument("plan", type=Path, help="RUN/plan.parquet")
    tp.set_defaults(fn=cmd_task_pack)

    sh = sub.add_parser("show", help="print a stage's table")
    sh.add_argument("run", type=Path)
    sh.add_argument("stage")
    sh.add_argument("--columns", help="comma-separated columns")
    sh.add_argument("--limit", type=int, default=20)
    sh.add_argument("--format", choices=["table", "csv"], default="table")
    sh.add_argument("--provenance", action="store_true", help="include provenance columns")
    sh.set_defaults(fn=cmd_show)

    rp = sub.add_parser("report", help="write RUN/report/index.html")
    rp.add_argument("run", type=Path)
    rp.set_defaults(fn=cmd_report)

    ig = sub.add_parser("ingest", help="import existing data (caliper, sacct, csv, parquet...) as Parquet")
    ig.add_argument("kind", help=f"importer name: {IMPORTER_NAMES}")
    ig.add_argument("source", help="a file, or a folder searched recursively")
    ig.add_argument("--out", required=True, help="folder of the Parquet dataset to write")
    ig.set_defaults(fn=cmd_ingest)

    si = sub.add_parser("sites", help="list or show site configurations, or probe one on this machine")
    si.add_argument("action", choices=["list", "show", "probe"])
    si.add_argument("name", nargs="?", help="site name or YAML path (probe: default local)")
    si.set_defaults(fn=cmd_sites)
    for command in (r, pl, sb):
        command.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="stages.NAME.params.KEY=VALUE",
            help="override a stage parameter (VALUE is YAML: 5, 0.5, true, a.csv, [1, 2]); repeatable",
        )
    for command in [*sub.choices.values(), *tsub.choices.values()]:  # also after the command name
        _add_log_level(command, None)
    return p


def _show_deprecation(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """perfscale's own deprecations (old spellings in a study) as one line; others as Python shows them."""
    if issubclass(category, DeprecationWarning) and "/perfscale/" in filename.replace("\\", "/"):
        print(f"perfscale: warning: {message}", file=sys.stderr)
    else:
        _SHOW_WARNING(message, category, filename, lineno, file, line)


_SHOW_WARNING = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    warnings.filterwarnings("default", category=DeprecationWarning, module=r"perfscale\.")
    warnings.showwarning = _show_deprecation
    configure(args.log_level)
    try:
        return args.fn(args)
    except PerfscaleError as exc:
        print(f"perfscale: error: {exc}", file=sys.stderr)  # argparse's form for usage errors
        return 2
    except KeyboardInterrupt as exc:
        name = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
        print(
            f"perfscale: interrupted by {name}: attempts so far are recorded; run again to resume",
            file=sys.stderr,
        )
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
