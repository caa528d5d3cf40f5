"""host.docker.internal from containers, and a guest clock that follows the host's."""

from __future__ import annotations

import http.server
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.integration.conftest import Cove


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        body = f"from-the-host {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def host_server() -> Iterator[int]:
    """An HTTP server on the host's 127.0.0.1 only (as a developer's dev server)."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("network", ["bridge", "user-defined"])
def test_host_docker_internal_reaches_the_hosts_localhost(cove: Cove, hello_image: str,
                                                          host_server: int,
                                                          network: str) -> None:
    net = "bridge"
    if network == "user-defined":
        net = f"net-{uuid.uuid4().hex[:6]}"
        cove.docker("network", "create", net)
    try:
        for name in ("host.docker.internal", "gateway.docker.internal"):
            got = cove.docker("run", "--rm", "--network", net, hello_image, "wget", "-qO-",
                              f"http://{name}:{host_server}/{network}")
            assert got.stdout == f"from-the-host /{network}"
        # Other names still resolve through the VM's upstream resolver (an unknown name
        # fails as not found, quickly, instead of hanging).
        t0 = time.monotonic()
        bad = cove.docker("run", "--rm", "--network", net, hello_image, "nslookup",
                          "no-such-name.invalid", check=False)
        assert bad.returncode != 0
        assert time.monotonic() - t0 < 60
    finally:
        if net != "bridge":
            cove.docker("network", "rm", net, check=False)


def _guest_offset(cove: Cove) -> float:
    """Guest clock minus host clock, in seconds (from the agent's status)."""
    t0 = time.time_ns()
    st = cove.control("agent_status")
    t1 = time.time_ns()
    assert isinstance(st, dict)
    return (st["time_ns"] - (t0 + t1) / 2) / 1e9


def test_guest_clock_follows_a_host_clock_jump(cove: Cove, hello_image: str) -> None:
    assert abs(_guest_offset(cove)) < 2
    try:
        cove.control("clock_offset", seconds=3600)
        t0 = time.monotonic()
        while abs(_guest_offset(cove) - 3600) > 2:
            assert time.monotonic() - t0 < 15, f"guest is {_guest_offset(cove):.1f} s off"
            time.sleep(0.5)
        # Containers read the same clock.
        date = int(cove.docker("run", "--rm", hello_image, "date", "+%s").stdout)
        assert abs(date - (time.time() + 3600)) < 30
    finally:
        cove.control("clock_offset", seconds=0)
    t0 = time.monotonic()
    while abs(_guest_offset(cove)) > 2:
        assert time.monotonic() - t0 < 15, f"guest is {_guest_offset(cove):.1f} s off"
        time.sleep(0.5)
