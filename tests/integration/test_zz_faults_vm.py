"""Faults inside the VM on the session's instance: the engine killed or wedged, the
agent killed. Each time the user's next command works and data committed before the
fault (a volume file written and synced, its sha256) is intact."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.dbus import BusDaemon, Logind
from tests.helpers.dnsserver import DnsServer
from tests.integration.conftest import Cove


@pytest.fixture(scope="module")
def committed(cove: Cove, hello_image: str) -> Iterator[Callable[[], None]]:
    """A volume file written and synced, and a container restarted with the engine; the
    returned check asserts both are as they were."""
    volume = f"vmfault-{uuid.uuid4().hex[:6]}"
    keeper = f"keeper-{uuid.uuid4().hex[:6]}"
    cove.docker("run", "--rm", "-v", f"{volume}:/v", hello_image, "sh", "-c",
                "dd if=/dev/urandom of=/v/data bs=1M count=4 2>/dev/null; sync")

    def sha() -> str:
        return cove.docker("run", "--rm", "-v", f"{volume}:/v", hello_image, "sha256sum",
                           "/v/data").stdout.split()[0]

    before = sha()
    cove.docker("run", "-d", "--restart", "always", "--name", keeper, hello_image,
                "sleep", "100000")

    def check() -> None:
        assert sha() == before
        _wait(lambda: cove.docker("inspect", "-f", "{{.State.Running}}", keeper,
                                  check=False).stdout.strip() == "true", 120,
              "the restart-policy container did not come back")

    yield check
    cove.docker("rm", "-f", keeper, check=False)
    cove.docker("volume", "rm", volume, check=False)


def _wait(ok: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def _state(cove: Cove) -> str:
    try:
        return str(cove.status()["state"])
    except (AssertionError, ValueError):
        return "?"


def _events_since(cove: Cove, n: int) -> list[str]:
    return (cove.folder / "events.log").read_text().splitlines()[n:]


def test_dockerd_killed_is_restarted_by_the_agent(cove: Cove, hello_image: str,
                                                  committed: Callable[[], None]) -> None:
    n = len((cove.folder / "events.log").read_text().splitlines())
    cove.cove("shell", "pkill", "-KILL", "-x", "dockerd")
    _wait(lambda: any('"degraded"' in ln for ln in _events_since(cove, n)), 60,
          "the backend did not say the engine restarts")
    _wait(lambda: _state(cove) == "running", 180, "the engine did not come back")
    assert cove.docker("run", "--rm", hello_image, "echo", "ok").stdout == "ok\n"
    committed()


def test_a_wedged_engine_is_degraded_not_running(cove: Cove, hello_image: str,
                                                 committed: Callable[[], None]) -> None:
    cove.cove("shell", "pkill", "-STOP", "-x", "dockerd")
    try:
        _wait(lambda: _state(cove) == "degraded", 150,
              "a stopped dockerd still shows as running")
        assert "does not answer" in cove.status()["reason"] or \
            "restart" in cove.status()["reason"]  # the agent may restart it first
    finally:
        cove.cove("shell", "pkill", "-CONT", "-x", "dockerd", check=False)
    _wait(lambda: _state(cove) == "running", 180, "running did not come back")
    committed()


def test_the_agent_killed_stops_the_vm_cleanly_and_cove_boots_it_again(
        cove: Cove, hello_image: str, committed: Callable[[], None]) -> None:
    before = cove.status()
    # The agent alone (its pid file), not the init shell that runs it.
    cove.cove("shell", "sh", "-c", "kill -KILL $(cat /run/cove/agent.pid)", check=False)
    _wait(lambda: cove.status().get("qemu_pid") not in (None, before["qemu_pid"])
          and _state(cove) == "running", 300, "Cove did not boot the VM again")
    serial = (cove.folder / "serial.prev.log").read_text(errors="replace")
    assert "cove: the agent exited" in serial and "cove: powering off" in serial
    disk = cove.control("agent_status")["disk"]  # type: ignore[index]
    assert disk["unclean"] is False, disk  # unmounted before the power-off
    assert cove.docker("run", "--rm", hello_image, "echo", "ok").stdout == "ok\n"
    committed()


PAUSE = 120  # s: the two minutes of a laptop's sleep


def _guest_clock_offset(cove: Cove) -> tuple[float, float]:
    """(guest clock - host clock, the measurement's uncertainty), through `cove shell`."""
    t0 = time.time()
    out = cove.cove("shell", "date", "+%s.%N").stdout
    t1 = time.time()
    return float(out) - (t0 + t1) / 2, (t1 - t0) / 2


def test_a_pause_of_the_vcpus_is_caught_up_at_once(cove: Cove, hello_image: str,
                                                   committed: Callable[[], None]) -> None:
    """A laptop's sleep as the VM sees it: its vCPUs stop (QMP stop), the host's clock
    runs on; after `cont` the guest's clock is right within seconds, not at the next
    periodic push, and what was open before (a `docker events` and a `docker logs -f`
    stream, a connection through a published port) goes on working."""
    from desktop.drivers.qemu import qmp

    ticker = f"ticker-{uuid.uuid4().hex[:6]}"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cove.docker("run", "-d", "--name", ticker, "-p", f"127.0.0.1:{port}:7", hello_image,
                "sh", "-c", "nc -ll -p 7 -e cat & while true; do date +%s; sleep 1; done")
    docker = ["docker", "--context", cove.context]
    events = _Lines(subprocess.Popen(
        [*docker, "events", "--format", "{{.Action}} {{.Actor.ID}}"], env=cove.env,
        stdout=subprocess.PIPE, text=True))
    logs = _Lines(subprocess.Popen([*docker, "logs", "-f", "--since", "1s", ticker],
                                   env=cove.env, stdout=subprocess.PIPE, text=True))
    echo = _echo_connection(port)
    try:
        _line_within(logs, 30)  # the stream is live before the pause
        monitor = cove.folder / "qmp.sock"
        assert qmp.command(monitor, "stop") is not None
        time.sleep(PAUSE)
        assert qmp.command(monitor, "cont") is not None
        resumed, cont_wall = time.monotonic(), time.time()
        while True:
            offset, error = _guest_clock_offset(cove)
            if abs(offset) <= 1.0 + error:
                break
            assert time.monotonic() - resumed < 5, f"the guest's clock is {offset:+.1f} s off"
        assert cove.docker("ps", "--format", "{{.Names}}").returncode == 0
        cid = cove.docker("run", "-d", hello_image, "true").stdout.strip()
        # The streams opened before the pause carry what happened after it.
        while not (line := _line_within(events, 60)).endswith(cid) or \
                not line.startswith("start"):
            pass
        while float(_line_within(logs, 30)) < cont_wall:  # lines from before, then new
            pass
        echo.sendall(b"still here\n")  # the connection opened before the pause
        assert echo.recv(64) == b"still here\n"
        with _echo_connection(port) as fresh:  # and a new one
            fresh.sendall(b"new\n")
            assert fresh.recv(64) == b"new\n"
        assert cove.docker("run", "--rm", hello_image, "echo", "awake").stdout == "awake\n"
        cove.docker("rm", "-f", cid, check=False)
    finally:
        echo.close()
        events.kill()
        logs.kill()
        cove.docker("rm", "-f", ticker, check=False)
    committed()


def test_a_host_sleep_qemu_never_sees_is_caught_up_by_loginds_wake(
        cove: Cove, hello_image: str, system_bus: BusDaemon,
        committed: Callable[[], None]) -> None:
    """A real sleep freezes QEMU with the rest of the host: no QMP RESUME comes after it,
    and Linux's monotonic clock stands still too, so the jump check sees nothing either.
    logind's PrepareForSleep is then what tells the backend. Here: logind's signal on the
    session's system bus, QEMU frozen (SIGSTOP), the guest's clock left 30 s behind."""
    logind = Logind(system_bus.address)
    n = len((cove.folder / "events.log").read_text().splitlines())
    qemu = int(cove.status()["qemu_pid"])
    try:
        logind.prepare_for_sleep(True)
        cove.cove("shell", "sh", "-c", "date -s @$(( $(date +%s) - 30 ))")
        os.kill(qemu, signal.SIGSTOP)
        try:
            time.sleep(20)
        finally:
            os.kill(qemu, signal.SIGCONT)
        logind.prepare_for_sleep(False)
        woke = time.monotonic()
        _wait(lambda: any('"host_power"' in ln and '"wake"' in ln
                          for ln in _events_since(cove, n)), 10,
              "the backend did not take logind's wake")
        wake = json.loads(next(ln for ln in _events_since(cove, n)
                               if '"host_power"' in ln and '"wake"' in ln))
        assert wake["slept"] >= 20
        while True:
            offset, error = _guest_clock_offset(cove)
            if abs(offset) <= 1.0 + error:
                break
            assert time.monotonic() - woke < 5, f"the guest's clock is {offset:+.1f} s off"
    finally:
        logind.close()
    assert cove.docker("run", "--rm", hello_image, "echo", "awake").stdout == "awake\n"
    committed()


def _echo_connection(port: int) -> socket.socket:
    deadline = time.monotonic() + 30
    while True:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"hello\n")
            if s.recv(64) == b"hello\n":
                return s
            s.close()
        except OSError:
            pass
        assert time.monotonic() < deadline, "the echo server never answered"
        time.sleep(0.5)


