"""The backend (desktop.backend.Backend) end to end with no VM: a fake driver boots a fake
guest agent (the real LinkServer on 127.0.0.1, see fakes.py), and the tests drive the
backend through its control socket, its engine socket and its events."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from desktop import backend
from desktop.backend import core, health, timeouts
from desktop.control import ControlClient, ControlError
from desktop.drivers import DriverError
from desktop.drivers.shares import SharedFolder
from desktop.instance import Instance
from desktop.link.tcp import TcpLink
from tests.helpers.fakes import (
    AGENT_VERSION,
    ATTACH,
    ATTACH_REPLY,
    BOOT_SERIAL,
    ECHO_TRAILER,
    ENGINE_VERSION,
    HTTP_REPLY,
    KEEP_ALIVE_REPLY,
    KERNEL,
    FakeDriver,
    FakeEngine,
    fake_image,
)
from tests.helpers.paths import REPO

BOOT_STEPS = [("starting", "image"), ("starting", "disk"), ("starting", "vm"),
              ("starting", "agent"), ("starting", "engine"), ("running", None)]
PORT_8080 = {"proto": "tcp", "port": 8080, "host_ip": "0.0.0.0", "container": "web",
             "container_port": 80}
PORT_5353 = {"proto": "udp", "port": 5353, "host_ip": "0.0.0.0", "container": "dns",
             "container_port": 53}


class Cove:
    """One Backend on a fake driver, run() on a thread as `cove backend` runs it."""

    def __init__(self, home: Path, **driver_opts: Any) -> None:
        self.home = home
        self.inst = Instance("t", home=home)
        self.engine = FakeEngine(home / "engine.sock")
        self.driver = FakeDriver(self.engine.path, **driver_opts)
        self.image = fake_image(home / "image")
        self.backend = backend.Backend(self.inst, driver=self.driver, image=self.image)
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, name="backend-run")

    def _run(self) -> None:
        self.code = self.backend.run()

    def start(self) -> Cove:
        self.thread.start()
        return self

    # -- events --------------------------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        return list(self.backend.events.history)

    def kinds(self) -> list[str]:
        return [e["event"] for e in self.events()]

    def wait_for(self, pred: Callable[[], Any], timeout: float = 10) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = pred()
            if got:
                return got
            time.sleep(0.01)
        return pred()

    def wait_event(self, kind: str, timeout: float = 10, after: int = 0,
                   **fields: Any) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for ev in self.events()[after:]:
                if ev["event"] == kind and all(ev.get(k) == v for k, v in fields.items()):
                    return ev
            return None

        ev = self.wait_for(find, timeout)
        assert ev is not None, f"no {kind} event {fields or ''} in {timeout} s: {self.events()}"
        return ev

    def running(self) -> Cove:
        self.start()
        self.wait_event("running")
        return self

    # -- control -------------------------------------------------------------------------

    def request(self, op: str, **params: Any) -> Any:
        return ControlClient(self.inst.control_socket, timeout=15).request(op, **params)

    def raw_request(self, line: bytes) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.connect(str(self.inst.control_socket))
            s.sendall(line)
            try:
                reply = _recv_all(s)
            except TimeoutError:
                reply = b"(nothing, and the connection still open after 3 s)"
        assert reply.endswith(b"\n"), f"no reply line to {line!r}: {reply!r}"
        return json.loads(reply)

    def join(self, timeout: float = 15) -> int | None:
        self.thread.join(timeout)
        return None if self.thread.is_alive() else self.code

    def stop(self, timeout: float = 15) -> int | None:
        self.request("stop")
        return self.join(timeout)

    def agent_ops(self, op: str) -> list[dict[str, Any]]:
        return [r for a in self.driver.agents for r in a.controller.ops(op)]

    def close(self) -> None:
        if self.thread.ident is not None and self.thread.is_alive():
            self.backend.request_stop("test teardown")
            self.thread.join(30)
        self.driver.close()
        self.engine.close()
        assert not self.thread.is_alive(), "the backend did not stop"


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # Short: unix socket paths must stay under 104 bytes (pytest's tmp_path is long).
    d = Path(tempfile.mkdtemp(prefix="cb-", dir="/tmp"))
    monkeypatch.setenv("DOCKER_CONFIG", str(d / "docker-config"))
    monkeypatch.setenv("COVE_HOME", str(d))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def signals(monkeypatch: pytest.MonkeyPatch) -> dict[int, Any]:
    """The handlers run() installs (signal.signal only works on the main thread)."""
    handlers: dict[int, Any] = {}
    fake = SimpleNamespace(SIGTERM=signal.SIGTERM, SIGINT=signal.SIGINT,
                           SIGHUP=signal.SIGHUP,
                           signal=lambda sig, handler: handlers.__setitem__(sig, handler))
    monkeypatch.setattr(core, "signal", fake)
    return handlers


POWER_WATCHES: list[SimpleNamespace] = []


@pytest.fixture
def make_cove(home: Path, signals: dict[int, Any],
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Cove]]:
    # Timeouts that fail a broken test in seconds rather than minutes.
    monkeypatch.setattr(timeouts, "AGENT_TIMEOUT", 10.0)
    monkeypatch.setattr(timeouts, "ENGINE_TIMEOUT", 10.0)
    monkeypatch.setattr(timeouts, "STOP_AGENT_TIMEOUT", 10.0)
    monkeypatch.setattr(timeouts, "GIVEN_BACK_QUIET", 0.2)  # this process's memory never falls
    monkeypatch.setattr(health, "INTERVAL", 3600.0)  # only the health tests check
    # The host's own sleep signal stays out of the tests (a desktop's logind would
    # reach them); `power_watches` has the callbacks each backend gave.
    monkeypatch.setattr(core.power, "watch", lambda sleep, wake: POWER_WATCHES.append(
        SimpleNamespace(sleep=sleep, wake=wake, close=lambda: None)) or POWER_WATCHES[-1])
    POWER_WATCHES.clear()
    made: list[Cove] = []

    def make(**driver_opts: Any) -> Cove:
        c = Cove(home, **driver_opts)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def _recv_all(s: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def _unix(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(15)
    s.connect(str(path))
    return s


def _steps(events: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(e["event"], e.get("step")) for e in events]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# -- start -------------------------------------------------------------------------------


def test_start_reaches_running_through_each_step(make_cove: Callable[..., Cove]) -> None:
    c = make_cove().running()
    inst = c.inst
    events = c.events()
    assert _steps(events) == BOOT_STEPS
    vm = events[2]
    assert (vm["image"], vm["attempt"]) == ("fake-key", 1)
    assert (events[3]["accel"], events[3]["accel_notes"]) == ("tcg", [])
    assert events[4]["agent_version"] == AGENT_VERSION
    assert events[5]["engine_version"] == ENGINE_VERSION

    st = c.request("status")
    assert st["state"] == "running"
    assert st["instance"] == "t"
    assert st["docker_host"] == f"unix://{inst.docker_socket}"
    assert st["context"] == "cove-t"
    assert st["engine_version"] == ENGINE_VERSION
    assert st["agent_version"] == AGENT_VERSION
    assert st["kernel"] == KERNEL
    assert st["accel"] == "tcg"
    assert st["qemu_pid"] == os.getpid()
    assert st["pid"] == os.getpid()
    assert st["ports"] == []
    assert st["reason"] == ""
    assert c.request("ping") == "pong"

    for sock in (inst.docker_socket, inst.control_socket):
        assert stat.S_ISSOCK(sock.lstat().st_mode), sock
        assert _mode(sock) == 0o600, sock
    assert inst.pid_file.read_text().split()[0] == str(os.getpid())

    # The boot config: 0600, a fresh 32-byte token, the one the agent was started with.
    assert _mode(inst.boot_config) == 0o600
    token = json.loads(inst.boot_config.read_text())["token"]
    assert len(token) == 64 and int(token, 16) >= 0
    assert c.driver.tokens == [token]
    assert c.driver.agent is not None and c.driver.agent.token == token

    # What the driver was asked to boot.
    assert len(c.driver.created) == 1 and len(c.driver.started) == 1
    spec = c.driver.started[0]
    assert spec.data_disk == inst.data_disk and inst.data_disk.exists()
    assert (spec.kernel, spec.initramfs, spec.root_image) == (
        c.image.kernel, c.image.initramfs, c.image.root)
    assert spec.boot_config == inst.boot_config
    assert spec.serial_log == inst.serial_log
    assert spec.cpus == c.backend.settings.cpus

    # The host's clock was pushed once the engine was up.
    pushes = c.agent_ops("set_time")
    assert pushes, "no set_time request reached the agent"
    assert abs(pushes[0]["ns"] - time.time_ns()) < 5 * 10**9


def test_events_log_and_live_subscription(make_cove: Callable[..., Cove]) -> None:
    c = make_cove().running()
    received: list[dict[str, Any]] = []
    ended = threading.Event()

    def subscribe() -> None:
        for ev in ControlClient(c.inst.control_socket).events(history=True):
            received.append(ev)
        ended.set()

    t = threading.Thread(target=subscribe)
    t.start()
    try:
        assert c.wait_for(lambda: len(received) >= len(BOOT_STEPS))
        assert _steps(received) == BOOT_STEPS  # the history first
        assert c.stop() == 0
        assert ended.wait(10), "the event stream did not end when the backend exited"
    finally:
        t.join(10)
    assert [e["event"] for e in received[len(BOOT_STEPS):]] == ["stopping", "stopped"]
    logged = [json.loads(ln) for ln in c.inst.events_log.read_text().splitlines()]
    assert logged == received == c.events()


# -- the engine socket -------------------------------------------------------------------


def test_docker_socket_relays_to_the_engine(make_cove: Callable[..., Cove]) -> None:
    c = make_cove().running()
    request = b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n"
    with _unix(c.inst.docker_socket) as s:
        s.sendall(request)
        assert _recv_all(s) == HTTP_REPLY
    assert c.engine.received == [request]


def test_docker_engine_pipe_forwards_to_the_vm_then_to_another_engine(
        make_cove: Callable[..., Cove], home: Path) -> None:
    """The docker_engine pipe (Windows) follows `docker_engine_target`: the VM by default,
    another engine while Windows containers are active. Here both are unix sockets."""
    c = make_cove().running()
    st = c.request("status")["docker_engine"]
    assert st == {"served": False, "target": f"unix://{c.inst.docker_socket}"}
    request = b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n"

    def through_docker_engine() -> bytes:
        client, server = socket.socketpair()
        t = threading.Thread(target=c.backend.engine_socket.forward_docker_engine, args=(server,))
        t.start()
        with client:
            client.sendall(request)
            got = _recv_all(client)
        t.join(10)
        return got

    assert through_docker_engine() == HTTP_REPLY
    assert c.engine.received == [request]
    other = FakeEngine(home / "other.sock")
    try:
        got = c.request("docker_engine_target", endpoint=f"unix://{other.path}")
        assert got == {"served": False, "target": f"unix://{other.path}"}
        assert through_docker_engine() == HTTP_REPLY
        assert other.received == [request] and c.engine.received == [request]
        # Back to the VM: its own address means "the VM".
        c.request("docker_engine_target", endpoint=f"unix://{c.inst.docker_socket}")
        assert c.backend.engine_socket.docker_engine_target == ""
        assert through_docker_engine() == HTTP_REPLY
        assert len(c.engine.received) == 2
    finally:
        other.close()


def test_docker_engine_target_refuses_what_is_not_an_engine_address(
        make_cove: Callable[..., Cove]) -> None:
    c = make_cove().running()
    reply = c.raw_request(b'{"op": "docker_engine_target", "endpoint": "tcp://1.2.3.4:2375"}\n')
    assert reply["ok"] is False
    assert "not an engine address" in reply["error"] and "npipe:" in reply["error"]
    assert c.backend.engine_socket.docker_engine_target == ""


def test_docker_socket_large_payload_both_ways_and_half_close(
        make_cove: Callable[..., Cove]) -> None:
    c = make_cove().running()
    payload = b"ECHO" + os.urandom(8 << 20)
    with _unix(c.inst.docker_socket) as s:
        def send() -> None:
            s.sendall(ATTACH + payload)
            s.shutdown(socket.SHUT_WR)  # the engine must see EOF and still answer

        t = threading.Thread(target=send)
        t.start()
        got = _recv_all(s)
        t.join(15)
    assert got.startswith(ATTACH_REPLY)
    got = got[len(ATTACH_REPLY):]
    assert len(got) == len(payload) + len(ECHO_TRAILER)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload + ECHO_TRAILER).digest()


def test_docker_socket_concurrent_connections(make_cove: Callable[..., Cove]) -> None:
    c = make_cove().running()
    results: dict[int, bool] = {}

    def one(i: int) -> None:
        with _unix(c.inst.docker_socket) as s:
            data = b"ECHO %d " % i + os.urandom(100_000)
            s.sendall(ATTACH + data)
            s.shutdown(socket.SHUT_WR)
            results[i] = _recv_all(s) == ATTACH_REPLY + data + ECHO_TRAILER

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert results == dict.fromkeys(range(8), True)
    assert c.engine.connections == 8


# -- the docker context ------------------------------------------------------------------


def _context_meta(home: Path, name: str) -> dict[str, Any]:
    digest = hashlib.sha256(name.encode()).hexdigest()
    path = home / "docker-config" / "contexts" / "meta" / digest / "meta.json"
    return json.loads(path.read_text())


def test_docker_context_created_and_made_current(make_cove: Callable[..., Cove],
                                                 home: Path) -> None:
    c = make_cove().running()
    config = json.loads((home / "docker-config" / "config.json").read_text())
    assert config["currentContext"] == c.inst.context_name == "cove-t"
    meta = _context_meta(home, "cove-t")
    assert meta["Name"] == "cove-t"
    assert meta["Endpoints"]["docker"]["Host"] == f"unix://{c.inst.docker_socket}"
    assert (c.inst.folder / "previous-context").read_text().strip() == "default"


def test_docker_context_not_made_current_with_no_activate(make_cove: Callable[..., Cove],
                                                          home: Path) -> None:
    c = make_cove()
    c.inst.ensure_folder()
    (c.inst.folder / "no-activate").touch()
    c.running()
    meta = _context_meta(home, "cove-t")
    assert meta["Endpoints"]["docker"]["Host"] == f"unix://{c.inst.docker_socket}"
    config_file = home / "docker-config" / "config.json"
    if config_file.exists():
        assert "currentContext" not in json.loads(config_file.read_text())
    assert not (c.inst.folder / "previous-context").exists()


def test_docker_context_left_alone_while_windows_containers_are_active(
        make_cove: Callable[..., Cove], home: Path) -> None:
    from desktop import windows_engine as engines

    engines.save_mode(home, "windows")
    c = make_cove().running()
    # The VM runs and serves its socket, but the context stays on the Windows engine.
    assert c.inst.docker_socket.exists()
    assert not (home / "docker-config" / "contexts").exists()
    assert not (c.inst.folder / "previous-context").exists()


def test_an_unreadable_config_json_is_left_as_it_is_and_the_engine_runs(
        make_cove: Callable[..., Cove], home: Path) -> None:
    cfg = home / "docker-config" / "config.json"
    cfg.parent.mkdir(parents=True)
    damaged = b'{"auths": {"registry.example": {"auth": "c2VjcmV0"}}'  # a closing brace lost
    cfg.write_bytes(damaged)
    c = make_cove().running()
    assert cfg.read_bytes() == damaged
    [ev] = [e for e in c.events() if e["event"] == "context_not_set"]
    assert str(cfg) in ev["message"] and "not valid JSON" in ev["message"]
    assert c.request("status")["state"] == "running"
    assert not (c.inst.folder / "previous-context").exists()


def test_docker_context_made_when_engine_json_is_unreadable(make_cove: Callable[..., Cove],
                                                            home: Path) -> None:
    (home / "engine.json").write_text("{not json")
    c = make_cove().running()
    assert _context_meta(home, "cove-t")["Name"] == "cove-t"
    assert (home / "engine.json").read_text() == "{not json"  # the user's file is kept
    assert c.backend.state == "running"


def _refuse_shares(c: Cove) -> None:
    def resolve_shares(shares: list[tuple[str, str]]) -> Any:
        raise DriverError("this hypervisor cannot share host folders yet")

    c.driver.resolve_shares = resolve_shares  # type: ignore[method-assign]


def test_default_shares_a_driver_cannot_make_do_not_stop_the_start(
        make_cove: Callable[..., Cove], tmp_path: Path) -> None:
    c = make_cove()
    _refuse_shares(c)
    c.running()
    ev = c.wait_event("shares_unavailable")
    assert "cannot share host folders yet" in ev["message"]
    assert c.request("status")["shares"] == []


def test_chosen_shares_a_driver_cannot_make_fail_the_start(
        make_cove: Callable[..., Cove], home: Path, tmp_path: Path) -> None:
    inst = Instance("t", home=home)  # the settings the backend reads when it is made
    inst.ensure_folder()
    settings = inst.load_settings()
    settings.shares = [str(tmp_path)]
    inst.save_settings(settings)
    c = make_cove()
    _refuse_shares(c)
    c.start()
    assert c.join() == 1
    assert "cannot share host folders yet" in c.wait_event("error")["reason"]


def test_the_link_comes_from_the_driver(make_cove: Callable[..., Cove]) -> None:
    c = make_cove()
    tokens: list[str] = []

    def make_link(token: str) -> TcpLink:
        tokens.append(token)
        host, port = c.driver.link_address()
        return TcpLink(host, port, token)

    c.driver.make_link = make_link  # type: ignore[method-assign]
    c.running()
    boot = json.loads(c.inst.boot_config.read_text())
    assert tokens == [boot["token"]]


def test_a_second_backend_for_the_instance_exits_and_leaves_the_first_alone(
        make_cove: Callable[..., Cove], home: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    c = make_cove().running()
    pid_file = c.inst.pid_file.read_text()
    second = backend.Backend(Instance("t", home=home), driver=FakeDriver(c.engine.path),
                             image=c.image)
    assert second.run() == 3
    assert f"a backend for t already runs (pid {os.getpid()})" in capsys.readouterr().err
    # The first one's sockets, pid file and VM are as they were, and it still answers.
    assert c.inst.docker_socket.is_socket() and c.inst.control_socket.is_socket()
    assert c.inst.pid_file.read_text() == pid_file
    assert c.request("status")["state"] == "running"
    assert second.driver is not None and second.driver.status() == "stopped"
    assert c.request("stop") == "stopping" and c.join() == 0


def test_an_engine_that_cannot_start_fails_the_start_at_once_with_the_reason(
        make_cove: Callable[..., Cove], monkeypatch: pytest.MonkeyPatch) -> None:
    """The guest refused its data disk (no superblock, not provably blank): the engine
    never starts on an empty folder, and the user reads why without a 3-minute wait."""
    monkeypatch.setattr(timeouts, "ENGINE_TIMEOUT", 60.0)
    why = "data disk: the data disk (/dev/vdb) has no ext4 superblock, primary or backup"
    c = make_cove(engine_error=why).start()
    t0 = time.monotonic()
    assert c.join() == 1
    assert time.monotonic() - t0 < 30
    assert c.backend.reason == f"the engine cannot start: {why}"


def test_the_guest_is_told_whether_the_data_disk_is_blank(
        make_cove: Callable[..., Cove]) -> None:
    c = make_cove().running()
    assert json.loads(c.inst.boot_config.read_text())["data_disk_blank"] is True
    assert c.request("stop") == "stopping" and c.join() == 0
    # The next start of the same instance: its disk exists now.
    again = backend.Backend(c.inst, driver=c.driver, image=c.image)
    t = threading.Thread(target=again.run)
    t.start()
    try:
        deadline = time.monotonic() + 20
        while again.state != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert again.state == "running"
        assert json.loads(c.inst.boot_config.read_text())["data_disk_blank"] is False
    finally:
        again.request_stop("test")
        t.join(30)


def test_a_wedged_engine_is_degraded_with_the_reason_then_running_again(
        make_cove: Callable[..., Cove], monkeypatch: pytest.MonkeyPatch) -> None:
    """`running` means /_ping answered a moment ago: an engine that stops answering
    (SIGSTOP, a deadlock) is `degraded`, not a silent `running`."""
    monkeypatch.setattr(health, "INTERVAL", 0.1)
    monkeypatch.setattr(health, "TIMEOUT", 0.3)
    c = make_cove().running()
    answered = c.request("status")["engine_answered_at"]
    assert answered is not None and abs(answered - time.time()) < 10
    n = len(c.events())
    c.engine.wedged = True
    ev = c.wait_event("degraded", after=n)
    assert ev["reason"].startswith("the engine does not answer: no answer to /_ping")
    st = c.request("status")
    assert st["state"] == "degraded" and st["reason"] == ev["reason"]
    c.engine.wedged = False
    c.wait_event("running", after=n)
    assert c.request("status")["reason"] == ""
    assert c.request("status")["engine_answered_at"] > answered


def test_an_idle_engine_is_checked_less_often_and_a_client_brings_the_checks_back(
        make_cove: Callable[..., Cove], monkeypatch: pytest.MonkeyPatch) -> None:
    """Each check is a connection to dockerd through the guest link, and at idle they
    were a third of the VM's wakes: with no client request for IDLE_AFTER the checks
    come every IDLE_INTERVAL; a client's request brings them back to every INTERVAL,
    the first at once."""
    monkeypatch.setattr(health, "INTERVAL", 0.1)
    monkeypatch.setattr(health, "IDLE_AFTER", 0.6)
    monkeypatch.setattr(health, "IDLE_INTERVAL", 3600.0)
    c = make_cove().running()

    def pings() -> int:
        return sum(r.startswith(b"GET /_ping") for r in c.engine.received)

    time.sleep(1.0)  # past IDLE_AFTER since the start: the checks have slowed
    idle = pings()
    time.sleep(1.0)
    assert pings() <= idle + 1, "an idle engine was still checked every INTERVAL"
    before = pings()
    with _unix(c.inst.docker_socket) as s:  # a client (its /_ping is counted too)
        s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        assert _recv_all(s) == HTTP_REPLY
    time.sleep(0.5)
    assert pings() >= before + 1 + 3, "the checks did not come back with the client"


def test_a_host_wake_sets_the_guest_clock_and_asks_the_engine_at_once(
        make_cove: Callable[..., Cove]) -> None:
    """The platform's wake signal: the clock is pushed and the engine pinged now, not at
    the next health check (an hour away here)."""
    c = make_cove().running()
    assert len(POWER_WATCHES) == 1
    answered = c.request("status")["engine_answered_at"]
    pushes = len(c.agent_ops("set_time"))
    n = len(c.events())
    POWER_WATCHES[0].sleep()
    time.sleep(0.2)
    POWER_WATCHES[0].wake()
    ev = c.wait_event("host_power", after=n, power="wake")
    assert ev["slept"] is not None and 0.1 <= ev["slept"] < 5
    assert [e["power"] for e in c.events()[n:] if e["event"] == "host_power"] == [
        "sleep", "wake"]
    assert c.wait_for(lambda: len(c.agent_ops("set_time")) > pushes), "no clock push"
    assert abs(c.agent_ops("set_time")[-1]["ns"] - time.time_ns()) < 5 * 10**9
    assert c.wait_for(lambda: c.request("status")["engine_answered_at"] != answered), \
        "the engine was not asked after the wake"


# -- stop --------------------------------------------------------------------------------


def test_stop_through_the_control_api(make_cove: Callable[..., Cove]) -> None:
    c = make_cove().running()
    assert c.request("stop") == "stopping"
    assert c.join() == 0
    assert c.kinds()[-2:] == ["stopping", "stopped"]
    assert c.events()[-2]["reason"] == "requested"
    assert len(c.agent_ops("shutdown")) == 1
    assert c.driver.stop_calls == [], "the VM powered off by itself; no need to force it"
    assert c.driver.kill_calls == 0
    assert c.driver.status() == "stopped"
    for p in (c.inst.docker_socket, c.inst.control_socket, c.inst.pid_file):
        assert not p.exists(), p
    assert c.backend.channel is not None and not c.backend.channel.connected.is_set()


def test_stop_on_sigterm(make_cove: Callable[..., Cove], signals: dict[int, Any]) -> None:
    c = make_cove().running()
    assert set(signals) == {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signals[signal.SIGTERM](signal.SIGTERM, None)
    assert c.join() == 0
    assert c.kinds()[-2:] == ["stopping", "stopped"]
    assert c.events()[-2]["reason"] == "signal"
    assert len(c.agent_ops("shutdown")) == 1


def test_stop_escalates_when_the_guest_does_not_power_off(
        make_cove: Callable[..., Cove], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timeouts, "STOP_AGENT_TIMEOUT", 0.5)
    c = make_cove(ignore_shutdown=True).running()
    t0 = time.monotonic()
    assert c.stop() == 0
    assert time.monotonic() - t0 >= 0.5
    assert len(c.agent_ops("shutdown")) == 1
    assert c.driver.stop_calls == [timeouts.STOP_ACPI_TIMEOUT]
    assert c.kinds()[-2:] == ["stopping", "stopped"]
    assert not c.inst.control_socket.exists()


# -- boot failures -----------------------------------------------------------------------


def test_kernel_crash_on_first_boot_boots_again(make_cove: Callable[..., Cove]) -> None:
    c = make_cove(crash_boots=1).running()
    vms = [e for e in c.events() if e.get("step") == "vm"]
    assert [e["attempt"] for e in vms] == [1, 2]
    assert "error" not in c.kinds()
    crash = (c.inst.folder / "serial.crash.log").read_text()
    assert "Kernel panic - not syncing" in crash
    assert "Kernel panic" not in c.inst.serial_log.read_text()  # the second boot's log
    assert len(c.driver.started) == 2 and len(c.driver.created) == 1
    assert c.request("status")["state"] == "running"
    # Each boot's config names the host ports that boot forwards (for the guest to
    # close to its containers), not the ones the crashed boot had.
    assert c.driver.closed_ports == [[40000, 40001], [40002, 40003]]


def test_a_crashed_boot_leaves_the_previous_boots_console_as_it_was(
        make_cove: Callable[..., Cove]) -> None:
    """The console of the session before (why the VM stopped last) stays serial.prev.log
    through a crashed boot and its retry; the crash has a file of its own."""
    c = make_cove(crash_boots=1)
    c.inst.folder.mkdir(parents=True, exist_ok=True)
    c.inst.serial_log.write_text("cove: the agent exited with status 137\ncove: powering off\n")
    c.running()
    prev = (c.inst.folder / "serial.prev.log").read_text()
    assert "cove: powering off" in prev and "Kernel panic" not in prev
    assert "Kernel panic - not syncing" in (c.inst.folder / "serial.crash.log").read_text()


def test_kernel_crash_twice_is_an_error(make_cove: Callable[..., Cove]) -> None:
    c = make_cove(crash_boots=2).start()
    assert c.join() == 1
    vms = [e for e in c.events() if e.get("step") == "vm"]
    assert [e["attempt"] for e in vms] == [1, 2]
    err = c.wait_event("error")
    assert err["reason"].startswith("the guest agent did not answer (the VM stopped)")
    assert "Kernel panic - not syncing" in err["reason"]
    assert c.kinds()[-1] == "stopped"


def test_agent_never_answers(make_cove: Callable[..., Cove],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timeouts, "AGENT_TIMEOUT", 0.5)
    c = make_cove(silent_agent=True).start()
    assert c.join() == 1
    err = c.wait_event("error")
    assert err["reason"].startswith("the guest agent did not answer in time")
    assert BOOT_SERIAL[-1] in err["reason"]
    assert c.driver.stop_calls == [timeouts.STOP_ACPI_TIMEOUT]  # no agent to ask
    assert c.kinds()[-2:] == ["stopping", "stopped"]


def test_engine_never_ready(make_cove: Callable[..., Cove],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timeouts, "ENGINE_TIMEOUT", 0.5)
    c = make_cove(never_ready=True).start()
    assert c.join() == 1
    kinds = c.kinds()
    assert "running" not in kinds
    err = c.wait_event("error")
    reason = err["reason"]
    assert reason.startswith("the engine did not start in time")
    assert "the guest's last lines:\n" + "\n".join(BOOT_SERIAL) in reason
    assert kinds.index("error") > kinds.index("starting")
    assert kinds[-1] == "stopped"
    assert len(c.agent_ops("shutdown")) == 1  # the guest was still asked to power off
    for p in (c.inst.control_socket, c.inst.docker_socket, c.inst.pid_file):
        assert not p.exists(), p


def test_regular_file_at_the_docker_socket_path(make_cove: Callable[..., Cove]) -> None:
    c = make_cove()
    c.inst.ensure_folder()
    c.inst.docker_socket.write_text("precious\n")
    c.start()
    assert c.join() == 1
    err = c.wait_event("error")
    assert "not a socket" in err["reason"]
    assert str(c.inst.docker_socket) in err["reason"]
    assert c.kinds() == ["starting", "error", "stopped"]
    assert c.inst.docker_socket.read_text() == "precious\n"
    assert c.driver.started == []
    assert not c.inst.control_socket.exists()
    assert not c.inst.pid_file.exists()


def test_stale_docker_socket_is_replaced(make_cove: Callable[..., Cove]) -> None:
    c = make_cove()
    c.inst.ensure_folder()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(c.inst.docker_socket))
    stale.close()  # a socket file nobody listens on, as a crashed backend leaves
    c.running()
    with _unix(c.inst.docker_socket) as s:
        s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
        assert _recv_all(s) == HTTP_REPLY


# -- while running -----------------------------------------------------------------------


def test_a_guest_whose_agent_died_is_booted_again_once(make_cove: Callable[..., Cove],
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    """The guest's init stopped the engine, unmounted the disk and powered off after its
    agent died: the backend asks to be run again (main() re-executes it, once)."""
    c = make_cove().running()
    c.driver.serial("cove: the agent exited with status 137; stopping the engine, "
                    "unmounting the data disk")
    c.driver.power_off()
    assert c.join() == 1
    err = c.wait_event("error")
    assert err["reason"].startswith("the VM stopped unexpectedly; Cove starts it again")
    assert c.backend.restart_requested is True

    from desktop.backend import process as backend_main

    monkeypatch.delenv(backend_main.RESTARTED_ENV, raising=False)
    assert backend_main._may_restart() is True
    monkeypatch.setenv(backend_main.RESTARTED_ENV, str(time.time() - 5))
    assert backend_main._may_restart() is False  # once: not again right away


def test_vm_dies_while_running(make_cove: Callable[..., Cove]) -> None:
    c = make_cove().running()
    c.driver.serial("[  120.000000] Out of memory: Killed process 1 (init)")
    c.driver.power_off()
    assert c.join() is not None
    err = c.wait_event("error")
    assert err["reason"].startswith("the VM stopped unexpectedly")
    assert c.backend.restart_requested is False  # not the guest's own clean stop
    assert "Out of memory: Killed process 1" in err["reason"]
    kinds = c.kinds()
    assert kinds[-1] == "stopped"
    assert kinds.index("error") > kinds.index("running")
    assert c.driver.stop_calls == []
    assert c.agent_ops("shutdown") == []
    assert not c.inst.control_socket.exists()


def test_second_backend_for_the_same_instance_refused(make_cove: Callable[..., Cove],
                                                      home: Path) -> None:
    c = make_cove().running()
    logged = c.inst.events_log.read_text()
    # Another process, as a second `cove backend` would be; its driver must not be used.
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from desktop import backend\n"
        "from desktop.instance import Instance\n"
        "class NoDriver:\n"
        "    def __getattr__(self, name):\n"
        "        raise SystemExit(f'the second backend used its driver ({name})')\n"
        "inst = Instance('t', home=Path(sys.argv[1]))\n"
        "sys.exit(backend.Backend(inst, driver=NoDriver()).run())\n"
    )
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script, str(home)], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3, proc.stderr
    assert time.monotonic() - t0 < 10
    # The first one is untouched: same pid file, same sockets, no new events.
    assert c.thread.is_alive()
    assert c.inst.pid_file.read_text().split()[0] == str(os.getpid())
    assert c.request("status")["state"] == "running"
    assert c.inst.events_log.read_text() == logged
    with _unix(c.inst.docker_socket) as s:
        s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
        assert _recv_all(s) == HTTP_REPLY


def test_guest_link_drop_degrades_then_recovers(make_cove: Callable[..., Cove]) -> None:
    c = make_cove().running()
    agent = c.driver.agent
    assert agent is not None
    n = len(c.events())
    assert agent.drop_control() == 1
    degraded = c.wait_event("degraded", after=n)
    assert "link" in degraded["reason"]
    c.wait_event("running", after=n)
    time.sleep(0.1)  # room for a second "running", which must not come
    assert c.kinds()[n:] == ["degraded", "running"]
    assert agent.controller.hellos == 2  # a new control session
    assert c.request("status")["state"] == "running"
    assert c.request("agent_status")["uptime"] == 12.5  # requests work on the new session
    with _unix(c.inst.docker_socket) as s:
        s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
        assert _recv_all(s) == HTTP_REPLY


def test_ports_stall_while_the_link_is_down_and_forward_again_after(
        make_cove: Callable[..., Cove]) -> None:
    c = make_cove().running()
    agent = c.driver.agent
    assert agent is not None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = {**PORT_8080, "port": probe.getsockname()[1]}
    agent.controller.published = [port]
    agent.broadcast({"event": "ports", "added": [port], "removed": []})
    c.wait_event("port_forwarded")
    n = len(c.events())
    assert agent.drop_control() == 1
    stalled = c.wait_event("port_stalled", after=n)
    assert stalled["state"] in ("stalled", "recovering")
    c.wait_event("running", after=n)
    c.wait_event("port_forwarded", after=n)
    assert [(p["host_port"], p["state"]) for p in c.request("status")["ports"]] == [
        (port["port"], "forwarding")]


def test_engine_restart_degrades_then_recovers(make_cove: Callable[..., Cove]) -> None:
    c = make_cove().running()
    assert c.driver.agent is not None
    n = len(c.events())
    c.driver.agent.broadcast({"event": "engine", "state": "restarting",
                              "reason": "dockerd exited (status 1)", "retry_in": 1})
    assert c.wait_event("degraded", after=n)["reason"] == "dockerd exited (status 1)"
    c.driver.agent.broadcast({"event": "engine", "state": "running", "version": "27.0.1",
                              "ready_at": 30.0})
    assert c.wait_event("running", after=n)["engine_version"] == "27.0.1"
    assert c.request("status")["engine_version"] == "27.0.1"


def _forwarded(ports: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    return [(p["proto"], p["guest_port"], p["container"]) for p in ports]


def test_guest_ports_events(make_cove: Callable[..., Cove]) -> None:
    c = make_cove().running()
    agent = c.driver.agent
    assert agent is not None
    n = len(c.events())
    agent.broadcast({"event": "ports", "added": [PORT_8080, PORT_5353], "removed": [],
                     "snapshot": True})
    ev = c.wait_event("ports", after=n)
    assert ev["added"] == [PORT_8080, PORT_5353] and ev["removed"] == []
    both = [("tcp", 8080, PORT_8080["container"]), ("udp", 5353, PORT_5353["container"])]
    assert sorted(_forwarded(c.request("ports"))) == sorted(both)
    assert sorted(_forwarded(c.request("status")["ports"])) == sorted(both)
    # Each one is opened on the host (or reported as failed, if this host holds it).
    kinds = {e["event"] for e in c.events()[n:]}
    assert kinds & {"port_forwarded", "port_failed"}

    n = len(c.events())
    agent.broadcast({"event": "ports", "added": [], "removed": [dict(PORT_8080)]})
    ev = c.wait_event("ports", after=n)
    assert ev["removed"] == [PORT_8080]
    assert _forwarded(c.request("ports")) == [("udp", 5353, PORT_5353["container"])]
    assert c.wait_event("port_removed", after=n)["host_port"] == 8080

    # A new snapshot replaces the list rather than adding to it.
    n = len(c.events())
    agent.broadcast({"event": "ports", "added": [PORT_8080], "removed": [], "snapshot": True})
    c.wait_event("ports", after=n)
    assert _forwarded(c.request("ports")) == [("tcp", 8080, PORT_8080["container"])]


def test_bad_port_entries_from_the_guest_are_dropped(make_cove: Callable[..., Cove]) -> None:
    """A broken or hostile guest: ports out of range, an unknown proto, wrong types. The
    good entries are forwarded, the rest ignored; nothing stays pending, nothing raises."""
    c = make_cove().running()
    agent = c.driver.agent
    assert agent is not None
    bad = [{**PORT_8080, "port": 70000}, {**PORT_8080, "proto": "sctp"},
           {**PORT_8080, "port": "8080"}, {**PORT_8080, "port": True}, "8080/tcp",
           {**PORT_8080, "host_ip": "not an address"}, {"proto": "tcp"}]
    n = len(c.events())
    agent.broadcast({"event": "ports", "added": [*bad, PORT_5353], "removed": [7],
                     "snapshot": True})
    ev = c.wait_event("ports", after=n)
    assert ev["added"] == [PORT_5353] and ev["removed"] == []
    assert _forwarded(c.request("ports")) == [("udp", 5353, PORT_5353["container"])]
    assert all(p["state"] != "pending" for p in c.request("status")["ports"])
    n = len(c.events())
    agent.broadcast({"event": "ports", "added": "everything", "removed": None})
    agent.broadcast({"event": "ping-after"})  # ordered after it on the same stream
    assert c.request("status")["state"] == "running"
    assert "ports" not in c.kinds()[n:]  # nothing changed: no news
    assert _forwarded(c.request("ports")) == [("udp", 5353, PORT_5353["container"])]


# -- the control API ---------------------------------------------------------------------


BAD_LINES = [b"this is not json\n", b'{"op": \n', b"\xff\xfe\n", b"{}\n",
             b'{"opp": "status"}\n', b'["status"]\n', b'"status"\n', b"null\n", b"42\n"]


def test_control_bad_request_lines(make_cove: Callable[..., Cove]) -> None:
    c = make_cove().running()
    for line in BAD_LINES:
        reply = c.raw_request(line)
        assert reply["ok"] is False, line
        assert "JSON" in reply["error"] and "op" in reply["error"], (line, reply)
    assert c.request("ping") == "pong"  # the backend is fine
    assert c.kinds()[-1] == "running"


def test_control_unknown_op(make_cove: Callable[..., Cove]) -> None:
    c = make_cove().running()
    reply = c.raw_request(b'{"op": "reboot"}\n')
    assert reply == {"ok": False, "error": "unknown op 'reboot'"}
    with pytest.raises(ControlError, match="unknown op 'reboot'"):
        c.request("reboot")
    assert c.thread.is_alive()


def test_control_request_lines_are_bounded_at_1_mib(make_cove: Callable[..., Cove]) -> None:
    """The real bound (1 MiB with its newline): a line of exactly that is served, one
    byte more is refused without being parsed, and the backend goes on."""
    from desktop.control import server

    assert server.MAX_REQUEST == 2**20
    c = make_cove().running()

    def line(size: int) -> bytes:
        head, tail = b'{"op": "ping", "pad": "', b'"}\n'
        return head + b"x" * (size - len(head) - len(tail)) + tail

    assert len(line(2**20)) == 2**20
    assert c.raw_request(line(2**20)) == {"ok": True, "result": "pong"}
    assert c.raw_request(line(2**20 + 1)) == {
        "ok": False, "error": f"a request is one line of at most {2**20} bytes"}
    assert c.request("ping") == "pong"


def test_control_bad_parameter_types_get_an_error_reply(
        make_cove: Callable[..., Cove]) -> None:
    """A parameter of the wrong type is refused with an error line like any bad input,
    not left to crash the handler thread (the client would get no reply at all)."""
    c = make_cove().running()
    for line in (b'{"op": "logs", "lines": "many"}\n', b'{"op": "logs", "lines": null}\n',
                 b'{"op": "logs", "lines": [1]}\n'):
        reply = c.raw_request(line)
        assert reply["ok"] is False, line
        assert isinstance(reply["error"], str) and reply["error"], reply
    assert c.agent_ops("logs") == []  # none of them reached the agent
    assert c.request("ping") == "pong"


def test_control_agent_passthrough(make_cove: Callable[..., Cove]) -> None:
    c = make_cove().running()
    assert c.request("logs", name="containerd", lines=5) == {
        "name": "containerd", "lines": ["containerd line 1"]}
    assert c.agent_ops("logs")[-1]["lines"] == 5
    st = c.request("agent_status")
    assert st["agent_version"] == AGENT_VERSION and st["uptime"] == 12.5
    # The Dashboard's Reclaim space: a trim now, answered by the agent.
    assert c.request("trim")["trimmed"].startswith("/mnt/data: ")
    assert c.agent_ops("trim") != []

    assert c.request("engine_config", config={"debug": True}) == {"applied": True}
    saved = json.loads(c.inst.settings_file.read_text())
    assert saved["engine_config"] == {"debug": True}
    with pytest.raises(ControlError, match="the engine refused the config: .*bogus"):
        c.request("engine_config", config={"bogus": 1})
    assert json.loads(c.inst.settings_file.read_text())["engine_config"] == {"debug": True}
    assert c.backend.settings.engine_config == {"debug": True}


def test_engine_config_keeps_what_others_saved_meanwhile(make_cove: Callable[..., Cove],
                                                         home: Path) -> None:
    """`cove shares add` (or the tray) saved settings while the backend ran: applying an
    engine config must not write back the settings the backend loaded at boot."""
    c = make_cove().running()
    src = home / "src"
    src.mkdir()
    c.inst.update_settings(lambda s: setattr(s, "shares", [str(src)]))
    assert c.request("engine_config", config={"debug": True}) == {"applied": True}
    saved = json.loads(c.inst.settings_file.read_text())
    assert saved["shares"] == [str(src)] and saved["engine_config"] == {"debug": True}


# -- robustness --------------------------------------------------------------------------


def test_stop_while_waiting_for_the_agent_is_prompt(
        make_cove: Callable[..., Cove], monkeypatch: pytest.MonkeyPatch) -> None:
    """`cove stop` (or SIGTERM) during a slow boot must not wait for AGENT_TIMEOUT
    (120 s in production) before the backend even begins to stop."""
    monkeypatch.setattr(timeouts, "AGENT_TIMEOUT", 4.0)
    c = make_cove(silent_agent=True).start()
    c.wait_event("starting", step="agent")
    t0 = time.monotonic()
    assert c.request("stop") == "stopping"
    c.join(10)
    took = time.monotonic() - t0
    assert took < 2.5, f"the backend took {took:.1f} s to stop while the agent was booting"
    assert c.kinds()[-1] == "stopped"


def test_stop_while_waiting_for_the_engine_is_not_an_error(
        make_cove: Callable[..., Cove]) -> None:
    """A stop asked for during the start is not reported as the engine failing to start
    "in time" (nor with exit code 1)."""
    c = make_cove(never_ready=True).start()
    c.wait_event("starting", step="engine")
    assert c.request("stop") == "stopping"
    code = c.join()
    errors = [e["reason"] for e in c.events() if e["event"] == "error"]
    assert errors == []
    assert code == 0
    assert c.kinds()[-2:] == ["stopping", "stopped"]


def test_a_stuck_event_subscriber_does_not_block_the_backend(
        make_cove: Callable[..., Cove]) -> None:
    """A client that subscribes to events and stops reading (a hung tray app) must not
    freeze the backend: its state changes, and its stop, go on."""
    c = make_cove().running()
    agent = c.driver.agent
    assert agent is not None
    big = [dict(PORT_8080, container="c" * 1000, port=i) for i in range(100)]

    def push() -> None:  # ~4 MB of events, more than the socket buffers hold
        for _ in range(40):
            agent.broadcast({"event": "ports", "added": big, "removed": []})

    pusher = threading.Thread(target=push)
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        stuck.connect(str(c.inst.control_socket))
        stuck.sendall(b'{"op": "events", "history": false}\n')
        time.sleep(0.2)
        n = len(c.events())
        pusher.start()
        c.wait_for(lambda: len(c.events()) >= n + 40, timeout=2)
        c.backend.request_stop("test")
        code = c.join(3)
    finally:
        stuck.close()  # unblocks a backend stuck writing to it
        if pusher.ident is not None:
            pusher.join(10)
    assert code == 0, "the backend hung on an event subscriber that does not read"


def test_run_leaves_no_thread_behind(make_cove: Callable[..., Cove]) -> None:
    """Once run() returns, the listening sockets are closed for real: no thread of the
    backend's is still blocked in accept() on them."""
    before = set(threading.enumerate())
    c = make_cove().running()
    assert c.stop() == 0
    c.driver.close()

    def leftovers() -> list[str]:
        return sorted(t.name for t in set(threading.enumerate()) - before
                      if t.is_alive() and t.name in ("control-accept", "docker-accept"))

    c.wait_for(lambda: not leftovers(), timeout=2)
    assert leftovers() == []


