"""QMP (desktop.drivers.qemu.qmp) over plain byte streams, against a fake QEMU monitor
that speaks the protocol as QEMU does (greeting, capabilities negotiation, one reply per
command, events in between, CRLF line ends); and the QEMU driver's Windows start, where
QEMU serves its monitor on a named pipe, for one client, and waits for it to connect."""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from desktop.drivers import DriverError, VMSpec
from desktop.drivers.qemu import driver as qemu_driver
from desktop.drivers.qemu import qmp
from desktop.drivers.qemu.driver import QemuDriver
from desktop.platform import _windows, endpoints, winpipe

GREETING = {"QMP": {"version": {"qemu": {"major": 8, "minor": 2, "micro": 2}},
                    "capabilities": ["oob"]}}


class FakeMonitor:
    """QEMU's side of one monitor connection, on a thread of its own."""

    def __init__(self, conn: socket.socket, events_before_reply: int = 0) -> None:
        self.conn = conn
        self.events_before_reply = events_before_reply
        self.commands: list[str] = []
        self.negotiated = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def send(self, msg: dict[str, Any]) -> None:
        self.conn.sendall(json.dumps(msg).encode() + b"\r\n")

    def event(self, name: str) -> None:
        self.send({"event": name, "timestamp": {"seconds": 1, "microseconds": 2}})

    def _serve(self) -> None:
        self.send(GREETING)
        for line in self.conn.makefile("rb"):
            name = json.loads(line)["execute"]
            self.commands.append(name)
            if not self.negotiated and name != "qmp_capabilities":
                self.send({"error": {"class": "CommandNotFound",
                                     "desc": "Expecting capabilities negotiation"}})
                continue
            self.negotiated = True
            for _ in range(self.events_before_reply):
                self.event("RTC_CHANGE")
            if name == "nonsense":
                self.send({"error": {"class": "CommandNotFound",
                                     "desc": "The command nonsense has not been found"}})
            elif name == "query-status":
                self.send({"return": {"status": "running", "running": True}})
            else:
                self.send({"return": {}})
            if name == "quit":
                break
        self.conn.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def _negotiated(pair: tuple[socket.socket, socket.socket],
                events_before_reply: int) -> tuple[FakeMonitor, qmp.Qmp]:
    host, vm = pair
    fake = FakeMonitor(vm, events_before_reply)
    mon = qmp.Qmp(host)
    assert mon.handshake(5) == GREETING
    return fake, mon


def test_handshake_then_commands_with_events_between(
        pair: tuple[socket.socket, socket.socket]) -> None:
    fake, mon = _negotiated(pair, events_before_reply=2)
    events: list[str] = []
    mon.send("query-status")
    assert mon.reply(lambda e: events.append(e["event"])) == \
        {"return": {"status": "running", "running": True}}
    assert events == ["RTC_CHANGE", "RTC_CHANGE"]
    assert "CommandNotFound" in json.dumps(mon.execute("nonsense"))
    assert mon.execute("quit") == {"return": {}}
    assert mon.read() is None  # QEMU hung up
    assert fake.commands == ["qmp_capabilities", "query-status", "nonsense", "quit"]


