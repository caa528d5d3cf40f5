"""The backend's pid file: "<pid> <start token>", so a reused pid is not mistaken for ours.

The token is `desktop.platform.processes.start_token`'s (psutil's, on every host; on
Linux the same clock-tick count earlier versions wrote).
"""

from __future__ import annotations

import os
from pathlib import Path

from desktop.platform import processes
from desktop.platform.files import atomic_write


def process_start_time(pid: int) -> str:
    """An opaque token that changes when `pid` is reused; "" if the process is gone."""
    return processes.start_token(pid)


def write(path: Path, pid: int | None = None) -> None:
    pid = pid or os.getpid()
    atomic_write(path, f"{pid} {process_start_time(pid)}\n", 0o644)


def _entry(path: Path) -> tuple[int, str] | None:
    try:
        pid_s, start = path.read_text().split()
        pid = int(pid_s)
    except (OSError, ValueError):
        return None
    return (pid, start) if pid > 0 else None


def read_live(path: Path) -> int | None:
    """The pid in `path` if that very process still runs; None if absent or stale."""
    entry = _entry(path)
    if entry is None or not processes.same_process(*entry):
        return None
    return entry[0]


def terminate(path: Path) -> None:
    """Ask the process in `path` to end (SIGTERM; TerminateProcess on Windows) if that
    very process still runs."""
    entry = _entry(path)
    if entry is not None:
        processes.end(*entry)


def remove_if_ours(path: Path) -> None:
    try:
        pid_s = path.read_text().split()[0]
    except (OSError, IndexError):
        return
    if pid_s == str(os.getpid()):
        path.unlink(missing_ok=True)
