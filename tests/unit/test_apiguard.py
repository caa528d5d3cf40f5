"""The docker.sock guard (desktop.apiguard): the bind-mount policy, and the relay between
socketpairs with a fake engine that parses requests and answers them."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from desktop import apiguard
from guest_engine import relay

SHARES = ["/home/me", "/Volumes"]


# -- policy: bind_sources ------------------------------------------------------------------


def test_bind_sources_from_binds_and_mounts() -> None:
    body = {"Image": "alpine", "HostConfig": {
        "Binds": ["/home/me/src:/src", "/opt/data:/data:ro,z", "named:/var/lib/x",
                  "/home/me/src:/again"],
        "Mounts": [{"Type": "bind", "Source": "/srv/www", "Target": "/www"},
                   {"Type": "volume", "Source": "vol", "Target": "/v"},
                   {"Type": "tmpfs", "Target": "/t"},
                   {"Type": "bind", "Source": "/tmp/x", "Target": "/x", "ReadOnly": True}]}}
    assert apiguard.bind_sources(body) == ["/home/me/src", "/opt/data", "/srv/www", "/tmp/x"]


@pytest.mark.parametrize("body", [
    {},
    {"HostConfig": None},
    {"HostConfig": "x"},
    {"HostConfig": {}},
    {"HostConfig": {"Binds": None, "Mounts": None}},
    {"HostConfig": {"Binds": "/a:/b", "Mounts": {"Type": "bind"}}},
    {"HostConfig": {"Binds": [1, None, {"a": 1}, "vol:/x", "relative/p:/x"]}},
    {"HostConfig": {"Mounts": [None, "x", {"Type": "bind"}, {"Type": "bind", "Source": 3},
                               {"Type": "bind", "Source": "rel"},
                               {"Type": "volume", "Source": "/looks/like/path"}]}},
    # Windows paths are not Cove's business yet; they must not crash anything.
    {"HostConfig": {"Binds": ["C:\\Users\\me:/src"],
                    "Mounts": [{"Type": "bind", "Source": "C:\\data"}]}},
])
def test_bind_sources_ignores_what_is_not_a_host_bind(body: dict) -> None:
    assert apiguard.bind_sources(body) == []


def test_bind_sources_type_is_case_insensitive_and_non_dict_is_empty() -> None:
    assert apiguard.bind_sources(
        {"HostConfig": {"Mounts": [{"Type": "Bind", "Source": "/a"}]}}) == ["/a"]
    assert apiguard.bind_sources([1, 2]) == []  # type: ignore[arg-type]


# -- policy: outside_shares ----------------------------------------------------------------


@pytest.mark.parametrize("src", [
    "/home/me", "/home/me/", "/home/me/project", "/home/me/a/../b", "//home/me/x",
    "/home/me/./x/", "/Volumes/disk/x", "/var/run/docker.sock", "/run/docker.sock",
    "/var/run/../run/docker.sock",
])
def test_inside_shares(src: str) -> None:
    assert apiguard.outside_shares([src], SHARES) == []


@pytest.mark.parametrize("src, norm", [
    ("/home/meadow", "/home/meadow"),  # a prefix of the string is not a parent folder
    ("/home/me2/x", "/home/me2/x"),
    ("/home", "/home"),
    ("/home/me/../other", "/home/other"),
    ("/opt/data/", "/opt/data"),
    ("//opt//data", "/opt/data"),
    ("/var/run/docker.sock.d", "/var/run/docker.sock.d"),
    ("/var/run/docker.sock/../x", "/var/run/x"),
    ("/var/run", "/var/run"),
])
def test_outside_shares(src: str, norm: str) -> None:
    assert apiguard.outside_shares([src], SHARES) == [norm]


def test_outside_shares_share_forms_and_order() -> None:
    assert apiguard.outside_shares(["/home/me/x"], ["/home/me/"]) == []
    assert apiguard.outside_shares(["/home/me/x"], ["//home/me"]) == []
    assert apiguard.outside_shares(["/a", "/etc/x", "/b/c"], ["/"]) == []
    assert apiguard.outside_shares(["/b", "/a", "/b/", "/home/me/x"], SHARES) == ["/b", "/a"]
    assert apiguard.outside_shares(["/a"], []) == ["/a"]
    # Shares that are not absolute POSIX paths share nothing; odd sources are skipped.
    assert apiguard.outside_shares(["/a", "C:\\x", ""], ["C:\\", "", "rel"]) == ["/a"]


def test_outside_shares_allowed_is_exact_and_replaceable() -> None:
    assert apiguard.outside_shares(["/var/run/docker.sock"], [], allowed=()) == [
        "/var/run/docker.sock"]
    assert apiguard.outside_shares(["/x/y", "/x/y/z"], [], allowed=("/x/y/",)) == ["/x/y/z"]


# -- policy: the message -------------------------------------------------------------------


@pytest.mark.parametrize("path, folder", [
    ("/opt/data", "/opt/data"),
    ("/opt/data/sub/deeper", "/opt/data"),
    ("/srv", "/srv"),
    ("/var/lib/app/x", "/var/lib/app"),  # /var/lib holds the VM's own docker folder
    ("/var/log/app", "/var/log"),
    ("/etc/nginx/nginx.conf", None),
    ("/usr/local/bin", None),
    ("/var/run/x", None),
    ("/", None),
])
def test_suggested_share(path: str, folder: str | None) -> None:
    assert apiguard.suggested_share(path, is_file=lambda p: False) == folder


def test_suggested_share_of_a_file_is_its_folder() -> None:
    files = {"/opt/app.conf", "/app.conf", "/var/lib/app.conf"}
    assert apiguard.suggested_share("/opt/app.conf", files.__contains__) == "/opt"
    assert apiguard.suggested_share("/app.conf", files.__contains__) is None
    assert apiguard.suggested_share("/var/lib/app.conf", files.__contains__) is None
    assert apiguard.suggested_share("/opt/x/app.conf", files.__contains__) == "/opt/x"


def test_refusal_names_path_shares_and_fix() -> None:
    msg = apiguard.refusal(["/opt/data/x", "/srv", "/etc/y"], ["/home/me", "/Volumes"])
    assert "/opt/data/x (and 2 more)" in msg
    assert "/home/me, /Volumes" in msg
    assert "`cove shares add /opt/data`" in msg
    assert "Settings > Shared folders" in msg
    assert "restart Cove" in msg
    assert "\n" not in msg


def test_refusal_single_path_no_shares() -> None:
    msg = apiguard.refusal(["/opt/data"], [])
    assert "/opt/data is not in a folder" in msg
    assert "more" not in msg
    assert "no folder is shared" in msg
    assert "Share it with `cove shares add /opt/data`" in msg


def test_refusal_for_a_vm_folder_says_it_cannot_be_shared() -> None:
    msg = apiguard.refusal(["/etc/nginx"], ["/home/me"])
    assert "/etc is one of the VM's own folders" in msg
    assert "cove shares add /etc" not in msg
    assert "shared folder" in msg


# -- policy: make_check --------------------------------------------------------------------


def _create(binds: list[str] | None = None, mounts: list[dict] | None = None,
            **extra: object) -> bytes:
    hc: dict[str, object] = {}
    if binds is not None:
        hc["Binds"] = binds
    if mounts is not None:
        hc["Mounts"] = mounts
    return json.dumps({"Image": "alpine", "Cmd": ["true"], "HostConfig": hc,
                       **extra}).encode()


def test_make_check_refuses_and_passes() -> None:
    seen: list[list[str]] = []
    check = apiguard.make_check(lambda: list(SHARES), seen.append)
    msg = check("POST", "/containers/create", _create(["/opt/data:/d", "/home/me/a:/a"]))
    assert msg is not None and "/opt/data" in msg
    assert seen == []  # a refused container binds nothing
    assert check("POST", "/containers/create",
                 _create(["/home/me/a/../b:/b", "/var/run/docker.sock:/var/run/docker.sock"],
                         [{"Type": "bind", "Source": "/Volumes/x", "Target": "/x"}])) is None
    assert seen == [["/home/me/b", "/Volumes/x"]]
    assert check("POST", "/containers/create", _create(["vol:/v"])) is None
    assert check("POST", "/containers/create",
                 _create(["/var/run/docker.sock:/var/run/docker.sock"])) is None
    assert seen == [["/home/me/b", "/Volumes/x"]]  # nothing to watch: not called


@pytest.mark.parametrize("body", [b"", b"{", b"\xff\xfe\x00", b"[1]", b"null", b'"x"'])
def test_make_check_lets_the_engine_answer_bad_json(body: bytes) -> None:
    assert apiguard.make_check(lambda: [])("POST", "/containers/create", body) is None


def test_make_check_reads_shares_each_time_and_survives_on_binds_errors() -> None:
    shares: list[str] = []

    def boom(paths: list[str]) -> None:
        raise RuntimeError("watcher broke")

    check = apiguard.make_check(lambda: shares, boom)
    body = _create(["/opt/data:/d"])
    assert check("POST", "/containers/create", body) is not None
    shares.append("/opt")
    assert check("POST", "/containers/create", body) is None


@pytest.mark.parametrize("method, target, create", [
    ("POST", "/containers/create", True),
    ("POST", "/containers/create?name=web", True),
    ("POST", "/v1.45/containers/create?name=web&platform=linux", True),
    ("POST", "/v1/containers/create", True),
    ("POST", "/containers/create/", True),
    ("POST", "http://docker/v1.45/containers/create", True),
    ("GET", "/containers/create", False),
    ("post", "/containers/create", False),
    ("POST", "/containers/created", False),
    ("POST", "/v1.45/containers/abc/start", False),
    ("POST", "/x/containers/create", False),
    ("POST", "/v1.45/containers/create/x", False),
])
def test_which_requests_are_creations(method: str, target: str, create: bool) -> None:
    req = apiguard._parse_head(f"{method} {target} HTTP/1.1\r\nHost: d\r\n\r\n".encode())
    assert req is not None and req.is_create is create


@pytest.mark.parametrize("head", [
    b"GET / HTTP/2.0\r\n\r\n",
    b"GET  / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad name: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
])
def test_heads_not_followed(head: bytes) -> None:
    assert apiguard._parse_head(head) is None


def test_head_fields() -> None:
    req = apiguard._parse_head(
        b"POST /x HTTP/1.1\r\ncontent-LENGTH: 5, 5\r\nconnection: keep-alive, Upgrade\r\n"
        b"EXPECT: 100-Continue\r\n\r\n")
    assert req is not None
    assert (req.length, req.chunked, req.upgrade, req.close, req.expect_continue) == (
        5, False, True, False, True)
    req = apiguard._parse_head(b"POST /x HTTP/1.0\r\nTransfer-Encoding: gzip, chunked\r\n"
                               b"Content-Length: 9\r\n\r\n")
    assert req is not None
    assert (req.length, req.chunked, req.upgrade, req.close) == (None, True, False, True)


# -- the relay -----------------------------------------------------------------------------


@pytest.fixture(params=["splice", "copy"])
def copy_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Relay tests run with splice(2) (Linux) and with the portable user-space copy."""
    if request.param == "copy":
        monkeypatch.setattr(relay, "SPLICE", False)
    return str(request.param)