def test_what_is_not_qmp_is_an_error(pair: tuple[socket.socket, socket.socket]) -> None:
    host, vm = pair
    vm.sendall(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(qmp.QmpError, match="not a QMP message"):
        qmp.Qmp(host).handshake(5)
    vm.sendall(b"[1]\r\n")
    with pytest.raises(qmp.QmpError, match="not a QMP message"):
        qmp.Qmp(host).read()


def test_a_silent_monitor_times_out(pair: tuple[socket.socket, socket.socket]) -> None:
    host, _ = pair
    with pytest.raises(qmp.QmpError, match="did not answer in time"):
        qmp.Qmp(host).handshake(0.2)


def test_command_over_a_unix_socket_as_on_linux_and_macos() -> None:
    folder = Path(tempfile.mkdtemp(prefix="qmp-", dir="/tmp"))  # short: a socket path
    path = folder / "qmp.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(4)
    fakes: list[FakeMonitor] = []
    threading.Thread(target=lambda: [fakes.append(FakeMonitor(server.accept()[0]))
                                     for _ in range(2)], daemon=True).start()
    try:
        assert qmp.command(path, "system_powerdown") == {"return": {}}
        assert qmp.command(path, "query-status", timeout=2) == \
            {"return": {"status": "running", "running": True}}  # a connection each
        assert [f.commands for f in fakes] == [["qmp_capabilities", "system_powerdown"],
                                               ["qmp_capabilities", "query-status"]]
        assert qmp.command(folder / "absent.sock", "quit") is None
    finally:
        server.close()
        path.unlink()
        folder.rmdir()


def test_watch_events_follows_the_events_socket() -> None:
    folder = Path(tempfile.mkdtemp(prefix="qmp-", dir="/tmp"))
    path = folder / "qmp-events.sock"
    resumed = threading.Event()
    qmp.watch_events(path, {"RESUME": resumed.set})  # before the socket exists
    time.sleep(0.1)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    try:
        conn = server.accept()[0]
        fake = FakeMonitor(conn)
        deadline = time.monotonic() + 5
        while not fake.negotiated and time.monotonic() < deadline:
            time.sleep(0.01)
        fake.event("STOP")
        fake.event("RESUME")
        assert resumed.wait(5)
    finally:
        server.close()
        path.unlink()
        folder.rmdir()


def test_session_reads_events_while_commands_wait(
        pair: tuple[socket.socket, socket.socket]) -> None:
    fake, mon = _negotiated(pair, events_before_reply=3)
    seen: list[str] = []
    session = qmp.Session(mon, {"RTC_CHANGE": lambda: seen.append("rtc"),
                                "RESUME": lambda: 1 / 0})  # a failing handler is logged
    assert session.execute("query-status") == {"return": {"status": "running",
                                                          "running": True}}
    fake.event("RESUME")
    fake.event("RESUME")  # the first handler's failure did not end the reader
    assert session.execute("system_powerdown") == {"return": {}}
    assert seen == ["rtc"] * 6
    assert session.execute("quit") == {"return": {}}
    deadline = time.monotonic() + 5
    while not session.ended and time.monotonic() < deadline:
        time.sleep(0.01)
    assert session.ended and session.execute("quit") is None  # QEMU is gone
    session.close()


def test_session_command_that_gets_no_answer(pair: tuple[socket.socket, socket.socket]) -> None:
    host, vm = pair
    session = qmp.Session(qmp.Qmp(host))
    assert session.execute("system_powerdown", timeout=0.2) is None
    vm.sendall(b'{"return": {}}\r\n')  # the late answer is not taken for the next one's
    time.sleep(0.1)
    threading.Timer(0.1, lambda: vm.sendall(b'{"return": {"status": "paused"}}\r\n')).start()
    assert session.execute("query-status", timeout=5) == {"return": {"status": "paused"}}
    session.close()


# -- the driver on Windows: QMP on the user's own pipe -------------------------------------


class FakeQemuProcess:
    """What subprocess.Popen gives for QEMU: runs until killed."""

    pid = 4321

    def __init__(self, cmd: list[str], **kwargs: Any) -> None:
        self.cmd = cmd
        self.kwargs = kwargs
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def kill(self) -> None:
        self.returncode = 1

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.cmd, timeout or 0)
        return self.returncode


