"""The control channel: one ``control`` stream to the agent, over any `Link`.

It matches replies to requests, hands pushed events (ports, engine state) to a callback,
and reconnects when the stream drops; the backend keeps one per boot.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from desktop.link import AgentError, Link, LinkError
from guest_engine import protocol

log = logging.getLogger(__name__)

MAX_LINE = 8 * 2**20  # a control message (the largest: logs) is far below this


class ControlChannel:
    """A request/reply + events session with the agent, reconnecting when it drops."""

    def __init__(self, link: Link, on_event: Callable[[dict[str, Any]], None],
                 on_state: Callable[[bool], None] | None = None) -> None:
        self.link = link
        self.on_event = on_event
        self.on_state = on_state or (lambda up: None)
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[threading.Event, list[dict]]] = {}
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._closed = False
        self.connected = threading.Event()
        self.hello: dict[str, Any] = {}

    def connect(self, timeout: float = 5.0) -> bool:
        """Open the stream and wait for the agent's hello; False if none came in time.

        QEMU's hostfwd accepts a connection even while nothing listens in the guest
        (then closes it), so only the hello proves the agent is there.
        """
        try:
            s = self.link.open("control", timeout=timeout)
        except LinkError:
            return False
        s.settimeout(timeout)
        rfile = s.makefile("rb")
        try:
            first = rfile.readline(MAX_LINE + 1)
            msg = protocol.decode_message(first) if first else {}
        except (OSError, protocol.ProtocolError):
            msg = {}
        if msg.get("event") != "hello":
            rfile.close()  # before the socket: its descriptor is closed with the last user
            s.close()
            return False
        s.settimeout(None)
        self.hello = msg
        with self._lock:
            self._sock = s
        self.connected.set()
        self.on_state(True)
        # The hello is handled before the reader can deliver anything that followed it.
        self.on_event(msg)
        threading.Thread(target=self._reader, args=(s, rfile), daemon=True,
                         name="control-reader").start()
        return True

    def wait_connect(self, timeout: float, attempt_timeout: float = 2.0,
                     alive: Callable[[], bool] = lambda: True) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive() and not self._closed:
            if self.connect(timeout=attempt_timeout):
                return True
            time.sleep(0.1)
        return False

    def _reader(self, s: socket.socket, rfile: Any) -> None:
        try:
            while line := rfile.readline(MAX_LINE + 1):
                if len(line) > MAX_LINE:
                    # Not the agent's framing: drop the stream (and reconnect) rather than
                    # hold an unbounded line in memory.
                    log.warning("the guest sent a control line over %d bytes; reconnecting",
                                MAX_LINE)
                    break
                try:
                    msg = protocol.decode_message(line)
                except protocol.ProtocolError:
                    continue
                if "id" in msg:
                    # A reply: to one of our requests only if its id is one we gave (an
                    # int; a list would not even be a key, true and 1.0 not ours).
                    rid = msg["id"]
                    with self._lock:
                        waiter = self._pending.pop(rid, None) if type(rid) is int else None
                    if waiter is not None:
                        waiter[1].append(msg)
                        waiter[0].set()
                else:
                    try:
                        self.on_event(msg)
                    except Exception:  # noqa: BLE001 - a bad handler must not kill the link
                        log.exception("event handler failed")
        except OSError:
            pass
        finally:
            with self._lock:
                if self._sock is s:
                    self._sock = None
                pending = list(self._pending.values())
                self._pending.clear()
            for ev, _ in pending:
                ev.set()
            self.connected.clear()
            rfile.close()
            s.close()
            if not self._closed:
                self.on_state(False)

    def request(self, op: str, timeout: float = 30.0, **params: Any) -> Any:
        """Send a request and return its result; raises AgentError or LinkError."""
        with self._lock:
            s = self._sock
            if s is None:
                raise LinkError("the guest agent is not connected")
            rid = next(self._ids)
            waiter: tuple[threading.Event, list[dict]] = (threading.Event(), [])
            self._pending[rid] = waiter
        try:
            s.sendall(protocol.encode_message({"id": rid, "op": op, **params}))
        except OSError as e:
            raise LinkError(f"the guest link dropped: {e}") from e
        if not waiter[0].wait(timeout):
            with self._lock:
                self._pending.pop(rid, None)
            raise LinkError(f"the guest agent did not answer {op!r} within {timeout:.0f} s")
        if not waiter[1]:
            raise LinkError(f"the guest link dropped during {op!r}")
        reply = waiter[1][0]
        if not reply.get("ok"):
            raise AgentError(reply.get("error", "unknown error"))
        return reply.get("result")

    def close(self) -> None:
        """Close the stream for good; `connected` is clear when this returns (not only
        once the reader thread has seen the end)."""
        self._closed = True
        with self._lock:
            s = self._sock
            self._sock = None
        self.connected.clear()
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
