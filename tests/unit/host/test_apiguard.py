"""The docker.sock guard (desktop.services.apiguard): which requests it checks, how it reads
their bodies, the bind-mount policy, and the relay between socketpairs with a fake engine
that parses requests and answers them (tests.helpers.docker_http)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from desktop.services import apiguard
from desktop.services.apiguard import body as guard_body
from desktop.services.apiguard import relay as guard_relay
from desktop.services.apiguard import routes
from tests.helpers.docker_http import (
    SHARES,
    Guard,
    Reader,
    bare_guard,
    chunked,
    create,
    request,
    response,
)

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


def test_bind_sources_a_lone_path_is_a_target_not_a_source() -> None:
    # The engine reads "/data" alone as an anonymous volume at /data in the container.
    assert apiguard.bind_sources({"HostConfig": {"Binds": ["/data", "/a:/b:ro"]}}) == ["/a"]


# -- which requests are checked ------------------------------------------------------------


@pytest.mark.parametrize("method, target, kind", [
    ("POST", "/containers/create", routes.CONTAINER),
    ("POST", "/containers/create?name=web", routes.CONTAINER),
    ("POST", "/v1.45/containers/create?name=web&platform=linux", routes.CONTAINER),
    ("POST", "/v1/containers/create", routes.CONTAINER),
    ("POST", "/v1.45.0/containers/create", routes.CONTAINER),
    ("POST", "/v1.45./containers/create", routes.CONTAINER),
    ("POST", "/containers/create/", routes.CONTAINER),
    ("POST", "//containers//create", routes.CONTAINER),
    ("POST", "/v1.45//containers/./create", routes.CONTAINER),
    ("POST", "/containers/x/../create", routes.CONTAINER),
    ("POST", "/containers/%63reate", routes.CONTAINER),
    ("POST", "/containers%2Fcreate", routes.CONTAINER),
    ("POST", "/%761.45/containers/create", routes.CONTAINER),
    ("POST", "http://docker/v1.45/containers/create", routes.CONTAINER),
    ("POST", "HTTP://d:2375/containers/create?x", routes.CONTAINER),
    ("POST", "unix:/containers/create", routes.CONTAINER),
    ("POST", "/volumes/create", routes.VOLUME),
    ("POST", "/v1.45/services/create", routes.SERVICE),
    ("POST", "/services/web/update?version=3", routes.SERVICE),
    ("GET", "/containers/create", None),
    ("post", "/containers/create", None),
    ("POST", "/containers/created", None),
    ("POST", "/Containers/create", None),
    ("POST", "/v1.45/containers/abc/start", None),
    ("POST", "/x/containers/create", None),
    ("POST", "/v1.45/containers/create/x", None),
    ("POST", "/containers/create%3Fx", None),
    ("POST", "/services/a/b/update", None),
    ("POST", "/vx/containers/create", None),
])
def test_which_requests_are_checked(method: str, target: str, kind: str | None) -> None:
    assert routes.checked_kind(method, target) == kind


@pytest.mark.parametrize("target, hijack", [
    ("/v1.45/containers/abc/attach?stream=1", True),
    ("/containers/a/b/attach", True),
    ("/exec/abc/start", True),
    ("/v1.45/exec/abc/json", False),
    ("/containers/abc/logs", False),
    ("/containers/attach", False),
])
def test_which_requests_may_be_hijacked(target: str, hijack: bool) -> None:
    assert routes.may_hijack("POST", target) is hijack
    assert routes.may_hijack("GET", target) is False


# -- reading bodies as the engine does -----------------------------------------------------


def test_keys_are_matched_as_go_matches_them() -> None:
    doc = guard_body.parse(b'{"hostconfig": {"BINDS": ["/a:/a"], "mounts": [{"type": "bind",'
                           b' "\xc5\xbfource": "/b"}], "Mount\\u017f": [{"TYPE": "bind",'
                           b' "source": "/c"}]}}')
    assert apiguard.bind_sources(doc) == ["/a", "/b", "/c"]
    assert guard_body.fold("ho\u017ftconfig") == guard_body.fold("HostConfig") == "HOSTCONFIG"
    assert guard_body.fold("\u0131d") == "ID" and guard_body.fold("Ä") == "Ä"


def test_every_duplicate_is_considered() -> None:
    # Go lets the last Source win; decoding a second Mounts into the first reuses its
    # entries, so Type "bind" from the first holds for the Source of the second.
    doc = guard_body.parse(b'{"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/a"}],'
                           b' "Mounts": [{"Source": "/b"}, {"Type": "volume", "Source": "v"}]},'
                           b' "HostConfig": {"Binds": ["/c:/c"]}, "Binds": ["/d:/d"]}')
    assert sorted(apiguard.bind_sources(doc)) == ["/a", "/b", "/c", "/d"]


def test_bind_volumes_are_bind_mounts() -> None:
    vol = {"Type": "volume", "Source": "etc", "Target": "/x", "VolumeOptions": {
        "DriverConfig": {"Name": "local", "Options": {"type": "none", "o": "bind",
                                                      "device": "/etc"}}}}
    assert apiguard.bind_sources(create_doc(mounts=[vol])) == ["/etc"]
    vol["VolumeOptions"]["DriverConfig"]["Options"]["o"] = "addr=10.0.0.1,rw"  # type: ignore[index]
    assert apiguard.bind_sources(create_doc(mounts=[vol])) == []
    opts = {"Name": "v", "DriverOpts": {"type": "none", "o": "rbind,ro", "device": "srv/x"}}
    assert apiguard.bind_sources(opts, routes.VOLUME) == ["/srv/x"]  # from dockerd's "/"
    assert apiguard.bind_sources({"DriverOpts": {"device": "/etc"}}, routes.VOLUME) == []


def test_service_mounts_are_checked() -> None:
    spec = {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "nginx", "Mounts": [
        {"Type": "bind", "Source": "/srv/www", "Target": "/www"}]}}}
    assert apiguard.bind_sources(spec, routes.SERVICE) == ["/srv/www"]
    assert apiguard.bind_sources(spec, routes.CONTAINER) == []


@pytest.mark.parametrize("body, problem", [
    (b'{"Image": "alpine\xff"}', "is not valid UTF-8 (byte 0xff at offset 17)"),
    (b"{", "is not valid JSON"),
    (b"{} {}", "is not valid JSON (Extra data"),
    (b'{"a": NaN}', "is not valid JSON (NaN is not JSON)"),
    (b"\xef\xbb\xbf{}", "is not valid JSON"),
    (b"[" * 100_000, "nested too deeply"),
])
def test_bodies_that_are_not_utf8_json(body: bytes, problem: str) -> None:
    with pytest.raises(guard_body.BodyError) as e:
        guard_body.parse(body)
    assert problem in str(e.value)


def test_dumps_writes_what_parse_read() -> None:
    text = (b'{"a":1.50,"A":[1e400,-0,12345678901234567890123],"b":{"c":null,"d":true},'
            b'"e":"\\ud800 \\u00e9"}')
    assert guard_body.dumps(guard_body.parse(text)).encode() == text
    assert json.loads(guard_body.dumps({"x": [1, 2.5, "y", None]})) == {"x": [1, 2.5, "y", None]}


# -- policy: make_check --------------------------------------------------------------------


def create_doc(binds: list[str] | None = None, mounts: list[dict] | None = None) -> dict:
    return json.loads(create(binds, mounts))


def test_make_check_refuses_and_passes() -> None:
    seen: list[list[str]] = []
    check = apiguard.make_check(lambda: list(SHARES), seen.append)
    msg = check("POST", "/containers/create", create(["/opt/data:/d", "/home/me/a:/a"]))
    assert isinstance(msg, str) and "/opt/data" in msg
    assert seen == []  # a refused container binds nothing
    assert check("POST", "/containers/create",
                 create(["/home/me/a/../b:/b", "/var/run/docker.sock:/var/run/docker.sock"],
                        [{"Type": "bind", "Source": "/Volumes/x", "Target": "/x"}])) is None
    assert seen == [["/home/me/b", "/Volumes/x"]]
    assert check("POST", "/containers/create", create(["vol:/v"])) is None
    assert check("POST", "/containers/create",
                 create(["/var/run/docker.sock:/var/run/docker.sock"])) is None
    assert seen == [["/home/me/b", "/Volumes/x"]]  # nothing to watch: not called
    # Not a checked request: passes whatever its body.
    assert check("POST", "/containers/abc/start", b"\xff") is None


@pytest.mark.parametrize("body", [b"", b"[1]", b"null", b'"x"', b"3"])
def test_make_check_passes_what_cannot_bind(body: bytes) -> None:
    assert apiguard.make_check(lambda: [])("POST", "/containers/create", body) is None


@pytest.mark.parametrize("body", [b"{", b"\xff\xfe\x00", b" ", b'{"Binds": ["/etc:/x"]}x'])
def test_make_check_refuses_what_it_cannot_read(body: bytes) -> None:
    msg = apiguard.make_check(lambda: [])("POST", "/v1.45/volumes/create", body)
    assert isinstance(msg, str)
    assert msg.startswith("the body of POST /v1.45/volumes/create is not valid ")
    assert "volume creation" in msg and "send the body as JSON in UTF-8" in msg


def test_make_check_reads_shares_each_time_and_survives_on_binds_errors() -> None:
    shares: list[str] = []

    def boom(paths: list[str]) -> None:
        raise RuntimeError("watcher broke")

    check = apiguard.make_check(lambda: shares, boom)
    body = create(["/opt/data:/d"])
    assert check("POST", "/containers/create", body) is not None
    shares.append("/opt")
    assert check("POST", "/containers/create", body) is None


# -- the relay -----------------------------------------------------------------------------


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


INSIDE = create(["/home/me/project:/src", "/var/run/docker.sock:/var/run/docker.sock",
                 "/home/me/./project:/again"])
OUTSIDE = create(["/home/me/project:/src", "/opt/data:/data", "/srv/x:/x"])
ETC = create(["/etc:/x"])


def _sender(sock: socket.socket, data: bytes) -> threading.Thread:
    """Send `data` on a thread (the guard may stop reading it: that is no error here)."""
    def send() -> None:
        try:
            sock.sendall(data)
        except OSError:
            pass

    t = threading.Thread(target=send)
    t.start()
    return t


def _refused(g: Guard, status: int = 400) -> str:
    """The message of the refusal the client gets next."""
    head, body = g.response()
    assert head.startswith(b"HTTP/1.1 %d " % status), head
    assert b"\r\nContent-Type: application/json\r\n" in head
    message = json.loads(body)["message"]
    assert isinstance(message, str) and "\n" not in message
    return message


def _refused_alone(g: Guard, data: bytes) -> str:
    """The message of the refusal of `data`, after which the connection ends cleanly and
    the engine has seen nothing."""
    g.client.sendall(data)
    message = _refused(g)
    g.finish()
    assert g.engine.requests == []
    return message


def _ok(g: Guard) -> int:
    """The number the fake engine gave the response the client gets next."""
    head, body = g.response()
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    return int(json.loads(body)["n"])


def test_create_inside_the_shares_is_forwarded_byte_exact(guards: Callable[..., Guard]) -> None:
    g = guards()
    req = request("POST", "/v1.45/containers/create?name=web", INSIDE)
    g.client.sendall(req)
    assert _ok(g) == 1
    assert g.checked == [("POST", "/v1.45/containers/create?name=web", INSIDE)]
    g.finish()
    assert g.engine.requests == [req]


def test_create_outside_is_refused_and_the_connection_goes_on(
        guards: Callable[..., Guard]) -> None:
    g = guards()
    g.client.sendall(request("POST", "/v1.45/containers/create?name=web", OUTSIDE))
    head, body = g.response()
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\nContent-Type: application/json\r\n" in head
    assert b"Connection: close" not in head
    message = json.loads(body)["message"]
    assert message.startswith("bind mount source /opt/data (and 1 more) is not in a folder")
    assert "cove shares add /opt/data" in message
    # The same keep-alive connection still works, and the engine never saw the refusal.
    ping = request("GET", "/_ping")
    g.client.sendall(ping)
    assert _ok(g) == 1
    inside = request("POST", "/containers/create", INSIDE)
    g.client.sendall(inside)
    assert _ok(g) == 2
    g.finish()
    assert g.engine.requests == [ping, inside]


def test_refusal_with_connection_close_ends_the_connection(
        guards: Callable[..., Guard]) -> None:
    g = guards()
    g.client.sendall(request("POST", "/containers/create", OUTSIDE, "Connection: close\r\n"))
    head, _ = g.response()
    assert head.startswith(b"HTTP/1.1 400 ") and b"\r\nConnection: close\r\n" in head
    assert g.reader.rest() == b""  # the guard ended the engine stream; the engine closed
    g.ended()
    assert g.engine.requests == []


def test_pipelined_requests_in_one_send_are_answered_in_order(
        guards: Callable[..., Guard]) -> None:
    g = guards()
    reqs = [request("GET", "/_ping"), request("POST", "/containers/create", OUTSIDE),
            request("POST", "/containers/create", INSIDE), request("GET", "/version")]
    g.client.sendall(b"".join(reqs))
    assert _ok(g) == 1
    assert "/opt/data" in _refused(g)  # after the answer to the request before it
    assert [_ok(g), _ok(g)] == [2, 3]
    g.finish()
    assert g.engine.requests == [reqs[0], reqs[2], reqs[3]]


def test_nothing_after_a_request_that_closes_is_read(guards: Callable[..., Guard]) -> None:
    g = guards()
    last = request("GET", "/version", extra="Connection: close\r\n")
    g.client.sendall(last + b"garbage that is no request\r\n\r\n"
                     + request("POST", "/containers/create", ETC))
    assert _ok(g) == 1  # the engine's answer, whole, and no 400 for what followed
    g.closed_by_guard()
    assert g.engine.requests == [last]


def test_the_engine_closing_after_a_response_ends_the_connection(
        guards: Callable[..., Guard]) -> None:
    g = guards()
    g.client.sendall(request("GET", "/_ping", extra="X-Answer: close\r\n")
                     + request("POST", "/containers/create", ETC) + request("GET", "/version"))
    head, _ = g.response()
    assert b"Connection: close" in head
    assert g.reader.rest() == b""  # neither the refusal nor the version: the engine closed
    g.ended()
    assert len(g.engine.requests) == 1


def test_chunked_bodies_are_forwarded_in_chunks(guards: Callable[..., Guard]) -> None:
    g = guards()
    payload = os.urandom(300_000)
    body = (b"A;ext=1\r\n" + b"x" * 10 + b"\r\n"
            + chunked(payload, (10, 100_000, 199_990))[:-5] + b"0\r\nX-Trailer: yes\r\n\r\n")
    req = (b"POST /v1.45/build?t=x HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n"
           b"Content-Type: application/x-tar\r\n\r\n")
    g.client.sendall(req)
    for i in range(0, len(body), 4096):  # the framing arrives in pieces
        g.client.sendall(body[i:i + 4096])
    assert _ok(g) == 1
    g.finish()
    [got] = g.engine.received
    assert got.raw.startswith(req)  # the head as it was
    assert got.content == b"x" * 10 + payload
    assert got.trailers == [(b"X-Trailer", b"yes")]
    assert g.checked == []


def test_upgrade_switches_to_raw_both_ways(guards: Callable[..., Guard]) -> None:
    g = guards()
    attach = request("POST", "/v1.45/containers/abc/attach?stream=1&stdin=1&stdout=1",
                     extra="Connection: Upgrade\r\nUpgrade: tcp\r\n")
    g.client.sendall(attach)
    head = g.reader.head()
    assert head is not None and head.startswith(b"HTTP/1.1 101")
    assert g.reader.exact(len(b"container output")) == b"container output"
    # After the upgrade, bytes that look like a refused request are the container's stdin.
    typed = b"ls\n" + request("POST", "/containers/create", OUTSIDE) + os.urandom(100_000)
    g.client.sendall(typed)
    g.finish()
    assert g.engine.requests == [attach]
    assert g.engine.after_upgrade == typed
    assert g.checked == []


def test_exec_start_body_then_upgrade(guards: Callable[..., Guard]) -> None:
    g = guards()
    body = b'{"Detach":false,"Tty":true}'
    start = request("POST", "/v1.45/exec/abc/start", body,
                    extra="Connection: Upgrade\r\nUpgrade: tcp\r\n")
    g.client.sendall(start + b"echo hi\n")  # stdin sent before the 101 is not lost
    head = g.reader.head()
    assert head is not None and head.startswith(b"HTTP/1.1 101")
    assert g.reader.exact(len(b"container output")) == b"container output"
    g.finish()
    assert g.engine.requests == [start]
    assert g.engine.after_upgrade == b"echo hi\n"


def test_a_hijack_without_upgrade_is_raw_after_its_200(guards: Callable[..., Guard]) -> None:
    g = guards()
    attach = request("POST", "/containers/abc/attach?stream=1&stdin=1")
    typed = b"input " + request("POST", "/containers/create", ETC)
    g.client.sendall(attach + typed)
    head = g.reader.head()
    assert head is not None and head.startswith(b"HTTP/1.1 200 OK") and b"raw-stream" in head
    assert g.reader.exact(len(b"container output")) == b"container output"
    g.finish()
    assert g.engine.requests == [attach] and g.engine.after_upgrade == typed


def test_buildkit_session_upgrades_to_h2c(guards: Callable[..., Guard]) -> None:
    g = guards()
    session = request("POST", "/session", extra="Connection: Upgrade\r\nUpgrade: h2c\r\n"
                      "X-Docker-Expose-Session-Uuid: u\r\n")
    g.client.sendall(session)
    head = g.reader.head()
    assert head is not None and head.startswith(b"HTTP/1.1 101")
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(5000)
    g.client.sendall(preface)
    assert g.reader.exact(len(b"container output")) == b"container output"
    g.finish()
    assert g.engine.after_upgrade == preface


def test_a_streamed_response_then_the_next_request(guards: Callable[..., Guard]) -> None:
    g = guards()
    g.client.sendall(request("GET", "/v1.45/containers/abc/logs?follow=1&stdout=1"))
    head = g.reader.head()
    assert head is not None and b"\r\nTransfer-Encoding: chunked\r\n" in head
    assert g.reader.message(head)[1] == b'line 1\nline 2\n{"n": 1}'
    g.client.sendall(request("POST", "/containers/create", ETC))
    assert "/etc" in _refused(g)
    g.finish()


@pytest.mark.parametrize("start, status", [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # a TLS hello
    (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", 400),
    (b"GET /_ping HTTP/9.9\r\nHost: d\r\n\r\n", 505),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    (b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: nope\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: d\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nBad name: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 needs a Host
    (b"GET / HTTP/1.1\r\nHost: d\r\nX-Big: " + b"a" * (2 << 20) + b"\r\n\r\n", 431),
])
def test_what_is_not_http_is_answered_and_closed(guards: Callable[..., Guard], start: bytes,
                                                 status: int) -> None:
    g = guards()
    sender = _sender(g.client, start + ETC)
    message = _refused(g, status)
    assert "Cove's docker.sock" in message
    sender.join(10)
    g.closed_by_guard()
    assert g.engine.requests == []


def test_bare_lf_requests_are_read_as_the_engine_reads_them(
        guards: Callable[..., Guard]) -> None:
    g = guards()
    g.client.sendall(b"GET /_ping HTTP/1.1\nHost: d\n\n")
    assert _ok(g) == 1
    g.finish()
    assert g.engine.requests == [b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n"]


def test_eof_inside_a_request(guards: Callable[..., Guard]) -> None:
    g = guards()
    g.client.sendall(b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 100\r\n"
                     b"\r\n{\"Ima")
    g.client.shutdown(socket.SHUT_WR)  # the client gave up in the middle of its body
    g.closed_by_guard()
    assert g.engine.requests == []  # a checked request is sent whole or not at all


def test_eof_inside_a_streamed_body_reaches_the_engine(copy_mode: str) -> None:
    with bare_guard() as (client, engine):
        head = (b"PUT /containers/abc/archive?path=/x HTTP/1.1\r\nHost: d\r\n"
                b"Content-Length: 9\r\n\r\n")
        client.sendall(head + b"abc")
        client.shutdown(socket.SHUT_WR)
        assert Reader(engine).rest() == head + b"abc"  # then EOF, as the client did
        engine.shutdown(socket.SHUT_WR)
        assert Reader(client).rest() == b""


def _dribble(sock: socket.socket, data: bytes, piece: int = 3) -> None:
    for i in range(0, len(data), piece):
        sock.sendall(data[i:i + piece])
        time.sleep(0.0005)


def test_heads_split_across_many_small_sends(guards: Callable[..., Guard]) -> None:
    g = guards()
    _dribble(g.client, request("POST", "/containers/create", OUTSIDE))
    assert "/opt/data" in _refused(g)
    req = request("POST", "/v1.44/containers/create", INSIDE)
    _dribble(g.client, req, piece=1)
    assert _ok(g) == 1
    g.finish()
    assert g.engine.requests == [req]


def test_large_bodies_are_byte_exact(guards: Callable[..., Guard]) -> None:
    g = guards()
    archive = os.urandom(6 * 2**20 + 7)
    put = request("PUT", "/v1.45/containers/abc/archive?path=/x", archive)
    big_create = create(["/home/me/x:/x"], Labels={"pad": "p" * (3 * 2**20)})
    req = request("POST", "/containers/create", big_create)
    sender = _sender(g.client, put + req)
    assert _ok(g) == 1
    assert _ok(g) == 2
    sender.join(10)
    g.finish()
    assert g.engine.requests == [put, req]
    assert [c[2] for c in g.checked] == [big_create]


def test_expect_continue_gets_a_100_before_the_body(guards: Callable[..., Guard]) -> None:
    g = guards()
    req = request("POST", "/containers/create", INSIDE, "Expect: 100-continue\r\n")
    head_only, body = req.split(b"\r\n\r\n", 1)
    g.client.sendall(head_only + b"\r\n\r\n")
    assert g.reader.head() == b"HTTP/1.1 100 Continue\r\n\r\n"
    g.client.sendall(body)
    assert _ok(g) == 1
    g.client.sendall(request("POST", "/containers/create", OUTSIDE, "Expect: 100-continue\r\n"))
    assert g.reader.head() == b"HTTP/1.1 100 Continue\r\n\r\n"
    _refused(g)
    g.finish()
    # The engine gets the request without the Expect: the client had its 100 already.
    assert g.engine.requests == [req.replace(b"Expect: 100-continue\r\n", b"")]


def test_on_binds_gets_the_sources_of_forwarded_creates(guards: Callable[..., Guard]) -> None:
    seen: list[list[str]] = []
    g = guards(None, seen.append)
    g.client.sendall(request("POST", "/containers/create", OUTSIDE))
    _refused(g)
    g.client.sendall(request("POST", "/containers/create", INSIDE))
    _ok(g)
    g.client.sendall(request("POST", "/containers/create", b"not json"))
    _refused(g)
    g.client.sendall(request("POST", "/volumes/create", json.dumps(
        {"DriverOpts": {"o": "bind", "device": "/Volumes/d"}}).encode()))
    _ok(g)
    g.finish()
    assert seen == [["/home/me/project"], ["/Volumes/d"]]


def test_half_close_reaches_the_engine_which_still_answers(copy_mode: str) -> None:
    with bare_guard() as (client, engine):
        req = request("POST", "/containers/abc/wait", b"{}")
        client.sendall(req)
        client.shutdown(socket.SHUT_WR)
        got = Reader(engine)
        assert got.rest() == req  # the request, then EOF
        engine.sendall(response("200 OK", b'{"StatusCode":0}'))
        engine.shutdown(socket.SHUT_WR)
        answer = Reader(client)
        head = answer.head()
        assert head is not None and answer.body(head) == b'{"StatusCode":0}'
        assert answer.rest() == b""


def test_engine_reset_ends_the_relay(copy_mode: str) -> None:
    with bare_guard() as (client, engine):
        engine.close()  # the VM went away
        client.sendall(request("GET", "/_ping"))
        assert Reader(client).rest() == b""


def test_an_engine_h11_cannot_follow_is_relayed_raw(copy_mode: str) -> None:
    with bare_guard(tuple(SHARES)) as (client, engine):
        client.sendall(request("GET", "/_ping"))
        engine_side = Reader(engine)
        assert engine_side.head() is not None
        engine.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOKgarbage")
        answer = Reader(client)
        assert answer.exact(len(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOKgarbage"))
        # Requests are still read and checked.
        client.sendall(request("POST", "/containers/create", ETC) + request("GET", "/version"))
        head = answer.head()
        assert head is not None and head.startswith(b"HTTP/1.1 400 ")
        answer.body(head)
        assert engine_side.head() == request("GET", "/version")
        client.shutdown(socket.SHUT_WR)
        assert engine_side.rest() == b""
        engine.shutdown(socket.SHUT_WR)
        assert answer.rest() == b""


# -- what got past the hand-written framing before h11 -------------------------------------


def test_bypass_percent_encoded_path(guards: Callable[..., Guard]) -> None:
    g = guards()
    assert "/etc" in _refused_alone(g, request("POST", "/v1.45/containers/%63reate", ETC))


def test_bypass_three_part_version(guards: Callable[..., Guard]) -> None:
    g = guards()
    assert "/etc" in _refused_alone(g, request("POST", "/v1.45.0/containers/create", ETC))


@pytest.mark.parametrize("body", [
    b'{"Image": "alpine", "hostconfig": {"binds": ["/etc:/x"]}}',
    b'{"Image": "alpine", "HostConfig": {"mounts": [{"type": "bind", "source": "/etc",'
    b' "target": "/x"}]}}',
    b'{"Image": "alpine", "HOSTCONFIG": {"Mounts": [{"Type": "bind", "Source": "/home/me",'
    b' "source": "/etc", "Target": "/x"}]}}',  # Go: the last Source
    b'{"Image": "alpine", "HostConfig": {"Mounts": [{"Type": "bind", "Source": "/home/me",'
    b' "Target": "/x"}], "Mounts": [{"Source": "/etc"}]}}',  # Go reuses the entry
    b'{"Image": "alpine", "Binds": ["/etc:/x"]}',  # HostConfig's fields at the top level
])
def test_bypass_keys_of_other_case_and_duplicates(guards: Callable[..., Guard],
                                                 body: bytes) -> None:
    g = guards()
    message = _refused_alone(g, request("POST", "/containers/create", body))
    assert "bind mount source /etc is not in a folder" in message


def test_bypass_invalid_utf8(guards: Callable[..., Guard]) -> None:
    g = guards()
    body = b'{"Image": "alpine", "Labels": {"a": "\xc3("}, "HostConfig": {"Binds": ["/etc:/x"]}}'
    message = _refused_alone(g, request("POST", "/containers/create", body))
    assert "is not valid UTF-8 (byte 0xc3 at offset 37)" in message


def test_bypass_chunked_create(guards: Callable[..., Guard]) -> None:
    g = guards()
    head = (b"POST /containers/create HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\n\r\n")
    g.client.sendall(head + chunked(ETC))
    assert "/etc" in _refused(g)
    g.client.sendall(head + chunked(INSIDE, (5, 100)))  # checked, then sent with a length
    assert _ok(g) == 1
    g.finish()
    assert g.engine.requests == [head.replace(b"Transfer-Encoding: chunked",
                                              b"Content-Length: %d" % len(INSIDE)) + INSIDE]
    assert [c[2] for c in g.checked] == [ETC, INSIDE]


@pytest.mark.parametrize("earlier", [
    request("GET", "/_ping", extra="Connection: Upgrade\r\nUpgrade: h2c\r\n"),
    request("POST", "/containers/abc/attach", extra="Upgrade: tcp\r\n").replace(
        b"/attach", b"/attach/x"),  # not a hijack: the engine answers it as any other
])
def test_bypass_an_upgrade_the_engine_does_not_take(guards: Callable[..., Guard],
                                                    earlier: bytes) -> None:
    g = guards()
    g.client.sendall(earlier + request("POST", "/containers/create", ETC))
    assert _ok(g) == 1
    assert "/etc" in _refused(g)
    g.finish()
    assert len(g.engine.requests) == 1


def test_bypass_content_length_plus_zero(guards: Callable[..., Guard]) -> None:
    g = guards()
    g.client.sendall(b"POST /containers/abc/stop HTTP/1.1\r\nHost: d\r\nContent-Length: +0\r\n"
                     b"\r\n" + request("POST", "/containers/create", ETC))
    assert "bad Content-Length" in _refused(g)
    g.closed_by_guard()
    assert g.engine.requests == []


def test_bypass_bind_volume_in_a_mount(guards: Callable[..., Guard]) -> None:
    g = guards()
    vol = {"Type": "volume", "Source": "etc", "Target": "/x", "VolumeOptions": {
        "DriverConfig": {"Name": "local", "Options": {"type": "none", "o": "bind",
                                                      "device": "/etc"}}}}
    g.client.sendall(request("POST", "/containers/create", create(mounts=[vol])))
    assert "bind mount source /etc is not in a folder" in _refused(g)
    g.finish()
    assert g.engine.requests == []


@pytest.mark.parametrize("opts", [
    {"type": "none", "o": "bind", "device": "/etc"},
    {"type": "none", "o": "rbind,ro", "device": "/opt/data/x"},
])
def test_bypass_bind_volume_creation(guards: Callable[..., Guard], opts: dict) -> None:
    g = guards()
    req = request("POST", "/v1.45/volumes/create", json.dumps(
        {"Name": "v", "Driver": "local", "DriverOpts": opts}).encode())
    g.client.sendall(req)
    assert f"bind mount source {opts['device']} is not in a folder" in _refused(g)
    inside = request("POST", "/v1.45/volumes/create", json.dumps(
        {"Name": "v", "DriverOpts": {**opts, "device": "/home/me/data"}}).encode())
    g.client.sendall(inside)
    assert _ok(g) == 1
    g.finish()
    assert g.engine.requests == [inside]


@pytest.mark.parametrize("target", ["/v1.45/services/create", "/services/web/update?version=4"])
def test_bypass_swarm_services(guards: Callable[..., Guard], target: str) -> None:
    g = guards()
    spec = {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "nginx", "Mounts": [
        {"Type": "bind", "Source": "/etc", "Target": "/x"}]}}}
    g.client.sendall(request("POST", target, json.dumps(spec).encode()))
    assert "bind mount source /etc is not in a folder" in _refused(g)
    g.finish()
    assert g.engine.requests == []


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_bypass_a_body_too_large_to_check(guards: Callable[..., Guard],
                                          monkeypatch: pytest.MonkeyPatch,
                                          framing: str) -> None:
    monkeypatch.setattr(guard_relay, "CHECK_CAP", 100)
    g = guards()
    big = create(["/etc:/x"], Labels={"pad": "p" * 200})
    if framing == "length":
        req = request("POST", "/containers/create", big)
    else:
        req = (b"POST /containers/create HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked"
               b"\r\n\r\n" + chunked(big, (30,)))
    sender = _sender(g.client, req)
    message = _refused(g, 413)
    assert message.startswith("the body of POST /containers/create is over 0 MiB")
    assert "Send a smaller body" in message
    sender.join(10)
    g.closed_by_guard()
    assert g.engine.requests == [] and g.checked == []


def test_bypass_a_failing_check(guards: Callable[..., Guard]) -> None:
    def broken(method: str, path: str, body: bytes) -> str | None:
        raise KeyError("bug")

    g = guards(broken)
    g.client.sendall(request("POST", "/containers/create", OUTSIDE))
    message = _refused(g, 500)
    assert message.startswith("Cove's docker.sock failed to check POST /containers/create "
                              "(KeyError: 'bug'), so it did not pass it to the engine")
    assert "`cove logs`" in message
    g.client.sendall(request("GET", "/_ping"))  # the connection goes on
    assert _ok(g) == 1
    g.finish()
    assert len(g.engine.requests) == 1