@pytest.fixture
def windows_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A Windows host as the driver sees it: QEMU's pipe appears after a few tries (QEMU
    is starting), its server is QEMU's pid, and it speaks QMP. No socket file ever
    appears (Windows' monitor is a pipe, not a file)."""
    monkeypatch.setattr(_windows, "_tag", "0a1b2c3d4e")
    monkeypatch.setattr(qemu_driver.shutil, "which", lambda name: f"C:\\qemu\\{name}.exe")
    procs: list[FakeQemuProcess] = []

    def popen(cmd: list[str], **kwargs: Any) -> FakeQemuProcess:
        procs.append(FakeQemuProcess(cmd, **kwargs))
        return procs[-1]

    monkeypatch.setattr(qemu_driver.subprocess, "Popen", popen)
    world: dict[str, Any] = {"tries": 0, "server_pid": FakeQemuProcess.pid, "procs": procs,
                             "monitors": [], "names": []}

    def connect(name: str, timeout: float | None, server_pid: int | None = None) -> Any:
        world["names"].append(name)
        world["tries"] += 1
        if world["tries"] < 3:
            raise FileNotFoundError(f"{name} does not exist")  # QEMU has not made it yet
        if server_pid != world["server_pid"]:
            raise winpipe.PipeTakenError(f"{name} is served by another process")
        host, vm = socket.socketpair()
        world["monitors"].append(FakeMonitor(vm))
        return host

    monkeypatch.setattr(endpoints, "connect_windows_pipe", connect)
    return world


def _spec(tmp_path: Path) -> VMSpec:
    folder = tmp_path / "default"
    folder.mkdir()
    return VMSpec(name="default", folder=folder, kernel=tmp_path / "vmlinuz",
                  initramfs=tmp_path / "initramfs", root_image=tmp_path / "root.sqfs",
                  data_disk=folder / "data.qcow2", boot_config=folder / "boot.json")


def test_windows_start_waits_for_the_pipe_and_keeps_one_session(
        tmp_path: Path, windows_qemu: dict[str, Any]) -> None:
    spec = _spec(tmp_path)
    d = QemuDriver("amd64", os_name="windows")
    d.accel = "whpx"
    resumed = threading.Event()
    d.watch(resumed.set)
    d.start(spec)
    pipe = "\\\\.\\pipe\\cove-0a1b2c3d4e-default-qmp"
    assert windows_qemu["names"] == [pipe] * 3  # tried until QEMU had made it
    proc = windows_qemu["procs"][0]
    assert proc.kwargs.get("creationflags") and "start_new_session" not in proc.kwargs
    assert "pipe,id=qmp,path=cove-0a1b2c3d4e-default-qmp" in proc.cmd
    (fake,) = windows_qemu["monitors"]
    assert d.qmp("query-status") == {"return": {"status": "running", "running": True}}
    fake.event("RESUME")  # events reach the watcher over the same connection
    assert resumed.wait(5)
    assert d.qmp("system_powerdown") == {"return": {}}
    assert len(windows_qemu["monitors"]) == 1  # one connection for QEMU's life
    assert fake.commands == ["qmp_capabilities", "query-status", "system_powerdown"]
    vm_state = json.loads((spec.folder / "vm.json").read_text())
    assert vm_state["qmp"] == ""  # nobody else may connect after us: nothing to record
    d.kill()
    assert d.qmp("quit") is None
    assert not list(spec.folder.glob("*.sock"))


def test_windows_start_refuses_a_pipe_qemu_does_not_serve(
        tmp_path: Path, windows_qemu: dict[str, Any]) -> None:
    windows_qemu["server_pid"] = 666  # a program that created the name before QEMU
    d = QemuDriver("amd64", os_name="windows")
    d.accel = "whpx"
    with pytest.raises(DriverError, match="could not be reached.*served by another"):
        d.start(_spec(tmp_path))
    assert windows_qemu["procs"][0].poll() is not None  # QEMU is not left waiting
    assert windows_qemu["monitors"] == []


def test_windows_qmp_without_a_session_reaches_nothing(tmp_path: Path) -> None:
    d = QemuDriver("amd64", os_name="windows")
    d.spec = _spec(tmp_path)
    assert d.qmp("system_powerdown") is None  # not a unix socket path on Windows
