"""The container boundary on the real VM: what an ordinary container can reach of Cove's
own doors (the link and SSH forwards, the boot secret)."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator

import psutil
import pytest

from tests.integration.conftest import Cove
from tests.integration.test_host_and_time import host_server  # noqa: F401 - a fixture

GATEWAY = "10.0.2.2"  # the host's loopback, seen from the VM (QEMU user networking)


def _connect(cove: Cove, image: str, network: str, port: int) -> str:
    """What a container on `network` gets from a TCP connection to the host's `port`
    through the gateway: the peer's first bytes and nc's exit status."""
    got = cove.docker("run", "--rm", "--network", network, image, "sh", "-c",
                      f"echo x | nc -w 3 {GATEWAY} {port}; echo rc=$?", check=False)
    return got.stdout + got.stderr


@pytest.fixture
def network(cove: Cove, request: pytest.FixtureRequest) -> Iterator[str]:
    name = request.param
    if name == "user-defined":
        name = f"net-{uuid.uuid4().hex[:6]}"
        cove.docker("network", "create", name)
    yield name
    if request.param == "user-defined":
        cove.docker("network", "rm", name, check=False)


@pytest.mark.parametrize("network", ["bridge", "user-defined", "host"], indirect=True)
def test_a_container_cannot_hairpin_into_the_link_or_ssh(cove: Cove, hello_image: str,
                                                        network: str,
                                                        host_server: int) -> None:  # noqa: F811
    st = cove.status()
    # The same path reaches the host's own loopback services (Docker Desktop's default),
    # so a refusal below is the guard's, not a broken route.
    assert "rc=0" in _connect(cove, hello_image, network, host_server)
    ssh = _connect(cove, hello_image, network, st["ssh_port"])
    assert "SSH-2.0" not in ssh and "rc=0" not in ssh, ssh
    link = _connect(cove, hello_image, network, st["link_port"])
    assert "rc=0" not in link, link
    # The host's own connections through the same forwards still work.
    assert cove.cove("shell", "true").returncode == 0
    assert cove.status()["state"] == "running"


def test_the_boot_secret_is_gone_from_sysfs(cove: Cove, hello_image: str) -> None:
    token = json.loads((cove.folder / "boot.json").read_text())["token"]
    # /sys unmasked, as `--security-opt systempaths=unconfined` leaves it; and the VM's
    # own view, which a privileged helper or a bind of /sys would show.
    got = cove.docker("run", "--rm", "--security-opt", "systempaths=unconfined", hello_image,
                      "sh", "-c", "ls /sys/firmware; cat /sys/firmware/qemu_fw_cfg/by_name/"
                      "opt/org.cove/boot/raw", check=False)
    assert token not in got.stdout
    assert "qemu_fw_cfg" not in got.stdout
    vm = cove.cove("shell", "ls", "/sys/firmware", check=False)
    assert vm.returncode == 0 and "qemu_fw_cfg" not in vm.stdout, vm


PING = b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n"

# Run in the VM (its own Python, the agent's): every TCP listener of the VM, probed as the
# host side is below; prints one JSON object {"<addr>:<port>": "<first bytes>"}.
VM_PROBE = r"""
import json, socket, subprocess
out = {}
for line in subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout.splitlines():
    local = line.split()[3]
    host, _, port = local.rpartition(":")
    host = host.strip("[]").split("%")[0]
    host = "127.0.0.1" if host in ("*", "0.0.0.0") else ("::1" if host == "::" else host)
    try:
        s = socket.create_connection((host, int(port)), timeout=3)
        s.settimeout(3)
        s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        got = s.recv(4096)
        s.close()
    except OSError as e:
        got = repr(e).encode()
    out[f"{host}:{port}"] = got.decode("latin-1")
print(json.dumps(out))
"""


def _probe_tcp(host: str, port: int) -> bytes:
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            s.settimeout(3)
            s.sendall(PING)
            return s.recv(4096)
    except OSError as e:
        return repr(e).encode()


def _probe_unix(path: str) -> bytes:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(3)
            s.connect(path)
            s.sendall(PING)
            return s.recv(4096)
    except OSError as e:
        return repr(e).encode()


def _answers_the_engine_api(reply: bytes) -> bool:
    return b"api-version" in reply.lower()


def test_no_listener_of_coves_but_the_socket_answers_the_engine_api(cove: Cove) -> None:
    """Every socket Cove's processes listen on, on the host (the backend, QEMU and its
    helpers) and in the VM, is sent an engine API ping: only the instance's docker.sock
    answers it (on the host it is the one door to the engine, checked by its guard)."""
    st = cove.status()
    procs = [psutil.Process(st["pid"])]
    procs += procs[0].children(recursive=True)
    if st.get("qemu_pid"):
        qemu = psutil.Process(st["qemu_pid"])
        procs += [qemu, *qemu.children(recursive=True)]
    pids = {p.pid for p in procs}
    tcp, unix = set(), set()
    for c in psutil.net_connections(kind="inet") + psutil.net_connections(kind="unix"):
        if c.pid in pids and c.status in (psutil.CONN_LISTEN, psutil.CONN_NONE) and c.laddr:
            if c.family == socket.AF_UNIX:
                unix.add(c.laddr)
            elif c.type == socket.SOCK_STREAM:
                tcp.add((c.laddr.ip, c.laddr.port))
    docker_sock = str(cove.folder / "docker.sock")
    assert docker_sock in unix, unix
    assert _answers_the_engine_api(_probe_unix(docker_sock))  # the probe can tell
    host = {f"unix:{p}": _probe_unix(p) for p in unix if p != docker_sock}
    host |= {f"{ip}:{port}": _probe_tcp("127.0.0.1" if ip == "0.0.0.0" else ip, port)
             for ip, port in tcp}
    assert {st["link_port"], st["ssh_port"]} <= {port for _, port in tcp}, tcp
    assert not [k for k, v in host.items() if _answers_the_engine_api(v)], host
    got = cove.cove("shell", "python3", "-c", VM_PROBE)  # quoted for the VM's shell by cove
    vm = json.loads(got.stdout.strip().splitlines()[-1])
    assert vm, "no listener found in the VM"
    assert not [k for k, v in vm.items() if _answers_the_engine_api(v.encode("latin-1"))], vm

