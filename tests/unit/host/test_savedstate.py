"""A stopped VM's saved state (desktop.drivers.qemu.savedstate and the QEMU driver's
`saved`): restored only onto exactly the VM that was saved (its command line, the
program, the image's files, the data disk untouched since), loaded once, and deleted
(not restored) on any doubt; and QMP handing QEMU a descriptor for the migration."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from desktop.drivers import VMSpec
from desktop.drivers.qemu import driver as qemu_driver
from desktop.drivers.qemu import qmp, savedstate
from desktop.drivers.qemu.command import Forwards
from desktop.drivers.qemu.driver import QemuDriver
from desktop.drivers.shares import SharedFolder

HOST = {"boot_config": {"token": "ab" * 32, "private_host_ports": [41000, 41001]}}


@pytest.fixture
def vm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[VMSpec, Path]]:
    """A VM's files (as an image and a data disk are: files) and a QEMU program."""
    for name in ("vmlinuz", "initrd", "root.sqfs", "data.qcow2", "qemu-system-x86_64"):
        (tmp_path / name).write_bytes(name.encode())
    qemu = tmp_path / "qemu-system-x86_64"
    monkeypatch.setattr(qemu_driver.shutil, "which", lambda name: str(qemu))
    monkeypatch.delenv(qemu_driver.HOSTFWD_ENV, raising=False)
    spec = VMSpec("t", tmp_path, tmp_path / "vmlinuz", tmp_path / "initrd",
                  tmp_path / "root.sqfs", tmp_path / "data.qcow2", tmp_path / "boot.json")
    yield spec, qemu


def _driver() -> QemuDriver:
    d = QemuDriver("amd64", os_name="linux")
    d.accel = "tcg"  # no accelerator probe
    return d


def _save(spec: VMSpec, qemu: Path) -> list[str]:
    """What the driver's `save` leaves: the stream, then its manifest."""
    d = _driver()
    d.forwards = Forwards(41000, 41001)
    command = d.command(spec)
    (spec.folder / savedstate.PARTIAL).write_bytes(b"QEVM" + b"\0" * 100)
    savedstate.write(spec.folder, command, {"link_port": 41000, "ssh_port": 41001}, HOST,
                     savedstate.watched_files(spec, str(qemu)))
    return command


def _gone(folder: Path) -> bool:
    return not any((folder / n).exists() for n in
                   (savedstate.STATE, savedstate.PARTIAL, savedstate.MANIFEST))


def test_the_same_vm_is_restored_with_the_forwards_its_guest_knows(
        vm: tuple[VMSpec, Path]) -> None:
    spec, qemu = vm
    command = _save(spec, qemu)
    assert (spec.folder / savedstate.MANIFEST).stat().st_mode & 0o777 == 0o600
    d = _driver()
    assert d.saved(spec) == (HOST, "")
    # The guest's firewall was told of these ports at its boot: the same ones again.
    assert d.private_host_ports() == [41000, 41001]
    assert d.command(spec) == command
    assert savedstate.exists(spec.folder)  # until it is loaded


@pytest.mark.parametrize("change, why", [
    (lambda s: setattr(s, "memory_mib", 4096), "'2048M' is now '4096M'"),
    (lambda s: setattr(s, "cpus", 4), "'2' is now '4'"),
    (lambda s: setattr(s, "kernel_args", "cove.debug"), "settings changed"),
    (lambda s: setattr(s, "root_image", s.folder / "vmlinuz"), "root.sqfs"),
])
def test_a_vm_set_up_otherwise_since_the_save_boots(vm: tuple[VMSpec, Path], change: Any,
                                                    why: str) -> None:
    spec, qemu = vm
    _save(spec, qemu)
    change(spec)
    host, said = _driver().saved(spec)
    assert host is None and why in said
    assert _gone(spec.folder)


@pytest.mark.parametrize("name", ["data.qcow2", "root.sqfs", "vmlinuz", "initrd",
                                  "qemu-system-x86_64"])
def test_a_file_changed_since_the_save_makes_the_start_boot(vm: tuple[VMSpec, Path],
                                                            name: str) -> None:
    spec, qemu = vm
    _save(spec, qemu)
    p = spec.folder / name
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # written, same size
    host, why = _driver().saved(spec)
    assert host is None and why == f"{p} changed since the save"
    assert _gone(spec.folder)


