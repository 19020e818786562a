"""The scheduler interface (perfscale/sched/base.py): the name table, named errors, logging, and no name
branches left in the modules that must look schedulers up."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from perfscale.errors import SpecError
from perfscale.sched.base import SCHEDULERS, Scheduler, make_scheduler, scheduler_class
from perfscale.sched.client import CommandClient, SchedulerCommandError
from perfscale.sched.mpi import GENERIC, launcher_for
from perfscale.spec import load_site
from perfscale.spec.site import available_sites

ROOT = Path(__file__).resolve().parents[1]


def test_every_table_entry_is_a_complete_scheduler():
    for name in SCHEDULERS:
        cls = scheduler_class(name)
        assert issubclass(cls, Scheduler) and cls.name == name
        if not cls.batch:
            continue
        assert cls.template and (ROOT / "launchers" / cls.template).is_file(), name
        assert "{name}" in cls.log_pattern and cls.commands and cls.launchers, name
        assert cls.job_id_env and cls.nodelist_env and cls.index_env, name
        assert cls.first_index in (0, 1), name
        assert not set(cls.launchers) & set(GENERIC), name  # a launcher has one owner


def test_every_site_file_names_a_known_scheduler_and_launcher():
    for name in available_sites():
        site = load_site(name)
        sched = make_scheduler(site)
        assert sched.name == site.scheduler
        assert launcher_for(site).name in (site.launcher, "mpirun")


def test_unknown_scheduler_is_a_named_error_never_lsf(tmp_path: Path):
    path = tmp_path / "x.yaml"
    path.write_text("name: x\nscheduler: sge\nlauncher: local\n")
    with pytest.raises(SpecError) as err:
        load_site(path)
    message = str(err.value)
    assert f"{path}:2: scheduler: " in message
    assert f"unknown scheduler 'sge'; choose one of {', '.join(sorted(SCHEDULERS))}" in message
    with pytest.raises(SpecError, match="unknown scheduler 'sge'"):
        scheduler_class("sge")


def test_a_launcher_must_belong_to_the_scheduler(tmp_path: Path):
    path = tmp_path / "x.yaml"
    path.write_text("name: x\nscheduler: lsf\nlauncher: srun\n")
    with pytest.raises(SpecError) as err:
        load_site(path)
    assert f"{path}:3: launcher: " in str(err.value)
    assert (
        "launcher 'srun' does not go with scheduler 'lsf'; choose one of jsrun, lrun, local, mpirun"
        in str(err.value)
    )


def test_commands_are_logged_with_rc_and_duration(caplog: pytest.LogCaptureFixture):
    client = CommandClient(retries=1, backoff_s=0.01)
    with caplog.at_level(logging.INFO, logger="perfscale.sched.client"):
        assert client.run(["echo", "a b"]) == "a b\n"
        with pytest.raises(SchedulerCommandError):
            client.run(["sh", "-c", "exit 3"])
        assert client.run(["sh", "-c", "echo partial; exit 153"], ok_codes=(0, 153)) == "partial\n"
    lines = [r.getMessage() for r in caplog.records]
    assert re.fullmatch(r"echo 'a b': rc 0 in \d+\.\d\d s", lines[0])
    assert re.fullmatch(r"sh -c 'exit 3': rc 3 in \d+\.\d\d s \(try 1\)", lines[1])
    assert lines[2].endswith("(try 2)") and caplog.records[1].levelname == "WARNING"
    assert re.fullmatch(r"sh -c 'echo partial; exit 153': rc 153 in \d+\.\d\d s", lines[3])


def test_no_module_that_looks_schedulers_up_branches_on_a_name():
    """Engines, render, submit and mpi find schedulers in SCHEDULERS; none compares a scheduler's or a
    launcher's name (the old code treated every non-Slurm site as LSF)."""
    files = [
        *sorted((ROOT / "perfscale" / "engines").glob("*.py")),
        *(ROOT / "perfscale" / "sched" / f for f in ("render.py", "submit.py", "mpi.py", "arrays.py")),
    ]
    pattern = re.compile(r"(scheduler|launcher)\s*(==|!=|in\s*\()|\"(slurm|lsf|pbs|flux|srun|jsrun)\"")
    found = [
        f"{f.relative_to(ROOT)}:{n}: {line.strip()}"
        for f in files
        for n, line in enumerate(f.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []


def test_sites_without_a_batch_scheduler_refuse_array_mode(tmp_path: Path):
    from perfscale.sched.arrays import ArrayJob, Element
    from perfscale.sched.render import render_array

    job = ArrayJob("s-p-0", "p", [Element((0,), 60.0)], 1, 1, 1.0, 0, None, None, 1)
    with pytest.raises(SpecError, match=r"needs a batch scheduler \(.*slurm\); use `perfscale run`"):
        render_array(job, load_site("local"), tmp_path)
    with pytest.raises(SpecError, match="no batch scheduler"):
        make_scheduler(load_site("local")).submit(tmp_path / "x.sh", [])
