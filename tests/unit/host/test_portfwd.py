"""The host side of published ports, with the guest replaced by local echo servers."""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from desktop.services import portfwd
from guest_engine import protocol


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeGuest:
    """Stands in for the link: "tcp" streams reach a TCP echo server, "udp" streams a
    framed-datagram echo (as the agent's udp op would, with a server that echoes)."""

    def __init__(self) -> None:
        self.echo = socket.socket()
        self.echo.bind(("127.0.0.1", 0))
        self.echo.listen(16)
        self.opened: list[tuple[str, int]] = []
        self._socks: list[socket.socket] = [self.echo]
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.echo.accept()
            except OSError:
                return
            with self._lock:  # one accepted as close() runs is closed here, not leaked
                if self._closed:
                    c.close()
                    return
                self._socks.append(c)
            threading.Thread(target=self._echo_tcp, args=(c,), daemon=True).start()

    @staticmethod
    def _echo_tcp(c: socket.socket) -> None:
        try:
            while data := c.recv(65536):
                c.sendall(data)
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    @staticmethod
    def _echo_udp(s: socket.socket) -> None:
        d = protocol.Deframer()
        try:
            while chunk := s.recv(65536):
                for dgram in d.feed(chunk):
                    s.sendall(protocol.frame(b"echo:" + dgram))
        except OSError:
            pass

    def open_stream(self, op: str, port: int) -> socket.socket:
        self.opened.append((op, port))
        if op == "tcp":
            s = socket.create_connection(self.echo.getsockname())
            self._socks.append(s)
            return s
        a, b = socket.socketpair()
        self._socks += [a, b]
        threading.Thread(target=self._echo_udp, args=(b,), daemon=True).start()
        return a

    def close(self) -> None:
        with self._lock:
            self._closed = True
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


@pytest.fixture
def guest() -> Iterator[FakeGuest]:
    g = FakeGuest()
    yield g
    g.close()


@pytest.fixture
def make_fwd(guest: FakeGuest) -> Iterator[Callable[..., tuple[portfwd.PortForwarder, list]]]:
    made: list[portfwd.PortForwarder] = []

    def make(**kw: Any) -> tuple[portfwd.PortForwarder, list]:
        events: list[tuple[str, dict]] = []
        f = portfwd.PortForwarder(guest.open_stream, lambda k, **e: events.append((k, e)),
                                  ipv6=False, **kw)
        made.append(f)
        return f, events

    yield make
    for f in made:
        f.close()


def _port(proto: str, port: int, host_ip: str = "0.0.0.0") -> dict:
    return {"proto": proto, "port": port, "host_ip": host_ip, "container": "web",
            "container_port": 80}


