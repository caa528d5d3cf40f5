"""Fuzzing the docker.sock guard (desktop.services.apiguard) with hypothesis.

Each example runs a real `guarded_pipe` between socketpairs: a client that sends the
example's bytes in pieces of random sizes, then half-closes and reads everything back,
and `FuzzEngine`, a fake engine that parses what the guard sends it with the tests' own
framing reader (strict about framing, not built on h11 as the guard is) and answers in
framings and pieces of random sizes.

What must hold for every example:

* nothing the guard runs dies or logs a warning or an error, and every thread ends;
* the guard's output to the engine is well-formed HTTP/1.1 (the engine may see a
  message cut short only where the client cut it);
* no request the engine reads (before the connection becomes raw) is one the policy
  refuses: a creation with a bind outside the shares never reaches the engine.

For the structured streams (well-formed requests of every kind, with the spellings that
got past the guard before: encoded paths, odd versions, keys of any case, chunked
bodies, bind volumes, services, then maybe an upgrade and raw bytes), also:

* the engine gets exactly the requests that pass, in order, each with the method,
  target, header fields and content the client sent (framing aside);
* the client gets an answer to every request, in order: the engine's, or the guard's
  refusal.

Settings are left to the profiles of tests/fuzz/conftest.py where it exists (a short
run by default).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from desktop.services import apiguard
from desktop.services.apiguard import routes
from tests.helpers.docker_http import RAW_STREAM, FakeEngine, Reader, fields_lower

SHARES = ["/home/me", "/Volumes"]
POLICY = apiguard.make_check(lambda: list(SHARES))
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])

# -- the fake engine -----------------------------------------------------------------------


@dataclass
class Answer:
    """How the fake engine frames one response."""

    chunked: bool
    pieces: list[int]  # sizes in which it is sent (the last repeated)


class FuzzEngine(FakeEngine):
    """A FakeEngine that answers ``{"id": <X-Fuzz-Id>}`` in the framings of `answers` (in
    turn), checks each request it reads against the policy, and takes a message cut
    short by EOF as the client's doing."""

    def __init__(self, sock: socket.socket, answers: list[Answer]) -> None:
        self.answers = answers or [Answer(False, [1 << 16])]
        self.ids: list[bytes] = []
        self.violations: list[str] = []
        self.cut_short = False
        super().__init__(sock)

    def _serve(self) -> None:
        super()._serve()
        if self.error is None:
            return
        if isinstance(self.error, AssertionError) and str(self.error).startswith(
                ("EOF inside a body", "EOF inside a line", "EOF inside a head")):
            self.error, self.cut_short = None, True
        try:
            self.sock.shutdown(socket.SHUT_WR)  # as the engine does when it gives up
        except OSError:
            pass

    def _answer(self, line: bytes, fields: dict[bytes, bytes]) -> bool:
        got = self.received[-1]
        method, target = got.method.decode("latin-1"), got.target.decode("latin-1")
        verdict = POLICY(method, target, got.content)
        if isinstance(verdict, str):
            self.violations.append(f"the engine got {line!r}, which the policy refuses: "
                                   f"{verdict}")
        self.ids.append(fields.get(b"x-fuzz-id", b"?"))
        if routes.may_hijack(method, target) or routes.route_path(target) in ("/session",
                                                                              "/grpc"):
            return super()._answer(line, fields)
        answer = self.answers[(len(self.ids) - 1) % len(self.answers)]
        body = json.dumps({"id": fields.get(b"x-fuzz-id", b"?").decode("latin-1")}).encode()
        if b"expect" in fields and got.content:
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if answer.chunked:
            data = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n")
            if method != "HEAD":
                data += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        else:
            data = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body))
            if method != "HEAD":
                data += body
        _send_in_pieces(self.sock, data, answer.pieces)
        return False


def _send_in_pieces(sock: socket.socket, data: bytes, pieces: list[int]) -> None:
    i = k = 0
    while i < len(data):
        n = max(1, pieces[min(k, len(pieces) - 1)])
        sock.sendall(data[i:i + n])
        i, k = i + n, k + 1


# -- running one example -------------------------------------------------------------------


class _Findings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


