"""Scheduler output parsers and state classification.

LSF cannot run here: its outputs below are written from IBM Spectrum LSF 10.1 documentation (bsub's
"Job <N> is submitted to queue <Q>." line; `bjobs -o "... delimiter='|'"` one line per array element with
`-` for empty fields; exit reasons as TERM_* codes or their messages). Slurm's are checked against a real
Slurm in tests/test_slurm_real.py; here only the formats documented in sacct(1)/squeue(1).
"""

from __future__ import annotations

import pytest

from perfscale.errors import FailureKind
from perfscale.ingest.sacct import split_job_id
from perfscale.sched.client import CommandClient, SchedulerCommandError
from perfscale.sched.lsf import bjobs_poll_argv, bsub_argv, parse_bjobs_poll, parse_bsub
from perfscale.sched.slurm import parse_sacct_poll, parse_sbatch, parse_squeue_poll, sacct_poll_argv
from perfscale.sched.slurm_fields import parse_job_id, parse_state
from perfscale.sched.states import lsf_failure, slurm_failure


@pytest.mark.parametrize(
    ("state", "kind"),
    [
        ("COMPLETED", None),
        ("RUNNING", None),
        ("PENDING", None),
        ("FAILED", FailureKind.APP_ERROR),
        ("TIMEOUT", FailureKind.TIMEOUT),
        ("OUT_OF_MEMORY", FailureKind.OOM),
        ("NODE_FAIL", FailureKind.NODE_LOST),
        ("PREEMPTED", FailureKind.PREEMPTED),
        ("CANCELLED by 0", FailureKind.CANCELLED),
        ("CANCELLED+", FailureKind.CANCELLED),
        ("BOOT_FAIL", FailureKind.NODE_LOST),
        ("WEIRD", FailureKind.APP_ERROR),
    ],
)
def test_slurm_states(state, kind):
    assert slurm_failure(state) == kind


@pytest.mark.parametrize(
    ("stat", "reason", "kind"),
    [
        ("DONE", None, None),
        ("RUN", None, None),
        ("PEND", None, None),
        ("EXIT", "TERM_RUNLIMIT: job killed after reaching LSF run time limit", FailureKind.TIMEOUT),
        ("EXIT", "job killed after reaching LSF run time limit", FailureKind.TIMEOUT),
        ("EXIT", "TERM_MEMLIMIT: job killed after reaching LSF memory usage limit", FailureKind.OOM),
        ("EXIT", "TERM_PREEMPT: job killed after preemption", FailureKind.PREEMPTED),
        ("EXIT", "TERM_OWNER: job killed by owner", FailureKind.CANCELLED),
        ("EXIT", "TERM_HOST: job killed by LSF due to a host problem", FailureKind.NODE_LOST),
        ("EXIT", None, FailureKind.APP_ERROR),
    ],
)
def test_lsf_states(stat, reason, kind):
    assert lsf_failure(stat, reason) == kind


def test_sbatch_and_bsub_ids():
    assert parse_sbatch("1234\n") == "1234"
    assert parse_sbatch("1234;cluster\n") == "1234"
    assert parse_bsub("Job <56789> is submitted to queue <pbatch>.\n") == "56789"
    with pytest.raises(SchedulerCommandError):
        parse_bsub("Request aborted by esub. Job not submitted.")
    assert bsub_argv(["1", "2"]) == ["bsub", "-w", "done(1) && done(2)"]


def test_sacct_poll_parsing():
    out = (
        "100_0|COMPLETED|0:0\n100_1|FAILED|3:0\n100_2|TIMEOUT|0:15\n100_[3-5,7%2]|PENDING|0:0\n"
        "101_0|CANCELLED by 0|0:15\n101_0|COMPLETED|0:0\n102|RUNNING|0:0\n"
    )
    states = parse_sacct_poll(out)
    assert states[("100", 1)].failure is FailureKind.APP_ERROR and states[("100", 1)].exit_code == 3
    assert states[("100", 2)].failure is FailureKind.TIMEOUT
    assert {k[1] for k in states if k[0] == "100" and states[k].state == "PENDING"} == {3, 4, 5, 7}
    assert states[("101", 0)].state == "COMPLETED"  # a requeued element keeps its latest line
    assert ("102", 0) not in states  # not an array
    argv = sacct_poll_argv(["100", "101"])
    assert argv[0] == "sacct" and "--jobs=100,101" in argv and "--allocations" in argv


@pytest.mark.parametrize(
    ("text", "base", "elements", "step"),
    [
        ("9", "9", [], None),
        ("9_2", "9", [2], None),
        ("9_2.batch", "9", [2], "batch"),
        ("9_[0-3%2]", "9", [0, 1, 2, 3], None),
        ("9_[5-7,9]", "9", [5, 6, 7, 9], None),
        ("123+1.0", "123", [], "0"),
    ],
)
def test_one_slurm_job_id_parser_for_array_mode_and_the_importer(text, base, elements, step):
    parsed = parse_job_id(text)
    assert (parsed.base, parsed.elements, parsed.step) == (base, elements, step)
    row = split_job_id(text)  # the sacct importer reads the same parse
    assert row["step"] == step and row["job_id"] == parsed.job_id
    assert row["array_task_id"] == (elements[0] if parsed.task and parsed.task.isdigit() else None)
    with pytest.raises(ValueError, match="not a Slurm job id"):
        parse_job_id("JobID")


def test_states_read_alike_by_both():
    assert parse_state("CA by 1000") == ("CANCELLED", 1000)  # squeue's short code, then sacct's "by uid"
    assert slurm_failure("CA") is FailureKind.CANCELLED and slurm_failure("TO") is FailureKind.TIMEOUT
    assert parse_state("Unknown") == (None, None) and slurm_failure("") is FailureKind.APP_ERROR


def test_squeue_poll_parsing():
    states = parse_squeue_poll("200_[4-6]|PENDING|JobArrayTaskLimit\n200_1|RUNNING|None\n")
    assert sorted(k[1] for k in states) == [1, 4, 5, 6]
    assert all(s.active for s in states.values())


def test_bjobs_poll_parsing():
    out = (
        "300|1|DONE|-|-\n300|2|EXIT|140|TERM_RUNLIMIT: job killed after reaching LSF run time limit\n"
        "300|3|EXIT|1|-\n300|4|PEND|-|-\n301|1|RUN|-|-\nJob <999> is not found\n"
    )
    states = parse_bjobs_poll(out)
    assert states[("300", 1)].failure is None and not states[("300", 1)].active
    assert states[("300", 2)].failure is FailureKind.TIMEOUT and states[("300", 2)].exit_code == 140
    assert states[("300", 3)].failure is FailureKind.APP_ERROR
    assert states[("300", 4)].active and states[("301", 1)].active
    assert len(states) == 5
    argv = bjobs_poll_argv(["300", "301"])
    assert argv[:3] == ["bjobs", "-a", "-noheader"] and argv[-2:] == ["300", "301"]


def test_client_retries_with_backoff_then_reports(tmp_path):
    client = CommandClient(retries=2, backoff_s=0.01)
    with pytest.raises(SchedulerCommandError, match="failed 3 times"):
        client.run(["false"])
    assert client.calls["false"] == 3
    with pytest.raises(SchedulerCommandError, match="command not found"):
        client.run(["no-such-scheduler-command"])
    assert client.run(["echo", "ok"]) == "ok\n"
