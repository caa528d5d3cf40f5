"""The host's end of the guest link: open authenticated streams, run the control channel.

`Link.open(op)` returns a connected socket that has already sent its header (see
`guest_engine.protocol`); the caller relays bytes on it. `ControlChannel` keeps one
``control`` stream open, matches replies to requests and hands pushed events to a
callback; when the stream drops it reconnects by itself.

Exceptions::

    LinkError          the agent could not be reached or refused
    +-- AgentError     the agent answered a request with an error (message is its own)
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from guest_engine import protocol

log = logging.getLogger(__name__)


class LinkError(Exception):
    """The guest agent could not be reached."""


class AgentError(LinkError):
    """The agent refused a request; the message is the agent's."""


class Link:
    """Opens streams to the agent over TCP (QEMU user networking's hostfwd).

    `SerialLink` (virtio-serial) and `HvsockLink` (Hyper-V sockets) open the same
    streams over other transports."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host = host
        self.port = port
        self.token = token

    def open(self, op: str, arg: int | None = None, timeout: float = 5.0) -> socket.socket:
        try:
            s = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as e:
            raise LinkError(f"cannot reach the guest agent at {self.host}:{self.port}: {e}") \
                from e
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(None)
        s.sendall(protocol.encode_header(self.token, op, arg))
        return s


class SerialLink(Link):
    """The control channel over the VM's virtio-serial port (QEMU's chardev socket).

    It carries one stream, the control channel: data streams need `Link` (TCP).
    """

    def __init__(self, path: str, token: str) -> None:
        super().__init__("", 0, token)
        self.path = path

    def open(self, op: str, arg: int | None = None, timeout: float = 5.0) -> socket.socket:
        if op != "control":
            raise LinkError(f"the virtio-serial port carries only the control channel, not {op}")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(self.path)
        except OSError as e:
            s.close()
            raise LinkError(f"cannot reach the guest's serial port {self.path}: {e}") from e
        s.settimeout(None)
        s.sendall(protocol.encode_header(self.token, op, arg))
        return s


class HvsockLink(Link):
    """Streams over Hyper-V sockets (Windows hosts, Python 3.12+): ``AF_HYPERV`` to the
    VM's id and the service GUID of the agent's vsock port.

    A Hyper-V guest has no fw_cfg, so the boot config (with this boot's token) travels
    over the link itself: before the first stream, one connection carries it as a JSON
    line and gets ``{"ok": true}`` back (docs/protocol.md, "Boot config over hvsock").
    Only the host can open an hvsock connection to a guest, so no container can send or
    read it. `connect` is the socket factory (tests pass a fake).
    """

    def __init__(self, vm_id: str, service_id: str, token: str,
                 boot_config: bytes | None = None,
                 connect: Callable[[str, str, float], socket.socket] | None = None) -> None:
        super().__init__("", 0, token)
        self.vm_id = vm_id
        self.service_id = service_id
        self._boot_config = boot_config
        self._connect = connect or hv_connect
        self._lock = threading.Lock()

    @property
    def config_delivered(self) -> bool:
        return self._boot_config is None

    def _dial(self, timeout: float) -> socket.socket:
        try:
            return self._connect(self.vm_id, self.service_id, timeout)
        except OSError as e:
            raise LinkError(f"cannot reach the guest agent over hvsock (VM {self.vm_id}, "
                            f"service {self.service_id}): {e}") from e

    def deliver_config(self, timeout: float = 5.0) -> None:
        """Send the boot config if it has not been accepted yet; raises LinkError."""
        with self._lock:
            config = self._boot_config
            if config is None:
                return
            s = self._dial(timeout)
            try:
                s.settimeout(timeout)
                s.sendall(config)
                with s.makefile("rb") as f:
                    reply = f.readline(protocol.MAX_HEADER)
            except OSError as e:
                raise LinkError(f"the guest did not take the boot config: {e}") from e
            finally:
                s.close()
            if not reply:
                raise LinkError("the guest closed the boot-config connection without a "
                                "reply (it refuses a config once it has one: restart the VM)")
            try:
                answer = protocol.decode_message(reply)
            except protocol.ProtocolError as e:
                raise LinkError(f"the guest answered the boot config with {reply[:80]!r}") \
                    from e
            if not answer.get("ok"):
                raise AgentError(f"the guest refused the boot config: "
                                 f"{answer.get('error', 'no reason given')}")
            self._boot_config = None

    def open(self, op: str, arg: int | None = None, timeout: float = 5.0) -> socket.socket:
        self.deliver_config(timeout)
        s = self._dial(timeout)
        s.settimeout(None)
        s.sendall(protocol.encode_header(self.token, op, arg))
        return s


def hv_connect(vm_id: str, service_id: str, timeout: float) -> socket.socket:
    """A connected AF_HYPERV stream socket (Windows, Python 3.12+)."""
    family = getattr(socket, "AF_HYPERV", None)
    if family is None:
        raise OSError("this Python has no Hyper-V sockets (socket.AF_HYPERV: Windows, "
                      "Python 3.12 or later)")
    raw = getattr(socket, "HV_PROTOCOL_RAW", 1)
    s = socket.socket(family, socket.SOCK_STREAM, raw)
    try:
        # A connect to a service nobody listens on yet can otherwise hang for long.
        s.setsockopt(raw, getattr(socket, "HVSOCKET_CONNECT_TIMEOUT", 1),
                     max(1, int(timeout * 1000)))
        s.settimeout(timeout)
        s.connect((vm_id, service_id))
    except OSError:
        s.close()
        raise
    return s


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
            first = rfile.readline()
            if not first:
                s.close()
                return False
            msg = protocol.decode_message(first)
        except (OSError, protocol.ProtocolError):
            s.close()
            return False
        if msg.get("event") != "hello":
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
            for line in rfile:
                try:
                    msg = protocol.decode_message(line)
                except protocol.ProtocolError:
                    continue
                if "id" in msg:
                    with self._lock:
                        waiter = self._pending.pop(msg["id"], None)
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
        self._closed = True
        with self._lock:
            s = self._sock
            self._sock = None
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