@dataclass
class Run:
    """What one example did: the engine, and what the client got back."""

    engine: FuzzEngine
    received: bytes
    reset: bool  # the client's reading ended with a reset


def run_guard(stream: bytes, pieces: list[int], answers: list[Answer]) -> Run:
    """Send `stream` through a guard to a FuzzEngine; check what must always hold."""
    findings = _Findings()
    logger = logging.getLogger("desktop.services.apiguard")
    logger.addHandler(findings)
    died: list[str] = []
    hook = threading.excepthook
    threading.excepthook = lambda a: died.append(f"{a.thread}: {a.exc_type.__name__}: "
                                                  f"{a.exc_value}")
    client, a = socket.socketpair()
    b, engine_end = socket.socketpair()
    try:
        for s in (client, engine_end):
            s.settimeout(10)
        engine = FuzzEngine(engine_end, answers)
        guard = threading.Thread(target=apiguard.guarded_pipe, args=(a, b, POLICY))
        guard.start()

        def send() -> None:
            try:
                _send_in_pieces(client, stream, pieces)
                client.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the guard may end the connection before it read everything

        sender = threading.Thread(target=send)
        sender.start()
        received, reset = _read_all(client)
        sender.join(10)
        guard.join(10)
        engine.thread.join(10)
        assert not guard.is_alive(), "the guard did not end"
        assert not engine.thread.is_alive(), "the engine's side did not end"
        assert not sender.is_alive(), "the client could not send"
    finally:
        threading.excepthook = hook
        logger.removeHandler(findings)
        client.close()
        engine_end.close()
    assert not died, died
    assert not findings.records, findings.records
    assert engine.error is None, f"the engine could not read what the guard sent: " \
                                 f"{engine.error!r}"
    assert not engine.violations, engine.violations
    return Run(engine, received, reset)


def _read_all(sock: socket.socket) -> tuple[bytes, bool]:
    chunks = []
    try:
        while data := sock.recv(1 << 16):
            chunks.append(data)
    except ConnectionResetError:
        return b"".join(chunks), True
    return b"".join(chunks), False


# -- strategies ----------------------------------------------------------------------------

_TOKEN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
_RESERVED = {"host", "content-length", "transfer-encoding", "connection", "upgrade", "expect",
             "te", "trailer", "x-fuzz-id", "x-answer", "keep-alive"}
names = st.text(_TOKEN, min_size=1, max_size=10).filter(lambda n: n.lower() not in _RESERVED)
values = st.text("".join(chr(c) for c in range(0x21, 0x7f)) + " \t",
                 max_size=16).map(lambda v: v.strip(" \t"))
extra_fields = st.lists(st.tuples(names, values), max_size=4)
pieces = st.lists(st.integers(1, 300), min_size=1, max_size=8)
answers = st.lists(st.builds(Answer, st.booleans(), pieces), min_size=1, max_size=4)

PLAIN = ["/_ping", "/version", "/info", "/containers/json", "/containers/abc/start",
         "/containers/abc/logs", "/images/load", "/build", "/containers/abc/archive",
         "/networks/create", "/containers/created", "/exec/abc/json", "/volumes/prune",
         "/containers/abc/wait", "/services", "/plugins/pull"]
VERSIONS = ["", "/v1.45", "/v1.24", "/v1.45.0", "/v1", "/v1.45.", "/v1..45"]


@st.composite
def spellings(draw: st.DrawFn, path: str) -> str:
    """`path` as clients may write it, and as the engine routes it all the same."""
    version = draw(st.sampled_from(VERSIONS))
    out = ""
    for c in version + path:
        if c.isalnum() and draw(st.integers(0, 9)) == 0:
            out += "%" + format(ord(c), "02" + draw(st.sampled_from("xX")))
        elif c == "/" and draw(st.integers(0, 9)) == 0:
            out += "//"
        else:
            out += c
    if draw(st.integers(0, 5)) == 0:
        out += "/"
    if draw(st.integers(0, 7)) == 0:
        out = "http://docker" + out
    return out + draw(st.sampled_from(["", "?name=x", "?a=1&b=%2F"]))


