"""HTTP/1.1 on socketpairs for the docker.sock guard's tests (desktop.services.apiguard):
a framing reader for the test's own ends, a fake engine that parses what the guard sends
it and answers, and `Guard`, which puts a client socket, the guard and the fake engine
together. The reader is written apart from h11 (which the guard uses), so that it checks
the guard's framing rather than repeating it.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from desktop.services import apiguard

SHARES = ["/home/me", "/Volumes"]
RAW_STREAM = b"application/vnd.docker.raw-stream"
_HIJACKED = re.compile(rb"/(containers/[^ ?]+/attach|exec/[^ ?]+/start|session|grpc)(\?| |$)")


class Reader:
    """HTTP/1.1 message framing on one end of a socketpair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 16)
        self.buf += data
        return bool(data)

    def head(self) -> bytes | None:
        """The next head (with its blank line), or None at a clean EOF."""
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                assert self.buf == b"", f"EOF inside a head: {self.buf!r}"
                return None
        i = self.buf.index(b"\r\n\r\n") + 4
        head, self.buf = self.buf[:i], self.buf[i:]
        return head

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            assert self._fill(), "EOF inside a body"
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            assert self._fill(), "EOF inside a line"
        i = self.buf.index(b"\r\n") + 2
        data, self.buf = self.buf[:i], self.buf[i:]
        return data

    def body(self, head: bytes) -> bytes:
        """The raw body after `head`: Content-Length or chunked (with its framing)."""
        return self.message(head)[0]

    def message(self, head: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
        """(the raw body after `head`, its content, its trailer fields)."""
        fields = header_fields(head)
        names = [k.lower() for k, _ in fields]
        assert names.count(b"content-length") + names.count(b"transfer-encoding") <= 1, head
        if b"transfer-encoding" in names:
            assert dict(fields_lower(fields))[b"transfer-encoding"].lower() == b"chunked"
            return self._chunked()
        length = dict(fields_lower(fields)).get(b"content-length", b"0")
        # "+0" is 0, as Go's strconv.ParseInt (which once read Content-Length) has it.
        assert length.lstrip(b"+").isdigit(), head
        raw = self.exact(int(length))
        return raw, raw, []

    def _chunked(self) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
        raw = content = b""
        while True:
            size_line = self.line()
            raw += size_line
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            data = self.exact(size + 2)
            assert data.endswith(b"\r\n")
            raw += data
            content += data[:-2]
        trailers = []
        while True:
            line = self.line()
            raw += line
            if line == b"\r\n":
                return raw, content, trailers
            name, _, value = line[:-2].partition(b":")
            trailers.append((name, value.strip()))

    def rest(self) -> bytes:
        while self._fill():
            pass
        data, self.buf = self.buf, b""
        return data


def header_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """The (name, value) fields of `head`, as written."""
    out = []
    for line in head.split(b"\r\n")[1:]:
        if line:
            name, _, value = line.partition(b":")
            out.append((name, value.strip(b" \t")))
    return out


def fields_lower(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower(), v) for k, v in fields]


@dataclass
class Received:
    """A request as the fake engine read it."""

    raw: bytes  # head + raw body
    line: bytes  # the request line
    fields: list[tuple[bytes, bytes]]
    content: bytes  # the body, de-chunked
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def method(self) -> bytes:
        return self.line.split(b" ")[0]

    @property
    def target(self) -> bytes:
        return self.line.split(b" ")[1]


