"""The backend's pid file: "<pid> <start time>", so a reused pid is not mistaken for ours.

The start time is the process's start in clock ticks since boot on Linux (field 22 of
/proc/<pid>/stat); elsewhere psutil-free fallbacks compare what the platform offers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def process_start_time(pid: int) -> str:
    """An opaque token that changes when `pid` is reused; "" if the process is gone."""
    if sys.platform.startswith("linux"):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return ""
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X"):
            return ""  # a zombie is not running, whoever has yet to reap it
        return fields[19]
    try:
        os.kill(pid, 0)
    except OSError:
        return ""
    # macOS and Windows: `ps -o lstart=` is enough to tell a reused pid apart.
    import subprocess

    out = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True,
                         text=True).stdout.strip()
    return out.replace(" ", "_")


def write(path: Path, pid: int | None = None) -> None:
    pid = pid or os.getpid()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid} {process_start_time(pid)}\n")
    tmp.replace(path)


def read_live(path: Path) -> int | None:
    """The pid in `path` if that very process still runs; None if absent or stale."""
    try:
        pid_s, start = path.read_text().split()
        pid = int(pid_s)
    except (OSError, ValueError):
        return None
    if pid <= 0 or process_start_time(pid) != start:
        return None
    return pid


def remove_if_ours(path: Path) -> None:
    try:
        pid_s = path.read_text().split()[0]
    except (OSError, IndexError):
        return
    if pid_s == str(os.getpid()):
        path.unlink(missing_ok=True)