def _cased(draw: st.DrawFn, key: str) -> str:
    """`key` in a case Go's decoder matches to it."""
    how = draw(st.integers(0, 5))
    if how == 1:
        return key.lower()
    if how == 2:
        return key.upper()
    if how == 3:
        return key.replace("s", "\u017f")  # Go folds "ſ" to "S"
    return key


@st.composite
def sources(draw: st.DrawFn) -> tuple[str, bool]:
    """(a host folder, whether it is outside the shares)."""
    outside = draw(st.integers(0, 3)) == 0
    root = draw(st.sampled_from(["/forbidden", "/etc", "/opt/data"] if outside
                                else ["/home/me", "/Volumes/disk", "/var/run/docker.sock"]))
    tail = draw(st.sampled_from(["", "/x", "/a/../b", "//y/"]))
    if root == "/var/run/docker.sock":
        tail = ""
    return root + tail, outside


@st.composite
def checked_bodies(draw: st.DrawFn, kind: str) -> tuple[bytes, bool]:
    """(a body for a request of `kind`, whether it binds a folder outside the shares)."""
    entries = draw(st.lists(sources(), max_size=3))
    k = lambda key: _cased(draw, key)  # noqa: E731
    mounts: list[Any] = []
    binds: list[str] = []
    for src, _ in entries:
        how = draw(st.integers(0, 2))
        if how == 0 and kind == routes.CONTAINER:
            binds.append(f"{src}:/dst{len(binds)}" + draw(st.sampled_from(["", ":ro"])))
        elif how == 1 or kind == routes.SERVICE:
            mounts.append({k("Type"): draw(st.sampled_from(["bind", "Bind"])),
                           k("Source"): src, k("Target"): f"/m{len(mounts)}"})
        else:
            mounts.append({k("Type"): "volume", k("Source"): "v", k("Target"): "/v",
                           k("VolumeOptions"): {k("DriverConfig"): {k("Name"): "local",
                           k("Options"): {"type": "none", "o": "bind", "device": src}}}})
    if kind == routes.VOLUME:
        device = entries[0][0] if entries else "/home/me/v"
        doc: Any = {k("Name"): "v", k("DriverOpts"): {"type": "none", "o": "bind",
                                                      "device": device}}
        bad = bool(entries) and entries[0][1]
    elif kind == routes.SERVICE:
        doc = {k("Name"): "s", k("TaskTemplate"): {k("ContainerSpec"): {
            k("Image"): "nginx", k("Mounts"): mounts}}}
        bad = any(out for _, out in entries)
    else:
        host = {k("Binds"): binds, k("Mounts"): mounts}
        doc = {k("Image"): "alpine", k("Labels"): {"l": draw(values)}}
        if draw(st.integers(0, 5)) == 0:
            doc.update(host)  # the engine reads these at the top level too
        else:
            doc[k("HostConfig")] = host
        bad = any(out for _, out in entries)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()),
                      indent=draw(st.sampled_from([None, 1])))
    return text.encode(), bad


@dataclass
class Req:
    """A generated request, and what the guard is expected to do with it."""

    data: bytes
    id: bytes
    method: str
    refused: bool = False
    expect_100: bool = False
    line: bytes = b""
    fields: list[tuple[bytes, bytes]] = field(default_factory=list)  # as the engine gets them
    content: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)


def _body_framing(draw: st.DrawFn, body: bytes,
                  trailers: bool) -> tuple[list[tuple[bytes, bytes]], bytes,
                                           list[tuple[bytes, bytes]]]:
    """(framing fields, framed body, trailer fields) for `body`."""
    if not draw(st.booleans()):
        return [(b"Content-Length", b"%d" % len(body))], body, []
    sizes = draw(pieces)
    out, i, k = b"", 0, 0
    while i < len(body):
        n = sizes[min(k, len(sizes) - 1)]
        ext = draw(st.sampled_from([b"", b";ext=1", b";x=\"q\""]))
        out += b"%x%s\r\n%s\r\n" % (len(body[i:i + n]), ext, body[i:i + n])
        i, k = i + n, k + 1
    trail = [(n.encode(), v.encode()) for n, v in draw(extra_fields)] if trailers else []
    out += b"0\r\n" + b"".join(b"%s: %s\r\n" % t for t in trail) + b"\r\n"
    return [(b"Transfer-Encoding", b"chunked")], out, trail


