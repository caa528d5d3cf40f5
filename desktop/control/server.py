"""The control API's server side: framing, the op table, and the error mapping, once.

The backend fills an op table (op name -> handler taking the request object) and hands
each accepted connection to `ControlServer.handle`. A handler's return value is the
reply's result; an exception of one of the `user_errors` types becomes an error reply
with its message (the user reads it: it names the problem and the fix); a TypeError is
a parameter of the wrong type. The ``events`` op is the one that keeps the connection:
`subscribe` streams events on it until either side closes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from desktop.platform.endpoints import Stream

log = logging.getLogger(__name__)

MAX_REQUEST = 1 << 20  # a request line longer than this is refused, unread

Op = Callable[[dict[str, Any]], Any]


class Subscription(Protocol):
    def close(self) -> None: ...


Subscribe = Callable[[Stream, bool], Subscription]


class ControlServer:
    def __init__(self, ops: dict[str, Op], subscribe: Subscribe,
                 user_errors: tuple[type[Exception], ...]) -> None:
        self.ops = ops
        self.subscribe = subscribe
        self.user_errors = user_errors

    def handle(self, conn: Any) -> None:
        """Serve one connection: one request and its reply, or an events stream."""
        rfile = conn.makefile("rb")
        try:
            line = rfile.readline(MAX_REQUEST + 1)
            if not line:
                return
            if len(line) > MAX_REQUEST:
                self._send(conn, {"ok": False, "error": "a request is one line of at most "
                                                         f"{MAX_REQUEST} bytes"})
                return
            try:
                req = json.loads(line)
                op = req["op"]
            except (ValueError, KeyError, TypeError, RecursionError):
                self._send(conn, {"ok": False, "error": "a request is a JSON object with op"})
                return
            if op == "events":
                sub = self.subscribe(conn, bool(req.get("history", True)))
                # Keep the connection until the client or the backend closes it.
                while rfile.readline(MAX_REQUEST):
                    pass
                sub.close()
                return
            self._send(conn, self.reply(op, req))
        except OSError:
            pass
        finally:
            rfile.close()
            conn.close()

    def reply(self, op: str, req: dict[str, Any]) -> dict[str, Any]:
        """The reply object for request `req` (whose op is `op`)."""
        handler = self.ops.get(op) if isinstance(op, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown op {op!r}"}
        try:
            return {"ok": True, "result": handler(req)}
        except self.user_errors as e:
            return {"ok": False, "error": str(e)}
        except TypeError as e:
            return {"ok": False, "error": f"{op}: a parameter has the wrong type ({e})"}

    @staticmethod
    def _send(conn: Any, reply: dict[str, Any]) -> None:
        conn.sendall(json.dumps(reply).encode() + b"\n")