class _Lines:
    """A stream's lines as they come (a thread reads them into a queue)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.reader.join(10)  # it reads to the end of the pipe, then the file can close
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def _line_within(stream: _Lines, timeout: float) -> str:
    """The stream's next line, or a failure if none came within `timeout`."""
    try:
        line = stream.lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no line on the stream in {timeout} s") from None
    assert line is not None, "the stream ended"
    return line


def _allocated(cove: Cove) -> int:
    """Bytes the data disk's qcow2 file takes on the host's disk."""
    return (cove.folder / "data.qcow2").stat().st_blocks * 512


def _disk(cove: Cove) -> dict:
    return cove.status().get("data_disk") or {}


def test_freed_space_goes_back_to_the_hosts_disk(cove: Cove, hello_image: str,
                                                 committed: Callable[[], None]) -> None:
    volume = f"trim-{uuid.uuid4().hex[:6]}"
    before = _allocated(cove)
    cove.docker("run", "--rm", "-v", f"{volume}:/v", hello_image, "sh", "-c",
                "dd if=/dev/urandom of=/v/big bs=1M count=512 2>/dev/null && sync")
    written = _allocated(cove)
    assert written - before > 400 * 2**20, (before, written)
    cove.docker("volume", "rm", volume)
    # The guest trims freed space once it has settled (two readings, 10 s apart).
    try:
        _wait(lambda: _allocated(cove) < written - 400 * 2**20, 90,
              "the freed space did not go back to the host's disk")
    except AssertionError as e:  # what the agent saw of the disk, for the failure's reader
        agent = cove.control("agent_status")
        disk = agent.get("disk") if isinstance(agent, dict) else agent
        # The disk's lines of the agent's log (its clock lines crowd out the rest), and
        # what the guest's filesystem says is free now.
        log = "\n".join(ln for ln in cove.cove("logs", "agent", check=False).stdout
                        .splitlines() if "disk" in ln or "trim" in ln)[-3000:]
        df = cove.cove("shell", "df", "-B1", "/mnt/data", check=False).stdout
        raise AssertionError(f"{e}; allocated {_allocated(cove)} of written {written}; "
                             f"the agent's disk: {disk}; df: {df}; its disk log:\n{log}"
                             ) from None
    after = _allocated(cove)
    print(f"qcow2 allocated: before {before / 2**20:.0f} MiB, with 512 MiB written "
          f"{written / 2**20:.0f} MiB, after the delete {after / 2**20:.0f} MiB")
    committed()


