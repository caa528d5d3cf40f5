"""Stop, start, crash and recover the session's VM (runs last: it restarts the VM)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, Cove
from tests.integration.test_host_and_time import host_server  # noqa: F401 - a fixture


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


def test_containers_can_be_kept_off_the_hosts_loopback(cove: Cove, hello_image: str,
                                                       host_server: int) -> None:  # noqa: F811
    def reach(port: int) -> str:
        return cove.docker("run", "--rm", hello_image, "sh", "-c",
                           f"wget -qO- http://host.docker.internal:{port}/x; echo rc=$?",
                           check=False).stdout

    assert "from-the-host /x" in reach(host_server)  # the default: as Docker Desktop
    settings = cove.folder / "settings.json"
    before = settings.read_text()
    settings.write_text(json.dumps({**json.loads(before),
                                    "containers_reach_host_loopback": False}))
    try:
        cove.cove("restart", timeout=900)
        got = reach(host_server)
        assert "from-the-host" not in got and "rc=0" not in got, got
        # Published ports and the engine are untouched by it.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        cid = cove.docker("run", "-d", "-p", f"127.0.0.1:{port}:80", hello_image, "sh", "-c",
                          "mkdir -p /www && echo served > /www/index.html && "
                          "exec httpd -f -p 80 -h /www").stdout.strip()
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
                        reply = b""
                        while chunk := c.recv(4096):
                            reply += chunk
                        if b"served" in reply:
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "the published port never answered"
                time.sleep(0.5)
        finally:
            cove.docker("rm", "-f", cid, check=False)
    finally:
        settings.write_text(before)  # the next start (below) has the default again


def _volume_sha(cove: Cove, image: str, volume: str) -> str:
    return cove.docker("run", "--rm", "-v", f"{volume}:/v", image, "sha256sum",
                       "/v/data").stdout.split()[0]


def test_kill_9_of_the_backend_alone_strands_nothing(cove: Cove, hello_image: str,
                                                     marker: str) -> None:
    """The backend dies, QEMU runs on: status says so, `cove start` stops the VM through
    its agent (a clean journal) and boots again, `cove stop` stops one too; a volume file
    written and synced before is intact."""
    volume = f"kept-{uuid.uuid4().hex[:6]}"
    cove.docker("run", "--rm", "-v", f"{volume}:/v", hello_image, "sh", "-c",
                "dd if=/dev/urandom of=/v/data bs=1M count=8 2>/dev/null; sync")
    before = _volume_sha(cove, hello_image, volume)
    for then in ("start", "stop"):
        st = cove.status()
        backend, qemu = st["pid"], st["qemu_pid"]
        os.kill(backend, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(backend) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(backend) and _alive(qemu)
        st = cove.status()
        assert st["state"] == "stopped" and st["orphan_pid"] == qemu, st
        assert "without a backend" in cove.cove("status").stdout
        out = cove.cove(then, timeout=900)
        assert not _alive(qemu), f"cove {then} left the orphaned QEMU running"
        if then == "stop":
            assert "stopped" in out.stdout and cove.status()["state"] == "stopped"
            assert "orphan_pid" not in cove.status()
            cove.cove("start", timeout=900)
        else:
            events = (cove.folder / "events.log").read_text()
            assert "stopped by its agent" in events, events[-2000:]
        disk = cove.control("agent_status")["disk"]  # type: ignore[index]
        assert disk["unclean"] is False, disk  # the agent unmounted it
        assert _volume_sha(cove, hello_image, volume) == before
        _has_container_and_image(cove, marker, hello_image)
    cove.docker("volume", "rm", volume)


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


def test_kill_9_of_qemu_alone_is_an_error_then_start_checks_the_disk(
        cove: Cove, hello_image: str, marker: str) -> None:
    volume = f"kept-{uuid.uuid4().hex[:6]}"
    cove.docker("run", "--rm", "-v", f"{volume}:/v", hello_image, "sh", "-c",
                "dd if=/dev/urandom of=/v/data bs=1M count=4 2>/dev/null; sync")
    before = _volume_sha(cove, hello_image, volume)
    st = cove.status()
    os.kill(st["qemu_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while _alive(st["pid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(st["pid"]), "the backend did not notice its VM died"
    assert '"event": "error"' in (cove.folder / "events.log").read_text()
    assert cove.status()["state"] == "stopped"
    cove.cove("start", timeout=900)
    disk = cove.control("agent_status")["disk"]  # type: ignore[index]
    assert disk["unclean"] is True and disk["fsck"]["forced"] is True, disk
    assert disk["formatted"] is False
    assert _volume_sha(cove, hello_image, volume) == before
    _has_container_and_image(cove, marker, hello_image)
    cove.docker("volume", "rm", volume)


def _backends(cove: Cove) -> list[int]:
    """The pids of `cove backend --instance <name>` processes."""
    found = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"backend" in argv and cove.name.encode() in argv and b"desktop" in argv:
            found.append(int(d.name))
    return found


def test_two_starts_at_once_run_one_backend(cove: Cove, hello_image: str) -> None:
    cove.cove("stop")
    argv = [sys.executable, "-m", "desktop", "start", "--instance", cove.name]
    procs = [subprocess.Popen(argv, env=cove.env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert len(_backends(cove)) == 1, outs
    for p, (out, err) in zip(procs, outs, strict=True):
        # Each either follows the one backend to running, or says why it did not.
        assert p.returncode == 0 or "already runs" in err, (out, err)
    assert cove.status()["state"] == "running"
    assert cove.docker("run", "--rm", hello_image, "echo", "one").stdout == "one\n"


def test_a_zeroed_primary_superblock_is_repaired_from_a_backup_not_formatted(
        cove: Cove, hello_image: str, marker: str) -> None:
    volume = f"kept-{uuid.uuid4().hex[:6]}"
    cove.docker("run", "--rm", "-v", f"{volume}:/v", hello_image, "sh", "-c",
                "dd if=/dev/urandom of=/v/data bs=1M count=4 2>/dev/null; sync")
    before = _volume_sha(cove, hello_image, volume)
    cove.cove("stop")
    disk = cove.folder / "data.qcow2"
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0 1024 1024", str(disk)],
                   check=True, capture_output=True)
    cove.cove("start", timeout=900)
    info = cove.control("agent_status")["disk"]  # type: ignore[index]
    assert info["formatted"] is False and info["repaired_from_backup"], info
    assert _volume_sha(cove, hello_image, volume) == before
    _has_container_and_image(cove, marker, hello_image)
    cove.docker("volume", "rm", volume)


def test_the_backend_at_its_descriptor_limit_accepts_again_afterwards(cove: Cove) -> None:
    """Connections pile up until the backend's accept() fails with EMFILE; once they are
    closed, docker.sock answers again (the accept loop waited, it did not end)."""
    pid = cove.status()["pid"]
    used = len(os.listdir(f"/proc/{pid}/fd"))
    limits = subprocess.run(["prlimit", "--pid", str(pid), "--nofile", "--raw",
                             "--noheadings", "--output=SOFT,HARD"], capture_output=True,
                            text=True, check=True).stdout.split()
    subprocess.run(["prlimit", "--pid", str(pid), f"--nofile={used + 16}:{limits[1]}"],
                   check=True)
    held = []
    try:
        for _ in range(40):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(cove.socket))
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
            held.append(s)
        time.sleep(1)
        assert len(os.listdir(f"/proc/{pid}/fd")) <= used + 16
    finally:
        for s in held:
            s.close()
        subprocess.run(["prlimit", "--pid", str(pid), f"--nofile={limits[0]}:{limits[1]}"],
                       check=True)
    deadline = time.monotonic() + 30
    while True:
        ping = cove.docker("version", "--format", "{{.Server.Version}}", check=False,
                           timeout=20)
        if ping.returncode == 0:
            break
        assert time.monotonic() < deadline, ping.stderr
        time.sleep(0.5)
    assert cove.control("ping") == "pong"


def test_a_bigger_disk_grows_the_filesystem_and_keeps_the_data(
        cove: Cove, hello_image: str, marker: str) -> None:
    volume = f"kept-{uuid.uuid4().hex[:6]}"
    cove.docker("run", "--rm", "-v", f"{volume}:/v", hello_image, "sh", "-c",
                "dd if=/dev/urandom of=/v/data bs=1M count=4 2>/dev/null; sync")
    before = _volume_sha(cove, hello_image, volume)
    gib = cove.status()["disk"] // 2**30

    def fs_size() -> int:  # what df says: the filesystem less its own metadata
        return int(cove.cove("shell", "df", "-B1", "--output=size",
                             "/mnt/data").stdout.split()[-1])

    was = fs_size()
    cove.cove("stop")
    cove.cove("start", "--disk", f"{gib + 8}G", timeout=900)
    grown = cove.control("agent_status")["disk"]["grown"]  # type: ignore[index]
    assert grown["exit"] == 0 and grown["to"] == (gib + 8) * 2**30, grown
    assert fs_size() - was > 7 * 2**30
    assert _volume_sha(cove, hello_image, volume) == before
    _has_container_and_image(cove, marker, hello_image)
    cove.docker("volume", "rm", volume)


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
