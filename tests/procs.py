"""The process table from /proc (no psutil): who is whose child, which session, what is still running."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    sid: int
    state: str  # Z: a zombie (dead, not yet reaped)
    cmdline: str


def processes() -> dict[int, Proc]:
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile
            continue
        fields = text.rsplit(")", 1)[1].split()  # the command name, in parentheses, may hold spaces
        pid = int(text.split(" ", 1)[0])
        table[pid] = Proc(pid, int(fields[1]), int(fields[3]), fields[0], cmdline.strip())
    return table


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, their children...)."""
    table = processes()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p.pid for p in table.values() if p.ppid in frontier} - found
        found |= frontier
    return {p for p in found if table[p].state != "Z"}


def in_session(sid: int) -> set[int]:
    """Every live process of session `sid`, including those re-parented to init (daemonised pilot blocks)."""
    return {p.pid for p in processes().values() if p.sid == sid and p.state != "Z"}


def alive(pids: set[int]) -> set[int]:
    """Those of `pids` still running (zombies count as gone)."""
    table = processes()
    return {p for p in pids if p in table and table[p].state != "Z"}
