"""The Docker SDK for Python through Cove's socket: the same list as the CLI tests."""

from __future__ import annotations

import gc
import io
import os
import socket
import tarfile
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.integration.conftest import Cove


@pytest.fixture(autouse=True)
def _collect_sdk_sockets() -> Iterator[None]:
    """The SDK leaves some response sockets to the garbage collector (its streams, build
    logs): collect them here, where their ResourceWarning is the SDK's and not a test's."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _read_until(sock: socket.socket, needle: bytes, timeout: float = 60) -> bytes:
    sock.settimeout(timeout)
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    assert needle in buf, buf[-300:]
    return buf


def test_version(sdk: Any) -> None:
    v = sdk.version()
    assert v["Version"].startswith("26.")
    assert sdk.ping() is True


def test_run_remove_prints(sdk: Any, hello_image: str) -> None:
    out = sdk.containers.run(hello_image, ["echo", "hello via the sdk"], remove=True)
    assert out == b"hello via the sdk\n"


def test_interactive_tty_attach(sdk: Any, hello_image: str) -> None:
    api = sdk.api
    c = api.create_container(hello_image, ["sh"], tty=True, stdin_open=True,
                             name=_name("sdk-tty"))
    try:
        api.start(c)
        s = api.attach_socket(c, params={"stdin": 1, "stdout": 1, "stream": 1})
        raw: socket.socket = s._sock  # the upgraded connection, passed through untouched
        raw.sendall(b"echo sdk-$((40+2))\n")
        _read_until(raw, b"sdk-42")
        raw.sendall(b"\x10\x11")  # detach keys
        time.sleep(1)
        assert api.inspect_container(c)["State"]["Running"] is True
        raw.close()
        s.close()
    finally:
        api.remove_container(c, force=True)


def test_exec(sdk: Any, hello_image: str) -> None:
    c = sdk.containers.run(hello_image, ["sleep", "600"], detach=True, name=_name("sdk-exec"))
    try:
        code, out = c.exec_run(["sh", "-c", "echo exec-$((3*3))"])
        assert (code, out) == (0, b"exec-9\n")
        # An interactive exec over the upgraded socket.
        ex = sdk.api.exec_create(c.id, ["sh"], stdin=True, tty=True)
        s = sdk.api.exec_start(ex["Id"], tty=True, socket=True)
        raw: socket.socket = s._sock
        raw.sendall(b"echo in-exec; exit\n")
        _read_until(raw, b"in-exec")
        raw.close()
        s.close()
    finally:
        c.remove(force=True)


def test_logs_follow(sdk: Any, hello_image: str) -> None:
    c = sdk.containers.run(hello_image, ["sh", "-c", "for i in 0 1 2 3 4 5; do echo n-$i; "
                                         "sleep 0.2; done; sleep 600"], detach=True,
                           name=_name("sdk-logs"))
    try:
        lines: list[str] = []
        stream = c.logs(stream=True, follow=True)
        for chunk in stream:
            lines += chunk.decode().split()
            if len(lines) >= 6:
                break
        stream.close()
        assert lines[:6] == [f"n-{i}" for i in range(6)]
    finally:
        c.remove(force=True)


def test_put_and_get_archive(sdk: Any, hello_image: str) -> None:
    c = sdk.containers.run(hello_image, ["sleep", "600"], detach=True, name=_name("sdk-cp"))
    try:
        data = os.urandom(2 * 2**20)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("blob.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        assert c.put_archive("/tmp", buf.getvalue()) is True
        stream, stat = c.get_archive("/tmp/blob.bin")
        assert stat["size"] == len(data)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.extractfile("blob.bin")
            assert member is not None and member.read() == data
    finally:
        c.remove(force=True)


def test_build(sdk: Any, hello_image: str, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM {hello_image}\nRUN echo sdk-built > /b\n")
    tag = _name("sdk-built")
    image, build_log = sdk.images.build(path=str(tmp_path), tag=tag, rm=True)
    assert any("Successfully built" in str(entry.get("stream", "")) for entry in build_log)
    try:
        assert sdk.containers.run(tag, ["cat", "/b"], remove=True) == b"sdk-built\n"
    finally:
        sdk.images.remove(image.id, force=True)


def test_events(sdk: Any, hello_image: str) -> None:
    name = _name("sdk-ev")
    since = int(time.time()) - 1
    sdk.containers.run(hello_image, ["true"], name=name, remove=True)
    events = sdk.events(since=since, until=int(time.time()) + 1, decode=True,
                        filters={"container": name})
    try:
        actions = {e["Action"] for e in events}
    finally:
        events.close()
    assert {"create", "start", "die", "destroy"} <= actions


def test_list_stop_remove(sdk: Any, hello_image: str) -> None:
    c = sdk.containers.run(hello_image, ["sleep", "600"], detach=True, name=_name("sdk-ps"))
    assert c.name in [x.name for x in sdk.containers.list()]
    c.stop(timeout=1)
    c.reload()
    assert c.status == "exited"
    assert c.name in [x.name for x in sdk.containers.list(all=True)]
    c.remove()
    assert c.name not in [x.name for x in sdk.containers.list(all=True)]
    try:
        sdk.containers.get(c.id)
        raise AssertionError("the container still exists")
    except docker.errors.NotFound:
        pass


def test_sdk_from_env_uses_the_context_socket(cove: Cove) -> None:
    client = docker.DockerClient(base_url=f"unix://{cove.socket}")
    try:
        assert client.info()["Name"] == "cove"
    finally:
        client.close()
