"""Windows host paths on Linux: shares (desktop.settings.parse_shares with Windows path
rules), where a share appears in the VM (desktop.platform.paths), and the docker socket's
guard rewriting the bind mounts of container creations (desktop.apiguard)."""

from __future__ import annotations

import json
import socket
import sys
import threading
from typing import Any

import pytest

from desktop import settings
from desktop.platform.paths import VM_MOUNT_ROOT, PosixPaths, WindowsPaths
from desktop.services import apiguard
from desktop.settings import Settings, SettingsError, parse_shares

WIN = WindowsPaths()
SHARES = ["C:\\Users\\Me", "D:\\work"]


# -- paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize("given, norm", [
    ("C:\\Users\\me", "C:\\Users\\me"),
    ("c:\\Users\\me\\", "C:\\Users\\me"),
    ("c:/Users/me/src", "C:\\Users\\me\\src"),
    ("C:\\Users\\\\me\\.\\src\\..\\src", "C:\\Users\\me\\src"),
    ("//c/Users/me", "C:\\Users\\me"),
    ("d:\\", "D:\\"),
])
def test_normalize(given: str, norm: str) -> None:
    assert WIN.normalize(given) == norm


@pytest.mark.parametrize("given, why", [
    ("\\\\server\\share\\x", "network (UNC) path"),
    ("//server/share", "network (UNC) path"),
    ("\\\\?\\C:\\x", "network (UNC) path"),
    ("Users\\me", "not an absolute path"),
    ("C:Users\\me", "not an absolute path"),
    ("/home/me", "not an absolute path"),
    ("C:\\a|b", "characters Windows does not allow"),
    ("", "not a folder path"),
])
def test_normalize_refuses(given: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)")):
        WIN.normalize(given)


def test_under_ignores_case_and_needs_a_separator() -> None:
    assert WIN.under("c:\\users\\me\\src", "C:\\Users\\Me")
    assert WIN.under("C:\\Users\\Me", "C:\\Users\\Me")
    assert not WIN.under("C:\\Users\\Meadow", "C:\\Users\\Me")
    assert not WIN.under("D:\\Users\\Me", "C:\\Users\\Me")


def test_vm_paths_are_under_mnt_host_and_clear_of_the_vms_own_folders() -> None:
    assert VM_MOUNT_ROOT == "/mnt/host"
    assert WIN.vm_path("C:\\Users\\me") == "/mnt/host/c/Users/me"
    assert WIN.translate("c:\\users\\me\\src\\app", SHARES) == "/mnt/host/c/Users/Me/src/app"
    assert WIN.translate("D:\\WORK", SHARES) == "/mnt/host/d/work"
    assert WIN.translate("E:\\x", SHARES) is None
    for r in settings.VM_RESERVED:
        assert not (VM_MOUNT_ROOT + "/").startswith(r + "/")
        assert not r.startswith(VM_MOUNT_ROOT + "/")


@pytest.mark.parametrize("bind, split", [
    ("C:\\Users\\me\\src:/src:ro", ("C:\\Users\\me\\src", ":/src:ro")),
    ("c:/Users/me/src:/src", ("c:/Users/me/src", ":/src")),
    ("//c/Users/me/src:/src", ("//c/Users/me/src", ":/src")),
    ("//var/run/docker.sock:/var/run/docker.sock", None),
    ("/var/run/docker.sock:/var/run/docker.sock", None),
    ("named:/data", None),
    ("c:/onlysource", None),
    ("v:/v", None),  # volume "v" at /v
])
def test_split_bind(bind: str, split: tuple[str, str] | None) -> None:
    assert WIN.split_bind(bind) == split


def test_suggested_share() -> None:
    assert WIN.suggested_share("C:\\data\\proj\\x", lambda p: False) == "C:\\data\\proj"
    assert WIN.suggested_share("C:\\data", lambda p: False) == "C:\\data"
    assert WIN.suggested_share("C:\\data\\f.txt", lambda p: p.endswith(".txt")) == "C:\\data"
    assert WIN.suggested_share("C:\\f.txt", lambda p: True) is None
    assert WIN.suggested_share("C:\\", lambda p: False) is None


# -- shares setting ------------------------------------------------------------------------


def test_parse_shares_normalizes_windows_paths() -> None:
    got = parse_shares(["c:/Users/me", {"path": "D:\\work\\", "transport": "9p"}], WIN)
    assert got == [("C:\\Users\\me", "auto"), ("D:\\work", "9p")]