def response(status: str, body: bytes, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class FakeEngine:
    """Answers each request with 200 and {"n": <its number>}, as the engine would frame it.

    An attach, an exec start, /session or /grpc is taken over as the engine does: with a
    101 when the request has an Upgrade field, else (attach and exec) with a 200 of
    content type raw-stream; then it sends b"container output" and records the raw bytes
    until EOF. A path with /logs is answered in three chunks; a request with
    "X-Answer: close" gets "Connection: close" and the engine closes after it.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = Reader(sock)
        self.received: list[Received] = []
        self.after_upgrade = b""
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list[bytes]:
        """Each request as received: head and raw body."""
        return [r.raw for r in self.received]

    def _serve(self) -> None:
        try:
            while (head := self.reader.head()) is not None:
                raw, content, trailers = self.reader.message(head)
                line = head.split(b"\r\n", 1)[0]
                fields = header_fields(head)
                self.received.append(Received(head + raw, line, fields, content, trailers))
                if self._answer(line, dict(fields_lower(fields))):
                    break
            self.sock.shutdown(socket.SHUT_WR)
        except BaseException as e:  # reported by join()
            self.error = e

    def _answer(self, line: bytes, fields: dict[bytes, bytes]) -> bool:
        """Answer the request; True when the connection is over (or raw) after it."""
        if _HIJACKED.search(line.split(b" HTTP/")[0] + b" "):
            if b"upgrade" in fields:
                self.sock.sendall(b"HTTP/1.1 101 UPGRADED\r\nContent-Type: " + RAW_STREAM
                                  + b"\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
                                    b"container output")
                self.after_upgrade = self.reader.rest()
                return True
            if b"/session" not in line and b"/grpc" not in line:
                self.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: " + RAW_STREAM
                                  + b"\r\n\r\ncontainer output")
                self.after_upgrade = self.reader.rest()
                return True
        n = json.dumps({"n": len(self.received)}).encode()
        if b"/logs" in line:
            self.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: " + RAW_STREAM
                              + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in (b"line 1\n", b"line 2\n", n):
                self.sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.sock.sendall(b"0\r\n\r\n")
            return False
        close = fields.get(b"x-answer") == b"close"
        self.sock.sendall(response("200 OK", n, "Connection: close\r\n" if close else ""))
        return close

    def join(self) -> None:
        self.thread.join(10)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


class Guard:
    """client <-> [a  guarded_pipe  b] <-> engine."""

    def __init__(self, check: apiguard.Check | None = None,
                 on_binds: Callable[[list[str]], None] | None = None) -> None:
        self.checked: list[tuple[str, str, bytes]] = []
        policy = check or apiguard.make_check(lambda: list(SHARES))

        def recording(method: str, path: str, body: bytes) -> str | bytes | None:
            self.checked.append((method, path, body))
            return policy(method, path, body)

        self.client, a = socket.socketpair()
        b, engine = socket.socketpair()
        for s in (self.client, engine):
            s.settimeout(10)
        self.reader = Reader(self.client)
        self.engine = FakeEngine(engine)
        self.thread = threading.Thread(target=apiguard.guarded_pipe,
                                       args=(a, b, recording, on_binds))
        self.thread.start()

    def response(self) -> tuple[bytes, bytes]:
        head = self.reader.head()
        assert head is not None
        return head, self.reader.body(head)

    def ended(self) -> None:
        """Check that the guard, the engine and their threads are done."""
        self.engine.join()
        self.thread.join(10)
        assert not self.thread.is_alive()

    def closed_by_guard(self) -> None:
        """After the guard's last answer: the connection ends; the client closes as the
        docker CLI does when it reads the end."""
        assert self.reader.rest() == b""
        self.client.shutdown(socket.SHUT_WR)
        self.ended()

    def finish(self) -> None:
        """Half-close as a client does, and check that everything ends and is closed."""
        self.client.shutdown(socket.SHUT_WR)
        assert self.reader.rest() == b""
        self.ended()

    def close(self) -> None:
        self.client.close()
        self.engine.sock.close()
        self.thread.join(10)
        self.engine.thread.join(10)


@contextmanager
def bare_guard(shares: tuple[str, ...] = ()) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client, engine): the ends of a guard whose both sides the test plays. On leaving,
    the guard's thread must have ended and closed its sockets."""
    client, a = socket.socketpair()
    b, engine = socket.socketpair()
    with client, engine:
        for s in (client, engine):
            s.settimeout(10)
        t = threading.Thread(target=apiguard.guarded_pipe,
                             args=(a, b, apiguard.make_check(lambda: list(shares))))
        t.start()
        yield client, engine
        t.join(10)
        assert not t.is_alive()
        assert a.fileno() == -1 and b.fileno() == -1


def request(method: str, target: str, body: bytes = b"", extra: str = "") -> bytes:
    """A request as Docker's clients write it."""
    length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
    return (f"{method} {target} HTTP/1.1\r\nHost: api.moby.localhost\r\n"
            f"User-Agent: Docker-Client/27.0.3 (linux)\r\n{extra}{length}"
            "Content-Type: application/json\r\n\r\n").encode() + body


def create(binds: list[str] | None = None, mounts: list[dict] | None = None,
           **extra: object) -> bytes:
    """A container creation's body."""
    hc: dict[str, object] = {}
    if binds is not None:
        hc["Binds"] = binds
    if mounts is not None:
        hc["Mounts"] = mounts
    return json.dumps({"Image": "alpine", "Cmd": ["true"], "HostConfig": hc,
                       **extra}).encode()


def chunked(body: bytes, sizes: tuple[int, ...] = (7,)) -> bytes:
    """`body` in chunks of the sizes given (the last repeated), with its last chunk."""
    out, i, k = b"", 0, 0
    while i < len(body):
        n = sizes[min(k, len(sizes) - 1)]
        out += b"%x\r\n%s\r\n" % (len(body[i:i + n]), body[i:i + n])
        i, k = i + n, k + 1
    return out + b"0\r\n\r\n"
