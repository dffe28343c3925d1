"""Process-tree figures from ``/proc`` for the benchmark scripts (Linux; zeros elsewhere or for gone processes)."""

from __future__ import annotations

import os


def status_kb(pid: str | int, key: str) -> int:
    """A ``/proc/<pid>/status`` field in kB (``VmRSS``, ``VmHWM``...), 0 if unavailable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def tree(pid: str | int) -> list[str]:
    """``pid`` and all its live descendants."""
    out, todo = [], [str(pid)]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += f.read().split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return out


def cpu_ticks(pid: str | int, reaped: bool = False) -> int:
    """utime + stime of a process in clock ticks, plus its reaped children's with ``reaped`` (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if reaped else 0)
    except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError, ValueError):
        return 0
