"""The guest link end to end on 127.0.0.1: the agent's LinkServer (guest_engine.server)
with a fake controller, and the host's ControlChannel (desktop.link.channel) talking to it."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from desktop.link import AgentError, LinkError
from desktop.link.channel import ControlChannel
from desktop.link.tcp import TcpLink
from guest_engine import protocol, server

TOKEN = "5e" * 32
HELLO = {"event": "hello", "agent_version": "0.1.0-test", "engine_state": "starting"}


class FakeController:
    """Answers like the agent would, from canned replies; records what it was asked."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def hello_events(self) -> list[dict[str, Any]]:
        return [dict(HELLO), {"event": "engine", "state": "running", "version": "26.1.5"}]

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(request)
        op = request.get("op")
        if op == "ping":
            return {"ok": True, "result": "pong"}
        if op == "add":
            return {"ok": True, "result": request["a"] + request["b"]}
        if op == "slow":
            time.sleep(request.get("seconds", 0.2))
            return {"ok": True, "result": "slept"}
        if op == "refuse":
            return {"ok": False, "error": "engine_config: unknown key 'bogus'"}
        if op == "crash":
            raise RuntimeError("the controller broke")
        return {"ok": False, "error": f"unknown op {op!r}"}


class UnixHTTPServer:
    """A stand-in for the engine's socket: reads one request, answers HTTP/1.0 200."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.received: list[bytes] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            self.received.append(data)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nOK")
        self.done.set()

    def close(self) -> None:
        self.sock.close()


class TCPEchoServer:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.sendall(b"<bye>")  # proves the half-close reached us and we could answer

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class UDPEchoServer:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                return
            if data == b"stop":
                return
            self.sock.sendto(data.upper(), addr)

    def close(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"stop", ("127.0.0.1", self.port))
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def controller() -> FakeController:
    return FakeController()


@pytest.fixture
def docker_sock(tmp_path: Path) -> Path:
    return tmp_path / "docker.sock"


@pytest.fixture
def link_server(controller: FakeController, docker_sock: Path) -> Iterator[server.LinkServer]:
    srv = server.LinkServer(TOKEN, controller, port=0, host="127.0.0.1",
                            docker_sock=str(docker_sock))
    srv.start()
    yield srv
    # Wake the accept loop too (close() alone leaves it blocked in accept on Linux).
    if srv._listener is not None:
        try:
            srv._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    srv.close()


def _connect(srv: server.LinkServer) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    s.settimeout(5)
    return s


def _recv_all(s: socket.socket) -> bytes:
    """Everything until the peer closes. A reset counts as a close: a server that closes
    with our unread bytes in its buffer makes the kernel send RST instead of FIN."""
    chunks = []
    try:
        while chunk := s.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, f"closed after {len(buf)} of {n} bytes"
        buf += chunk
    return buf


# -- authentication --------------------------------------------------------------------


def test_wrong_token_closed_without_a_byte(link_server: server.LinkServer,
                                           controller: FakeController) -> None:
    with _connect(link_server) as s:
        s.sendall(protocol.encode_header("00" * 32, "control")
                  + protocol.encode_message({"id": 1, "op": "ping"}))
        assert _recv_all(s) == b""
    assert controller.requests == []


@pytest.mark.parametrize("op", ["control", "echo", "docker"])
def test_empty_token_refused(link_server: server.LinkServer, op: str) -> None:
    with _connect(link_server) as s:
        s.sendall(f"COVE/1  {op}\n".encode() + b"payload")
        assert _recv_all(s) == b""


@pytest.mark.parametrize(
    "header",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"COVE/2 " + TOKEN.encode() + b" echo\n",
        b"COVE/1 " + TOKEN.encode() + b" shell\n",
        b"COVE/1 " + TOKEN.encode() + b" tcp 0\n",
        b"COVE/1 " + TOKEN.encode() + b" echo extra\n",
        b"\xff" * 600,  # too long, no newline
    ],
)
def test_malformed_header_closed_without_a_byte(link_server: server.LinkServer,
                                                header: bytes) -> None:
    with _connect(link_server) as s:
        s.sendall(header + b"ping\n")
        assert _recv_all(s) == b""


def test_silent_client_dropped_after_header_timeout(
        link_server: server.LinkServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "HEADER_TIMEOUT", 0.3)
    with _connect(link_server) as s:
        t0 = time.monotonic()
        assert _recv_all(s) == b""
        assert time.monotonic() - t0 < 3


def test_partial_header_dropped_after_header_timeout(
        link_server: server.LinkServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that sends half a header and stalls must not hold a server thread forever.

    read_header peeks in a loop; the socket timeout never fires while unread bytes are
    waiting, so HEADER_TIMEOUT has to be enforced by the loop itself.
    """
    monkeypatch.setattr(server, "HEADER_TIMEOUT", 0.3)
    with _connect(link_server) as s:
        s.settimeout(2)
        s.sendall(b"COVE/1 " + TOKEN.encode()[:10])
        try:
            data = _recv_all(s)
        except TimeoutError:
            data = None
        assert data == b"", "the server still held the connection 2 s after HEADER_TIMEOUT"


