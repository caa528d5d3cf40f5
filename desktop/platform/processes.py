"""Is a process alive, when did it start, and ending one: the same answer on every host.

Everything goes through psutil. The standard library's ways are wrong on some host:
``os.kill(pid, 0)`` sends CTRL_C_EVENT on Windows (signal 0 is that event's number) and
may stop the very process it was meant to probe; ``ps`` does not exist there; /proc is
Linux's alone.

A pid is reused once its process is gone, so Cove never trusts a pid alone: it keeps
the process's start token (`start_token`) beside it (pid files, ``vm.json``) and a pid
is "still that process" only while its token is the same (`same_process`). The token is
an opaque string, stable for the life of the process:

* Linux: the start in clock ticks after boot (field 22 of /proc/<pid>/stat, which earlier
  versions of Cove wrote, so their pid files still read). psutil's `create_time` is that
  plus the boot time, and the boot time moves when the wall clock is stepped (NTP, a
  resume), which would make a live backend look like another process; the difference
  of the two, rounded to ticks, does not move.
* macOS and Windows: `create_time` in seconds to the millisecond; the kernel recorded it
  as a wall-clock time when the process started, and it is not recomputed.

A zombie (exited, not yet reaped) is not alive. A process of another user that psutil
may not read is alive, but no token of ours names it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import psutil

_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


def _process(pid: int) -> Any:
    """The psutil Process of a live, non-zombie `pid`; None when there is none. Raises
    psutil.AccessDenied when it exists but may not be read."""
    if pid <= 0:
        return None
    try:
        p = psutil.Process(pid)
        if p.status() in _GONE:
            return None
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    return p


def is_alive(pid: int) -> bool:
    """Whether `pid` names a running process (a zombie does not count)."""
    try:
        return _process(pid) is not None
    except psutil.AccessDenied:
        return True  # exists, and belongs to someone else


class Meter:
    """A process's CPU use and resident memory, read again and again: `read()` gives
    (CPU as % of one core since the last read, None at the first; RSS in bytes), or
    None once the process is gone or may not be read."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._proc: Any = None

    def read(self) -> tuple[float | None, int] | None:
        try:
            first = self._proc is None
            if first:
                self._proc = psutil.Process(self.pid)
            cpu = float(self._proc.cpu_percent(None))  # from the previous call
            return (None if first else cpu), int(self._proc.memory_info().rss)
        except psutil.Error:
            self._proc = None
            return None


def start_token(pid: int) -> str:
    """The start token of process `pid` (see the module's doc); "" when it is gone, a
    zombie, or not readable."""
    try:
        p = _process(pid)
        if p is None:
            return ""
        created = p.create_time()
        if sys.platform.startswith("linux"):
            ticks = os.sysconf("SC_CLK_TCK")
            return str(round((created - psutil.boot_time()) * ticks))
        return f"{created:.3f}"
    except (psutil.Error, OSError):
        return ""


def same_process(pid: int, token: str) -> bool:
    """Whether `pid` is still the process whose start token was `token`."""
    return bool(token) and start_token(pid) == token


def end(pid: int, token: str, force: bool = False, timeout: float = 0) -> bool:
    """Ask process `pid` to end (SIGTERM; `force`: SIGKILL; on Windows both are
    TerminateProcess), only while it is still the process of `token`, then wait up to
    `timeout` seconds for it to be gone. True once it is gone."""
    if not same_process(pid, token):
        return True
    try:
        p = psutil.Process(pid)
        p.kill() if force else p.terminate()
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False
    deadline = time.monotonic() + timeout
    while same_process(pid, token):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


# Windows' process creation flags (the SDK's values; subprocess has them only there).
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000


def detached(os_name: str | None = None) -> dict[str, Any]:
    """`subprocess.Popen` options for a helper that must outlive its caller's terminal:
    a session of its own on POSIX (no SIGHUP, no Ctrl-C from the terminal); on Windows,
    where `start_new_session` is ignored, a process group of its own (no CTRL_C_EVENT
    from the console) and a console with no window (closing the user's console does not
    end it, and its own console programs open no window)."""
    if (os_name or ("windows" if sys.platform == "win32" else "posix")) == "windows":
        return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    return {"start_new_session": True}
