"""Host faults: how long the user's next command takes to bring Cove back.

Each fault is injected on a throw-away instance, then timed as the user's next command
(`cove start` or `cove stop`) from its launch to its exit, against the same command
after a clean stop in the same run:

* the backend killed alone (QEMU runs on): `cove start` stops the orphaned VM through its
  agent, then boots; `cove stop` stops it;
* QEMU killed alone (the backend reports the error and exits): `cove start`, with the
  data disk's forced check.

Faults inside the VM, timed from the fault to Cove's own recovery (no user command),
against the same clean `cove start`:

* dockerd killed: until `cove status` says running again (the agent restarts it);
* the agent killed: until running again (the VM stops cleanly and the backend boots it
  once by itself);
* a 10 s pause of the vCPUs (QMP stop, cont): from `cont` until the guest's clock is
  within a second of the host's.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable

from benchmarks.common import BenchVM, Figure
from desktop import pidfile


def _timed(vm: BenchVM, command: str, *args: str) -> float:
    t0 = time.monotonic()
    vm.cli(command, *args)
    return time.monotonic() - t0


def _status(vm: BenchVM) -> dict:
    return json.loads(vm.cli("status", "--json").stdout)


def _gone(pid: int, timeout: float = 60) -> None:
    """Wait until `pid` has ended (a zombie counts as ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pidfile.process_start_time(pid):
            return
        time.sleep(0.1)


def _until(ok: Callable[[], bool], timeout: float = 300) -> float:
    """Seconds until `ok()` holds (RuntimeError after `timeout`)."""
    t0 = time.monotonic()
    while not ok():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError("no recovery within the timeout")
        time.sleep(0.2)
    return time.monotonic() - t0


def _running(vm: BenchVM) -> bool:
    proc = vm.cli("status", "--json", check=False)
    try:
        return proc.returncode == 0 and json.loads(proc.stdout)["state"] == "running"
    except ValueError:
        return False


def _events(vm: BenchVM) -> int:
    return len((vm.folder / "events.log").read_text().splitlines())


def _said(vm: BenchVM, after: int, word: str) -> bool:
    return any(word in line for line in
               (vm.folder / "events.log").read_text().splitlines()[after:])


def _clock_right(vm: BenchVM) -> bool:
    t0 = time.time()
    out = vm.cli("shell", "date", "+%s.%N", check=False).stdout
    t1 = time.time()
    try:
        return abs(float(out) - (t0 + t1) / 2) <= 1.0 + (t1 - t0) / 2
    except ValueError:
        return False


def _vm_faults(vm: BenchVM) -> tuple[float, float, float]:
    """One sample of each fault inside the VM: (dockerd, agent, pause) recovery seconds."""
    from desktop.drivers.qemu import qmp

    n = _events(vm)
    vm.cli("shell", "pkill", "-KILL", "-x", "dockerd")
    t0 = time.monotonic()
    _until(lambda: _said(vm, n, '"degraded"'), 60)
    dockerd = time.monotonic() - t0 + _until(lambda: _running(vm))
    n = _events(vm)
    pid = vm.cli("shell", "cat", "/run/cove/agent.pid").stdout.strip()
    vm.cli("shell", "kill", "-KILL", pid, check=False)  # the shell dies with the VM
    t0 = time.monotonic()
    _until(lambda: _said(vm, n, '"starting"'), 120)
    agent = time.monotonic() - t0 + _until(lambda: _running(vm))
    monitor = vm.folder / "qmp.sock"
    qmp.command(monitor, "stop")
    time.sleep(10)
    qmp.command(monitor, "cont")
    pause = _until(lambda: _clock_right(vm), 60)
    return dockerd, agent, pause


def run(runs: int) -> tuple[list[Figure], str]:
    clean_start, clean_stop = [], []
    orphan_start, orphan_stop, qemu_start = [], [], []
    dockerd, agent, pause = [], [], []
    with BenchVM() as vm:
        accel = vm.start()["accel"]
        for _ in range(runs):
            clean_stop.append(_timed(vm, "stop", "--power-off"))  # a shutdown, not a save
            clean_start.append(_timed(vm, "start", "--no-activate"))
            for figure, command in ((orphan_start, "start"), (orphan_stop, "stop")):
                st = _status(vm)
                os.kill(st["pid"], signal.SIGKILL)
                _gone(st["pid"])
                figure.append(_timed(vm, command, *(("--no-activate",) if command ==
                                                     "start" else ())))
                if command == "stop":
                    vm.cli("start", "--no-activate")
            st = _status(vm)
            os.kill(st["qemu_pid"], signal.SIGKILL)
            _gone(st["pid"])
            qemu_start.append(_timed(vm, "start", "--no-activate"))
            for figure, seconds in zip((dockerd, agent, pause), _vm_faults(vm), strict=True):
                figure.append(seconds)
    return [
        Figure("backend killed: cove start (the orphaned VM stopped, then booted)", "s",
               orphan_start, "cove start after a clean stop", clean_start),
        Figure("backend killed: cove stop (the orphaned VM stopped)", "s", orphan_stop,
               "cove stop of a running instance", clean_stop),
        Figure("QEMU killed: cove start (data disk checked)", "s", qemu_start,
               "cove start after a clean stop", clean_start),
        Figure("dockerd killed: running again (the agent restarts it)", "s", dockerd,
               "cove start after a clean stop", clean_start),
        Figure("agent killed: running again (clean VM stop, one boot by the backend)", "s",
               agent, "cove start after a clean stop", clean_start),
        Figure("10 s vCPU pause: the guest's clock right again after cont", "s", pause,
               "cove start after a clean stop", clean_start),
    ], accel
