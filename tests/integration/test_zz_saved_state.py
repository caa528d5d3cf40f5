"""`cove stop` saves a VM with no shared folder and `cove start` restores it: the same
boot (its containers still running, its clock right, its ports forwarded again), data
committed before the save intact; a data disk changed since the save makes the start
boot instead, and the state is never restored over it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Cove, free_port, http_get, own_instance, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _no_shares(c: Cove) -> None:
    for path in (str(Path.home()), tempfile.gettempdir()):
        c.cove("shares", "remove", path, check=False)


@pytest.fixture(scope="module")
def saver(cove_home: tuple[Path, Path]) -> Iterator[Cove]:
    with own_instance(cove_home, "saved", "--resource-saver", "0", before=_no_shares) as c:
        from desktop.demo import build_hello_image

        build_hello_image(["docker", "--context", c.context], "cove-hello", env=c.env)
        yield c


def _boot_id(c: Cove) -> str:
    return c.cove("shell", "cat", "/proc/sys/kernel/random/boot_id").stdout.strip()


def _guest_clock_error(c: Cove) -> float:
    before = time.time()
    guest = float(c.cove("shell", "date", "+%s.%N").stdout.strip())
    after = time.time()
    return abs(guest - (before + after) / 2) - (after - before) / 2


def _events(c: Cove, action: str) -> list[dict]:
    lines = (c.folder / "events.log").read_text().splitlines()
    return [e for e in map(json.loads, lines)
            if e.get("event") == "saved_state" and e.get("action") == action]


def test_stop_saves_and_start_restores_the_same_running_vm(saver: Cove) -> None:
    c = saver
    c.docker("run", "--rm", "-v", "kept:/v", "cove-hello", "sh", "-c",
             "dd if=/dev/urandom of=/v/data bs=1M count=8 2>/dev/null; sync")
    sha = c.docker("run", "--rm", "-v", "kept:/v", "cove-hello", "sha256sum",
                   "/v/data").stdout.split()[0]
    port = free_port()
    c.docker("run", "-d", "--name", "web", "-p", f"127.0.0.1:{port}:8080", "cove-hello",
             "sh", "-c", "echo served > /i.html; httpd -f -p 8080 -h /")
    wait_for("the published port", lambda: http_get(port, "/i.html") == b"served\n")
    started = c.docker("inspect", "-f", "{{.State.StartedAt}}", "web").stdout.strip()
    boot = _boot_id(c)

    out = c.cove("stop").stdout
    assert "its state is saved" in out, out
    assert (c.folder / "saved.state").stat().st_size > 1 << 20
    assert c.status()["saved_state"] is True
    assert (c.folder / "saved.json").stat().st_mode & 0o077 == 0  # it holds the token
    time.sleep(15)  # the host's clock runs on; the guest's must be set on restore

    c.cove("start", "--no-activate")
    st = c.status()
    assert st["restored"] is True and st["state"] == "running"
    # The state is loaded once: gone before the VM ran.
    assert not (c.folder / "saved.state").exists()
    assert not (c.folder / "saved.json").exists()
    assert _boot_id(c) == boot, "the VM booted instead of being restored"
    # The container never stopped, and its port is forwarded again.
    assert c.docker("inspect", "-f", "{{.State.StartedAt}}", "web").stdout.strip() == started
    wait_for("the published port after the restore",
             lambda: http_get(port, "/i.html") == b"served\n", 60)
    wait_for("the guest's clock set after the restore",
             lambda: _guest_clock_error(c) < 2.0, 30)
    assert c.docker("run", "--rm", "-v", "kept:/v", "cove-hello", "sha256sum",
                    "/v/data").stdout.split()[0] == sha
    assert c.docker("run", "--rm", "cove-hello", "echo", "next").stdout == "next\n"
    assert _events(c, "saved") and _events(c, "restored")


def test_a_disk_changed_since_the_save_is_booted_not_restored(saver: Cove) -> None:
    c = saver
    sha = c.docker("run", "--rm", "-v", "kept:/v", "cove-hello", "sha256sum",
                   "/v/data").stdout.split()[0]
    boot = _boot_id(c)
    assert "its state is saved" in c.cove("stop").stdout
    # Another writer touched the disk after the save (a repair, a copy back).
    disk = c.folder / "data.qcow2"
    st = disk.stat()
    os.utime(disk, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

    c.cove("start", "--no-activate")
    assert c.status()["restored"] is False
    assert _boot_id(c) != boot
    assert not (c.folder / "saved.state").exists()
    refused = _events(c, "not_restored")
    assert refused and "data.qcow2 changed since the save" in refused[-1]["message"]
    assert c.docker("run", "--rm", "-v", "kept:/v", "cove-hello", "sha256sum",
                    "/v/data").stdout.split()[0] == sha
    # The web container was running at the save: the boot found it stopped.
    assert c.docker("inspect", "-f", "{{.State.Running}}", "web").stdout.strip() == "false"


def _sha(c: Cove) -> str:
    return c.docker("run", "--rm", "-v", "kept:/v", "cove-hello", "sha256sum",
                    "/v/data").stdout.split()[0]


def _background(c: Cove, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "desktop", args[0], "--instance",
                             c.name, *args[1:]], env=c.env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_file(p: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not p.exists():
        assert proc.poll() is None, f"ended before {p.name} appeared: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {p.name} in {timeout:.0f} s"
        time.sleep(0.01)


def test_qemu_killed_while_the_state_is_written_loses_nothing_and_the_next_start_boots(
        saver: Cove) -> None:
    c = saver
    sha = _sha(c)
    qemu = c.status()["qemu_pid"]
    stop = _background(c, "stop")
    _wait_file(c.folder / "saved.state.part", stop)
    os.kill(qemu, signal.SIGKILL)
    out, _ = stop.communicate(timeout=300)
    assert stop.returncode == 0, out
    assert "state is saved" not in out
    assert not (c.folder / "saved.state").exists()
    c.cove("start", "--no-activate")
    assert c.status()["restored"] is False
    assert _sha(c) == sha  # synced before the save began
    assert c.docker("run", "--rm", "cove-hello", "echo", "after").stdout == "after\n"


def test_the_backend_killed_while_restoring_then_a_start_works(saver: Cove) -> None:
    c = saver
    sha = _sha(c)
    assert "its state is saved" in c.cove("stop").stdout
    start = _background(c, "start", "--no-activate")
    _wait_file(c.folder / "vm.json", start)  # QEMU runs: the state is being loaded
    backend = int((c.folder / "backend.pid").read_text().split()[0])
    os.kill(backend, signal.SIGKILL)
    start.communicate(timeout=300)
    # The next start stops what the killed one left (QEMU paused or the restored VM),
    # then restores the state if it was never run, or boots.
    c.cove("start", "--no-activate")
    assert c.status()["state"] == "running"
    assert _sha(c) == sha
    assert c.docker("run", "--rm", "cove-hello", "echo", "after").stdout == "after\n"


def test_stop_with_power_off_saves_nothing_and_the_next_start_boots(saver: Cove) -> None:
    c = saver
    boot = _boot_id(c)
    out = c.cove("stop", "--power-off").stdout
    assert "state is saved" not in out
    assert not (c.folder / "saved.state").exists()
    c.cove("start", "--no-activate")
    assert c.status()["restored"] is False and _boot_id(c) != boot
