"""Published container ports on the host: one listener per port, relayed over the link.

The agent reports each published port (protocol, port, the host address the container
asked for, container name); `PortForwarder.update` opens the same port on the host and
relays every connection (TCP) or flow of datagrams (UDP) through a ``tcp``/``udp``
stream of the guest link. The host address is 127.0.0.1 (and ::1 where the host has
IPv6), unless the container published on all interfaces *and* the user allowed that
(`expose_ports_on_all_interfaces`): a laptop on a café's network should not serve a
developer's database to the room by default.

A port that cannot be opened (another program holds it, a privileged port without
rights) is reported as ``port_failed`` with the reason, never raised: the container keeps
running, and the forwarder tries again every few seconds until the port is free.

Each forward has a health state (`PortState`), shown by `cove ports`, `cove status` and
the tray: forwarding; conflict (another program holds the port) or failed (any other
reason the port cannot be opened), both retried; stalled (the guest link is down, or
refused the last connection: the listener stays open and the next connection tries
again); recovering (the link is back, the guest's port list not yet re-read).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from desktop.platform import sockets
from desktop.status import PortState
from guest_engine import protocol, relay

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0
UDP_IDLE_SECONDS = 60.0



def host_has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# Winsock's "access denied" on bind: a port in one of Windows' excluded ranges (Hyper-V
# and WinNAT reserve some) or held by a socket with SO_EXCLUSIVEADDRUSE.
WSAEACCES = 10013


def bind_reason(err: OSError, port: int, addr: str) -> str:
    """A message naming the problem and its effect, for a port that could not be opened."""
    if err.errno == errno.EADDRINUSE:
        return (f"port {port} is already in use on the host ({addr}) by another program; "
                f"the container runs, but localhost:{port} does not reach it until the "
                "port is free")
    if err.errno == WSAEACCES or getattr(err, "winerror", None) == WSAEACCES:
        return (f"port {port} is reserved on this host or held exclusively by another "
                f"program; the container runs, but localhost:{port} does not reach it "
                "(`netsh interface ipv4 show excludedportrange protocol=tcp` lists the "
                "ports Windows keeps for itself; publish another)")
    if err.errno in (errno.EACCES, errno.EPERM):
        return (f"port {port} is privileged on this host and Cove may not open it; the "
                f"container runs, but localhost:{port} does not reach it (publish a port "
                "above 1023, or allow unprivileged ports)")
    return f"port {port} could not be opened on {addr}: {err.strerror or err}"


@dataclass
class Forward:
    proto: str
    port: int
    guest_host_ip: str
    container: str
    container_port: int
    addresses: list[str]
    state: str = PortState.PENDING
    reason: str = ""
    sockets: list[socket.socket] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)

    @property
    def key(self) -> tuple[str, int]:
        return self.proto, self.port

    def to_json(self) -> dict[str, Any]:
        return {"proto": self.proto, "host_port": self.port, "host_addresses": self.addresses,
                "guest_port": self.port, "container_port": self.container_port,
                "container": self.container, "state": self.state, "reason": self.reason}


MAX_FORWARDS = 1024  # published ports forwarded at once; a guest asking more is cut off


def checked_ports(entries: Any) -> list[dict[str, Any]]:
    """The well-formed entries of a port list from the guest (proto tcp or udp, a port
    1-65535, a host IP, a container's name and port); the others are dropped and logged:
    a broken or hostile guest cannot make the forwarder raise or wait for ever."""
    if not isinstance(entries, list):
        log.warning("the guest sent a port list that is not a list; ignored")
        return []
    out = []
    for p in entries:
        try:
            out.append(_checked(p))
        except (KeyError, TypeError, ValueError) as e:
            log.warning("the guest sent a bad port entry %.200r (%s); ignored", p, e)
    return out


def _checked(p: Any) -> dict[str, Any]:
    if not isinstance(p, dict):
        raise TypeError("not an object")
    if p["proto"] not in ("tcp", "udp"):
        raise ValueError(f"proto {p['proto']!r}")
    port, cport = p["port"], p.get("container_port", 0)
    for n in (port, cport):
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 65535:
            raise ValueError(f"port {n!r}")
    if port == 0:
        raise ValueError("port 0")
    host_ip = p.get("host_ip", "0.0.0.0")
    ipaddress.ip_address(host_ip)  # ValueError for anything else
    container = p.get("container", "")
    if not isinstance(container, str) or len(container) > 256:
        raise ValueError("container name")
    return {**p, "host_ip": host_ip, "container": container, "container_port": cport}


class PortForwarder:
    """Keeps the host's listeners in line with the guest's published ports."""

    def __init__(self, open_stream: Callable[[str, int], socket.socket],
                 emit: Callable[..., Any], expose_all: bool = False,
                 ipv6: bool | None = None,
                 use: Callable[[str], AbstractContextManager[Any]] | None = None) -> None:
        """`use(why)`, if given, wraps each TCP connection's life and comes before each
        new UDP flow (the Resource Saver: it wakes the VM and keeps it awake)."""
        self.open_stream = open_stream
        self.use = use
        self.emit = emit
        self.expose_all = expose_all
        self.ipv6 = host_has_ipv6() if ipv6 is None else ipv6
        self._forwards: dict[tuple[str, int], Forward] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._retrying = False  # a retry thread runs only while some port has failed

    def addresses(self, guest_host_ip: str) -> list[str]:
        if guest_host_ip == "0.0.0.0" and self.expose_all:
            return ["0.0.0.0"] + (["::"] if self.ipv6 else [])
        return ["127.0.0.1"] + (["::1"] if self.ipv6 else [])

    def update(self, added: list[dict], removed: list[dict]) -> None:
        """Apply one change. A port both removed and added (its owner changed: a listener
        the engine's proxy opened turned out to be a container's published port) keeps
        its host listener when the host addresses stay the same."""
        adds = {(p["proto"], int(p["port"])): p for p in added}
        for p in removed:
            key = (p["proto"], int(p["port"]))
            new = adds.get(key)
            with self._lock:
                old = self._forwards.get(key)
                if new is not None and old is not None and \
                        old.addresses == self.addresses(new.get("host_ip", "0.0.0.0")):
                    old.guest_host_ip = new.get("host_ip", "0.0.0.0")
                    old.container = new.get("container", "")
                    old.container_port = int(new.get("container_port", 0))
                    kept: Forward | None = old
                else:
                    kept = None
            if kept is None:
                self._remove(key)
            else:
                self.emit("port_failed" if kept.state in PortState.UNOPENED
                          else "port_forwarded", **kept.to_json())
        for p in added:
            fwd = Forward(p["proto"], int(p["port"]), p.get("host_ip", "0.0.0.0"),
                          p.get("container", ""), int(p.get("container_port", 0)),
                          self.addresses(p.get("host_ip", "0.0.0.0")))
            with self._lock:
                if fwd.key in self._forwards:
                    continue
                self._forwards[fwd.key] = fwd
            self._open(fwd)

    def reset(self, ports: list[dict]) -> None:
        """Replace everything with `ports` (the agent's snapshot after a reconnect): the
        stalled or recovering forwards it still names forward again."""
        want = {(p["proto"], int(p["port"])) for p in ports}
        with self._lock:
            gone = [k for k in self._forwards if k not in want]
            back = [f for k, f in self._forwards.items() if k in want and
                    f.state in (PortState.STALLED, PortState.RECOVERING)]
        for k in gone:
            self._remove(k)
        for fwd in back:
            self._healthy(fwd)
        self.update(ports, [])

    def link_state(self, up: bool) -> None:
        """The guest link dropped (every forward stalls: its listener stays open) or came
        back (they recover until the guest's port list is read again, `reset`)."""
        with self._lock:
            forwards = list(self._forwards.values())
        for fwd in forwards:
            if not up and fwd.state in (PortState.FORWARDING, PortState.RECOVERING):
                self._stalled(fwd, "the guest link is down; reconnecting")
            elif up and fwd.state == PortState.STALLED:
                fwd.state = PortState.RECOVERING
                fwd.reason = "the guest link is back; reading the VM's ports again"
                self.emit("port_stalled", **fwd.to_json())

    def _stalled(self, fwd: Forward, reason: str) -> None:
        if fwd.state == PortState.STALLED and fwd.reason == reason:
            return
        fwd.state, fwd.reason = PortState.STALLED, reason
        self.emit("port_stalled", **fwd.to_json())

    def _healthy(self, fwd: Forward) -> None:
        """A stalled or recovering forward that reached the guest again."""
        if fwd.state in (PortState.STALLED, PortState.RECOVERING) and not fwd.closed.is_set():
            fwd.state, fwd.reason = PortState.FORWARDING, ""
            self.emit("port_forwarded", **fwd.to_json())

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.to_json() for f in sorted(self._forwards.values(), key=lambda f: f.key)]

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            keys = list(self._forwards)
        for k in keys:
            self._remove(k, quiet=True)

    # -- internals -------------------------------------------------------------------

    def _remove(self, key: tuple[str, int], quiet: bool = False) -> None:
        with self._lock:
            fwd = self._forwards.pop(key, None)
        if fwd is None:
            return
        fwd.closed.set()
        for s in fwd.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        if not quiet:
            self.emit("port_removed", **fwd.to_json())

    def _open(self, fwd: Forward) -> None:
        socks: list[socket.socket] = []
        try:
            for addr in fwd.addresses:
                socks.append(self._bind(fwd.proto, addr, fwd.port))
        except OSError as e:
            for s in socks:
                s.close()
            reason = bind_reason(e, fwd.port, addr)
            state = PortState.CONFLICT if e.errno == errno.EADDRINUSE else PortState.FAILED
            if fwd.state != state or fwd.reason != reason:
                fwd.state, fwd.reason = state, reason
                self.emit("port_failed", **fwd.to_json())
            with self._lock:
                start = not self._retrying
                self._retrying = True
            if start:
                threading.Thread(target=self._retry_loop, daemon=True,
                                 name="port-retry").start()
            return
        if fwd.closed.is_set():
            for s in socks:
                s.close()
            return
        fwd.sockets = socks
        fwd.state, fwd.reason = PortState.FORWARDING, ""
        for s in socks:
            target = self._serve_tcp if fwd.proto == "tcp" else self._serve_udp
            threading.Thread(target=target, args=(fwd, s), daemon=True,
                             name=f"fwd-{fwd.proto}-{fwd.port}").start()
        self.emit("port_forwarded", **fwd.to_json())

    @staticmethod
    def _bind(proto: str, addr: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        s = socket.socket(family, kind)
        try:
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # Reopened at once after a container restarts; never shared with a live
            # listener (SO_REUSEADDR on POSIX, SO_EXCLUSIVEADDRUSE on Windows).
            sockets.own_port(s, proto == "tcp")
            s.bind((addr, port))
            if proto == "tcp":
                s.listen(128)
        except OSError:
            s.close()
            raise
        return s

    def _retry_loop(self) -> None:
        while not self._closed.wait(RETRY_SECONDS):
            with self._lock:
                failed = [f for f in self._forwards.values()
                          if f.state in PortState.UNOPENED]
                if not failed:
                    self._retrying = False
                    return
            for fwd in failed:
                self._open(fwd)

    def _serve_tcp(self, fwd: Forward, listener: socket.socket) -> None:
        while not fwd.closed.is_set():
            accepted = sockets.accept(listener, fwd.closed.is_set)
            if accepted is None:
                return
            conn = accepted[0]
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._relay_tcp, args=(fwd, conn), daemon=True).start()

    def _relay_tcp(self, fwd: Forward, conn: socket.socket) -> None:
        if self.use is None:
            self._relay_tcp_now(fwd, conn)
            return
        with self.use(f"port {fwd.port}"):
            self._relay_tcp_now(fwd, conn)

    def _relay_tcp_now(self, fwd: Forward, conn: socket.socket) -> None:
        try:
            up = self.open_stream("tcp", fwd.port)
        except OSError as e:
            log.warning("port %d: the guest link refused a connection: %s", fwd.port, e)
            self._stalled(fwd, f"the VM could not be reached for this port: {e}")
            conn.close()
            return
        self._healthy(fwd)
        relay.pipe(conn, up)

    def _serve_udp(self, fwd: Forward, sock: socket.socket) -> None:
        """One link stream per client address; replies go back to that address."""
        flows = _UdpFlows(sock, lambda: self.open_stream("udp", fwd.port))
        while not fwd.closed.is_set():
            try:
                data, addr = sock.recvfrom(65535)
            except OSError:
                break
            if addr is None or fwd.closed.is_set():
                break  # the socket was shut down: the port is being removed
            if self.use is not None:
                with self.use(f"port {fwd.port}/udp"):
                    pass  # each datagram wakes the VM and counts as a use
            try:
                stream = flows.stream_for(addr)
            except OSError as e:
                log.warning("port %d/udp: the guest link refused a flow: %s", fwd.port, e)
                self._stalled(fwd, f"the VM could not be reached for this port: {e}")
                continue
            self._healthy(fwd)
            try:
                stream.sendall(protocol.frame(data))
            except OSError:
                flows.drop(addr)
        flows.close()


class _UdpFlows:
    """The UDP flows of one published port: a link stream per client address, its
    replies sent back to that address, dropped after UDP_IDLE_SECONDS without traffic."""

    def __init__(self, sock: socket.socket, open_flow: Callable[[], socket.socket]) -> None:
        self.sock = sock
        self.open_flow = open_flow
        self.flows: dict[Any, tuple[socket.socket, list[float]]] = {}
        self.lock = threading.Lock()

    def stream_for(self, addr: Any) -> socket.socket:
        """The stream of `addr`'s flow, opened now if it has none (OSError if the link
        refuses); idle flows are closed on the way."""
        now = time.monotonic()
        with self.lock:
            for a, (st, last) in list(self.flows.items()):
                if now - last[0] > UDP_IDLE_SECONDS:
                    st.close()
                    del self.flows[a]
            flow = self.flows.get(addr)
        if flow is None:
            flow = (self.open_flow(), [now])
            with self.lock:
                self.flows[addr] = flow
            threading.Thread(target=self._back, args=(addr, *flow), daemon=True).start()
        flow[1][0] = now
        return flow[0]

    def _back(self, addr: Any, stream: socket.socket, last: list[float]) -> None:
        deframer = protocol.Deframer()
        try:
            while chunk := stream.recv(65536):
                last[0] = time.monotonic()
                for dgram in deframer.feed(chunk):
                    self.sock.sendto(dgram, addr)
        except OSError:
            pass
        finally:
            with self.lock:
                if self.flows.get(addr, (None,))[0] is stream:
                    del self.flows[addr]
            stream.close()

    def drop(self, addr: Any) -> None:
        with self.lock:
            self.flows.pop(addr, None)

    def close(self) -> None:
        with self.lock:
            for st, _ in self.flows.values():
                st.close()
