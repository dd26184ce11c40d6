"""Processes as /proc shows them: a process's tree, its state and its CPU time."""

from __future__ import annotations

from pathlib import Path


def tree(pid: int) -> list[int]:
    """A process and its descendants, the process first."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command's name, the state first."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_ticks(pid: int) -> int:
    """User and system time of ``pid`` (its threads' included), in clock ticks."""
    fields = stat(pid)
    return int(fields[11]) + int(fields[12])
