"""A VM whose backend died (desktop.drivers.qemu.orphan): found by pid and start time,
stopped by its agent first, by force only when nothing answers."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from desktop.drivers.qemu import orphan
from tests.helpers.fakes import FakeAgent, FakeEngine

TOKEN = "t" * 64


@pytest.fixture
def folder() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="co-", dir="/tmp"))  # short: it holds a socket
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


@pytest.fixture
def vm(sleeper: subprocess.Popen) -> subprocess.Popen:
    """Stands in for QEMU."""
    return sleeper


def test_found_while_it_runs_and_only_then(folder: Path, vm: subprocess.Popen) -> None:
    assert orphan.find(folder) is None  # nothing recorded
    orphan.record(folder, vm.pid, 40000, folder / "qmp.sock", [])
    o = orphan.find(folder)
    assert o is not None and o.pid == vm.pid and o.link_port == 40000
    # The same pid with another start time is another process: not the VM.
    data = json.loads((folder / "vm.json").read_text())
    (folder / "vm.json").write_text(json.dumps({**data, "start": "1"}))
    assert orphan.find(folder) is None
    (folder / "vm.json").write_text("{torn")
    assert orphan.find(folder) is None
    orphan.record(folder, vm.pid, 40000, folder / "qmp.sock", [])
    vm.kill()
    vm.wait()
    assert orphan.find(folder) is None


@pytest.mark.parametrize("resting", [False, True])
def test_stopped_by_its_agent_first(folder: Path, vm: subprocess.Popen, resting: bool) -> None:
    seen: list[str] = []
    if resting:  # paused: it runs again first, or its guest could not stop itself
        _monitor(folder / "qmp.sock", "paused", vm, seen)
    engine = FakeEngine(folder / "engine.sock")
    agent = FakeAgent(TOKEN, engine.path, on_shutdown=vm.terminate)
    try:
        (folder / "boot.json").write_text(json.dumps({"token": TOKEN}))
        orphan.record(folder, vm.pid, agent.port, folder / "qmp.sock", [])
        how = orphan.stop(folder, orphan.find(folder))  # type: ignore[arg-type]
        assert how == "was stopped by its agent (containers stopped, data disk unmounted)"
        assert agent.controller.ops("shutdown")
        assert vm.wait(5) is not None
        assert not (folder / "vm.json").exists()
        assert ("cont" in seen) == resting
    finally:
        agent.close()
        engine.close()


def test_killed_when_nothing_answers(folder: Path, vm: subprocess.Popen,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (folder / "boot.json").write_text(json.dumps({"token": TOKEN}))
        orphan.record(folder, vm.pid, 1, folder / "qmp.sock", [helper.pid])  # no agent
        how = orphan.stop(folder, orphan.find(folder))  # type: ignore[arg-type]
        assert how == "was killed (it answered neither its agent nor QMP)"
        assert vm.wait(5) is not None and helper.wait(5) is not None
    finally:
        helper.kill()
        helper.wait()


def test_killed_without_posix_signals(folder: Path, vm: subprocess.Popen,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows' signal module has no SIGKILL, and os.kill(pid, 0) there is CTRL_C_EVENT:
    the orphan is probed and ended through the platform's processes alone."""
    import os
    import signal

    real_kill = os.kill
    monkeypatch.delattr(signal, "SIGKILL")
    monkeypatch.setattr(os, "kill", lambda *a: pytest.fail(f"os.kill{a}"))
    # psutil's kill is TerminateProcess on Windows, POSIX's kill here.
    monkeypatch.setattr(orphan.processes.psutil.Process, "kill",
                        lambda self: real_kill(self.pid, 9))
    orphan.record(folder, vm.pid, 1, folder / "qmp.sock", [])
    assert orphan.find(folder) is not None
    how = orphan.stop(folder, orphan.find(folder))  # type: ignore[arg-type]
    assert how == "was killed (it answered neither its agent nor QMP)"
    assert vm.wait(5) is not None


def test_status_asks_no_other_driver_than_qemu_for_an_orphan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`cove status` and the tray look for an orphan often: Hyper-V's availability probe
    (PowerShell, up to a minute) must never run for it."""
    from desktop import drivers, lifecycle
    from desktop.drivers.hyperv.driver import HyperVDriver
    from desktop.instance import Instance

    def probe(self: HyperVDriver) -> tuple[bool, str]:
        raise AssertionError("the Hyper-V probe ran")

    monkeypatch.setattr(HyperVDriver, "available", probe)
    inst = Instance("t", home=tmp_path)
    inst.ensure_folder()
    assert lifecycle.orphan_pid(inst) is None
    assert lifecycle.stop_backend(inst) is False
    assert drivers.pick("qemu").name == "qemu"


def _monitor(path: Path, status: str, vm: subprocess.Popen, seen: list[str]) -> None:
    """QEMU's monitor for the orphan: `status` to query-status, ended by quit."""
    import socket
    import threading

    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(8)

    def serve() -> None:
        while True:
            try:
                conn = server.accept()[0]
            except OSError:
                return
            f = conn.makefile("rb")
            conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
            for line in f:
                name = json.loads(line)["execute"]
                seen.append(name)
                reply: dict = {"return": {}}
                if name == "query-status":
                    reply = {"return": {"status": status, "running": status == "running"}}
                conn.sendall(json.dumps(reply).encode() + b"\r\n")
                if name == "quit":
                    vm.terminate()
            conn.close()

    threading.Thread(target=serve, daemon=True).start()


@pytest.mark.parametrize("status, saved", [("inmigrate", False), ("postmigrate", False),
                                           ("paused", True)])
def test_a_vm_whose_guest_is_not_running_is_quit_at_once(
        folder: Path, vm: subprocess.Popen, status: str, saved: bool) -> None:
    """A backend that died while loading or writing a saved state: nothing in the guest
    runs to stop politely, and a loaded state never run must stay as it was."""
    seen: list[str] = []
    _monitor(folder / "qmp.sock", status, vm, seen)
    if saved:
        (folder / "saved.state").write_bytes(b"QEVM")
    (folder / "boot.json").write_text(json.dumps({"token": TOKEN}))
    orphan.record(folder, vm.pid, 1, folder / "qmp.sock", [])
    how = orphan.stop(folder, orphan.find(folder))  # type: ignore[arg-type]
    assert how == f"was quit (QMP; its guest was not running: {status})"
    assert "cont" not in seen and "system_powerdown" not in seen
    assert vm.wait(5) is not None