@st.composite
def requests(draw: st.DrawFn, n: int) -> Req:
    """Request `n`: a plain one, a checked one (passing or refused), or an unreadable
    checked one."""
    what = draw(st.sampled_from(["plain", "plain", "checked", "checked", "unreadable"]))
    fid = b"%d" % n
    extra = [(a.encode(), b.encode()) for a, b in draw(extra_fields)]
    if what == "plain":
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]))
        target = draw(st.sampled_from(VERSIONS)) + draw(st.sampled_from(PLAIN)) + draw(
            st.sampled_from(["", "?all=1", "?filters=%7B%7D"]))
        body = draw(st.binary(max_size=300)) if method in ("POST", "PUT") else b""
        refused = False
    else:
        kind = draw(st.sampled_from([routes.CONTAINER, routes.VOLUME, routes.SERVICE]))
        path = {routes.CONTAINER: "/containers/create", routes.VOLUME: "/volumes/create",
                routes.SERVICE: draw(st.sampled_from(["/services/create",
                                                      "/services/web/update"]))}[kind]
        method, target = "POST", draw(spellings(path))
        if what == "checked":
            body, refused = draw(checked_bodies(kind))
        else:
            body = draw(st.sampled_from([b"{", b'{"Image": "a\xff"}', b"\xc3(", b"[] []",
                                         b'{"a": NaN}']))
            refused = True
    expect = bool(body) and draw(st.integers(0, 4)) == 0
    framing, framed, trailers = _body_framing(draw, body, what == "plain") if body or (
        method in ("POST", "PUT") and draw(st.booleans())) else ([], b"", [])
    head_fields = [(b"Host", b"api.moby.localhost"), *extra, (b"X-Fuzz-Id", fid)]
    if what == "plain" and draw(st.integers(0, 4)) == 0:
        # An upgrade the engine does not take (not an attach, exec or session): it answers
        # as to any other request, and the connection stays HTTP.
        head_fields += [(b"Connection", b"Upgrade"),
                        (b"Upgrade", draw(st.sampled_from([b"tcp", b"h2c", b"websocket"])))]
    if expect:
        head_fields.append((b"Expect", b"100-continue"))
    line = b"%s %s HTTP/1.1" % (method.encode(), target.encode())
    data = (line + b"\r\n" + b"".join(b"%s: %s\r\n" % f for f in head_fields + framing)
            + b"\r\n" + framed)
    seen = [(k.lower(), v) for k, v in head_fields
            if not (what != "plain" and k == b"Expect")]
    return Req(data, fid, method, refused, expect, line, seen, body, trailers)


