"""Running scheduler commands: argument lists only (no shell), retries with backoff, a call counter, a log.

Every command is logged on the `perfscale.sched.client` logger: its command line, return code and duration
(INFO), and each failed try (WARNING).
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field

from perfscale.errors import PerfscaleError

logger = logging.getLogger(__name__)


class SchedulerCommandError(PerfscaleError):
    """A scheduler command kept failing (or timing out) after its retries."""


@dataclass
class CommandClient:
    """Runs scheduler commands; `calls` counts every invocation by command name (for tests and benchmarks)."""

    retries: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 60.0
    calls: Counter[str] = field(default_factory=Counter)

    def run(self, argv: list[str], input_text: str | None = None, ok_codes: tuple[int, ...] = (0,)) -> str:
        """stdout of `argv`. A return code outside `ok_codes` is retried with backoff, then an error. Some
        commands report a partial answer with a non-zero code (qstat naming a purged job): pass it in
        `ok_codes` to read what they printed."""
        errors = []
        line = shlex.join(argv)
        for attempt in range(self.retries + 1):
            self.calls[argv[0]] += 1
            started = time.monotonic()
            try:
                proc = subprocess.run(
                    argv,
                    input=input_text,
                    capture_output=True,
                    text=True,
                    timeout=self.timeout_s,
                    check=False,
                )
            except FileNotFoundError:
                logger.warning("%s: command not found", line)
                raise SchedulerCommandError(
                    f"{argv[0]}: command not found; is this a {argv[0]} host?"
                ) from None
            except subprocess.TimeoutExpired:
                logger.warning("%s: timed out after %.0f s (try %d)", line, self.timeout_s, attempt + 1)
                errors.append(f"timed out after {self.timeout_s:.0f} s")
            else:
                took = time.monotonic() - started
                if proc.returncode in ok_codes:
                    logger.info("%s: rc %d in %.2f s", line, proc.returncode, took)
                    return proc.stdout
                logger.warning("%s: rc %d in %.2f s (try %d)", line, proc.returncode, took, attempt + 1)
                errors.append(f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        raise SchedulerCommandError(f"`{line}` failed {len(errors)} times: " + "; ".join(errors))


def run_logged(argv: list[str], timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run one command once (no retries: for probes inside an allocation), logged like CommandClient.run."""
    line = shlex.join(argv)
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("%s: %s after %.2f s", line, exc, time.monotonic() - started)
        raise
    logger.info("%s: rc %d in %.2f s", line, done.returncode, time.monotonic() - started)
    return done
