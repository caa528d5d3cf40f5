"""QMP, QEMU's monitor protocol: a small synchronous client over any byte stream.

`Qmp` speaks the protocol on a connected stream (anything with recv / sendall /
settimeout / close: a unix socket, a Windows named pipe's `PipeConnection`, one end of a
socketpair in the tests): QEMU's greeting, ``qmp_capabilities``, then commands, each
answered by one ``return`` or ``error``, with QEMU's asynchronous events between them.
Messages are JSON objects, one per line.

Two ways of using it, by host:

* Linux and macOS: QEMU serves unix sockets that accept any number of connections, one
  after another. `command` connects, runs one command and hangs up; `watch_events`
  follows the second monitor (``qmp-events.sock``) on a thread of its own.
* Windows: QEMU serves a named pipe (``-chardev pipe``) with one instance, for one client,
  for its whole life: QEMU creates it, then waits for that client before it boots, and
  never listens again. `Session` is that one connection, kept by the driver: a reader
  thread hands replies to the command waiting for them and events to their handlers. It
  must be read all along: QEMU writes every event to every monitor, and a pipe nobody
  reads fills up and stalls QEMU's main loop.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20  # QEMU's replies here are a few hundred bytes; a megabyte is not QMP


class QmpError(OSError):
    """QMP failed: the stream ended, timed out, or carried something that is not QMP."""


class Qmp:
    """The protocol over one connected stream (no threads of its own)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._buf = b""

    def read(self) -> dict[str, Any] | None:
        """The next message; None when the stream has ended."""
        while b"\n" not in self._buf:
            if len(self._buf) > MAX_LINE:
                raise QmpError("a QMP message longer than 1 MiB")
            try:
                chunk = self.stream.recv(65536)
            except TimeoutError as e:
                raise QmpError("QEMU did not answer in time") from e
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        if not line.strip():
            return self.read()
        try:
            msg = json.loads(line)
        except ValueError as e:
            raise QmpError(f"not a QMP message: {line[:100]!r}") from e
        if not isinstance(msg, dict):
            raise QmpError(f"not a QMP message: {line[:100]!r}")
        return msg

    def send(self, name: str, arguments: dict[str, Any] | None = None) -> None:
        msg: dict[str, Any] = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        self.stream.sendall(json.dumps(msg).encode() + b"\r\n")

    def send_fd(self, name: str, fd: int) -> None:
        """``getfd``: `fd` goes to QEMU with the command (SCM_RIGHTS; unix sockets only),
        kept under `name` for one later command of this same connection."""
        msg = {"execute": "getfd", "arguments": {"fdname": name}}
        socket.send_fds(self.stream, [json.dumps(msg).encode() + b"\r\n"], [fd])

    def reply(self, on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """The next ``return`` or ``error``; events before it go to `on_event`."""
        while True:
            msg = self.read()
            if msg is None:
                raise QmpError("QEMU closed the monitor")
            if "return" in msg or "error" in msg:
                return msg
            if "event" in msg and on_event is not None:
                on_event(msg)

    def handshake(self, timeout: float) -> dict[str, Any]:
        """Read the greeting and leave capabilities negotiation; the greeting."""
        self.stream.settimeout(timeout)
        greeting = self.read()
        if greeting is None or "QMP" not in greeting:
            raise QmpError(f"QEMU's monitor did not greet with QMP: {greeting!r}")
        self.send("qmp_capabilities")
        answer = self.reply()
        if "error" in answer:
            raise QmpError(f"qmp_capabilities refused: {answer['error']}")
        return greeting

    def execute(self, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        self.send(name, arguments)
        return self.reply()

    def close(self) -> None:
        try:
            self.stream.close()
        except OSError:
            pass


# -- unix sockets: a connection per command --------------------------------------------------


def _connect_unix(path: Path | str, timeout: float) -> Qmp:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(str(path))
    except OSError:
        s.close()
        raise
    return Qmp(s)


def _one_connection(socket_path: Path | str, name: str, timeout: float,
                    talk: Callable[[Qmp], dict[str, Any]]) -> dict[str, Any] | None:
    """Connect, negotiate, `talk`, hang up: QEMU's last answer, or None when QMP cannot
    be reached."""
    try:
        mon = _connect_unix(socket_path, timeout)
    except OSError as e:
        log.debug("QMP %s: cannot connect to %s: %s", name, socket_path, e)
        return None
    try:
        mon.handshake(timeout)
        return talk(mon)
    except OSError as e:  # QmpError, a reset, a timeout
        log.debug("QMP %s failed: %s", name, e)
        return None
    finally:
        mon.close()


def command(socket_path: Path | str, name: str, timeout: float = 5,
            arguments: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Send `name` (with `arguments`) over the monitor socket and return QEMU's answer;
    None when QMP cannot be reached."""
    return _one_connection(socket_path, name, timeout,
                           lambda mon: mon.execute(name, arguments))


def command_with_fd(socket_path: Path | str, fd: int, name: str, arguments: dict[str, Any],
                    timeout: float = 5) -> dict[str, Any] | None:
    """`name` with `arguments` naming ``fd:cove`` (migrate, migrate-incoming): `fd` is
    handed to QEMU first, on the same connection; QEMU's answer, or None when QMP cannot
    be reached. QEMU takes the descriptor over when the command starts."""

    def talk(mon: Qmp) -> dict[str, Any]:
        mon.send_fd("cove", fd)
        got = mon.reply()
        return got if "error" in got else mon.execute(name, arguments)

    return _one_connection(socket_path, name, timeout, talk)


def _dispatch(handlers: dict[str, Callable[[], None]], event: dict[str, Any]) -> None:
    handler = handlers.get(str(event.get("event")))
    if handler is None:
        return
    try:
        handler()
    except Exception:  # noqa: BLE001 - a handler must not end the watch
        log.exception("QMP event handler failed")


def follow(mon: Qmp, handlers: dict[str, Callable[[], None]]) -> None:
    """Read events from `mon` until the stream ends, calling their handlers."""
    mon.stream.settimeout(None)
    while (msg := mon.read()) is not None:
        if "event" in msg:
            _dispatch(handlers, msg)


def watch_events(socket_path: Path, handlers: dict[str, Callable[[], None]]) -> None:
    """Follow QEMU's events on `socket_path` on a thread of its own, calling the handler
    of each event named in `handlers`; ends when QEMU does."""
    threading.Thread(target=_follow_socket, args=(socket_path, handlers), daemon=True,
                     name="qmp-events").start()


def _follow_socket(socket_path: Path, handlers: dict[str, Callable[[], None]]) -> None:
    deadline = time.monotonic() + 10
    while not socket_path.exists():
        if time.monotonic() > deadline:
            log.warning("QEMU's events monitor %s did not appear", socket_path)
            return
        time.sleep(0.05)
    try:
        mon = _connect_unix(socket_path, 10)
    except OSError as e:
        log.warning("QEMU's events monitor %s: %s", socket_path, e)
        return
    try:
        mon.handshake(10)
        follow(mon, handlers)
    except OSError as e:  # QEMU ended (or never answered)
        log.debug("QMP events from %s ended: %s", socket_path, e)
    finally:
        mon.close()


# -- one connection for QEMU's life (Windows' pipe) ---------------------------------------


class Session:
    """The one monitor connection, read by a thread of its own: replies go to the command
    that waits for them, events to `handlers`. Commands run one at a time."""

    def __init__(self, mon: Qmp, handlers: dict[str, Callable[[], None]] | None = None) -> None:
        self._mon = mon
        self.handlers = dict(handlers or {})
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._ended = threading.Event()
        mon.stream.settimeout(None)
        threading.Thread(target=self._read, daemon=True, name="qmp-session").start()

    def _read(self) -> None:
        try:
            while (msg := self._mon.read()) is not None:
                if "event" in msg:
                    _dispatch(self.handlers, msg)
                elif "return" in msg or "error" in msg:
                    self._replies.put(msg)
        except OSError as e:
            log.debug("the QMP session ended: %s", e)
        finally:
            self._ended.set()
            self._replies.put(None)  # wakes a command still waiting

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def execute(self, name: str, timeout: float = 5,
                arguments: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """QEMU's answer to `name`; None when the monitor is gone or does not answer."""
        with self._lock:
            if self.ended:
                return None
            while not self._replies.empty():  # a late answer to an earlier timeout
                self._replies.get_nowait()
            try:
                self._mon.send(name, arguments)
                return self._replies.get(timeout=timeout)
            except (OSError, queue.Empty) as e:
                log.debug("QMP %s failed: %s", name, e)
                return None

    def close(self) -> None:
        self._mon.close()
