"""Logging: every module logs on a `perfscale.*` logger; this module decides where the records go.

- The console: `perfscale --log-level LEVEL` (or $PERFSCALE_LOG_LEVEL; default warning) sets a stderr
  handler on the `perfscale` logger. At warning, a line reads `perfscale: warning: ...`; at info and
  debug, each line has its time and logger, such as `perfscale.sched.client` for every scheduler command
  (its line, return code and duration).
- The run folder: while a run holds its folder (`runner.open_run`, used by `perfscale run` and
  `Campaign.run`), records go to RUN/perfscale.log too, at info (debug when the console asks for debug),
  whatever the console shows: engine start and stop, stage counts, retry decisions, scheduler commands.

A program that embeds perfscale keeps its own logging set-up: nothing here touches the root logger, and
`configure` is called by the CLI only.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOGGER = "perfscale"
LEVELS = ("debug", "info", "warning", "error")
LEVEL_ENV = "PERFSCALE_LOG_LEVEL"
LOG_FILE = "perfscale.log"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s [pid %(process)d]: %(message)s"
DETAIL_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SHORT_FORMAT = "perfscale: %(levelname)s: %(message)s"


class _Stderr(logging.StreamHandler):
    """A handler that writes to whatever sys.stderr is at the time (tests and notebooks replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _ShortFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        try:
            return super().format(record)
        finally:
            record.levelname = record.levelname.upper()


_console: logging.Handler | None = None


def default_level() -> str:
    level = os.environ.get(LEVEL_ENV, "warning").lower()
    return level if level in LEVELS else "warning"


def level_number(level: str | int) -> int:
    return level if isinstance(level, int) else logging.getLevelName(level.upper())


def configure(level: str = "warning") -> None:
    """Show the perfscale loggers' records of `level` and above on stderr (replacing an earlier call's)."""
    global _console
    logger = logging.getLogger(LOGGER)
    if _console is not None:
        logger.removeHandler(_console)
    number = level_number(level)
    _console = _Stderr()
    _console.setLevel(number)
    _console.setFormatter(
        logging.Formatter(DETAIL_FORMAT) if number <= logging.INFO else _ShortFormatter(SHORT_FORMAT)
    )
    logger.addHandler(_console)
    logger.setLevel(number)


@contextmanager
def run_log(run_root: Path) -> Iterator[Path]:
    """Append the perfscale loggers' records to RUN/perfscale.log while the block runs."""
    logger = logging.getLogger(LOGGER)
    console = _console.level if _console is not None else logging.WARNING
    level = min(logging.INFO, console)
    path = Path(run_root) / LOG_FILE
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    before = logger.level
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(before)
