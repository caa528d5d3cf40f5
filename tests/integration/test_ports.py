"""Published ports reach the host's localhost (the first part of the ports work)."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
import uuid

import pytest

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
                      and p["state"] == "conflict"]
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


def _wait_refused(port: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not _refused(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _refused(port)


def test_publish_all_ports_with_capital_p(cove: Cove, hello_image: str) -> None:
    name = f"pall-{uuid.uuid4().hex[:6]}"
    cove.docker("run", "-d", "--name", name, "--expose", "80", "-P", hello_image, "sh", "-c",
                SERVE, name)
    try:
        # Docker picks the port in the VM; the host opens the same number.
        out = cove.docker("port", name, "80/tcp").stdout.split()[0]
        port = int(out.rsplit(":", 1)[1])
        assert _get(port)[0] == f"hello-{name}"
    finally:
        cove.docker("rm", "-f", name)
    assert _wait_refused(port)


def test_port_range_publishes_every_port(cove: Cove, hello_image: str) -> None:
    name = f"range-{uuid.uuid4().hex[:6]}"
    two = ("mkdir -p /www && echo hello-$0 > /www/index.html && httpd -p 81 -h /www && "
           "exec httpd -f -p 80 -h /www")
    cove.docker("run", "-d", "--name", name, "-p", "18090-18091:80-81", hello_image, "sh",
                "-c", two, name)
    try:
        assert _get(18090)[0] == f"hello-{name}"
        assert _get(18091)[0] == f"hello-{name}"
    finally:
        cove.docker("rm", "-f", name)
    assert _wait_refused(18090) and _wait_refused(18091)


def test_host_network_listener_is_forwarded(cove: Cove, hello_image: str) -> None:
    name = f"hostnet-{uuid.uuid4().hex[:6]}"
    serve = "mkdir -p /www && echo hello-$0 > /www/index.html && exec httpd -f -p 18092 -h /www"
    cove.docker("run", "-d", "--name", name, "--network", "host", hello_image, "sh", "-c",
                serve, name)
    try:
        assert _get(18092)[0] == f"hello-{name}"
        fwd = [p for p in _ports(cove) if p["host_port"] == 18092]
        assert fwd and fwd[0]["state"] == "forwarding"
    finally:
        cove.docker("rm", "-f", name)
    assert _wait_refused(18092)


def test_server_bound_to_the_containers_loopback_is_not_exposed(cove: Cove,
                                                                 hello_image: str) -> None:
    name = f"private-{uuid.uuid4().hex[:6]}"
    serve = ("mkdir -p /www && echo secret > /www/index.html && "
             "exec httpd -f -p 127.0.0.1:80 -h /www")
    cove.docker("run", "-d", "--name", name, "-p", "18093:80", hello_image, "sh", "-c", serve)
    try:
        deadline = time.monotonic() + 15
        while not [p for p in _ports(cove) if p["host_port"] == 18093]:
            assert time.monotonic() < deadline, _ports(cove)
            time.sleep(0.2)
        for _ in range(3):
            try:
                with urllib.request.urlopen("http://127.0.0.1:18093/", timeout=5) as r:
                    body = r.read()
            except (urllib.error.URLError, ConnectionError, OSError):
                body = b""
            assert b"secret" not in body
            time.sleep(0.5)
    finally:
        cove.docker("rm", "-f", name)


UDP_ECHO = ("import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.bind(('0.0.0.0', 53))\n"
            "while True:\n"
            "    data, peer = s.recvfrom(65535)\n"
            "    s.sendto(b'echo:' + data, peer)\n")


def test_udp_echo_through_a_published_port(cove: Cove, hello_image: str) -> None:
    """A UDP server behind -p 15353:53/udp: the VM's own python3, entered through the VM's
    mount namespace (busybox nsenter) but in the container's network namespace."""
    name = f"udp-{uuid.uuid4().hex[:6]}"
    cove.docker("run", "-d", "--name", name, "-p", "15353:53/udp", "--privileged",
                "--pid", "host", hello_image, "nsenter", "-t", "1", "-m", "python3", "-c",
                UDP_ECHO)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            deadline = time.monotonic() + 30
            got = b""
            while time.monotonic() < deadline and not got:
                s.sendto(b"ping-1", ("127.0.0.1", 15353))
                try:
                    got = s.recv(2048)
                except OSError:
                    pass
            assert got == b"echo:ping-1"
            # Several datagrams of one flow, each answered in order of sending.
            for i in range(2, 6):
                s.settimeout(5)
                s.sendto(b"x" * 1000 + str(i).encode(), ("127.0.0.1", 15353))
                assert s.recv(4096) == b"echo:" + b"x" * 1000 + str(i).encode()
        fwd = [p for p in _ports(cove) if p["host_port"] == 15353]
        assert fwd and fwd[0]["proto"] == "udp"
    finally:
        cove.docker("rm", "-f", name)


def test_ipv6_localhost_reaches_the_port_too(cove: Cove, hello_image: str) -> None:
    from desktop.services.portfwd import host_has_ipv6
    if not host_has_ipv6():
        pytest.skip("this host has no IPv6 loopback (the forwarder binds 127.0.0.1 only)")
    name = f"v6-{uuid.uuid4().hex[:6]}"
    cove.docker("run", "-d", "--name", name, "-p", "18094:80", hello_image, "sh", "-c",
                SERVE, name)
    try:
        _get(18094)
        with urllib.request.urlopen("http://[::1]:18094/", timeout=10) as r:
            assert r.read().decode().strip() == f"hello-{name}"
    finally:
        cove.docker("rm", "-f", name)


def test_compose_project_ports(cove: Cove, hello_image: str, tmp_path) -> None:
    project = f"p{uuid.uuid4().hex[:6]}"
    (tmp_path / "compose.yaml").write_text(
        "services:\n"
        "  web:\n"
        f"    image: {hello_image}\n"
        f"    command: [sh, -c, '{SERVE}', {project}]\n"
        "    ports: ['18095:80']\n")
    up = ["compose", "-p", project, "-f", str(tmp_path / "compose.yaml")]
    cove.docker(*up, "up", "-d")
    try:
        assert _get(18095)[0] == f"hello-{project}"
    finally:
        cove.docker(*up, "down", "-t", "1")
    assert _wait_refused(18095)


def test_the_vms_own_sockets_are_not_forwarded(cove: Cove) -> None:
    """The agent's link, SSH and resolver (and its upstream socket) stay inside the VM."""
    unknown = [p for p in _ports(cove) if not p["container"]]
    # Host-network servers are the only ports without a container; the tests that start
    # them remove them, and none uses UDP or the VM's service ports.
    assert not [p for p in unknown if p["proto"] == "udp"], unknown
    assert not [p for p in unknown if p["host_port"] in (22, 53, 10811)], unknown
