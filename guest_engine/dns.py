"""The VM's resolver: answers the names that lead back to the host, forwards the rest.

Containers find the host as ``host.docker.internal`` (and the network's gateway as
``gateway.docker.internal``). Docker gives every container the VM's /etc/resolv.conf
(default bridge) or its embedded resolver that forwards to it (user-defined networks), so
one small forwarder listening on the VM's own address serves both: the VM's resolv.conf
names it, it answers those two names itself, and relays every other query, unchanged, to
the upstream resolvers the network gave the VM (QEMU's 10.0.2.3, or DHCP's).

With QEMU user networking the host's address is 10.0.2.2: connections to it reach the
host's localhost, which is where developers run the services they want containers to see.

UDP and TCP are both served (TCP for answers too large for a datagram). Queries are
relayed by ID: the forwarder gives each one a fresh ID upstream, sends it to every
upstream at once and returns the first answer under the client's own ID.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import struct
import threading
import time

log = logging.getLogger(__name__)

PORT = 53
HOST_NAMES = ("host.docker.internal", "gateway.docker.internal")
QTYPE_A = 1
QTYPE_AAAA = 28
QTYPE_ANY = 255
PENDING_SECONDS = 10.0
TTL = 60


class DNSError(ValueError):
    pass


def parse_question(msg: bytes) -> tuple[int, str, int, int, int]:
    """(id, lower-case name, qtype, qclass, end offset of the question) of a message."""
    if len(msg) < 12:
        raise DNSError("short message")
    qid, _, qdcount = struct.unpack("!HHH", msg[:6])
    if qdcount != 1:
        raise DNSError("not a single-question message")
    labels: list[str] = []
    i = 12
    while True:
        if i >= len(msg):
            raise DNSError("truncated name")
        n = msg[i]
        i += 1
        if n == 0:
            break
        if n & 0xC0:
            raise DNSError("compressed name in a question")
        labels.append(msg[i:i + n].decode("ascii", "replace"))
        i += n
    if i + 4 > len(msg):
        raise DNSError("truncated question")
    qtype, qclass = struct.unpack("!HH", msg[i:i + 4])
    return qid, ".".join(labels).lower(), qtype, qclass, i + 4


def local_answer(msg: bytes, names: dict[str, str]) -> bytes | None:
    """The reply to a query for one of `names` (name -> IPv4 address), else None.

    A gives the address; AAAA and other types get an empty answer (the name exists, with
    no record of that type), so clients fall back to the IPv4 address at once.
    """
    try:
        qid, name, qtype, qclass, end = parse_question(msg)
    except DNSError:
        return None
    if msg[2] & 0x80:
        return None  # a response, not a query
    name = name.rstrip(".")
    if name not in names:
        return None
    flags_in = struct.unpack("!H", msg[2:4])[0]
    rd = flags_in & 0x0100
    flags = 0x8000 | 0x0400 | rd | 0x0080  # response, authoritative, RD copied, RA
    answers = b""
    count = 0
    if qtype in (QTYPE_A, QTYPE_ANY) and qclass == 1:
        addr = socket.inet_aton(names[name])
        # The name as a pointer to the question (offset 12).
        answers = struct.pack("!HHHIH", 0xC00C, QTYPE_A, 1, TTL, 4) + addr
        count = 1
    header = struct.pack("!HHHHHH", qid, flags, 1, count, 0, 0)
    return header + msg[12:end] + answers


def servfail(msg: bytes) -> bytes | None:
    try:
        qid, _, _, _, end = parse_question(msg)
    except DNSError:
        return None
    rd = struct.unpack("!H", msg[2:4])[0] & 0x0100
    return struct.pack("!HHHHHH", qid, 0x8000 | rd | 0x0080 | 2, 1, 0, 0, 0) + msg[12:end]


def read_nameservers(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            out.append(parts[1])
    return out


class Forwarder:
    """The resolver on `listen` (the VM's address): local names, else the upstreams."""

    def __init__(self, listen: str, upstreams: list[str], names: dict[str, str],
                 port: int = PORT, upstream_port: int = PORT) -> None:
        self.listen = listen
        self.port = port
        self.upstream_port = upstream_port
        self.upstreams = [u for u in upstreams if u != listen or upstream_port != port]
        self.names = {k.lower(): v for k, v in names.items()}
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind((listen, port))
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._tcp.bind((listen, self._udp.getsockname()[1]))  # the same port (port 0)
        self._tcp.listen(64)
        self._up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._up.bind((listen, 0))  # not a wildcard: the port watcher ignores it
        self._pending: dict[int, tuple[int, tuple[str, int], float]] = {}
        self._closed = threading.Event()
        # close() writes here to end the UDP loop, which otherwise blocks with no timeout
        # while no query is pending (a timeout would wake the idle VM every second).
        self._wake_r, self._wake_w = socket.socketpair()
        self._serving = False
        self.queries = 0
        self.local_answers = 0

    @property
    def address(self) -> tuple[str, int]:
        return self._udp.getsockname()[:2]

    def start(self) -> None:
        self._serving = True
        threading.Thread(target=self._serve_udp, daemon=True, name="dns-udp").start()
        threading.Thread(target=self._serve_tcp, daemon=True, name="dns-tcp").start()

    def close(self) -> None:
        self._closed.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        # The UDP loop closes its end when it returns; without a loop, nobody would.
        ends = [self._udp, self._tcp, self._up, self._wake_w]
        for s in ends + ([] if self._serving else [self._wake_r]):
            try:
                s.close()
            except OSError:
                pass

    # -- UDP -------------------------------------------------------------------------

    def _serve_udp(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._udp, selectors.EVENT_READ, "client")
        sel.register(self._up, selectors.EVENT_READ, "upstream")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            self._udp_loop(sel)
        finally:
            sel.close()
            self._wake_r.close()

    def _udp_loop(self, sel: selectors.BaseSelector) -> None:
        last_sweep = time.monotonic()
        while not self._closed.is_set():
            try:
                # A query waiting for its upstream is swept after PENDING_SECONDS; with
                # none waiting there is nothing to do until a datagram comes.
                events = sel.select(PENDING_SECONDS if self._pending else None)
            except (OSError, ValueError):
                return
            for key, _ in events:
                if key.data == "wake":
                    return
                try:
                    if key.data == "client":
                        msg, addr = self._udp.recvfrom(65535)
                        self._from_client(msg, addr)
                    else:
                        msg, addr = self._up.recvfrom(65535)
                        self._from_upstream(msg, addr)
                except OSError as e:
                    if self._closed.is_set():
                        return
                    log.debug("dns: %s", e)
            now = time.monotonic()
            if now - last_sweep > PENDING_SECONDS:
                last_sweep = now
                self._pending = {k: v for k, v in self._pending.items()
                                 if now - v[2] < PENDING_SECONDS}

    def _from_client(self, msg: bytes, addr: tuple[str, int]) -> None:
        self.queries += 1
        reply = local_answer(msg, self.names)
        if reply is not None:
            self.local_answers += 1
            self._udp.sendto(reply, addr)
            return
        if len(msg) < 12:
            return
        if not self.upstreams:
            fail = servfail(msg)
            if fail:
                self._udp.sendto(fail, addr)
            return
        (orig,) = struct.unpack("!H", msg[:2])
        new = _random_id()
        while new in self._pending:
            new = _random_id()
        self._pending[new] = (orig, addr, time.monotonic())
        out = struct.pack("!H", new) + msg[2:]
        for up in self.upstreams:
            try:
                self._up.sendto(out, (up, self.upstream_port))
            except OSError as e:
                log.debug("dns upstream %s: %s", up, e)

    def _from_upstream(self, msg: bytes, addr: tuple[str, int]) -> None:
        if len(msg) < 12 or addr[0] not in self.upstreams:
            return
        (new,) = struct.unpack("!H", msg[:2])
        entry = self._pending.pop(new, None)
        if entry is None:
            return  # a later upstream's answer to a query already answered
        orig, client, _ = entry
        self._udp.sendto(struct.pack("!H", orig) + msg[2:], client)

    # -- TCP -------------------------------------------------------------------------

    def _serve_tcp(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._tcp.accept()
            except OSError:
                return
            threading.Thread(target=self._tcp_client, args=(conn,), daemon=True,
                             name="dns-tcp-client").start()

    def _tcp_client(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        up: socket.socket | None = None
        try:
            while True:
                msg = _read_framed(conn)
                if msg is None:
                    return
                self.queries += 1
                reply = local_answer(msg, self.names)
                if reply is not None:
                    self.local_answers += 1
                else:
                    if up is None:
                        up = self._connect_upstream()
                    if up is None:
                        reply = servfail(msg)
                        if reply is None:
                            return
                    else:
                        up.sendall(struct.pack("!H", len(msg)) + msg)
                        reply = _read_framed(up)
                        if reply is None:
                            return
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError as e:
            log.debug("dns tcp: %s", e)
        finally:
            conn.close()
            if up is not None:
                up.close()

    def _connect_upstream(self) -> socket.socket | None:
        for up in self.upstreams:
            try:
                return socket.create_connection((up, self.upstream_port), timeout=5)
            except OSError:
                continue
        return None


def _random_id() -> int:
    return int.from_bytes(os.urandom(2), "big")


def _read_exact(s: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _read_framed(s: socket.socket) -> bytes | None:
    head = _read_exact(s, 2)
    if head is None:
        return None
    return _read_exact(s, struct.unpack("!H", head)[0])
