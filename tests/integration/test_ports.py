"""Published ports reach the host's localhost (the first part of the ports work)."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
import uuid

from tests.integration.conftest import Cove

SERVE = "mkdir -p /www && echo hello-$0 > /www/index.html && exec httpd -f -p 80 -h /www"


def _get(port: int, timeout: float = 20) -> tuple[str, float]:
    """GET / on 127.0.0.1:port, retrying until the server answers; (body, seconds)."""
    t0 = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - t0 < timeout:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                return r.read().decode().strip(), time.monotonic() - t0
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            last = e
            time.sleep(0.1)
    raise AssertionError(f"127.0.0.1:{port} did not answer: {last}")


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True


def _ports(cove: Cove) -> list[dict]:
    return json.loads(cove.cove("ports", "--json").stdout)


def test_published_port_reaches_the_host(cove: Cove, hello_image: str) -> None:
    name = f"web-{uuid.uuid4().hex[:6]}"
    cove.docker("run", "-d", "--name", name, "-p", "18081:80", hello_image, "sh", "-c",
                SERVE, name)
    try:
        body, _ = _get(18081)
        assert body == f"hello-{name}"
        fwd = [p for p in _ports(cove) if p["host_port"] == 18081]
        assert fwd and fwd[0]["state"] == "forwarding" and fwd[0]["container"] == name
        assert fwd[0]["host_addresses"][0] == "127.0.0.1"  # all interfaces: not by default
        table = cove.cove("ports").stdout
        assert "127.0.0.1:18081" in table and name in table
    finally:
        cove.docker("rm", "-f", name)
    deadline = time.monotonic() + 5
    while not _refused(18081) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _refused(18081)


def test_loopback_publish_form(cove: Cove, hello_image: str) -> None:
    name = f"lo-{uuid.uuid4().hex[:6]}"
    cove.docker("run", "-d", "--name", name, "-p", "127.0.0.1:18083:80", hello_image, "sh",
                "-c", SERVE, name)
    try:
        assert _get(18083)[0] == f"hello-{name}"
    finally:
        cove.docker("rm", "-f", name)


def test_port_held_on_the_host_is_reported_then_forwarded(cove: Cove,
                                                          hello_image: str) -> None:
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 18082))
    holder.listen(1)
    name = f"busy-{uuid.uuid4().hex[:6]}"
    try:
        cove.docker("run", "-d", "--name", name, "-p", "18082:80", hello_image, "sh", "-c",
                    SERVE, name)
        deadline = time.monotonic() + 15
        failed: list[dict] = []
        while not failed and time.monotonic() < deadline:
            failed = [p for p in _ports(cove) if p["host_port"] == 18082
                      and p["state"] == "failed"]
            time.sleep(0.2)
        assert failed, _ports(cove)
        assert "already in use" in failed[0]["reason"]
        assert "already in use" in cove.cove("status").stdout
        running = cove.docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip()
        assert running == "true"  # the container keeps running
        holder.close()
        assert _get(18082)[0] == f"hello-{name}"
    finally:
        holder.close()
        cove.docker("rm", "-f", name, check=False)