def _wait(cond: Callable[[], bool], timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_tcp_forward_relays_both_ways(make_fwd: Callable, guest: FakeGuest) -> None:
    f, events = make_fwd()
    p = _free_port()
    f.update([_port("tcp", p)], [])
    with socket.create_connection(("127.0.0.1", p), timeout=5) as c:
        payload = bytes(range(256)) * 2000
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := c.recv(65536):
            got += chunk
    assert got == payload
    assert ("tcp", p) in guest.opened
    assert events[0][0] == "port_forwarded" and events[0][1]["host_port"] == p
    snap = f.snapshot()
    assert snap == [{"proto": "tcp", "host_port": p, "host_addresses": ["127.0.0.1"],
                     "guest_port": p, "container_port": 80, "container": "web",
                     "state": "forwarding", "reason": ""}]


def test_binds_loopback_unless_exposure_is_allowed(make_fwd: Callable) -> None:
    f, _ = make_fwd()
    assert f.addresses("0.0.0.0") == ["127.0.0.1"]
    assert f.addresses("127.0.0.1") == ["127.0.0.1"]
    g, _ = make_fwd(expose_all=True)
    assert g.addresses("0.0.0.0") == ["0.0.0.0"]
    assert g.addresses("127.0.0.1") == ["127.0.0.1"]  # the container asked for loopback
    p = _free_port()
    g.update([_port("tcp", p)], [])
    assert g.snapshot()[0]["host_addresses"] == ["0.0.0.0"]
    with socket.create_connection(("127.0.0.1", p), timeout=5):
        pass


def test_port_in_use_is_an_event_then_retried(make_fwd: Callable,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(portfwd, "RETRY_SECONDS", 0.2)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    p = holder.getsockname()[1]
    f, events = make_fwd()
    f.update([_port("tcp", p)], [])
    assert events[-1][0] == "port_failed"
    assert "already in use" in events[-1][1]["reason"]
    assert f.snapshot()[0]["state"] == "conflict"
    holder.close()
    # The event follows the state change (a client acting on it finds the port open).
    assert _wait(lambda: events[-1][0] == "port_forwarded")
    assert f.snapshot()[0]["state"] == "forwarding"
    with socket.create_connection(("127.0.0.1", p), timeout=5) as c:
        c.sendall(b"ping")
        assert c.recv(4) == b"ping"


def test_removed_port_is_closed(make_fwd: Callable) -> None:
    f, events = make_fwd()
    p = _free_port()
    f.update([_port("tcp", p)], [])
    f.update([], [_port("tcp", p)])
    assert events[-1][0] == "port_removed"
    assert f.snapshot() == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", p), timeout=5).close()


def test_udp_each_client_gets_its_own_replies(make_fwd: Callable, guest: FakeGuest) -> None:
    f, _ = make_fwd()
    p = _free_port(socket.SOCK_DGRAM)
    f.update([_port("udp", p)], [])
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for i, c in enumerate(clients):
            c.settimeout(5)
            c.sendto(f"hello-{i}".encode(), ("127.0.0.1", p))
        for i, c in enumerate(clients):
            assert c.recv(100) == f"echo:hello-{i}".encode()
        clients[0].sendto(b"again", ("127.0.0.1", p))
        assert clients[0].recv(100) == b"echo:again"
    finally:
        for c in clients:
            c.close()
    assert guest.opened.count(("udp", p)) == 2  # one flow per client


def test_reset_keeps_only_the_snapshot(make_fwd: Callable) -> None:
    f, _ = make_fwd()
    a, b = _free_port(), _free_port()
    f.update([_port("tcp", a), _port("tcp", b)], [])
    f.reset([_port("tcp", b)])
    assert [x["host_port"] for x in f.snapshot()] == [b]


def test_bind_reasons_name_the_problem() -> None:
    used = portfwd.bind_reason(OSError(errno.EADDRINUSE, "in use"), 8080, "127.0.0.1")
    assert "8080" in used and "already in use" in used and "container runs" in used
    priv = portfwd.bind_reason(OSError(errno.EACCES, "denied"), 80, "127.0.0.1")
    assert "privileged" in priv and "80" in priv
    # Windows: WSAEACCES for a reserved range or an exclusive listener (no privileged ports)
    win = portfwd.bind_reason(OSError(10013, "forbidden"), 5000, "127.0.0.1")
    assert "reserved" in win and "excludedportrange" in win and "privileged" not in win


def test_an_owner_change_keeps_the_host_listener(make_fwd: Callable) -> None:
    """A listener first seen without an owner, then as a container's published port, in
    one change: the host's socket stays open (no moment of 'connection refused')."""
    f, events = make_fwd()
    p = _free_port()
    unknown = {**_port("tcp", p), "container": "", "container_port": p}
    f.update([unknown], [])
    assert _wait(lambda: f.snapshot() and f.snapshot()[0]["state"] == "forwarding")
    sock_before = list(f._forwards[("tcp", p)].sockets)
    f.update([_port("tcp", p)], [unknown])
    assert f._forwards[("tcp", p)].sockets == sock_before  # the same listener
    assert "port_removed" not in [k for k, _ in events]
    snap = f.snapshot()
    assert [(s["container"], s["container_port"]) for s in snap] == [("web", 80)]
    assert events[-1][0] == "port_forwarded" and events[-1][1]["container"] == "web"
    socket.create_connection(("127.0.0.1", p), timeout=5).close()  # still open


def test_an_owner_change_that_changes_addresses_reopens(make_fwd: Callable) -> None:
    f, events = make_fwd(expose_all=True)
    p = _free_port()
    f.update([_port("tcp", p, "0.0.0.0")], [])
    f.update([_port("tcp", p, "127.0.0.1")], [_port("tcp", p, "0.0.0.0")])
    assert [k for k, _ in events].count("port_removed") == 1
    assert f.snapshot()[0]["host_addresses"] == ["127.0.0.1"]


def _state(f: portfwd.PortForwarder) -> tuple[str, str]:
    p = f.snapshot()[0]
    return p["state"], p["reason"]


def test_a_refused_stream_stalls_the_port_and_the_next_connection_heals_it(
        make_fwd: Callable, guest: FakeGuest, monkeypatch: pytest.MonkeyPatch) -> None:
    f, events = make_fwd()
    p = _free_port()
    f.update([_port("tcp", p)], [])
    real = guest.open_stream

    def refused(op: str, port: int) -> socket.socket:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "the link is down")

    monkeypatch.setattr(f, "open_stream", refused)
    with socket.create_connection(("127.0.0.1", p), timeout=5) as c:
        assert c.recv(10) == b""  # closed: nothing to relay to
    assert _wait(lambda: _state(f)[0] == "stalled")
    assert "could not be reached" in _state(f)[1]
    assert events[-1][0] == "port_stalled"
    monkeypatch.setattr(f, "open_stream", real)
    with socket.create_connection(("127.0.0.1", p), timeout=5) as c:  # same listener
        c.sendall(b"ping")
        assert c.recv(4) == b"ping"
    assert _state(f) == ("forwarding", "")
    assert events[-1][0] == "port_forwarded"


def test_the_link_dropping_stalls_every_port_and_the_snapshot_brings_them_back(
        make_fwd: Callable) -> None:
    f, events = make_fwd()
    keep, gone = _free_port(), _free_port()
    f.update([_port("tcp", keep), _port("tcp", gone)], [])
    f.link_state(up=False)
    assert [x["state"] for x in f.snapshot()] == ["stalled", "stalled"]
    f.link_state(up=True)
    assert [x["state"] for x in f.snapshot()] == ["recovering", "recovering"]
    f.reset([_port("tcp", keep)])  # the guest's ports after the reconnect
    assert [(x["host_port"], x["state"]) for x in f.snapshot()] == [(keep, "forwarding")]
    kinds = [k for k, _ in events]
    assert kinds[-2:] == ["port_removed", "port_forwarded"] or \
        kinds[-2:] == ["port_forwarded", "port_removed"]
    with socket.create_connection(("127.0.0.1", keep), timeout=5) as c:
        c.sendall(b"back")
        assert c.recv(4) == b"back"


class RecordingSocket:
    def __init__(self, calls: list[tuple[Any, ...]], family: int, kind: int) -> None:
        self.calls = calls
        calls.append(("socket", family, kind))

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.calls.append(("setsockopt", level, option, value))

    def bind(self, addr: tuple[str, int]) -> None:
        self.calls.append(("bind", addr))

    def listen(self, backlog: int) -> None:
        self.calls.append(("listen",))

    def close(self) -> None:
        self.calls.append(("close",))


def _socket_module(platform: str) -> Any:
    """A socket module with the host's constants (Winsock's SOL_SOCKET is 0xffff and its
    SO_REUSEADDR 4; only Windows' module has SO_EXCLUSIVEADDRUSE) that records calls."""
    import types

    m = types.SimpleNamespace(AF_INET=2, AF_INET6=23 if platform == "win32" else 10,
                              SOCK_STREAM=1, SOCK_DGRAM=2, IPPROTO_IPV6=41,
                              IPV6_V6ONLY=27 if platform == "win32" else 26, calls=[])
    if platform == "win32":
        m.SOL_SOCKET, m.SO_REUSEADDR, m.SO_EXCLUSIVEADDRUSE = 0xFFFF, 4, -5
    else:
        m.SOL_SOCKET, m.SO_REUSEADDR = 1, 2
    m.socket = lambda family, kind: RecordingSocket(m.calls, family, kind)
    return m


@pytest.mark.parametrize("platform", ["win32", "linux", "darwin"])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_a_published_port_is_never_shared(platform: str, proto: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows' SO_REUSEADDR would let Cove bind over the user's own dev server: there,
    SO_EXCLUSIVEADDRUSE and never SO_REUSEADDR; POSIX keeps SO_REUSEADDR (TCP)."""
    from desktop.platform import sockets

    fake = _socket_module(platform)
    monkeypatch.setattr(portfwd, "socket", fake)
    monkeypatch.setattr(sockets, "socket", fake)
    monkeypatch.setattr("sys.platform", platform)
    portfwd.PortForwarder._bind(proto, "127.0.0.1", 3000)
    options = [c[1:3] for c in fake.calls if c[0] == "setsockopt"]
    if platform == "win32":
        assert options == [(0xFFFF, -5)]
    else:
        assert options == ([(1, 2)] if proto == "tcp" else [])
    bind = fake.calls.index(("bind", ("127.0.0.1", 3000)))
    assert all(fake.calls.index(c) < bind for c in fake.calls if c[0] == "setsockopt")