# -- read_header -------------------------------------------------------------------------


def test_read_header_leaves_the_rest_in_the_socket() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(5)
        a.sendall(b"COVE/1 t echo\nGET /_ping HTTP/1.1\r\n\r\n")
        assert server.read_header(b) == b"COVE/1 t echo\n"
        a.shutdown(socket.SHUT_WR)
        assert _recv_all(b) == b"GET /_ping HTTP/1.1\r\n\r\n"


def test_read_header_across_several_sends() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(5)

        def dribble() -> None:
            for part in (b"COVE/1 ", b"tok", b"en tcp 80", b"\nafter"):
                a.sendall(part)
                time.sleep(0.03)

        t = threading.Thread(target=dribble)
        t.start()
        assert server.read_header(b) == b"COVE/1 token tcp 80\n"
        t.join()
        assert _recv_exact(b, 5) == b"after"


def test_read_header_errors() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(5)
        a.sendall(b"x" * (protocol.MAX_HEADER + 1))
        with pytest.raises(protocol.ProtocolError, match="too long"):
            server.read_header(b)
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(5)
        a.close()
        with pytest.raises(protocol.ProtocolError, match="closed"):
            server.read_header(b)


# -- control -----------------------------------------------------------------------------


def _control(srv: server.LinkServer) -> tuple[socket.socket, Any]:
    s = _connect(srv)
    s.sendall(protocol.encode_header(TOKEN, "control"))
    return s, s.makefile("rb")


def test_control_session_hello_first_then_replies(link_server: server.LinkServer) -> None:
    s, rfile = _control(link_server)
    with s, rfile:
        assert protocol.decode_message(rfile.readline()) == HELLO
        assert protocol.decode_message(rfile.readline())["event"] == "engine"
        s.sendall(protocol.encode_message({"id": 41, "op": "ping"}))
        assert protocol.decode_message(rfile.readline()) == {"id": 41, "ok": True,
                                                             "result": "pong"}
        s.sendall(protocol.encode_message({"id": "abc", "op": "add", "a": 2, "b": 3}))
        assert protocol.decode_message(rfile.readline()) == {"id": "abc", "ok": True,
                                                             "result": 5}


def test_control_replies_carry_their_request_ids(link_server: server.LinkServer) -> None:
    s, rfile = _control(link_server)
    with s, rfile:
        rfile.readline()
        rfile.readline()
        # The slow one is asked first but answered last: ids, not order, match them up.
        s.sendall(protocol.encode_message({"id": 1, "op": "slow", "seconds": 0.3})
                  + protocol.encode_message({"id": 2, "op": "ping"}))
        first = protocol.decode_message(rfile.readline())
        second = protocol.decode_message(rfile.readline())
        assert (first["id"], first["result"]) == (2, "pong")
        assert (second["id"], second["result"]) == (1, "slept")