class Reader:
    """HTTP/1.1 message framing on one end of a socketpair, for the test's own ends."""

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
        fields = {k.strip().lower(): v.strip() for k, _, v in
                  (ln.partition(b":") for ln in head.split(b"\r\n")[1:] if ln)}
        if fields.get(b"transfer-encoding", b"").lower().endswith(b"chunked"):
            out = b""
            while True:
                size_line = self.line()
                out += size_line
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    break
                out += self.exact(size + 2)
            while True:
                trailer = self.line()
                out += trailer
                if trailer == b"\r\n":
                    return out
        return self.exact(int(fields.get(b"content-length", b"0")))

    def rest(self) -> bytes:
        while self._fill():
            pass
        data, self.buf = self.buf, b""
        return data


def _response(status: str, body: bytes, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class FakeEngine:
    """Answers each request with 200 and {"n": <its number>}; an upgrade with 101, then
    it sends b"container output" and records raw bytes until EOF. `raw` mode skips HTTP:
    it records everything and answers b"raw reply" once it saw `expect_raw` bytes."""

    def __init__(self, sock: socket.socket, raw: int = 0) -> None:
        self.sock = sock
        self.reader = Reader(sock)
        self.requests: list[bytes] = []  # head + raw body, as received
        self.after_upgrade = b""
        self.raw_expected = raw
        self.raw = b""
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            if self.raw_expected:
                self.raw = self.reader.exact(self.raw_expected)
                self.sock.sendall(b"raw reply")
                self.raw += self.reader.rest()
                self.sock.shutdown(socket.SHUT_WR)
                return
            while (head := self.reader.head()) is not None:
                body = self.reader.body(head)
                self.requests.append(head + body)
                if b"\r\nupgrade:" in head.lower():
                    self.sock.sendall(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\n"
                                      b"Upgrade: tcp\r\n\r\ncontainer output")
                    self.after_upgrade = self.reader.rest()
                    break
                n = json.dumps({"n": len(self.requests)}).encode()
                self.sock.sendall(_response("200 OK", n))
            self.sock.shutdown(socket.SHUT_WR)
        except BaseException as e:  # reported by join()
            self.error = e

    def join(self) -> None:
        self.thread.join(10)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


class Guard:
    """client <-> [a  guarded_pipe  b] <-> engine."""

    def __init__(self, check: apiguard.Check | None = None,
                 on_binds: Callable[[list[str]], None] | None = None, raw: int = 0) -> None:
        self.checked: list[tuple[str, str, bytes]] = []
        policy = check or apiguard.make_check(lambda: list(SHARES))

        def recording(method: str, path: str, body: bytes) -> str | None:
            self.checked.append((method, path, body))
            return policy(method, path, body)

        self.client, a = socket.socketpair()
        b, engine = socket.socketpair()
        for s in (self.client, engine):
            s.settimeout(10)
        self.reader = Reader(self.client)
        self.engine = FakeEngine(engine, raw=raw)
        self.thread = threading.Thread(target=apiguard.guarded_pipe,
                                       args=(a, b, recording, on_binds))
        self.thread.start()

    def response(self) -> tuple[bytes, bytes]:
        head = self.reader.head()
        assert head is not None
        return head, self.reader.body(head)

    def finish(self) -> None:
        """Half-close as a client does, and check that everything ends and is closed."""
        self.client.shutdown(socket.SHUT_WR)
        assert self.reader.rest() == b""
        self.engine.join()
        self.thread.join(10)
        assert not self.thread.is_alive()

    def close(self) -> None:
        self.client.close()
        self.engine.sock.close()
        self.thread.join(10)
        self.engine.thread.join(10)


@pytest.fixture
def guards(copy_mode: str) -> Iterator[Callable[..., Guard]]:
    made: list[Guard] = []

    def make(*args: object, **kw: object) -> Guard:
        g = Guard(*args, **kw)  # type: ignore[arg-type]
        made.append(g)
        return g

    yield make
    for g in made:
        g.close()


def _request(method: str, target: str, body: bytes = b"", extra: str = "") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
    return (f"{method} {target} HTTP/1.1\r\nHost: api.moby.localhost\r\n"
            f"User-Agent: Docker-Client/27.0.3 (linux)\r\n{extra}{length}"
            "Content-Type: application/json\r\n\r\n").encode() + body


INSIDE = _create(["/home/me/project:/src", "/var/run/docker.sock:/var/run/docker.sock",
                  "/home/me/./project:/again"])
OUTSIDE = _create(["/home/me/project:/src", "/opt/data:/data", "/srv/x:/x"])


def test_create_inside_the_shares_is_forwarded_byte_exact(guards: Callable[..., Guard]) -> None:
    g = guards()
    req = _request("POST", "/v1.45/containers/create?name=web", INSIDE)
    g.client.sendall(req)
    head, body = g.response()
    assert head.startswith(b"HTTP/1.1 200 OK") and json.loads(body) == {"n": 1}
    assert g.checked == [("POST", "/v1.45/containers/create?name=web", INSIDE)]
    g.finish()
    assert g.engine.requests == [req]


def test_create_outside_is_refused_and_the_connection_goes_on(
        guards: Callable[..., Guard]) -> None:
    g = guards()
    g.client.sendall(_request("POST", "/v1.45/containers/create?name=web", OUTSIDE))
    head, body = g.response()
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"\r\nContent-Type: application/json\r\n" in head
    assert b"Connection: close" not in head
    message = json.loads(body)["message"]
    assert message.startswith("bind mount source /opt/data (and 1 more) is not in a folder")
    assert "cove shares add /opt/data" in message
    # The same keep-alive connection still works, and the engine never saw the refusal.
    ping = _request("GET", "/_ping")
    g.client.sendall(ping)
    head, body = g.response()
    assert head.startswith(b"HTTP/1.1 200 OK") and json.loads(body) == {"n": 1}
    inside = _request("POST", "/containers/create", INSIDE)
    g.client.sendall(inside)
    assert json.loads(g.response()[1]) == {"n": 2}
    g.finish()
    assert g.engine.requests == [ping, inside]


def test_refusal_with_connection_close_ends_the_connection(
        guards: Callable[..., Guard]) -> None:
    g = guards()
    g.client.sendall(_request("POST", "/containers/create", OUTSIDE, "Connection: close\r\n"))
    head, _ = g.response()
    assert head.startswith(b"HTTP/1.1 400 ") and b"\r\nConnection: close\r\n" in head
    assert g.reader.rest() == b""  # the guard ended the engine stream; the engine closed
    g.engine.join()
    g.thread.join(10)
    assert not g.thread.is_alive() and g.engine.requests == []


def test_pipelined_requests_in_one_send(guards: Callable[..., Guard]) -> None:
    g = guards()
    reqs = [_request("GET", "/_ping"), _request("POST", "/containers/create", OUTSIDE),
            _request("POST", "/containers/create", INSIDE), _request("GET", "/version")]
    g.client.sendall(b"".join(reqs))
    statuses = [g.response()[0].split(b"\r\n")[0] for _ in reqs]
    # The refusal may overtake the engine's answer to the ping (see the module docs);
    # each response arrives whole.
    assert sorted(statuses) == sorted([b"HTTP/1.1 200 OK"] * 3 + [b"HTTP/1.1 400 Bad Request"])
    g.finish()
    assert g.engine.requests == [reqs[0], reqs[2], reqs[3]]


def test_chunked_bodies_are_forwarded_byte_exact(guards: Callable[..., Guard]) -> None:
    g = guards()
    payload = os.urandom(300_000)
    chunks = b"".join(f"{n:x}\r\n".encode() + payload[i:i + n] + b"\r\n"
                      for i, n in [(0, 10), (10, 100_000), (100_010, 199_990)])
    body = b"A;ext=1\r\n" + b"x" * 10 + b"\r\n" + chunks + b"0\r\nX-Trailer: yes\r\n\r\n"
    req = (b"POST /v1.45/build?t=x HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n"
           b"Content-Type: application/x-tar\r\n\r\n")
    for i in range(0, len(body), 4096):  # the framing arrives in pieces
        if i == 0:
            g.client.sendall(req)
        g.client.sendall(body[i:i + 4096])
    assert json.loads(g.response()[1]) == {"n": 1}
    # A chunked create is not checked (Docker's clients send creates with a length).
    chunked_create = (b"POST /containers/create HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                      + f"{len(OUTSIDE):x}\r\n".encode() + OUTSIDE + b"\r\n0\r\n\r\n")
    g.client.sendall(chunked_create)
    assert json.loads(g.response()[1]) == {"n": 2}
    g.finish()
    assert g.engine.requests == [req + body, chunked_create]
    assert g.checked == []


def test_upgrade_switches_to_raw_both_ways(guards: Callable[..., Guard]) -> None:
    g = guards()
    attach = _request("POST", "/v1.45/containers/abc/attach?stream=1&stdin=1&stdout=1",
                      extra="Connection: Upgrade\r\nUpgrade: tcp\r\n")
    g.client.sendall(attach)
    head = g.reader.head()
    assert head is not None and head.startswith(b"HTTP/1.1 101")
    assert g.reader.exact(len(b"container output")) == b"container output"
    # After the upgrade, bytes that look like a refused request are the container's stdin.
    typed = b"ls\n" + _request("POST", "/containers/create", OUTSIDE) + os.urandom(100_000)
    g.client.sendall(typed)
    g.finish()
    assert g.engine.requests == [attach]
    assert g.engine.after_upgrade == typed
    assert g.checked == []


def test_exec_start_body_then_upgrade(guards: Callable[..., Guard]) -> None:
    g = guards()
    body = b'{"Detach":false,"Tty":true}'
    start = _request("POST", "/v1.45/exec/abc/start", body,
                     extra="Connection: Upgrade\r\nUpgrade: tcp\r\n")
    g.client.sendall(start + b"echo hi\n")
    head = g.reader.head()
    assert head is not None and head.startswith(b"HTTP/1.1 101")
    assert g.reader.exact(len(b"container output")) == b"container output"
    g.finish()
    assert g.engine.requests == [start]
    assert g.engine.after_upgrade == b"echo hi\n"


@pytest.mark.parametrize("start", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"GET /_ping HTTP/1.1\nHost: d\n\n",  # bare LF: passed on at once, not held for CRLFs
    b"GET /_ping HTTP/9.9\r\n\r\n",
    b"POST /containers/create HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJ",  # no space where a method would end
])
def test_what_is_not_followed_passes_raw(guards: Callable[..., Guard], start: bytes) -> None:
    g = guards(raw=len(start))
    g.client.sendall(start)
    assert g.reader.exact(len(b"raw reply")) == b"raw reply"
    more = os.urandom(50_000)
    g.client.sendall(more)
    g.finish()
    assert g.engine.raw == start + more


def test_a_huge_head_passes_raw(guards: Callable[..., Guard]) -> None:
    start = b"GET /_ping HTTP/1.1\r\nX-Big: " + b"a" * (70 * 1024)
    g = guards(raw=len(start))
    g.client.sendall(start)
    assert g.reader.exact(len(b"raw reply")) == b"raw reply"
    g.finish()
    assert g.engine.raw == start


def test_eof_inside_a_request_is_passed_on(guards: Callable[..., Guard]) -> None:
    start = b"POST /containers/create HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"Ima"
    g = guards(raw=len(start))
    g.client.sendall(start)
    g.client.shutdown(socket.SHUT_WR)  # the client gave up in the middle of its body
    assert g.reader.rest() == b"raw reply"
    g.engine.join()
    g.thread.join(10)
    assert not g.thread.is_alive()
    assert g.engine.raw == start


def _dribble(sock: socket.socket, data: bytes, piece: int = 3) -> None:
    for i in range(0, len(data), piece):
        sock.sendall(data[i:i + piece])
        time.sleep(0.0005)


def test_heads_split_across_many_small_sends(guards: Callable[..., Guard]) -> None:
    g = guards()
    _dribble(g.client, _request("POST", "/containers/create", OUTSIDE))
    head, body = g.response()
    assert head.startswith(b"HTTP/1.1 400 ") and b"/opt/data" in body
    req = _request("POST", "/v1.44/containers/create", INSIDE)
    _dribble(g.client, req, piece=1)
    assert json.loads(g.response()[1]) == {"n": 1}
    g.finish()
    assert g.engine.requests == [req]


def test_large_bodies_are_byte_exact(guards: Callable[..., Guard]) -> None:
    g = guards()
    archive = os.urandom(6 * 2**20 + 7)
    put = _request("PUT", "/v1.45/containers/abc/archive?path=/x", archive)
    big_create = _create(["/home/me/x:/x"], Labels={"pad": "p" * (3 * 2**20)})
    create = _request("POST", "/containers/create", big_create)
    sender = threading.Thread(target=g.client.sendall, args=(put + create,))
    sender.start()
    assert json.loads(g.response()[1]) == {"n": 1}
    assert json.loads(g.response()[1]) == {"n": 2}
    sender.join(10)
    g.finish()
    assert g.engine.requests == [put, create]
    assert [c[2] for c in g.checked] == [big_create]


def test_a_create_too_large_to_check_is_forwarded(guards: Callable[..., Guard],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apiguard, "CHECK_CAP", 100)
    g = guards()
    req = _request("POST", "/containers/create", OUTSIDE)
    g.client.sendall(req)
    assert json.loads(g.response()[1]) == {"n": 1}
    g.finish()
    assert g.engine.requests == [req] and g.checked == []


def test_expect_continue_gets_a_100_before_the_body(guards: Callable[..., Guard]) -> None:
    g = guards()
    req = _request("POST", "/containers/create", OUTSIDE, "Expect: 100-continue\r\n")
    head_only, body = req.split(b"\r\n\r\n", 1)
    g.client.sendall(head_only + b"\r\n\r\n")
    assert g.reader.head() == b"HTTP/1.1 100 Continue\r\n\r\n"
    g.client.sendall(body)
    assert g.response()[0].startswith(b"HTTP/1.1 400 ")
    g.finish()
    assert g.engine.requests == []


def test_a_failing_check_lets_the_request_through(guards: Callable[..., Guard]) -> None:
    def broken(method: str, path: str, body: bytes) -> str | None:
        raise KeyError("bug")

    g = guards(broken)
    req = _request("POST", "/containers/create", OUTSIDE)
    g.client.sendall(req)
    assert json.loads(g.response()[1]) == {"n": 1}
    g.finish()
    assert g.engine.requests == [req]


def test_on_binds_gets_the_sources_of_forwarded_creates(guards: Callable[..., Guard]) -> None:
    seen: list[list[str]] = []
    g = guards(None, seen.append)
    g.client.sendall(_request("POST", "/containers/create", OUTSIDE))
    g.response()
    g.client.sendall(_request("POST", "/containers/create", INSIDE))
    g.response()
    g.client.sendall(_request("POST", "/containers/create", b"not json"))
    g.response()
    g.finish()
    assert seen == [["/home/me/project"]]


def test_half_close_reaches_the_engine_which_still_answers(copy_mode: str) -> None:
    client, a = socket.socketpair()
    b, engine = socket.socketpair()
    with client, engine:
        for s in (client, engine):
            s.settimeout(10)
        t = threading.Thread(target=apiguard.guarded_pipe,
                             args=(a, b, apiguard.make_check(lambda: [])))
        t.start()
        req = _request("POST", "/containers/abc/wait", b"{}")
        client.sendall(req)
        client.shutdown(socket.SHUT_WR)
        got = Reader(engine)
        assert got.rest() == req  # the request, then EOF
        engine.sendall(_response("200 OK", b'{"StatusCode":0}'))
        engine.shutdown(socket.SHUT_WR)
        answer = Reader(client)
        head = answer.head()
        assert head is not None and answer.body(head) == b'{"StatusCode":0}'
        assert answer.rest() == b""
        t.join(10)
        assert not t.is_alive()
        assert a.fileno() == -1 and b.fileno() == -1  # the guard closed its sockets


def test_engine_reset_ends_the_relay(copy_mode: str) -> None:
    client, a = socket.socketpair()
    b, engine = socket.socketpair()
    with client:
        client.settimeout(10)
        t = threading.Thread(target=apiguard.guarded_pipe,
                             args=(a, b, apiguard.make_check(lambda: [])))
        t.start()
        engine.close()  # the VM went away
        client.sendall(_request("GET", "/_ping"))
        assert Reader(client).rest() == b""
        t.join(10)
        assert not t.is_alive()
