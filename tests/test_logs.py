"""`perfscale --version`, `--log-level`, and RUN/perfscale.log: engine start and stop, retry decisions and
scheduler commands are logged."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

import perfscale
from perfscale.cli import main
from perfscale.logs import LOG_FILE, LOGGER, run_log
from perfscale.sched.client import CommandClient
from tests.studies import FAILING


@pytest.fixture(autouse=True)
def _quiet_again():
    """main() sets the perfscale logger up; put it back to warning for the tests after this one."""
    yield
    main(["--log-level", "warning", "sites", "list"])


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"perfscale {perfscale.__version__}\n"


def test_a_run_logs_engine_start_stop_and_retry_decisions(write_study, tmp_path: Path, capsys) -> None:
    study, run = write_study(FAILING.replace("MODE", "raise")), tmp_path / "run"
    argv = ["run", str(study), "--engine", "local", "--workers", "1", "--run-dir", str(run)]
    assert main([*argv, "--quiet", "--no-report"]) == 1  # x == bad fails after its 2 retries
    text = (run / LOG_FILE).read_text()
    assert "local engine: starting 1 workers on site local" in text
    assert re.search(r"local engine: started in [\d.]+ s", text)
    assert re.search(r"local engine: stopped in [\d.]+ s", text)
    assert "stage fail: 3 tasks, 0 done, 3 to run, 0 blocked" in text
    # the failing task: two retries, then its end
    retried = r"task \d \(fail \w+\) attempt [12]: app_error; retried \(retry policy\)"
    assert len(re.findall(retried, text)) == 2
    assert re.search(r"task \d \(fail \w+\) failed at attempt 3: app_error; no retry left", text)
    assert re.search(r"task \d \(flaky \w+\) attempt 1: app_error; retried", text)  # then it succeeded
    err = capsys.readouterr().err
    assert "failed at attempt 3" in err and "perfscale: warning:" in err  # the console shows warnings only
    assert "engine: started" not in err

    # a second run of the same folder appends; --log-level after the command name works too
    assert main([*argv, "--quiet", "--no-report", "--log-level", "info"]) == 1
    assert (run / LOG_FILE).read_text().startswith(text)
    assert "INFO perfscale.engines.base: local engine: started" in capsys.readouterr().err


def test_scheduler_commands_are_logged_in_the_run_folder(tmp_path: Path) -> None:
    logging.getLogger(LOGGER).setLevel(logging.WARNING)
    with run_log(tmp_path) as path:
        CommandClient(retries=0).run(["true"])
        CommandClient(retries=1, backoff_s=0).run(["sh", "-c", "exit 3"], ok_codes=(3,))
    text = path.read_text()
    assert re.search(r"INFO perfscale.sched.client \[pid \d+\]: true: rc 0 in [\d.]+ s", text)
    assert re.search(r"sh -c 'exit 3': rc 3 in [\d.]+ s", text)
    assert logging.getLogger(LOGGER).level == logging.WARNING  # put back after the block
