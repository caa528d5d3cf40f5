"""Fuzzing the guest link's header and its line protocols, both ends, and the control API.

* The header (guest_engine.protocol, read by guest_engine.server, written by
  desktop.link.tcp): any bytes give a Header or a ProtocolError; what the host writes
  reads back the same; the agent serves a stream only for a header that parses and
  carries the token, and leaves what follows it in the socket.
* The control lines: the host's reader (desktop.link.channel) and the agent's session
  (guest_engine.server.ControlSession) take any lines without an exception escaping
  their threads; the host's control API (desktop.control.server) answers any line with
  one JSON reply line.
"""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from hypothesis import example, given
from hypothesis import strategies as st

from desktop.control import ControlError
from desktop.control.server import ControlServer
from desktop.link import AgentError, LinkError
from desktop.link.channel import ControlChannel
from guest_engine import protocol, server

TOKEN = "5e" * 32

# -- values ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)
# Objects with the keys the protocols look at, holding any value.
objects = st.dictionaries(
    st.sampled_from(["id", "op", "ok", "error", "result", "event", "history", "a", "b"]),
    json_values, max_size=5)
DEEP = b"[" * 100_000 + b"]" * 100_000


def _line(value: Any) -> bytes:
    return json.dumps(value).encode() + b"\n"


lines = st.one_of(
    objects.map(_line), json_values.map(_line), st.binary(max_size=64).map(lambda b: b + b"\n"),
    st.sampled_from([b"\n", b"{}\n", b"[]\n", b'{"id": [1]}\n', b'{"id": {}}\n', DEEP + b"\n",
                     b"\xff\xfe\n", b'{"id": 1e400}\n']))

# -- the header ---------------------------------------------------------------------------

header_parts = st.tuples(
    st.sampled_from([protocol.VERSION, "COVE/2", "cove/1", ""]),
    st.one_of(st.just(TOKEN), st.text(alphabet="0123456789abcdef", max_size=66),
              st.text(max_size=8)),
    st.one_of(st.sampled_from(protocol.OPS), st.text(max_size=8)),
    st.lists(st.one_of(st.integers(-2, 70000).map(str), st.text(max_size=6)), max_size=2))


def header_bytes() -> st.SearchStrategy[bytes]:
    built = header_parts.map(lambda p: " ".join([p[0], p[1], p[2], *p[3]]).encode(
        "utf-8", "surrogateescape") + b"\n")
    return st.one_of(built, st.binary(max_size=600),
                     st.tuples(built, st.binary(max_size=32)).map(lambda t: t[0] + t[1]))


@given(header_bytes())
@example(b"COVE/1 " + TOKEN.encode() + b" tcp 08080\n")
@example(b"COVE/1 " + TOKEN.encode() + b" fs \xd9\xa3\n")
def test_any_header_line_parses_or_is_a_protocol_error(line: bytes) -> None:
    try:
        h = protocol.parse_header(line)
    except protocol.ProtocolError:
        return
    assert h.op in protocol.OPS
    if h.op in ("tcp", "udp"):
        assert h.arg is not None and 0 < h.arg < 65536
    elif h.op == "fs":
        assert h.arg is not None and 0 <= h.arg < protocol.MAX_SHARES
    else:
        assert h.arg is None
    assert protocol.parse_header(protocol.encode_header(h.token, h.op, h.arg)) == h


@given(st.one_of(st.just(TOKEN), st.text(max_size=70)),
       st.one_of(st.sampled_from(protocol.OPS), st.text(max_size=8)),
       st.one_of(st.none(), st.integers(-1, 70000)))
def test_what_the_host_writes_reads_back_the_same_or_is_refused(
        token: str, op: str, arg: int | None) -> None:
    """desktop.link.tcp sends `encode_header`: it writes only what the agent reads back."""
    try:
        line = protocol.encode_header(token, op, arg)
    except protocol.ProtocolError:
        return
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert protocol.parse_header(line) == protocol.Header(token, op, arg)


@given(header_bytes(), st.binary(max_size=64), st.integers(1, 8))
def test_read_header_takes_one_line_and_leaves_the_rest(head: bytes, rest: bytes,
                                                        pieces: int) -> None:
    a, b = socket.socketpair()
    try:
        data = head + rest
        step = max(1, len(data) // pieces)
        for i in range(0, len(data), step):
            a.sendall(data[i:i + step])
        a.shutdown(socket.SHUT_WR)
        nl = data.find(b"\n", 0, protocol.MAX_HEADER + 1)
        try:
            line = server.read_header(b, timeout=0.02)
        except protocol.ProtocolError:
            assert nl < 0
            return
        assert line == data[:nl + 1]
        b.settimeout(1)
        left = b""
        while chunk := b.recv(4096):
            left += chunk
        assert left == data[nl + 1:]
    finally:
        a.close()
        b.close()


class _Controller:
    def hello_events(self) -> list[dict[str, Any]]:
        return [{"event": "hello", "agent_version": "fuzz"}]

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "result": request.get("op")}

    def share_stream(self, index: int, conn: socket.socket) -> None:
        conn.close()


