"""API round trip through Cove's socket, against the link's own floor; and idle cost.

Round trips: `GET /_ping` and `GET /containers/json` through docker.sock (host relay,
guest link, agent relay, dockerd), against a 1-byte echo over a fresh link stream (the
host relay and dockerd left out: the lowest-level exchange the link can do), all in one
run on one booted instance.

Idle: the backend's CPU time and RSS over 60 s with no containers, and QEMU's CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from benchmarks.common import Figure, bench_instance

ROOT = Path(__file__).resolve().parents[1]


def _http(sock_path: Path, url: str) -> float:
    t0 = time.perf_counter()
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock_path))
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n".encode())
        while s.recv(65536):
            pass
    return time.perf_counter() - t0


def _echo(link: object) -> float:
    t0 = time.perf_counter()
    s = link.open("echo")  # type: ignore[attr-defined]
    s.sendall(b"x")
    s.recv(1)
    s.close()
    return time.perf_counter() - t0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(runs: int, idle_seconds: float = 60) -> tuple[list[Figure], str]:
    from desktop.link import Link

    base, env, cove = bench_instance()
    inst = base / "h" / "bench"
    try:
        subprocess.run([*cove, "start", "-i", "bench", "--no-activate"], env=env, check=True,
                       capture_output=True, cwd=ROOT)
        st = json.loads(subprocess.run([*cove, "status", "-i", "bench", "--json"], env=env,
                                       check=True, capture_output=True, cwd=ROOT).stdout)
        token = json.loads((inst / "boot.json").read_text())["token"]
        link = Link("127.0.0.1", st["link_port"], token)
        sock = inst / "docker.sock"
        n = max(runs, 20)
        for _ in range(5):  # warm up both paths
            _http(sock, "/_ping")
            _echo(link)
        ping = [_http(sock, "/_ping") * 1000 for _ in range(n)]
        listing = [_http(sock, "/containers/json") * 1000 for _ in range(n)]
        echo = [_echo(link) * 1000 for _ in range(n)]
        time.sleep(5)  # let the boot's tail settle
        b0, q0 = _cpu_seconds(st["pid"]), _cpu_seconds(st["qemu_pid"])
        t0 = time.monotonic()
        rss = []
        while time.monotonic() - t0 < idle_seconds:
            rss.append(_rss_mib(st["pid"]))
            time.sleep(5)
        elapsed = time.monotonic() - t0
        backend_cpu = (_cpu_seconds(st["pid"]) - b0) / elapsed * 100
        qemu_cpu = (_cpu_seconds(st["qemu_pid"]) - q0) / elapsed * 100
        accel = st["accel"]
    finally:
        subprocess.run([*cove, "delete", "-i", "bench", "--force"], env=env,
                       capture_output=True, cwd=ROOT)
        shutil.rmtree(base, ignore_errors=True)
    return [
        Figure("API round trip: GET /_ping via docker.sock", "ms", ping,
               "1-byte echo on a new link stream", echo, target="<= 1.5x"),
        Figure("API round trip: GET /containers/json via docker.sock", "ms", listing,
               "1-byte echo on a new link stream", echo, target="<= 1.5x"),
        Figure("idle backend CPU over 60 s", "%", [backend_cpu],
               "idle QEMU CPU (same 60 s)", [qemu_cpu], target="<= 1 %"),
        Figure("idle backend RSS", "MiB", rss, "(no baseline: absolute)", rss,
               target="<= 80 MiB"),
    ], accel
