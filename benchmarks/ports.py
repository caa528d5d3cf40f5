"""Published ports: Cove's forwarder against QEMU's own forward, on one booted instance.

One container serves a sink (reads to EOF, answers with the byte count) and a 1-byte
echo on port 5001, published in the VM as port 19002. The host reaches it two ways in
the same run, alternating sample by sample:

* Cove's path: 127.0.0.1:19002 on the host (the forwarder's listener), a stream of the
  guest link, the agent's relay, the engine's published port;
* the bare path: a QEMU user-networking forward (127.0.0.1:19001 -> guest 19002) added
  at boot, straight into the engine's published port.

Figures: upload throughput (host -> container), connection setup and first byte, and how
soon a published port answers after `docker run -d` returns and is released after
`docker rm -f` returns.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from benchmarks.common import BenchVM, Figure

ROOT = Path(__file__).resolve().parents[1]
BARE_PORT = 19001
PUBLISHED = 19002
UPLOAD_MIB = 64

# The VM's python3 (its mount namespace) in the container's network namespace.
VM_PYTHON = ["--privileged", "--pid", "host", "cove-hello", "nsenter", "-t", "1", "-m",
             "python3", "-c"]
SERVER = """
import socket, threading
def serve(c):
    with c:
        kind = c.recv(1)
        if kind == b"e":
            c.sendall(b"e")
            return
        n = 0
        buf = bytearray(1 << 20)
        while True:
            k = c.recv_into(buf)
            if not k:
                break
            n += k
        c.sendall(str(n).encode())
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5001))
s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def _upload(port: int, size: int) -> float:
    """MiB/s of `size` bytes sent to the sink, counted as acknowledged by it."""
    chunk = b"\0" * (1 << 20)
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(b"s")
        sent = 0
        while sent < size:
            s.sendall(chunk)
            sent += len(chunk)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            b = s.recv(64)
            if not b:
                break
            got += b
    elapsed = time.perf_counter() - t0
    if int(got or b"0") != size:
        raise RuntimeError(f"the sink on port {port} counted {got!r}, not {size}")
    return size / (1 << 20) / elapsed


def _connect_echo(port: int) -> float:
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"e")
        if s.recv(1) != b"e":
            raise RuntimeError(f"no echo on port {port}")
    return (time.perf_counter() - t0) * 1000


def _wait(pred: object, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError("timed out")


def _answers(port: int) -> bool:
    try:
        _connect_echo(port)
        return True
    except (OSError, RuntimeError):  # refused, or accepted and closed: not serving yet
        return False


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True


def run(runs: int) -> tuple[list[Figure], str]:
    from desktop.demo import build_hello_image

    with BenchVM(hostfwd=f"tcp:127.0.0.1:{BARE_PORT}-:{PUBLISHED}") as vm:
        docker, env = vm.docker, vm.env
        st = vm.start()
        build_hello_image(docker, "cove-hello", env=env)
        subprocess.run([*docker, "run", "-d", "--name", "sink", "-p", f"{PUBLISHED}:5001",
                        *VM_PYTHON, SERVER], env=env, check=True, capture_output=True)
        _wait(lambda: _answers(PUBLISHED) and _answers(BARE_PORT))
        size = UPLOAD_MIB << 20
        _upload(PUBLISHED, size >> 2), _upload(BARE_PORT, size >> 2)  # warm up
        cove_up, bare_up, cove_conn, bare_conn = [], [], [], []
        for _ in range(runs):
            cove_up.append(_upload(PUBLISHED, size))
            bare_up.append(_upload(BARE_PORT, size))
        for _ in range(max(runs, 20)):
            cove_conn.append(_connect_echo(PUBLISHED))
            bare_conn.append(_connect_echo(BARE_PORT))
        subprocess.run([*docker, "rm", "-f", "sink"], env=env, check=True,
                       capture_output=True)
        # Appearance and release: from the docker command's return to the host's port.
        appear, release, run_cmd = [], [], []
        for i in range(runs):
            port = 19010 + i
            t0 = time.perf_counter()
            subprocess.run([*docker, "run", "-d", "--name", f"p{i}", "-p", f"{port}:5001",
                            *VM_PYTHON, SERVER], env=env, check=True, capture_output=True)
            t1 = time.perf_counter()
            run_cmd.append(t1 - t0)
            # Counted once the host's listener exists (the container's server may still
            # be starting: python under emulation takes seconds).
            _wait(lambda port=port: not _refused(port), 30)
            appear.append(time.perf_counter() - t1)
            _wait(lambda port=port: _answers(port), 120)
            subprocess.run([*docker, "rm", "-f", f"p{i}"], env=env, check=True,
                           capture_output=True)
            t2 = time.perf_counter()
            _wait(lambda port=port: _refused(port), 30)
            release.append(time.perf_counter() - t2)
        accel = st["accel"]
        vm.keep_logs()
    return [
        Figure(f"upload {UPLOAD_MIB} MiB host -> container via published port", "MiB/s",
               cove_up, "QEMU hostfwd to the same guest port", bare_up,
               lower_is_better=False, target=">= 0.8x"),
        Figure("connect + 1-byte echo via published port", "ms", cove_conn,
               "QEMU hostfwd to the same guest port", bare_conn, target="<= 1.5x"),
        Figure("host port open after `docker run -d` returns", "s", appear,
               "`docker run -d` itself", run_cmd, target="<= 1 s"),
        Figure("host port released after `docker rm -f` returns", "s", release,
               "(no baseline: absolute)", release, target="<= 1 s"),
    ], accel