def test_a_data_disk_replaced_by_a_copy_is_not_the_saved_one(vm: tuple[VMSpec, Path]) -> None:
    spec, qemu = vm
    _save(spec, qemu)
    st = spec.data_disk.stat()
    copy = spec.folder / "copy"
    copy.write_bytes(spec.data_disk.read_bytes())
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    copy.replace(spec.data_disk)  # same size, same time, another inode
    assert _driver().saved(spec)[0] is None


@pytest.mark.parametrize("manifest", [b"{not json", b"[]", b'{"version": 99}',
                                      json.dumps({"version": 1, "command": "x"}).encode()])
def test_a_manifest_that_cannot_be_trusted_is_never_restored(vm: tuple[VMSpec, Path],
                                                             manifest: bytes) -> None:
    spec, qemu = vm
    _save(spec, qemu)
    (spec.folder / savedstate.MANIFEST).write_bytes(manifest)
    host, why = _driver().saved(spec)
    assert host is None and "manifest" in why
    assert _gone(spec.folder)


def test_a_stream_without_its_manifest_is_a_save_that_did_not_finish(
        vm: tuple[VMSpec, Path]) -> None:
    spec, _ = vm
    (spec.folder / savedstate.PARTIAL).write_bytes(b"QEVM")
    assert _driver().saved(spec) == (None, "")
    assert _gone(spec.folder)


def test_what_cannot_be_saved_says_why(vm: tuple[VMSpec, Path]) -> None:
    spec, _ = vm
    assert savedstate.blocked(spec, "linux") == ""
    assert savedstate.blocked(spec, "darwin") == ""
    assert "Windows" in savedstate.blocked(spec, "windows")
    spec.shares = [SharedFolder("/Users/me", "cove0", "9p")]
    assert "/Users/me uses 9p" in savedstate.blocked(spec, "darwin")
    spec.shares = [SharedFolder("/home/me", "cove0", "virtiofs")]
    assert "virtiofs" in savedstate.blocked(spec, "linux")
    spec.shares = [SharedFolder("/home/me", "cove0", "link")]
    assert "shared folders" in savedstate.blocked(spec, "linux")


def test_a_save_on_a_vm_qemu_has_not_started_is_refused(vm: tuple[VMSpec, Path]) -> None:
    assert _driver().save(HOST) == "the VM is not running"


# -- QMP: the descriptor QEMU migrates to or from ------------------------------------------


def test_the_descriptor_goes_to_qemu_with_getfd_on_the_same_connection() -> None:
    folder = Path(tempfile.mkdtemp(prefix="qfd-", dir="/tmp"))
    path = folder / "qmp.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    seen: list[Any] = []

    def monitor() -> None:  # QEMU's side: a descriptor arrives with getfd (SCM_RIGHTS)
        conn = server.accept()[0]
        send = lambda m: conn.sendall(json.dumps(m).encode() + b"\r\n")  # noqa: E731
        send({"QMP": {"version": {}, "capabilities": []}})
        seen.append(json.loads(conn.recv(4096)))
        send({"return": {}})
        msg, fds, _, _ = socket.recv_fds(conn, 4096, 1)
        seen.append(json.loads(msg))
        os.write(fds[0], b"from qemu")  # the host's file, written through QEMU's copy
        os.close(fds[0])
        send({"return": {}})
        seen.append(json.loads(conn.recv(4096)))
        send({"return": {}})
        conn.close()

    t = threading.Thread(target=monitor, daemon=True)
    t.start()
    target = folder / "state"
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            got = qmp.command_with_fd(path, fd, "migrate", {"uri": "fd:cove"})
        finally:
            os.close(fd)
        t.join(5)
        assert got == {"return": {}}
        assert [m["execute"] for m in seen] == ["qmp_capabilities", "getfd", "migrate"]
        assert seen[1]["arguments"] == {"fdname": "cove"}
        assert seen[2]["arguments"] == {"uri": "fd:cove"}
        assert target.read_bytes() == b"from qemu"
        assert qmp.command_with_fd(folder / "absent.sock", 0, "migrate", {}) is None
    finally:
        server.close()
        for p in (path, target):
            p.unlink(missing_ok=True)
        folder.rmdir()
