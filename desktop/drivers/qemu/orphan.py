"""A VM whose backend died: found by what the driver wrote when QEMU started, and
stopped as politely as any other (the agent first, then ACPI, then quit, then kill).

At each start `record` writes ``vm.json`` in the instance folder: QEMU's pid and start
time (a reused pid is not taken for it), the link's port, the QMP socket, the helpers'
pids. While that QEMU lives, no new one may boot on the same data disk: `find` tells the
backend, `cove status` and `cove stop`; `stop` ends it, with the data disk's journal
clean when the agent answers. The file goes when the VM ends under a backend's watch.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from desktop import home
from desktop.drivers.qemu import qmp
from desktop.link import LinkError
from desktop.link.channel import ControlChannel
from desktop.link.tcp import TcpLink
from desktop.platform import processes
from desktop.platform.files import atomic_write

log = logging.getLogger(__name__)

AGENT_TIMEOUT = 90.0  # the agent stops containers with their own timeouts
ACPI_TIMEOUT = 20.0
QUIT_TIMEOUT = 5.0


@dataclass
class Orphan:
    pid: int
    start: str
    link_port: int = 0
    qmp: str = ""
    helpers: list[tuple[int, str]] = field(default_factory=list)

    def alive(self) -> bool:
        return processes.same_process(self.pid, self.start)


def record(folder: Path, pid: int, link_port: int, qmp: Path | None,
           helpers: list[int]) -> None:
    """`qmp`: the monitor socket another process may connect to; None on Windows, where
    QEMU's pipe serves the backend that started it and no one after."""
    data = {"pid": pid, "start": processes.start_token(pid), "link_port": link_port,
            "qmp": str(qmp) if qmp is not None else "",
            "helpers": [[h, processes.start_token(h)] for h in helpers]}
    atomic_write(folder / home.VM_STATE, json.dumps(data), 0o600)


def forget(folder: Path) -> None:
    (folder / home.VM_STATE).unlink(missing_ok=True)


def find(folder: Path) -> Orphan | None:
    """The instance's QEMU if one still runs (by pid and start time); None otherwise. A
    file that does not parse is no proof of a VM: None."""
    try:
        data: Any = json.loads((folder / home.VM_STATE).read_text())
        o = Orphan(int(data["pid"]), str(data["start"]), int(data.get("link_port", 0)),
                   str(data.get("qmp", "")),
                   [(int(p), str(s)) for p, s in data.get("helpers", [])])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return o if o.start and o.alive() else None


def stop(folder: Path, orphan: Orphan) -> str:
    """Stop `orphan`: ask its agent to power off (sync, unmount), then ACPI powerdown over
    QMP, then quit, then SIGKILL, each with a timeout. Returns how it ended."""
    how = _stop(folder, orphan)
    for pid, start in orphan.helpers:
        if not processes.end(pid, start, timeout=3):
            processes.end(pid, start, force=True, timeout=3)
    forget(folder)
    log.warning("a VM left running by a backend that died (pid %d) %s", orphan.pid, how)
    return how


# QEMU's run states in which no guest runs to be asked to stop: a saved state being loaded
# or written, or written (the backend died during a `cove stop` or a restore).
NOT_RUNNING = ("inmigrate", "prelaunch", "finish-migrate", "postmigrate", "save-vm",
               "restore-vm")


def _stop(folder: Path, orphan: Orphan) -> str:
    status = _status(orphan)
    # Paused with a saved state beside it: loaded, never run (the restore deletes the
    # state before its vCPUs run); running it would change the disk under that state.
    if status in NOT_RUNNING or (status == "paused" and (folder / home.SAVED_STATE).exists()):
        if _qmp(orphan, "quit") and _wait(orphan, QUIT_TIMEOUT):
            return f"was quit (QMP; its guest was not running: {status})"
    elif status == "paused":  # resting: its agent stops it cleanly once it runs again
        _qmp(orphan, "cont")
    if _agent_shutdown(folder, orphan) and _wait(orphan, AGENT_TIMEOUT):
        return "was stopped by its agent (containers stopped, data disk unmounted)"
    if _qmp(orphan, "system_powerdown") and _wait(orphan, ACPI_TIMEOUT):
        return "was powered off (ACPI)"
    if _qmp(orphan, "quit") and _wait(orphan, QUIT_TIMEOUT):
        return "was quit (QMP)"
    processes.end(orphan.pid, orphan.start, force=True, timeout=5)
    return "was killed (it answered neither its agent nor QMP)"


def _agent_shutdown(folder: Path, orphan: Orphan) -> bool:
    try:
        token = json.loads((folder / home.BOOT_CONFIG).read_text())["token"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not orphan.link_port or not token:
        return False
    channel = ControlChannel(TcpLink("127.0.0.1", orphan.link_port, str(token)),
                             lambda ev: None)
    try:
        if not channel.connect(timeout=5):
            return False
        channel.request("shutdown", timeout=10)
        return True
    except LinkError as e:
        log.info("the orphan's agent did not take the shutdown: %s", e)
        return False
    finally:
        channel.close()


def _status(orphan: Orphan) -> str:
    """QEMU's run state ("running", "paused", "inmigrate"...); "" when QMP cannot say."""
    if not orphan.qmp or not os.path.exists(orphan.qmp):
        return ""
    r = qmp.command(orphan.qmp, "query-status")
    got = r.get("return") if isinstance(r, dict) else None
    return str(got.get("status", "")) if isinstance(got, dict) else ""


def _qmp(orphan: Orphan, command: str) -> bool:
    if not orphan.qmp or not os.path.exists(orphan.qmp):
        return False
    return qmp.command(orphan.qmp, command) is not None


def _wait(orphan: Orphan, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while orphan.alive():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True

