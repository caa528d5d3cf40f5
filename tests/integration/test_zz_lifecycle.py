"""Stop, start, crash and recover the session's VM (runs last: it restarts the VM)."""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import Cove


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def marker(cove: Cove, hello_image: str) -> str:
    """A stopped container that must survive every restart and crash below."""
    name = f"keep-{uuid.uuid4().hex[:8]}"
    cove.docker("create", "--name", name, hello_image, "true")
    return name


def _has_container_and_image(cove: Cove, name: str, image: str) -> None:
    names = cove.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert name in names
    assert image in cove.docker("images", "--format", "{{.Repository}}").stdout.split()


def test_other_instance_side_by_side(cove: Cove, hello_image: str) -> None:
    other = Cove(cove.home, cove.docker_config, name="two")
    before = cove.docker("context", "show").stdout.strip()
    other.cove("start", "--no-activate", "--memory", "1G", "--cpus", "1", timeout=900)
    try:
        assert cove.docker("context", "show").stdout.strip() == before  # not activated
        assert other.docker("info", "--format", "{{.Name}}").stdout.strip() == "cove"
        # Its own engine: the session's image is not there.
        assert hello_image not in other.docker("images", "--format",
                                               "{{.Repository}}").stdout.split()
        assert other.socket != cove.socket and other.socket.is_socket()
    finally:
        other.cove("delete", "--force", timeout=300)
    assert not other.folder.exists()
    ctx = cove.docker("context", "ls", "--format", "{{.Name}}").stdout.split()
    assert "cove-two" not in ctx and "cove" in ctx
    assert cove.docker("context", "show").stdout.strip() == before


def test_stop_start_keeps_everything_and_disk_is_clean(cove: Cove, hello_image: str,
                                                       marker: str,
                                                       shares: dict[str, Path]) -> None:
    # A container the engine restarts at boot reads the host's folder as it starts: the
    # agent holds dockerd back until the host-served ("link") share is mounted.
    folder = shares["link"] / f"boot-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    (folder / "boot.txt").write_text("from the host\n")
    keeper = f"restarts-{uuid.uuid4().hex[:6]}"
    cove.docker("run", "-d", "--restart", "always", "--name", keeper, "-v", f"{folder}:/w",
                hello_image, "sh", "-c", "cat /w/boot.txt; sleep 100000")
    qemu_pid = cove.status()["qemu_pid"]
    assert _alive(qemu_pid)
    out = cove.cove("stop")
    assert "stopped" in out.stdout
    assert not _alive(qemu_pid), "QEMU is still running after cove stop"
    assert not cove.socket.exists() and not (cove.folder / "control.sock").exists()
    assert cove.status()["state"] == "stopped"
    cove.cove("start", timeout=900)
    _has_container_and_image(cove, marker, hello_image)
    deadline = time.monotonic() + 60
    while cove.docker("logs", keeper).stdout.count("from the host") < 2:
        assert time.monotonic() < deadline, cove.docker("logs", keeper, check=False)
        time.sleep(0.5)
    assert "No such file" not in cove.docker("logs", keeper).stderr
    cove.docker("rm", "-f", keeper)
    disk = cove.control("agent_status")["disk"]  # type: ignore[index]
    assert disk["formatted"] is False
    assert disk["unclean"] is False, disk
    assert disk["fsck"]["forced"] is False and disk["fsck"]["exit"] == 0


def test_kill_9_of_backend_and_qemu_recovers(cove: Cove, hello_image: str,
                                             marker: str) -> None:
    st = cove.status()
    backend, qemu = st["pid"], st["qemu_pid"]
    # Leave writes in flight so the journal needs recovery.
    cove.docker("run", "--rm", hello_image, "sh", "-c",
                "dd if=/dev/zero of=/tmp/x bs=1M count=20 2>/dev/null; sync")
    os.kill(backend, signal.SIGKILL)
    os.kill(qemu, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (_alive(backend) or _alive(qemu)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(backend) and not _alive(qemu)
    # Stale sockets and pid file are left behind; they must be recognised as stale.
    assert cove.socket.exists() and (cove.folder / "backend.pid").exists()
    assert cove.status()["state"] == "stopped"
    cove.cove("start", timeout=900)
    _has_container_and_image(cove, marker, hello_image)
    disk = cove.control("agent_status")["disk"]  # type: ignore[index]
    assert disk["unclean"] is True, disk
    assert disk["fsck"]["forced"] is True and disk["fsck"]["exit"] in (0, 1), disk
    assert cove.docker("run", "--rm", hello_image, "echo", "after-crash").stdout == \
        "after-crash\n"


def test_a_file_where_the_socket_goes_is_never_deleted(cove: Cove) -> None:
    cove.cove("stop")
    precious = cove.folder / "docker.sock"
    precious.unlink(missing_ok=True)
    precious.write_text("not a socket\n")
    try:
        proc = cove.cove("start", check=False, timeout=900)
        assert proc.returncode != 0
        err = proc.stderr.strip().splitlines()[-1]
        assert err.startswith("cove: error:") and "not a socket" in err, proc.stderr
        assert precious.read_text() == "not a socket\n"
    finally:
        precious.unlink()
    cove.cove("start", timeout=900)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(cove.socket))
