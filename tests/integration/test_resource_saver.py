"""Resource Saver on the session's VM: idle, it rests (QEMU's vCPUs paused); the next
docker command, `docker run` or `cove shell` wakes it and works; a running container
keeps it awake. The session runs with the saver off; each test here turns it on for
itself (6 idle seconds) and off again."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Cove

IDLE_MINUTES = 0.1  # 6 s


def _qemu_status(cove: Cove) -> str:
    from desktop.drivers.qemu import qmp

    r = qmp.command(cove.folder / "qmp.sock", "query-status")
    assert r is not None, "QMP did not answer"
    return str(r["return"]["status"])


def _until(ok: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not ok():
        assert time.monotonic() - t0 < timeout, what
        time.sleep(0.2)
    return time.monotonic() - t0


@pytest.fixture
def saver(cove: Cove, hello_image: str) -> Iterator[None]:
    running = cove.docker("ps", "-q").stdout.split()
    assert not running, f"containers left running by earlier tests keep the VM awake: {running}"
    cove.control("resource_saver", minutes=IDLE_MINUTES)
    try:
        yield
    finally:
        cove.control("resource_saver", minutes=0)
        cove.control("wake")


def _resting(cove: Cove) -> None:
    _until(lambda: cove.status()["state"] == "resting", 90, "the idle VM did not rest")
    assert _qemu_status(cove) == "paused"


def test_an_idle_vm_rests_and_each_use_wakes_it(cove: Cove, hello_image: str,
                                                 saver: None) -> None:
    _resting(cove)
    ps = cove.docker("ps", "--format", "{{.Names}}")  # the request that wakes it
    assert ps.returncode == 0
    assert _qemu_status(cove) == "running"
    st = cove.status()
    assert st["state"] == "running" and st["resource_saver"]["wakes"] >= 1
    # The guest's clock stood still while it rested; it is set at the wake.
    _until(lambda: abs(float(cove.cove("shell", "date", "+%s.%N").stdout) - time.time())
           < 1.5, 10, "the guest's clock was not set after the wake")

    _resting(cove)
    assert cove.docker("run", "--rm", hello_image, "echo", "awake").stdout == "awake\n"

    _resting(cove)
    assert cove.cove("shell", "echo", "shell").stdout.strip() == "shell"  # SSH: `wake` first
    assert _qemu_status(cove) == "running"


def test_a_running_container_keeps_the_vm_awake_until_it_ends(
        cove: Cove, hello_image: str, saver: None) -> None:
    name = f"awake-{uuid.uuid4().hex[:6]}"
    cove.docker("run", "-d", "--name", name, hello_image, "sleep", "600")
    try:
        time.sleep(IDLE_MINUTES * 60 * 3)
        assert cove.status()["state"] == "running" and _qemu_status(cove) == "running"
        logs = cove.docker("logs", name)  # and the container is reachable as ever
        assert logs.returncode == 0
    finally:
        cove.docker("rm", "-f", name, check=False)
    _resting(cove)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for QEMU ({pid})")


def test_the_guest_gives_its_page_cache_back_to_the_host_before_it_rests(
        cove: Cove, saver: None) -> None:
    """300 MiB read into the guest's page cache is held by the host's QEMU; resting drops
    that cache (and every other file's) and free page reporting hands it back, so the
    host's QEMU holds less while the VM rests. The kernel reports a few hundred MiB every
    2 s: on a VM that has run a while the cache is large and takes several passes, and the
    pause waits until QEMU's memory has stopped falling. The file is intact after the wake."""
    cove.control("resource_saver", minutes=0)
    path = "/mnt/data/cove-rest-cache"
    written = cove.cove("shell", "sh", "-c", f"dd if=/dev/urandom of={path} bs=1M count=300 "
                        f"2>/dev/null && sync && sha256sum {path} && cat {path} > /dev/null",
                        timeout=300).stdout.split()[0]
    qemu = int(cove.status()["qemu_pid"])
    before = _rss(qemu)
    cove.control("resource_saver", minutes=IDLE_MINUTES)
    _resting(cove)
    time.sleep(1)
    after = _rss(qemu)
    assert before - after > 200 * 2**20, (before >> 20, after >> 20)
    assert "released memory before resting" in cove.cove("logs", "agent", "-n", "200").stdout
    backend = cove.cove("logs", "backend", "-n", "400").stdout
    assert "QEMU gave back" in backend, backend[-2000:]
    again = cove.cove("shell", "sh", "-c", f"sha256sum {path}; rm {path}").stdout.split()[0]
    assert again == written