def test_a_full_data_disk_is_said_and_everything_works_once_space_is_freed(
        cove: Cove, hello_image: str, committed: Callable[[], None]) -> None:
    _wait(lambda: _disk(cove).get("level") == "ok", 30, "no data disk reading")
    volume = f"fill-{uuid.uuid4().hex[:6]}"
    fill = _disk(cove)["free"] - 32 * 2**20
    cove.docker("run", "--rm", "-v", f"{volume}:/v", hello_image, "fallocate", "-l",
                str(fill), "/v/fill")
    try:
        _wait(lambda: _disk(cove).get("level") == "full", 30, "the disk was not said full")
        # The engine's own error reaches the user unchanged.
        more = cove.docker("run", "--rm", "-v", f"{volume}:/v", hello_image, "sh", "-c",
                           "dd if=/dev/urandom of=/v/more bs=1M count=64", check=False)
        assert more.returncode != 0
        assert "No space left on device" in more.stdout + more.stderr
        status = cove.cove("status").stdout
        assert "the data disk is full" in status and "cove start --disk" in status
        events = (cove.folder / "events.log").read_text()
        assert '"event": "data_disk"' in events and '"level": "full"' in events
    finally:
        cove.docker("volume", "rm", "-f", volume, check=False)
    _wait(lambda: _disk(cove).get("level") == "ok", 30, "the disk was not said ok again")
    assert "data disk" not in cove.cove("status").stdout
    assert cove.docker("run", "--rm", hello_image, "echo", "ok").stdout == "ok\n"
    committed()


@pytest.fixture
def host_resolver() -> Iterator[DnsServer]:
    """The host's resolver configuration pointed at a DNS server on its loopback, as a
    VPN client or a Wi-Fi change rewrites it; put back afterwards."""
    if os.geteuid() != 0:
        pytest.skip("rewrites the host's /etc/resolv.conf, which needs root (CI runs as root)")
    conf = Path("/etc/resolv.conf")
    saved = conf.read_bytes()
    server = DnsServer(port=53)
    try:
        conf.write_text("nameserver 127.0.0.1\n")
        yield server
    finally:
        conf.write_bytes(saved)
        server.close()


def _resolve(cove: Cove, image: str, name: str) -> str:
    got = cove.docker("run", "--rm", image, "nslookup", name, check=False)
    return got.stdout


def test_containers_follow_the_hosts_dns_as_it_changes(cove: Cove, hello_image: str,
                                                       host_resolver: DnsServer) -> None:
    # The host's resolver changes (a VPN connected): the next lookups use the new server.
    _wait(lambda: "192.0.2.1" in _resolve(cove, hello_image, "db.corp.cove-test"), 30,
          "the VM did not follow the host's new resolver")
    # Its answers change (a record moved): nothing in the VM keeps the old one.
    host_resolver.address = "192.0.2.2"
    t0 = time.monotonic()
    attempts: list[tuple[float, bool]] = []  # (when the lookup's container started, new?)
    while not attempts or not attempts[-1][1]:
        assert time.monotonic() - t0 < 30, f"the VM kept the old answer: {attempts}"
        started = time.monotonic() - t0
        attempts.append((round(started, 1),
                         "192.0.2.2" in _resolve(cove, hello_image, "db.corp.cove-test")))
    # Nothing caches it: the first lookup after the change gets the new answer.
    assert len(attempts) == 1, attempts
    assert host_resolver.queries
