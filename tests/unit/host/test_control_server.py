"""The control API's server side (desktop.control.server): framing, the op table and
the error mapping, over a real socket pair."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

from desktop.control import server
from desktop.control.server import ControlServer


class _Sub:
    def __init__(self) -> None:
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()


def _serve(srv: ControlServer, data: bytes) -> list[dict[str, Any]]:
    a, b = socket.socketpair()
    t = threading.Thread(target=srv.handle, args=(b,))
    t.start()
    a.sendall(data)
    a.shutdown(socket.SHUT_WR)
    out = a.makefile("rb").read()
    a.close()
    t.join(5)
    return [json.loads(line) for line in out.splitlines()]


def _server(**ops: Any) -> ControlServer:
    return ControlServer(ops, lambda conn, history: _Sub(), (ValueError,))


def test_an_op_answers_with_its_result() -> None:
    srv = _server(ping=lambda req: "pong", echo=lambda req: req["x"])
    assert _serve(srv, b'{"op": "ping"}\n') == [{"ok": True, "result": "pong"}]
    assert _serve(srv, b'{"op": "echo", "x": [1]}\n') == [{"ok": True, "result": [1]}]


def test_unknown_op_and_bad_requests_are_error_replies() -> None:
    srv = _server(ping=lambda req: "pong")
    assert _serve(srv, b'{"op": "nope"}\n') == [{"ok": False, "error": "unknown op 'nope'"}]
    bad = {"ok": False, "error": "a request is a JSON object with op"}
    assert _serve(srv, b"not json\n") == [bad]
    assert _serve(srv, b'["op"]\n') == [bad]
    assert _serve(srv, b'{"op": ["x"]}\n') == [{"ok": False, "error": "unknown op ['x']"}]
    # Nested past the JSON parser's stack (found by fuzzing: the handler thread died
    # with a RecursionError and the client got no reply).
    assert _serve(srv, b"[" * 100_000 + b"\n") == [bad]


def test_user_errors_and_type_errors_are_mapped_once() -> None:
    def refuse(req: dict[str, Any]) -> None:
        raise ValueError("cpus: 0 must be at least 1")

    def wrong(req: dict[str, Any]) -> int:
        return int(req["n"]) + "x"  # type: ignore[operator]

    srv = _server(refuse=refuse, wrong=wrong)
    assert _serve(srv, b'{"op": "refuse"}\n') == [
        {"ok": False, "error": "cpus: 0 must be at least 1"}]
    [reply] = _serve(srv, b'{"op": "wrong", "n": 1}\n')
    assert reply["ok"] is False and reply["error"].startswith("wrong: a parameter has the wrong")


def test_a_request_longer_than_the_limit_is_refused_unread(monkeypatch: Any) -> None:
    monkeypatch.setattr(server, "MAX_REQUEST", 64)
    srv = _server(ping=lambda req: "pong")
    [reply] = _serve(srv, b'{"op": "ping", "pad": "' + b"x" * 100 + b'"}\n')
    assert reply == {"ok": False, "error": "a request is one line of at most 64 bytes"}
    assert _serve(srv, b'{"op": "ping"}\n') == [{"ok": True, "result": "pong"}]


def test_events_keeps_the_connection_until_the_client_closes() -> None:
    subs: list[_Sub] = []

    def subscribe(conn: Any, history: bool) -> _Sub:
        subs.append(_Sub())
        conn.sendall(json.dumps({"history": history}).encode() + b"\n")
        return subs[-1]

    srv = ControlServer({}, subscribe, (ValueError,))
    assert _serve(srv, b'{"op": "events", "history": false}\n') == [{"history": False}]
    assert subs[0].closed.is_set()