@st.composite
def endings(draw: st.DrawFn) -> tuple[bytes, str]:
    """What may follow the requests: (bytes, what they are)."""
    what = draw(st.sampled_from(["none", "none", "upgrade", "hijack", "session", "garbage"]))
    raw = draw(st.binary(max_size=200))
    if what == "upgrade":
        return (b"POST /v1.45/containers/c/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: d\r\n"
                b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n" + raw, what)
    if what == "hijack":
        return b"POST /exec/e/start HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n\r\n{}" + raw, what
    if what == "session":
        return (b"POST /session HTTP/1.1\r\nHost: d\r\nUpgrade: h2c\r\nConnection: Upgrade"
                b"\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + raw, what)
    if what == "garbage":
        return raw + b"\r\n\r\n", what
    return b"", what


# -- what the client gets back -------------------------------------------------------------


class _Bytes:
    """What a Reader reads from: bytes already received."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def recv(self, n: int) -> bytes:
        out, self.data = self.data[:n], self.data[n:]
        return out


def _check_answers(reqs: list[Req], ending: str, got: bytes) -> None:
    reader = Reader(_Bytes(got))  # type: ignore[arg-type]
    for r in reqs:
        head = reader.head()
        assert head is not None, f"no answer to request {r.id!r}"
        if r.expect_100:
            assert head == b"HTTP/1.1 100 Continue\r\n\r\n", head
            head = reader.head()
            assert head is not None
        status = head.split(b" ", 2)[1]
        if r.refused:
            assert status in (b"400", b"413"), head
            assert "message" in json.loads(reader.body(head))
        else:
            assert status == b"200", head
            if r.method != "HEAD":
                assert json.loads(reader.message(head)[1]) == {"id": r.id.decode()}
    if ending in ("upgrade", "hijack", "session"):
        head = reader.head()
        assert head is not None and (head.startswith(b"HTTP/1.1 101")
                                     or RAW_STREAM in head), head
        assert reader.rest() == b"container output"
    elif ending == "none":
        assert reader.rest() == b""


def _check_delivered(reqs: list[Req], ending: str, sent_after: bytes,
                     engine: FuzzEngine) -> None:
    passed = [r for r in reqs if not r.refused]
    got = engine.received[:len(passed)]
    assert [g.line for g in got] == [r.line for r in passed]
    for r, g in zip(passed, got, strict=True):
        assert [f for f in fields_lower(g.fields)
                if f[0] not in (b"content-length", b"transfer-encoding")] == r.fields, r.id
        assert g.content == r.content, r.id
        assert g.trailers == r.trailers, r.id
    if ending in ("upgrade", "hijack", "session"):
        assert len(engine.received) == len(passed) + 1
        assert engine.after_upgrade == sent_after
    elif ending == "none":
        assert len(engine.received) == len(passed)


# -- the targets ---------------------------------------------------------------------------


@FUZZ
@given(st.data(), pieces, answers)
def test_structured_streams(data: st.DataObject, split: list[int],
                            plan: list[Answer]) -> None:
    n = data.draw(st.integers(0, 5), label="requests")
    reqs = [data.draw(requests(i), label=f"request {i}") for i in range(n)]
    tail, ending = data.draw(endings(), label="ending")
    stream = b"".join(r.data for r in reqs) + tail
    run = run_guard(stream, split, plan)
    sent_after = tail.split(b"\r\n\r\n", 1)[1] if ending in ("upgrade", "session") else (
        tail.split(b"{}", 1)[1] if ending == "hijack" else b"")
    if ending == "session":
        sent_after = tail.split(b"Connection: Upgrade\r\n\r\n", 1)[1]
    if not run.reset:
        _check_answers(reqs, ending, run.received)
    _check_delivered(reqs, ending, sent_after, run.engine)


@FUZZ
@given(st.binary(max_size=3000), pieces, answers)
def test_arbitrary_bytes(stream: bytes, split: list[int], plan: list[Answer]) -> None:
    run_guard(stream, split, plan)


@FUZZ
@given(st.data(), pieces, answers)
def test_mutated_streams(data: st.DataObject, split: list[int], plan: list[Answer]) -> None:
    """Well-formed streams with bytes changed, cut or spliced in: whatever the guard then
    reads, what reaches the engine passes the policy."""
    n = data.draw(st.integers(1, 4), label="requests")
    stream = bytearray(b"".join(data.draw(requests(i)).data for i in range(n)))
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        lines = [i + 2 for i in range(len(stream)) if stream.startswith(b"\r\n", i)]
        at = data.draw(st.sampled_from(lines) if lines and data.draw(st.booleans())
                       else st.integers(0, len(stream)), label="at")
        how = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]), label="how")
        if how == "flip" and at < len(stream):
            stream[at] = data.draw(st.integers(0, 255))
        elif how == "cut":
            del stream[at:]
        elif how == "insert":
            stream[at:at] = data.draw(st.sampled_from(
                [b"\r\n", b"\n", b"0\r\n\r\n", b"Content-Length: 0\r\n", b"Upgrade: tcp\r\n",
                 b"Content-Length: +0\r\n", b"Upgrade:\r\n", b"Connection: close\r\n",
                 b"Transfer-Encoding: chunked\r\n", b" ", b"%", b"\x00", b"\xff",
                 b'"hostconfig":{"binds":["/forbidden:/x"]},']))
        else:
            del stream[at:at + data.draw(st.integers(1, 8))]
    run_guard(bytes(stream), split, plan)