@given(header_bytes())
@example(b"COVE/1 " + TOKEN.encode() + b" echo\n")
@example(b"COVE/1 " + TOKEN.upper().encode() + b" echo\n")
@example(b"COVE/1  echo\n")
def test_the_agent_serves_only_headers_that_parse_and_carry_the_token(head: bytes) -> None:
    link = server.LinkServer(TOKEN, _Controller())
    served: list[tuple[str, int | None]] = []
    link.ops = {op: (lambda conn, arg, op=op: served.append((op, arg)))
                for op in protocol.OPS}
    a, b = socket.socketpair()
    try:
        a.sendall(head)
        a.shutdown(socket.SHUT_WR)
        with mock.patch.object(server, "HEADER_TIMEOUT", 0.02), _quiet(server.log):
            link._handle(b)
        try:
            h = protocol.parse_header(head[:head.index(b"\n") + 1])
        except (ValueError, protocol.ProtocolError):
            h = None
        if h is not None and h.token == TOKEN:
            assert served == [(h.op, h.arg)]
        else:
            assert served == []
            a.settimeout(1)
            try:  # closed without a byte in reply (reset: it left the header unread)
                assert a.recv(16) == b""
            except ConnectionResetError:
                pass
    finally:
        a.close()
        b.close()


@contextmanager
def _quiet(logger: Any) -> Iterator[None]:
    before = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = before


# -- the control lines: the host's reader ---------------------------------------------------


@contextmanager
def _thread_exceptions() -> Iterator[list[BaseException]]:
    """What reached threading.excepthook (an exception that ended a thread)."""
    caught: list[BaseException] = []
    before = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        caught.append(args.exc_value if args.exc_value is not None else RuntimeError())

    threading.excepthook = hook
    try:
        yield caught
    finally:
        threading.excepthook = before


class _PairLink:
    """A Link whose control stream is a socket pair; `guest` is the agent's end."""

    def __init__(self, hello: bytes) -> None:
        self.hello = hello
        self.guest: socket.socket | None = None

    def open(self, op: str, arg: int | None = None, timeout: float = 5.0) -> socket.socket:
        host, self.guest = socket.socketpair()
        self.guest.sendall(self.hello)
        return host


@given(st.lists(lines, max_size=8), st.booleans())
@example([b'{"id": [1]}\n'], False)
@example([DEEP + b"\n"], False)
def test_the_hosts_reader_takes_any_line_the_agent_sends(sent: list[bytes],
                                                         ask: bool) -> None:
    link = _PairLink(protocol.encode_message({"event": "hello", "agent_version": "fuzz"}))
    events: list[Any] = []
    down = threading.Event()
    ch = ControlChannel(link, events.append, lambda up: None if up else down.set())
    outcome: list[Any] = []
    with _thread_exceptions() as caught:
        assert ch.connect(timeout=2)
        guest = link.guest
        assert guest is not None
        asker = threading.Thread(target=_ask, args=(ch, outcome))
        if ask:
            asker.start()
        try:
            for line in sent:
                guest.sendall(line)
            guest.shutdown(socket.SHUT_WR)
            assert down.wait(10), "the reader did not see the stream end"
            if ask:
                asker.join(10)
                assert not asker.is_alive()
        finally:
            ch.close()
            guest.close()
    assert caught == [], caught
    assert all(isinstance(e, dict) and "id" not in e for e in events)
    if ask:  # a reply's result, or the agent's error, or the link's end
        assert len(outcome) == 1, outcome
        assert not isinstance(outcome[0], BaseException) or \
            isinstance(outcome[0], (AgentError, LinkError)), outcome


def _ask(ch: ControlChannel, outcome: list[Any]) -> None:
    try:
        outcome.append(ch.request("ping", timeout=10))
    except Exception as e:  # noqa: BLE001 - the test looks at which
        outcome.append(e)


# -- the control lines: the agent's session --------------------------------------------------


@given(st.lists(lines, max_size=8))
@example([DEEP + b"\n"])
def test_the_agents_session_takes_any_line_the_host_sends(sent: list[bytes]) -> None:
    rfile = io.BytesIO(b"".join(sent))
    wfile = io.BytesIO()
    closed: list[Any] = []
    session = server.ControlSession(rfile, wfile, _Controller(), closed.append)
    with _thread_exceptions() as caught:
        session.serve()
    assert closed == [session]
    assert caught == [], caught
    for line in wfile.getvalue().splitlines():
        assert isinstance(protocol.decode_message(line), dict)


@given(st.binary(max_size=256) | lines)
@example(DEEP)
def test_decode_message_gives_an_object_or_a_protocol_error(line: bytes) -> None:
    try:
        assert isinstance(protocol.decode_message(line), dict)
    except protocol.ProtocolError:
        pass


# -- the host's control API ----------------------------------------------------------------


class _Sub:
    def close(self) -> None:
        pass


@given(st.one_of(lines, st.binary(max_size=256)))
@example(DEEP + b"\n")
def test_the_control_api_answers_any_line_with_one_reply(line: bytes) -> None:
    def fail(req: dict[str, Any]) -> Any:
        raise ControlError("refused")

    ops = {"ping": lambda req: "pong", "echo": lambda req: req.get("a"), "fail": fail}
    srv = ControlServer(ops, lambda conn, history: _Sub(), (ControlError,))
    a, b = socket.socketpair()
    try:
        a.sendall(line if line.endswith(b"\n") else line + b"\n")
        a.shutdown(socket.SHUT_WR)
        with _thread_exceptions() as caught:
            t = threading.Thread(target=srv.handle, args=(b,))
            t.start()
            t.join(10)
        assert not t.is_alive()
        assert caught == [], caught
        a.settimeout(2)
        out = b""
        while chunk := a.recv(65536):
            out += chunk
    finally:
        a.close()
        b.close()
    if out:
        assert out.endswith(b"\n") and out.count(b"\n") == 1, out
        reply = json.loads(out)
        assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool)
    else:  # only the events op keeps the connection and sends what it streams
        assert b'"events"' in line, line


assert sys.getrecursionlimit() < 100_000  # DEEP nests past it