@pytest.mark.parametrize("shares, msg", [
    (["\\\\nas\\projects"], "network (UNC) path"),
    (["projects"], "not an absolute path"),
    (["C:\\"], "whole drive"),
    (["C:\\Users\\me", "c:\\users\\ME\\src"], "overlap"),
    # A path that would be reserved on Linux is a host folder here, under /mnt/host.
])
def test_parse_shares_refuses_windows_paths(shares: list[str], msg: str) -> None:
    with pytest.raises(SettingsError, match=r"^shares: .*" + msg.replace("(", r"\(")
                       .replace(")", r"\)")):
        parse_shares(shares, WIN)


def test_parse_shares_windows_folders_are_not_the_vms() -> None:
    assert parse_shares(["C:\\etc", "C:\\var\\lib\\docker"], WIN) == [
        ("C:\\etc", "auto"), ("C:\\var\\lib\\docker", "auto")]


def test_parse_shares_posix_rules_are_unchanged() -> None:
    assert parse_shares(["/home/me"], PosixPaths()) == [("/home/me", "auto")]
    with pytest.raises(SettingsError, match="not an absolute path"):
        parse_shares(["C:\\Users\\me"], PosixPaths())


def test_default_shares_on_windows_is_the_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("USERPROFILE", "c:\\Users\\me")
    assert settings.default_shares() == ["C:\\Users\\me"]
    monkeypatch.setenv("USERPROFILE", "\\\\server\\home\\me")
    assert settings.default_shares() == []


def test_docker_engine_pipe_setting() -> None:
    assert Settings().docker_engine_pipe is True
    with pytest.raises(SettingsError, match="docker_engine_pipe: must be true or false"):
        Settings.from_json({"docker_engine_pipe": "yes", "shares": []})
    assert Settings.from_json({"docker_engine_pipe": False, "shares": []}) \
        .docker_engine_pipe is False


# -- the guard -----------------------------------------------------------------------------


def _create(binds: list[str] | None = None, mounts: list[dict] | None = None) -> dict:
    hc: dict[str, Any] = {}
    if binds is not None:
        hc["Binds"] = binds
    if mounts is not None:
        hc["Mounts"] = mounts
    return {"Image": "alpine", "HostConfig": hc}


def test_windows_binds_rewrites_binds_and_mounts() -> None:
    doc = _create(
        ["C:\\Users\\me\\src:/src:ro", "c:/Users/me/src:/src2", "//d/work/x:/x",
         "vol:/v", "/var/run/docker.sock:/var/run/docker.sock"],
        [{"Type": "bind", "Source": "c:\\users\\me\\data", "Target": "/data"},
         {"Type": "volume", "Source": "C:\\not\\a\\bind", "Target": "/v2"},
         {"Type": "bind", "Source": "/mnt/host/c/Users/Me", "Target": "/raw"}])
    found, outside = apiguard.windows_binds(doc, SHARES, WIN)
    assert outside == []
    assert found == ["C:\\Users\\me\\src", "D:\\work\\x", "C:\\users\\me\\data"]
    hc = doc["HostConfig"]
    assert hc["Binds"] == ["/mnt/host/c/Users/Me/src:/src:ro", "/mnt/host/c/Users/Me/src:/src2",
                           "/mnt/host/d/work/x:/x", "vol:/v",
                           "/var/run/docker.sock:/var/run/docker.sock"]
    assert [m["Source"] for m in hc["Mounts"]] == [
        "/mnt/host/c/Users/Me/data", "C:\\not\\a\\bind", "/mnt/host/c/Users/Me"]


def test_windows_binds_reports_what_is_outside() -> None:
    doc = _create(["E:\\data\\proj:/p", "C:\\Users\\me:/h"],
                  [{"Type": "bind", "Source": "e:/data/proj", "Target": "/q"}])
    found, outside = apiguard.windows_binds(doc, SHARES, WIN)
    assert outside == ["E:\\data\\proj"]
    assert doc["HostConfig"]["Binds"][0] == "E:\\data\\proj:/p"  # left for the refusal


def test_check_rewrites_the_body() -> None:
    seen: list[list[str]] = []
    check = apiguard.make_check(lambda: list(SHARES), seen.append, paths=WIN)
    out = check("POST", "/v1.45/containers/create",
                json.dumps(_create(["C:\\Users\\me\\src:/src"])).encode())
    assert isinstance(out, bytes)
    assert json.loads(out)["HostConfig"]["Binds"] == ["/mnt/host/c/Users/Me/src:/src"]
    assert seen == [["C:\\Users\\me\\src"]]
    # Nothing of Windows to translate: the request passes as it is.
    assert check("POST", "/containers/create",
                 json.dumps(_create(["/var/run/docker.sock:/s", "v:/v"])).encode()) is None
    assert isinstance(check("POST", "/containers/create", b"not json"), str)


