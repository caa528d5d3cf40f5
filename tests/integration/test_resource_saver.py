"""Resource Saver on the session's VM: idle, it rests (QEMU's vCPUs paused); the next
docker command, `docker run` or `cove shell` wakes it and works; a running container
keeps it awake. The session runs with the saver off; each test here turns it on for
itself (6 idle seconds) and off again."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

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
