"""API round trip through Cove's socket against a bare path and the link's floor; idle cost.

Round trips, all in one run on one booted instance, the paths interleaved:

* Cove: `GET /_ping` and `GET /containers/json` through docker.sock (the host relay, the
  guest link, the agent's relay, dockerd), a new connection per request as the docker
  CLI makes;
* bare (a benchmark-only configuration): the same requests over a QEMU user-networking
  forward straight to a TCP-to-docker.sock relay in the VM (no host side, no link, no
  authentication);
* link: the same requests on a `docker` stream of the guest link opened by the benchmark
  itself (Cove's path without the host relay): splits Cove's cost between the host and
  the guest;
* floor: a 1-byte echo over a new link stream (no relay on either side and no dockerd):
  the lowest-level exchange the link can do.

Idle: the backend's CPU time and RSS over 60 s with no containers, and QEMU's CPU.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from benchmarks.common import BenchVM, Figure, cpu_seconds, rss_mib

BARE_PORT = 19076
GUEST_PORT = 2376


def _request(s: socket.socket, url: str) -> None:
    s.sendall(f"GET {url} HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n".encode())
    while s.recv(65536):
        pass


def _via_unix(sock_path: Path, url: str) -> float:
    t0 = time.perf_counter()
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock_path))
        _request(s, url)
    return time.perf_counter() - t0


def _via_tcp(port: int, url: str) -> float:
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _request(s, url)
    return time.perf_counter() - t0


def _via_link(link: object, url: str) -> float:
    t0 = time.perf_counter()
    with link.open("docker") as s:  # type: ignore[attr-defined]
        _request(s, url)
    return time.perf_counter() - t0


def _echo(link: object) -> float:
    t0 = time.perf_counter()
    s = link.open("echo")  # type: ignore[attr-defined]
    s.sendall(b"x")
    s.recv(1)
    s.close()
    return time.perf_counter() - t0






def run(runs: int, idle_seconds: float = 60) -> tuple[list[Figure], str]:
    from desktop.link.tcp import TcpLink

    with BenchVM(hostfwd=f"tcp:127.0.0.1:{BARE_PORT}-:{GUEST_PORT}") as vm:
        st = vm.start()
        vm.bare_relay(BARE_PORT, GUEST_PORT)
        token = json.loads((vm.folder / "boot.json").read_text())["token"]
        link = TcpLink("127.0.0.1", st["link_port"], token)
        sock = vm.folder / "docker.sock"
        n = max(runs, 30)  # single round trips are cheap: take more of them
        for _ in range(5):  # warm up every path
            _via_unix(sock, "/_ping")
            _via_tcp(BARE_PORT, "/_ping")
            _echo(link)
        s: dict[str, list[float]] = {}
        for _ in range(n):
            for url in ("/_ping", "/containers/json"):
                s.setdefault(f"cove {url}", []).append(_via_unix(sock, url) * 1000)
                s.setdefault(f"bare {url}", []).append(_via_tcp(BARE_PORT, url) * 1000)
                s.setdefault(f"link {url}", []).append(_via_link(link, url) * 1000)
            s.setdefault("echo", []).append(_echo(link) * 1000)
        # Idle: with no containers (the bare relay's container goes first).
        subprocess.run([*vm.docker, "rm", "-f", "bare-relay"], env=vm.env,
                       capture_output=True)
        time.sleep(5)  # let the boot's tail settle
        b0, q0 = cpu_seconds(st["pid"]), cpu_seconds(st["qemu_pid"])
        t0 = time.monotonic()
        rss = []
        while time.monotonic() - t0 < idle_seconds:
            rss.append(rss_mib(st["pid"]))
            time.sleep(5)
        elapsed = time.monotonic() - t0
        backend_cpu = (cpu_seconds(st["pid"]) - b0) / elapsed * 100
        qemu_cpu = (cpu_seconds(st["qemu_pid"]) - q0) / elapsed * 100
        accel = st["accel"]
    figures = []
    for url in ("/_ping", "/containers/json"):
        figures += [
            Figure(f"API round trip: GET {url} via docker.sock", "ms", s[f"cove {url}"],
                   "the same over bare hostfwd to a relay in the VM", s[f"bare {url}"],
                   target="<= 1.5x"),
            Figure(f"API round trip: GET {url} on a link stream, no host relay", "ms",
                   s[f"link {url}"], "the same over bare hostfwd to a relay in the VM",
                   s[f"bare {url}"]),
            Figure(f"API round trip: GET {url} via docker.sock (against the link's floor)",
                   "ms", s[f"cove {url}"], "1-byte echo on a new link stream", s["echo"]),
        ]
    return figures + [
        Figure("idle backend CPU over 60 s", "%", [backend_cpu],
               "idle QEMU CPU (same 60 s)", [qemu_cpu], target="<= 1 %"),
        Figure("idle backend RSS", "MiB", rss, "(no baseline: absolute)", rss,
               target="<= 80 MiB"),
    ], accel