def test_check_refuses_a_folder_outside_the_shares() -> None:
    check = apiguard.make_check(lambda: list(SHARES), paths=WIN, is_file=lambda p: False)
    out = check("POST", "/containers/create",
                json.dumps(_create(["e:/data/proj/src:/src"])).encode())
    assert isinstance(out, str)
    assert out.startswith("bind mount source E:\\data\\proj\\src is not in a folder Cove "
                          "shares with its VM")
    assert "shared folders: C:\\Users\\Me, D:\\work" in out
    assert "`cove shares add E:\\data\\proj`" in out and "restart Cove" in out


def test_check_refuses_a_drive_root() -> None:
    check = apiguard.make_check(lambda: [], paths=WIN, is_file=lambda p: False)
    out = check("POST", "/containers/create", json.dumps(_create(["F:\\:/f"])).encode())
    assert isinstance(out, str) and "A whole drive cannot be shared" in out
    assert "no folder is shared with the VM" in out


def test_volume_and_service_sources_are_rewritten_too() -> None:
    check = apiguard.make_check(lambda: list(SHARES), paths=WIN)
    out = check("POST", "/volumes/create", json.dumps(
        {"DriverOpts": {"type": "none", "o": "bind", "device": "c:/users/me/db"}}).encode())
    assert isinstance(out, bytes)
    assert json.loads(out)["DriverOpts"]["device"] == "/mnt/host/c/Users/Me/db"
    spec = {"TaskTemplate": {"ContainerSpec": {"Mounts": [
        {"Type": "bind", "Source": "E:\\x", "Target": "/x"}]}}}
    out = check("POST", "/services/create", json.dumps(spec).encode())
    assert isinstance(out, str) and "E:\\x" in out
    # Keys of any case, as the engine reads them; the body keeps them as they were.
    out = check("POST", "/containers/create",
                b'{"hostconfig": {"binds": ["C:\\\\Users\\\\me\\\\src:/src"]}, "n": 1.0}')
    assert out == b'{"hostconfig":{"binds":["/mnt/host/c/Users/Me/src:/src"]},"n":1.0}'


def _read_request(s: socket.socket) -> tuple[bytes, bytes, bytes]:
    """(head, body by its Content-Length, what came after it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(65536)
    return head, body[:length], body[length:]


def test_the_relay_sends_the_rewritten_request_with_its_length() -> None:
    client, guard_client = socket.socketpair()
    guard_engine, engine = socket.socketpair()
    for s in (client, engine):
        s.settimeout(10)
    check = apiguard.make_check(lambda: list(SHARES), paths=WIN)
    t = threading.Thread(target=apiguard.guarded_pipe, args=(guard_client, guard_engine, check))
    t.start()
    body = json.dumps(_create(["C:\\Users\\me\\src:/src:ro"]), indent=1).encode()
    client.sendall(b"POST /v1.45/containers/create HTTP/1.1\r\nHost: docker\r\n"
                   b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                   + body + b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
    head, got, rest = _read_request(engine)
    assert head.startswith(b"POST /v1.45/containers/create HTTP/1.1\r\n")
    assert json.loads(got)["HostConfig"]["Binds"] == ["/mnt/host/c/Users/Me/src:/src:ro"]
    engine.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")
    while not rest.endswith(b"\r\n\r\n"):  # the next request, once the answer is over
        rest += engine.recv(1024)
    assert rest == b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"  # framing kept after it
    engine.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
    reply = b""
    while not reply.endswith(b"OK"):
        reply += client.recv(65536)
    assert reply.startswith(b"HTTP/1.1 201 Created\r\n")
    # An outside folder is answered by the guard; the engine never sees it.
    body = json.dumps(_create(["E:\\x\\y:/y"])).encode()
    client.sendall(b"POST /containers/create HTTP/1.1\r\nHost: docker\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(body) + body)
    reply = b""
    while b"}\n" not in reply:
        reply += client.recv(65536)
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"cove shares add E:\\\\x\\\\y" in reply
    client.shutdown(socket.SHUT_WR)
    assert engine.recv(10) == b""
    engine.close()
    t.join(10)
    assert not t.is_alive()
    client.close()