def test_control_errors_are_reported_and_the_session_goes_on(
        link_server: server.LinkServer) -> None:
    s, rfile = _control(link_server)
    with s, rfile:
        rfile.readline()
        rfile.readline()
        s.sendall(b"this is not json\n")
        bad = protocol.decode_message(rfile.readline())
        assert "id" not in bad and "not JSON" in bad["error"]
        s.sendall(protocol.encode_message({"id": 5, "op": "crash"}))
        crash = protocol.decode_message(rfile.readline())
        assert crash == {"id": 5, "ok": False,
                         "error": "RuntimeError: the controller broke"}
        s.sendall(protocol.encode_message({"id": 6, "op": "ping"}))
        assert protocol.decode_message(rfile.readline())["result"] == "pong"


def test_broadcast_reaches_open_sessions(link_server: server.LinkServer) -> None:
    s1, r1 = _control(link_server)
    s2, r2 = _control(link_server)
    with s1, r1, s2, r2:
        for r in (r1, r2):
            r.readline()
            r.readline()
        assert len(link_server.sessions) == 2
        ev = {"event": "ports", "added": [{"proto": "tcp", "port": 8080}], "removed": []}
        link_server.broadcast(ev)
        assert protocol.decode_message(r1.readline()) == ev
        assert protocol.decode_message(r2.readline()) == ev
    # Closed sessions are dropped from the broadcast list.
    deadline = time.monotonic() + 5
    while link_server.sessions and time.monotonic() < deadline:
        time.sleep(0.01)
    assert link_server.sessions == set()
    link_server.broadcast({"event": "engine", "state": "stopped"})  # nobody left: no error


# -- data ops ----------------------------------------------------------------------------


def test_echo_op(link_server: server.LinkServer) -> None:
    payload = os.urandom(1 << 20)
    with _connect(link_server) as s:
        s.sendall(protocol.encode_header(TOKEN, "echo") + payload[:100])
        s.sendall(payload[100:])
        assert _recv_exact(s, len(payload)) == payload


def test_docker_op_relays_with_pipelined_bytes(link_server: server.LinkServer,
                                               docker_sock: Path) -> None:
    engine = UnixHTTPServer(docker_sock)
    try:
        request = b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n"
        with _connect(link_server) as s:
            # Header and request in one send: the server must not swallow the request.
            s.sendall(protocol.encode_header(TOKEN, "docker") + request)
            reply = _recv_all(s)
        assert engine.done.wait(5)
        assert engine.received == [request]
        assert reply.startswith(b"HTTP/1.0 200 OK\r\n")
        assert reply.endswith(b"\r\n\r\nOK")
    finally:
        engine.close()


def test_docker_op_without_engine_closes(link_server: server.LinkServer,
                                         docker_sock: Path) -> None:
    assert not docker_sock.exists()
    with _connect(link_server) as s:
        s.sendall(protocol.encode_header(TOKEN, "docker") + b"GET /_ping HTTP/1.0\r\n\r\n")
        assert _recv_all(s) == b""


def test_tcp_op_relays_and_passes_half_close(link_server: server.LinkServer) -> None:
    echo = TCPEchoServer()
    try:
        payload = os.urandom(256 * 1024)
        with _connect(link_server) as s:
            s.sendall(protocol.encode_header(TOKEN, "tcp", echo.port) + payload[:10])
            s.sendall(payload[10:])
            s.shutdown(socket.SHUT_WR)
            assert _recv_all(s) == payload + b"<bye>"
    finally:
        echo.close()


