"""Running scheduler commands: argument lists only (no shell), retries with backoff, a call counter."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field

from perfscale.errors import PerfscaleError


class SchedulerCommandError(PerfscaleError):
    """A scheduler command kept failing (or timing out) after its retries."""


@dataclass
class CommandClient:
    """Runs scheduler commands; `calls` counts every invocation by command name (for tests and benchmarks)."""

    retries: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 60.0
    calls: Counter[str] = field(default_factory=Counter)

    def run(self, argv: list[str], input_text: str | None = None) -> str:
        errors = []
        for attempt in range(self.retries + 1):
            self.calls[argv[0]] += 1
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
                raise SchedulerCommandError(
                    f"{argv[0]}: command not found; is this a {argv[0]} host?"
                ) from None
            except subprocess.TimeoutExpired:
                errors.append(f"timed out after {self.timeout_s:.0f} s")
            else:
                if proc.returncode == 0:
                    return proc.stdout
                errors.append(f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        raise SchedulerCommandError(f"`{' '.join(argv)}` failed {len(errors)} times: " + "; ".join(errors))