def test_a_jump_of_the_hosts_clock_reaches_the_guest_at_once(
        make_cove: Callable[..., Cove], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(core.TEST_OPS_ENV, "1")
    c = make_cove().running()
    before = len(c.agent_ops("set_time"))
    result = c.request("clock_offset", seconds=3600)
    assert result["offset_seconds"] == 3600
    # Seen by the jump check (ticks every second), not by the 10 s schedule.
    pushes = c.wait_for(lambda: c.agent_ops("set_time")[before:], timeout=8)
    assert pushes, "the jump was not pushed"
    assert abs(pushes[-1]["ns"] - (time.time_ns() + 3600 * 10**9)) < 5 * 10**9
    c.request("clock_offset", seconds=0)
    back = c.wait_for(lambda: [p for p in c.agent_ops("set_time")[before:]
                               if abs(p["ns"] - time.time_ns()) < 5 * 10**9], timeout=8)
    assert back, "the jump back was not pushed"
    with pytest.raises(ControlError, match="within ten years"):
        c.request("clock_offset", seconds=1e12)


def test_test_only_ops_are_unknown_without_cove_test_ops(
        make_cove: Callable[..., Cove], monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's backend has no clock_offset: a local program could shift the guest's
    clock (certificates, tokens, build stamps) through it."""
    monkeypatch.delenv(core.TEST_OPS_ENV, raising=False)
    c = make_cove().running()
    before = len(c.agent_ops("set_time"))
    reply = c.raw_request(b'{"op": "clock_offset", "seconds": 3600}\n')
    assert reply == {"ok": False, "error": "unknown op 'clock_offset'"}
    with pytest.raises(ControlError, match="unknown op 'clock_offset'"):
        ControlClient(c.inst.control_socket, timeout=15).clock_offset(3600)
    assert c.backend.clock.host_time_ns() - time.time_ns() < 10**9
    assert all(abs(p["ns"] - time.time_ns()) < 5 * 10**9
               for p in c.agent_ops("set_time")[before:])
    reply = c.raw_request(b'{"op": "drop_share_stream", "index": 0}\n')
    assert reply == {"ok": False, "error": "unknown op 'drop_share_stream'"}


# -- shares ------------------------------------------------------------------------------


def _save_shares(home: Path, shares: list[Any]) -> None:
    inst = Instance("t", home=home)
    inst.save_settings(replace(inst.load_settings(), shares=shares))


def test_shares_reach_the_driver_the_boot_config_and_status(
        make_cove: Callable[..., Cove], home: Path) -> None:
    a, b, c9 = str(home / "src"), str(home / "data"), str(home / "more")
    _save_shares(home, [a, {"path": b, "transport": "virtiofs"},
                        {"path": c9, "transport": "9p"}])
    c = make_cove().running()
    # The fake driver resolves "auto" to 9p; the rest as asked, tagged in order.
    expected = [SharedFolder(a, "cove0", "9p"), SharedFolder(b, "cove1", "virtiofs"),
                SharedFolder(c9, "cove2", "9p")]
    assert c.backend.boot_shares.shares == expected
    assert c.driver.started[0].shares == expected
    boot_config = json.loads(c.inst.boot_config.read_text())
    assert boot_config["shares"] == [
        {"path": a, "tag": "cove0", "transport": "9p"},
        {"path": b, "tag": "cove1", "transport": "virtiofs"},
        {"path": c9, "tag": "cove2", "transport": "9p"}]
    st = c.request("status")
    assert st["shares"] == [{"path": a, "transport": "9p", "vm_path": a},
                            {"path": b, "transport": "virtiofs", "vm_path": b},
                            {"path": c9, "transport": "9p", "vm_path": c9}]
    assert st["shares_pending"] is False
    assert c.driver.agent is not None and not c.driver.agent.controller.ops("mount_share")


def test_link_shares_are_served_by_the_backend_and_mounted_by_the_agent(
        make_cove: Callable[..., Cove], home: Path) -> None:
    """A "link" share: the backend serves the folder over 9P on an ``fs <n>`` stream, the
    agent mounts it (here the fake agent speaks 9P as the guest kernel would)."""
    a, b = home / "src", home / "docs"
    (a / "pkg").mkdir(parents=True)
    (a / "main.go").write_text("package main\n")
    b.mkdir()
    (b / "readme.txt").write_text("hi\n")
    _save_shares(home, [{"path": str(a), "transport": "link"}, str(home / "other"),
                        {"path": str(b), "transport": "link"}])
    c = make_cove().running()
    agent = c.driver.agent
    assert agent is not None
    assert [r["index"] for r in agent.controller.ops("mount_share")] == [0, 2]
    assert agent.controller.share_listings == {0: ["main.go", "pkg"], 2: ["readme.txt"]}
    boot = json.loads(c.inst.boot_config.read_text())["shares"]
    assert boot[0] == {"path": "/mnt/host" + str(a), "tag": "cove0", "transport": "link"}
    st = c.request("status")
    assert [(s["transport"], s["vm_path"], "error" in s) for s in st["shares"]] == [
        ("link", "/mnt/host" + str(a), False), ("9p", str(home / "other"), False),
        ("link", "/mnt/host" + str(b), False)]
    assert set(c.backend.boot_shares.servers) == {str(a), str(b)}
    # What each server answered (the fake's mount: version, attach, lopen, readdir).
    assert st["shares"][0]["served"]["requests"] == 4
    assert st["shares"][0]["served"]["errors"] == 0
    assert "served" not in st["shares"][1]
    # Change notifications name the VM's paths (a Windows host's C:\\... is /mnt/host/...).
    from desktop.services import filewatch

    c.backend.boot_shares.send_changes(
        [filewatch.Change(str(a / "main.go"), 0o644, "modified"),
         filewatch.Change(str(home / "elsewhere"), 0o644, "modified")], c.backend.channel)
    st_main = (a / "main.go").stat()
    assert agent.controller.ops("touch")[-1]["changes"] == [
        ["/mnt/host" + str(a / "main.go"), stat.S_IMODE(st_main.st_mode),
         st_main.st_ctime_ns]]  # read when sent: the agent keeps a newer chmod


def test_a_link_shares_stream_that_ends_is_replaced_and_mounted_again(
        make_cove: Callable[..., Cove], home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream of a mounted link share ends (a dropped connection): the backend opens
    a new one and the agent mounts the share on it; status shows no error after."""
    monkeypatch.setenv(core.TEST_OPS_ENV, "1")
    a = home / "src"
    a.mkdir()
    (a / "main.go").write_text("package main\n")
    _save_shares(home, [{"path": str(a), "transport": "link"}])
    c = make_cove().running()
    agent = c.driver.agent
    assert agent is not None and len(agent.controller.ops("mount_share")) == 1
    agent.controller.share_listings.clear()
    assert c.request("drop_share_stream", index=0) is True
    deadline = time.monotonic() + 10
    while agent.controller.share_listings.get(0) != ["main.go"]:
        assert time.monotonic() < deadline, agent.controller.ops("mount_share")
        time.sleep(0.05)
    assert len(agent.controller.ops("mount_share")) == 2
    while c.backend.boot_shares.restreams != 1 or c.request("status")["shares"][0].get("error"):
        assert time.monotonic() < deadline, c.request("status")["shares"]
        time.sleep(0.05)
    assert not c.backend.boot_shares.drop_stream(5)  # no such share
    with pytest.raises(ControlError, match="index must be a share's number, not '0'"):
        c.request("drop_share_stream", index="0")


def test_a_link_share_the_guest_cannot_mount_is_reported_and_the_start_goes_on(
        make_cove: Callable[..., Cove], home: Path) -> None:
    a = home / "src"
    a.mkdir()
    _save_shares(home, [{"path": str(a), "transport": "link"}])
    c = make_cove(share_mount_error="mount: wrong fs type, bad option").running()
    ev = c.wait_event("share_failed")
    assert ev["path"] == str(a) and "wrong fs type" in ev["message"]
    st = c.request("status")
    assert st["state"] == "running"
    assert st["shares"][0]["error"] == "mount: wrong fs type, bad option"
    assert c.backend.boot_shares.servers == {}
    # A bind of the unmounted folder would mount an empty one: the guard refuses it.
    assert c.backend.boot_shares.mounted() == []


def test_no_shares(make_cove: Callable[..., Cove], home: Path) -> None:
    _save_shares(home, [])
    c = make_cove().running()
    assert json.loads(c.inst.boot_config.read_text())["shares"] == []
    assert c.driver.started[0].shares == []
    st = c.request("status")
    assert st["shares"] == [] and st["shares_pending"] is False


def test_shares_pending_after_the_settings_change(make_cove: Callable[..., Cove],
                                                  home: Path) -> None:
    a, b = str(home / "src"), str(home / "data")
    _save_shares(home, [a, {"path": b, "transport": "virtiofs"}])
    c = make_cove()
    assert c.backend.shares_pending() is False  # nothing booted yet
    c.running()

    def pending(shares: list[Any]) -> bool:
        _save_shares(home, shares)
        via_status = c.request("status")["shares_pending"]
        assert via_status == c.backend.shares_pending()
        return bool(via_status)

    assert pending([a, {"path": b, "transport": "virtiofs"}]) is False
    # "auto" accepts whatever the boot chose; an explicit other transport does not.
    assert pending([a, b]) is False
    assert pending([{"path": a, "transport": "9p"}, b]) is False
    assert pending([a, {"path": b, "transport": "9p"}]) is True
    assert pending([{"path": a, "transport": "virtiofs"}, b]) is True
    # Folders added, removed or reordered.
    assert pending([a, b, str(home / "new")]) is True
    assert pending([a]) is True
    assert pending([]) is True
    assert pending([b, a]) is True
    assert pending([a, b]) is False
    # What this boot shares stays what it was booted with.
    assert [sh["path"] for sh in c.request("status")["shares"]] == [a, b]


def test_shares_pending_false_while_the_settings_file_is_invalid(
        make_cove: Callable[..., Cove], home: Path) -> None:
    _save_shares(home, [str(home / "src")])
    c = make_cove().running()
    c.inst.settings_file.write_text('{"shares": ["relative"]}')
    assert c.backend.shares_pending() is False
    c.inst.settings_file.write_text("{not json")
    assert c.request("status")["shares_pending"] is False


def test_shares_the_driver_refuses_stop_the_start(make_cove: Callable[..., Cove],
                                                  home: Path) -> None:
    _save_shares(home, [{"path": str(home / "src"), "transport": "virtiofs"}])
    c = make_cove()
    asked: list[list[tuple[str, str]]] = []

    def refuse(shares: list[tuple[str, str]]) -> tuple[list[SharedFolder], list[str]]:
        asked.append(shares)
        raise DriverError(f"cannot share {home / 'src'} over virtiofs: QEMU has no virtiofs "
                          "on this host; set its transport to 9p or auto")

    c.driver.resolve_shares = refuse
    c.start()
    assert c.join() == 1
    assert asked == [[(str(home / "src"), "virtiofs")]]
    err = c.wait_event("error")
    assert err["reason"].startswith(f"cannot share {home / 'src'} over virtiofs")
    assert c.driver.created == [] and c.driver.started == []
    assert c.kinds()[-1] == "stopped"


def test_the_data_disk_level_reaches_status_and_events(make_cove: Callable[..., Cove]) -> None:
    c = make_cove().running()
    agent = c.driver.agent
    assert agent is not None
    n = len(c.events())
    full = {"event": "disk", "size": 8 * 2**30, "free": 100 * 2**20, "level": "full"}
    agent.broadcast(full)
    ev = c.wait_event("data_disk", after=n)
    assert ev["level"] == "full" and "cove start --disk 128G" in ev["message"]  # 2 x 64G
    assert c.request("status")["data_disk"] == {k: full[k] for k in ("size", "free", "level")}
    # The same level again is no news; a hostile or broken reading is dropped.
    agent.broadcast({**full, "free": 90 * 2**20})
    agent.broadcast({"event": "disk", "size": "8G", "free": None, "level": "gone"})
    agent.broadcast({**full, "free": 6 * 2**30, "level": "ok"})
    ok = c.wait_event("data_disk", after=n + 1)
    assert ok["level"] == "ok" and ok["message"] == ""
    assert [e["level"] for e in c.events()[n:] if e["event"] == "data_disk"] == ["full", "ok"]
    assert c.request("status")["data_disk"]["free"] == 6 * 2**30


def test_a_note_on_the_shares_is_an_event_the_cli_prints(
        make_cove: Callable[..., Cove], capsys: pytest.CaptureFixture[str]) -> None:
    from desktop import cli

    c = make_cove()
    c.driver.share_notes = ["shares use 9p: virtiofsd is not installed"]
    c.running()
    ev = c.wait_event("shares_note")
    assert ev["message"] == c.driver.share_notes[0]
    cli._print_step(ev)
    assert "note: shares use 9p: virtiofsd is not installed" in capsys.readouterr().err


# -- Resource Saver ----------------------------------------------------------------------

REST_MINUTES = 0.02  # 1.2 s


def _resting(make_cove: Callable[..., Cove]) -> Cove:
    """A running backend whose VM went to rest (idle, nothing running)."""
    c = make_cove().running()
    c.engine.vm_paused = lambda: c.driver.paused
    c.request("resource_saver", minutes=REST_MINUTES)
    ev = c.wait_event("resting")
    assert ev["idle_minutes"] == REST_MINUTES
    assert c.driver.paused and c.driver.paused_calls == 1
    assert len(c.agent_ops("release_memory")) == 1  # the guest's cache back first
    return c


def test_an_idle_vm_rests_and_a_docker_connection_wakes_it_before_it_is_served(
        make_cove: Callable[..., Cove]) -> None:
    c = _resting(make_cove)
    st = c.request("status")
    assert st["state"] == "resting" and st["resource_saver"]["resting"] is True
    pushes = len(c.agent_ops("set_time"))
    n = len(c.events())
    with _unix(c.inst.docker_socket) as s:
        s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        assert _recv_all(s) == HTTP_REPLY  # answered, never refused
    assert c.driver.resumed_calls == 1 and not c.driver.paused
    assert c.engine.while_paused == [], "a request reached the engine of a paused VM"
    woke = c.wait_event("running", after=n)
    assert woke["woke"] == "docker" and woke["wake_seconds"] >= 0
    assert c.wait_for(lambda: len(c.agent_ops("set_time")) > pushes), "no clock push"
    assert c.request("status")["resource_saver"]["wakes"] == 1


# A hypervisor's process, as QEMU is to a guest that reports free pages: it holds 80 MiB;
# told "go" (the guest released its memory), it gives them back 8 MiB every 0.4 s, then
# prints the monotonic time of its last fall (CLOCK_MONOTONIC: the same in every process).
_GIVING_BACK = """
import mmap, sys, time
held = [mmap.mmap(-1, 8 << 20) for _ in range(10)]
for m in held:
    m.write(b"x" * (8 << 20))
print("ready", flush=True)
sys.stdin.readline()
for m in held:
    time.sleep(0.4)
    m.close()
print(time.monotonic(), flush=True)
time.sleep(120)
"""


def test_the_vm_rests_only_once_qemus_memory_has_stopped_falling(
        make_cove: Callable[..., Cove], monkeypatch: pytest.MonkeyPatch) -> None:
    """The guest's kernel reports what it freed in passes 2 s apart: a VM paused at the
    first would hold the rest. The pause waits until QEMU's memory has been still for the
    quiet time."""
    monkeypatch.setattr(timeouts, "GIVEN_BACK_QUIET", 1.0)
    with subprocess.Popen([sys.executable, "-c", _GIVING_BACK], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as qemu:
        try:
            assert qemu.stdout is not None and qemu.stdin is not None
            assert qemu.stdout.readline() == "ready\n"
            c = make_cove().running()
            c.driver.process_pid = qemu.pid
            stdin = qemu.stdin

            def go() -> None:
                stdin.write("go\n")
                stdin.flush()

            assert c.driver.agent is not None
            c.driver.agent.controller.on_release_memory = go
            c.request("resource_saver", minutes=REST_MINUTES)
            c.wait_event("resting", timeout=30)
            last_fall = float(qemu.stdout.readline())
            assert c.driver.paused_at >= last_fall + 0.9, (c.driver.paused_at, last_fall)
            assert c.driver.paused_at < last_fall + 10  # and not for the longest time
        finally:
            qemu.kill()


def test_no_health_check_or_clock_push_reaches_a_resting_vm(
        make_cove: Callable[..., Cove], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "INTERVAL", 0.1)
    c = _resting(make_cove)
    pushes = len(c.agent_ops("set_time"))
    time.sleep(1.5)
    assert c.engine.while_paused == [], "the engine of a paused VM was asked"
    assert len(c.agent_ops("set_time")) == pushes
    assert c.request("status")["state"] == "resting"  # and not degraded


def test_a_running_container_keeps_the_vm_awake(make_cove: Callable[..., Cove]) -> None:
    c = make_cove().running()
    c.engine.running = 1
    c.request("resource_saver", minutes=REST_MINUTES)
    assert c.wait_for(lambda: any(r.startswith(b"GET /containers/json")
                                  for r in c.engine.received))
    time.sleep(2.5)
    assert c.driver.paused_calls == 0
    c.engine.running = 0  # the container ended
    c.wait_event("resting")


def _recv_reply(s: socket.socket, reply: bytes) -> None:
    got = b""
    while len(got) < len(reply):
        chunk = s.recv(4096)
        assert chunk, f"the connection ended after {got!r}"
        got += chunk
    assert got == reply


def test_a_request_being_answered_keeps_the_vm_awake(make_cove: Callable[..., Cove]) -> None:
    """A streamed answer (`docker logs -f`, `docker events`) holds the VM awake until it
    ends; here the engine holds its answer back."""
    c = make_cove().running()
    c.engine.wedged = True
    c.request("resource_saver", minutes=REST_MINUTES)
    with _unix(c.inst.docker_socket) as s:
        s.sendall(b"GET /events HTTP/1.1\r\nHost: docker\r\n\r\n")
        time.sleep(2.5)
        assert c.driver.paused_calls == 0
        assert c.request("status")["resource_saver"]["open_connections"] == 1
    c.engine.wedged = False
    c.wait_event("resting")


def test_a_kept_alive_connection_between_requests_lets_the_vm_rest(
        make_cove: Callable[..., Cove]) -> None:
    """An SDK's connection pool keeps its connection open between requests: idle, it
    holds nothing; its next request wakes the VM and is answered."""
    c = make_cove().running()
    c.engine.keep_alive = True
    c.engine.vm_paused = lambda: c.driver.paused
    c.request("resource_saver", minutes=REST_MINUTES)
    ping = b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
    with _unix(c.inst.docker_socket) as s:
        s.sendall(ping)
        _recv_reply(s, KEEP_ALIVE_REPLY)
        n = len(c.events())
        c.wait_event("resting", after=n)
        s.sendall(ping)  # on the same connection
        _recv_reply(s, KEEP_ALIVE_REPLY)
        assert c.driver.resumed_calls == 1
        assert c.engine.while_paused == []


def test_a_passive_connection_lets_the_vm_rest(make_cove: Callable[..., Cove]) -> None:
    """The tray's way: its requests say they are passive, so even its answer being
    streamed (its `docker events`) lets the VM rest; opening it woke the VM."""
    c = _resting(make_cove)
    c.engine.wedged = True  # the answer never ends, as an events stream's
    n = len(c.events())
    with _unix(c.inst.docker_socket) as s:
        s.sendall(b"GET /events HTTP/1.1\r\nHost: docker\r\nX-Cove-Passive: 1\r\n\r\n")
        c.wait_event("running", after=n)
        c.wait_event("resting", after=n + 1)
    assert c.driver.paused_calls == 2


def test_stop_while_resting_wakes_the_vm_so_its_agent_stops_cleanly(
        make_cove: Callable[..., Cove]) -> None:
    c = _resting(make_cove)
    assert c.stop() == 0
    assert c.driver.resumed_calls == 1
    assert len(c.agent_ops("shutdown")) == 1 and c.driver.kill_calls == 0


def test_a_control_request_that_needs_the_guest_wakes_it(
        make_cove: Callable[..., Cove]) -> None:
    c = _resting(make_cove)
    c.request("status")
    c.request("ping")
    assert c.driver.resumed_calls == 0, "a passive control request woke the VM"
    n = len(c.events())
    c.request("agent_status")
    assert c.driver.resumed_calls == 1
    c.wait_event("resting", after=n)  # idle again
    assert c.request("wake")["resting"] is False
    assert c.driver.resumed_calls == 2


def test_a_pause_the_hypervisor_refuses_leaves_the_vm_running(
        make_cove: Callable[..., Cove]) -> None:
    c = make_cove().running()
    c.driver.refuse_pause = True
    c.request("resource_saver", minutes=REST_MINUTES)
    assert c.wait_for(lambda: c.driver.paused_calls >= 1)
    assert c.request("status")["state"] == "running"
    assert "resting" not in c.kinds()


def test_resource_saver_minutes_are_checked_and_kept(make_cove: Callable[..., Cove]) -> None:
    c = make_cove().running()
    for bad in (-1, "5", True, 1441, None):
        with pytest.raises(ControlError, match="resource_saver_minutes: .* must be a number "
                                               "of minutes from 0"):
            c.request("resource_saver", minutes=bad)
    assert c.request("resource_saver", minutes=0)["minutes"] == 0
    assert c.inst.load_settings().resource_saver_minutes == 0
    time.sleep(0.5)
    assert c.driver.paused_calls == 0


def test_a_control_endpoint_another_program_holds_is_an_error_not_a_traceback(
        make_cove: Callable[..., Cove], monkeypatch: pytest.MonkeyPatch) -> None:
    """On Windows another program may hold the control pipe's name (PipeTakenError, an
    OSError): the backend says so as its error and exits 1, with nothing booted."""
    from desktop.platform import winpipe

    def taken(inst: Instance) -> Any:
        raise winpipe.PipeTakenError(r"\\.\pipe\cove-x-t-control is served by process 666; "
                                     "end that program and start Cove again")

    monkeypatch.setattr(core.endpoints, "listen_control", taken)
    c = make_cove()
    c.start()
    assert c.join() == 1
    ev = c.wait_event("error")
    assert "control endpoint could not be opened" in ev["reason"]
    assert "end that program and start Cove again" in ev["reason"]
    assert c.driver.started == [] and c.driver.created == []  # nothing booted


# -- a stop that saves the VM's state, a start that restores it -----------------------


def test_a_stop_that_saves_keeps_the_boot_config_and_the_next_start_restores_it(
        make_cove: Callable[..., Cove], home: Path) -> None:
    c = make_cove(saves=True).running()
    assert c.request("stop", save=True) == "stopping"
    assert c.join() == 0
    # Saved, not shut down: the guest wrote out its data first, the agent was not told
    # to power off, and the state keeps the config the guest read at its boot.
    assert len(c.agent_ops("release_memory")) == 1
    assert c.agent_ops("shutdown") == []
    assert c.driver.save_calls == [{"boot_config": json.loads(c.inst.boot_config.read_text())}]
    saved = [e for e in c.events() if e["event"] == "saved_state"]
    assert [e["action"] for e in saved] == ["saved"]

    again = backend.Backend(c.inst, driver=c.driver, image=c.image)
    t = threading.Thread(target=again.run)
    t.start()
    try:
        assert c.wait_for(lambda: again.state == "running"), again.reason
        assert c.driver.restored == 1
        assert again.status()["restored"] is True
        # The restored guest holds the first boot's token: the same one again.
        assert c.driver.tokens == [c.driver.tokens[0]] * 2
        steps = [e.get("step") for e in again.events.history if e["event"] == "starting"]
        assert "restore" in steps and "vm" not in steps
    finally:
        again.request_stop("test")
        t.join(15)
    assert not t.is_alive()


def test_a_stop_that_cannot_save_shuts_down_as_before_and_says_why(
        make_cove: Callable[..., Cove]) -> None:
    c = make_cove(saves=False).running()
    c.request("stop", save=True)
    assert c.join() == 0
    assert len(c.agent_ops("shutdown")) == 1
    ev = [e for e in c.events() if e["event"] == "saved_state"]
    assert [e["action"] for e in ev] == ["not_saved"]
    assert "the fake VM cannot be saved" in ev[0]["message"]


def test_a_plain_stop_never_saves(make_cove: Callable[..., Cove]) -> None:
    c = make_cove(saves=True).running()
    c.request("stop")
    assert c.join() == 0
    assert c.driver.save_calls == [] and len(c.agent_ops("shutdown")) == 1


def test_stop_refuses_a_save_that_is_not_true_or_false(make_cove: Callable[..., Cove]) -> None:
    c = make_cove(saves=True).running()
    with pytest.raises(ControlError, match="save must be true or false"):
        c.request("stop", save="yes")
    assert c.backend.state == "running" and c.driver.save_calls == []