def test_tcp_op_to_a_closed_port_closes(link_server: server.LinkServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        with _connect(link_server) as s:
            s.sendall(protocol.encode_header(TOKEN, "tcp", port) + b"hello")
            assert _recv_all(s) == b""


def test_udp_op_framed_datagrams(link_server: server.LinkServer) -> None:
    udp = UDPEchoServer()
    try:
        dgrams = [b"query-one", b"q2", os.urandom(1400)]
        with _connect(link_server) as s:
            # Header and the first frames in one send, the last frame split in two.
            data = b"".join(protocol.frame(d) for d in dgrams)
            s.sendall(protocol.encode_header(TOKEN, "udp", udp.port) + data[:-700])
            time.sleep(0.05)
            s.sendall(data[-700:])
            deframer = protocol.Deframer()
            got: list[bytes] = []
            while len(got) < len(dgrams):
                chunk = s.recv(65536)
                assert chunk, f"stream closed after {got!r}"
                got += deframer.feed(chunk)
        assert got == [d.upper() for d in dgrams]
    finally:
        udp.close()


def test_udp_stream_survives_a_datagram_nobody_received(link_server: server.LinkServer) -> None:
    """A datagram to a port with no listener yet is dropped (that is UDP), not fatal.

    The ICMP "port unreachable" it causes surfaces as ECONNREFUSED on the connected UDP
    socket; the send side ignores it, and the receive side must too, or a DNS server that
    restarts ends every stream to it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with _connect(link_server) as s:
        s.settimeout(3)
        s.sendall(protocol.encode_header(TOKEN, "udp", port) + protocol.frame(b"too early"))
        time.sleep(0.2)  # the datagram is refused by the kernel meanwhile
        late = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        late.bind(("127.0.0.1", port))
        with late:
            late.settimeout(1.5)
            s.sendall(protocol.frame(b"on time"))
            try:
                data, addr = late.recvfrom(65535)
            except TimeoutError:
                data, addr = b"", None
            assert data == b"on time", "the udp stream ended after one refused datagram"
            late.sendto(b"answer", addr)
            assert protocol.Deframer().feed(_recv_exact(s, 8)) == [b"answer"]


# -- the host's end: ControlChannel ------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.states: list[bool] = []
        self.changed = threading.Condition()

    def on_event(self, ev: dict[str, Any]) -> None:
        with self.changed:
            self.events.append(ev)
            self.changed.notify_all()

    def on_state(self, up: bool) -> None:
        with self.changed:
            self.states.append(up)
            self.changed.notify_all()

    def wait_for(self, pred: Any, timeout: float = 5) -> bool:
        with self.changed:
            return self.changed.wait_for(pred, timeout)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def channel(link_server: server.LinkServer, recorder: Recorder) -> Iterator[ControlChannel]:
    ch = ControlChannel(TcpLink("127.0.0.1", link_server.port, TOKEN), recorder.on_event,
                        recorder.on_state)
    yield ch
    ch.close()


def test_channel_connect_gets_hello(channel: ControlChannel, recorder: Recorder) -> None:
    assert channel.connect(timeout=5)
    assert channel.hello == HELLO
    assert channel.connected.is_set()
    assert recorder.states == [True]
    # The hello and the engine event after it both reach on_event (order: see below).
    assert recorder.wait_for(lambda: len(recorder.events) >= 2)
    assert sorted(e["event"] for e in recorder.events) == ["engine", "hello"]
    assert HELLO in recorder.events


def test_channel_delivers_hello_before_later_events(link_server: server.LinkServer) -> None:
    """on_event sees the agent's events one at a time, in the order the agent sent them.

    The agent sends hello, then (engine running, ports snapshot); a handler still busy
    with hello must not be called with the next event meanwhile, from another thread.
    """
    log: list[str] = []
    engine_seen = threading.Event()
    busy = threading.Lock()
    overlaps: list[str] = []

    def on_event(ev: dict[str, Any]) -> None:
        if not busy.acquire(blocking=False):
            overlaps.append(ev["event"])
            log.append(ev["event"])
            engine_seen.set()
            return
        try:
            log.append(ev["event"])
            if ev["event"] == "hello":
                engine_seen.wait(0.3)  # a handler that takes its time
            else:
                engine_seen.set()
        finally:
            busy.release()

    ch = ControlChannel(TcpLink("127.0.0.1", link_server.port, TOKEN), on_event)
    try:
        assert ch.connect(timeout=5)
        deadline = time.monotonic() + 5
        while len(log) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log == ["hello", "engine"]
        assert overlaps == [], "on_event ran for 'engine' while still handling 'hello'"
    finally:
        ch.close()


def test_channel_request_returns_result(channel: ControlChannel,
                                        controller: FakeController) -> None:
    assert channel.connect(timeout=5)
    assert channel.request("ping", timeout=5) == "pong"
    assert channel.request("add", timeout=5, a=20, b=22) == 42
    assert [r["op"] for r in controller.requests] == ["ping", "add"]
    ids = [r["id"] for r in controller.requests]
    assert len(set(ids)) == 2  # every request has its own id


def test_channel_concurrent_requests(channel: ControlChannel) -> None:
    assert channel.connect(timeout=5)
    results: dict[int, Any] = {}

    def ask(i: int) -> None:
        results[i] = channel.request("add", timeout=5, a=i, b=1000)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {i: i + 1000 for i in range(20)}


def test_channel_agent_error(channel: ControlChannel) -> None:
    assert channel.connect(timeout=5)
    with pytest.raises(AgentError, match="unknown key 'bogus'"):
        channel.request("refuse", timeout=5)
    with pytest.raises(AgentError, match="RuntimeError: the controller broke"):
        channel.request("crash", timeout=5)
    # The channel still works after a refused request.
    assert channel.request("ping", timeout=5) == "pong"


def test_channel_request_before_connect(channel: ControlChannel) -> None:
    with pytest.raises(LinkError, match="not connected"):
        channel.request("ping", timeout=1)


def test_channel_wrong_token(link_server: server.LinkServer, recorder: Recorder) -> None:
    ch = ControlChannel(TcpLink("127.0.0.1", link_server.port, "ff" * 32), recorder.on_event,
                        recorder.on_state)
    t0 = time.monotonic()
    assert ch.connect(timeout=5) is False
    assert time.monotonic() - t0 < 2
    assert not ch.connected.is_set()
    assert recorder.states == [] and recorder.events == []
    ch.close()


def test_channel_nobody_listening() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        ch = ControlChannel(TcpLink("127.0.0.1", port, TOKEN), lambda ev: None)
        assert ch.connect(timeout=2) is False
        with pytest.raises(LinkError, match="cannot reach the guest agent"):
            TcpLink("127.0.0.1", port, TOKEN).open("echo", timeout=2)


def test_channel_events_reach_on_event(channel: ControlChannel, link_server: server.LinkServer,
                                       recorder: Recorder) -> None:
    assert channel.connect(timeout=5)
    assert recorder.wait_for(lambda: len(recorder.events) >= 2)
    ev = {"event": "ports", "added": [{"proto": "tcp", "port": 8080, "host_ip": "0.0.0.0",
                                       "container": "web", "container_port": 80}],
          "removed": []}
    link_server.broadcast(ev)
    assert recorder.wait_for(lambda: ev in recorder.events)


def test_channel_server_side_close_reports_down(
        link_server: server.LinkServer, recorder: Recorder,
        monkeypatch: pytest.MonkeyPatch) -> None:
    conns: list[socket.socket] = []
    serve_op = server.LinkServer.serve_op

    def spy(self: server.LinkServer, conn: socket.socket, header: protocol.Header) -> None:
        conns.append(conn)
        serve_op(self, conn, header)

    monkeypatch.setattr(server.LinkServer, "serve_op", spy)
    ch = ControlChannel(TcpLink("127.0.0.1", link_server.port, TOKEN), recorder.on_event,
                        recorder.on_state)
    try:
        assert ch.connect(timeout=5)
        assert recorder.states == [True]
        conns[0].shutdown(socket.SHUT_RDWR)  # the agent goes away
        assert recorder.wait_for(lambda: recorder.states == [True, False])
        assert not ch.connected.is_set()
        with pytest.raises(LinkError):
            ch.request("ping", timeout=1)
        # And it can connect again afterwards.
        assert ch.connect(timeout=5)
        assert ch.request("ping", timeout=5) == "pong"
    finally:
        ch.close()


def test_channel_pending_request_fails_when_the_link_drops(
        link_server: server.LinkServer, recorder: Recorder,
        monkeypatch: pytest.MonkeyPatch) -> None:
    conns: list[socket.socket] = []
    serve_op = server.LinkServer.serve_op

    def spy(self: server.LinkServer, conn: socket.socket, header: protocol.Header) -> None:
        conns.append(conn)
        serve_op(self, conn, header)

    monkeypatch.setattr(server.LinkServer, "serve_op", spy)
    ch = ControlChannel(TcpLink("127.0.0.1", link_server.port, TOKEN), recorder.on_event,
                        recorder.on_state)
    try:
        assert ch.connect(timeout=5)
        threading.Timer(0.2, lambda: conns[0].shutdown(socket.SHUT_RDWR)).start()
        t0 = time.monotonic()
        with pytest.raises(LinkError, match="dropped"):
            ch.request("slow", timeout=10, seconds=3)
        assert time.monotonic() - t0 < 2.5
    finally:
        ch.close()


def test_channel_close_is_not_reported_as_a_drop(channel: ControlChannel,
                                                 recorder: Recorder) -> None:
    assert channel.connect(timeout=5)
    channel.close()
    time.sleep(0.2)
    assert recorder.states == [True]
    assert not channel.connected.wait(0)


def test_link_open_sends_the_header() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        s = TcpLink("127.0.0.1", port, TOKEN).open("tcp", 5432)
        conn, _ = listener.accept()
        with s, conn:
            conn.settimeout(5)
            assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            line = b""
            while not line.endswith(b"\n"):
                line += conn.recv(1)
            assert protocol.parse_header(line) == protocol.Header(TOKEN, "tcp", 5432)


def test_the_accept_loop_outlasts_a_full_descriptor_table(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """EMFILE from accept() (a container holding the agent's descriptors) is waited out;
    the loop ends only when the server closes."""
    import errno

    pauses: list[float] = []
    monkeypatch.setattr(server.time, "sleep", pauses.append)

    class Listener:
        calls = 0

        def accept(self) -> tuple[socket.socket, object]:
            Listener.calls += 1
            if Listener.calls <= 3:
                raise OSError(errno.EMFILE, "Too many open files")
            raise OSError(errno.EBADF, "closed")

    srv = server.LinkServer("t" * 64, object(), port=0, host="127.0.0.1")  # type: ignore[arg-type]
    srv._accept_loop(Listener(), vsock=False)  # type: ignore[arg-type]
    assert Listener.calls == 4 and pauses == [0.01, 0.02, 0.04]


def test_a_flood_of_silent_connections_costs_at_most_max_pending_threads(
        link_server: server.LinkServer) -> None:
    silent = [_connect(link_server) for _ in range(server.MAX_PENDING)]
    time.sleep(0.2)  # all of them now wait in their header phase
    extra = _connect(link_server)
    t0 = time.monotonic()
    assert _recv_all(extra) == b""  # closed at once, not after HEADER_TIMEOUT
    assert time.monotonic() - t0 < server.HEADER_TIMEOUT / 2
    extra.close()
    for s in silent:
        s.close()
    time.sleep(0.3)  # the header phase of each ends with its peer gone
    with _connect(link_server) as s:  # room again: a good header is served
        s.sendall(protocol.encode_header(TOKEN, "echo"))
        s.sendall(b"ping")
        assert s.recv(4) == b"ping"
