"""The QEMU driver (desktop.drivers.qemu): command lines, accelerator choice, data disk."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from desktop.drivers import DiskError, DriverError, VMSpec
from desktop.drivers.qemu import QemuDriver
from desktop.drivers.qemu import accel as qaccel
from desktop.drivers.qemu import disk as disk_mod
from desktop.drivers.qemu import driver as qdriver
from desktop.drivers.qemu import virtiofsd as qvfs
from desktop.drivers.qemu.accel import accel_candidates, probe_accel
from desktop.drivers.qemu.command import (
    Endpoint,
    Forwards,
    build_command,
    opt,
    share_args,
    virtiofs_socket,
)
from desktop.drivers.qemu.disk import ensure_disk
from desktop.drivers.qemu.driver import qmp_socket
from desktop.drivers.qemu.shares import resolve_shares
from desktop.drivers.qemu.virtiofsd import Virtiofsd, find_virtiofsd
from desktop.drivers.shares import SharedFolder
from desktop.platform import hostinfo

QEMU_IMG = shutil.which("qemu-img")
TOKEN = "c0ffee" * 10


@pytest.fixture
def spec(tmp_path: Path) -> VMSpec:
    folder = tmp_path / "default"
    folder.mkdir()
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"\x00kernel" * 100)
    boot = folder / "boot.json"
    boot.write_text(json.dumps({"token": TOKEN}))
    boot.chmod(0o600)
    return VMSpec(name="default", folder=folder, kernel=kernel,
                  initramfs=tmp_path / "initramfs", root_image=tmp_path / "root.sqfs",
                  data_disk=folder / "data.qcow2", boot_config=boot, cpus=4,
                  memory_mib=4096, disk_gib=64, arch="amd64")


def _arg(cmd: list[str], flag: str) -> str:
    """The value after `flag` (which must occur once)."""
    assert cmd.count(flag) == 1, f"{flag} occurs {cmd.count(flag)} times in {cmd}"
    return cmd[cmd.index(flag) + 1]


def _args(cmd: list[str], flag: str) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == flag]


# -- build_command -----------------------------------------------------------------------


def test_command_amd64_tcg_linux(spec: VMSpec, tmp_path: Path) -> None:
    qmp = Endpoint(path=qmp_socket(spec))
    cmd = build_command(spec, "tcg", "linux", "/usr/bin/qemu-system-x86_64", qmp)
    assert cmd[0] == "/usr/bin/qemu-system-x86_64"
    assert _arg(cmd, "-machine") == "q35,vmport=off,hpet=off"
    assert _arg(cmd, "-accel") == "tcg"  # QEMU's own translation buffer size
    assert _arg(cmd, "-cpu") == "max"
    assert _arg(cmd, "-smp") == "4"
    assert _arg(cmd, "-m") == "4096M"
    assert _arg(cmd, "-kernel") == str(spec.kernel)
    assert _arg(cmd, "-initrd") == str(spec.initramfs)
    append = _arg(cmd, "-append")
    assert "console=ttyS0" in append.split()
    assert "cove.probe" not in append
    assert _arg(cmd, "-serial") == f"file:{spec.serial_log}"
    assert _arg(cmd, "-qmp") == f"unix:{qmp_socket(spec)},server=on,wait=off"
    assert "-no-reboot" in cmd and "-nodefaults" in cmd
    drives = _args(cmd, "-drive")
    assert f"if=none,id=root,file={spec.root_image},format=raw,readonly=on" in drives
    data = next(d for d in drives if "id=data" in d)
    assert f"file={spec.data_disk}" in data and "format=qcow2" in data
    assert "discard=unmap" in data
    devices = _args(cmd, "-device")
    assert "virtio-blk-pci,drive=data,serial=cove-data" in devices
    assert "virtio-blk-pci,drive=root,serial=cove-root" in devices
    # No virtio-serial port: the control channel goes over the link like every stream.
    assert not any("virtserialport" in d or "virtio-serial" in d for d in devices)


def test_command_kvm_uses_host_cpu(spec: VMSpec) -> None:
    cmd = build_command(spec, "kvm", "linux", "qemu-system-x86_64",
                        Endpoint(path=qmp_socket(spec)))
    assert _arg(cmd, "-accel") == "kvm"
    assert _arg(cmd, "-cpu") == "host"
    assert _arg(cmd, "-machine").startswith("q35")


def test_command_arm64_hvf_darwin(spec: VMSpec) -> None:
    spec.arch = "arm64"
    cmd = build_command(spec, "hvf", "darwin", "/opt/homebrew/bin/qemu-system-aarch64",
                        Endpoint(path=qmp_socket(spec)))
    assert _arg(cmd, "-machine") == "virt"
    assert _arg(cmd, "-accel") == "hvf"
    assert _arg(cmd, "-cpu") == "host"
    append = _arg(cmd, "-append").split()
    assert "console=ttyAMA0" in append and "console=ttyS0" not in append
    assert not any("q35" in a or "hpet" in a for a in cmd)


def test_command_arm64_tcg(spec: VMSpec) -> None:
    spec.arch = "arm64"
    cmd = build_command(spec, "tcg", "linux", "qemu-system-aarch64",
                        Endpoint(path=qmp_socket(spec)))
    assert _arg(cmd, "-machine") == "virt,gic-version=max"
    assert _arg(cmd, "-cpu") == "max"


def test_command_amd64_whpx_windows(spec: VMSpec) -> None:
    cmd = build_command(spec, "whpx", "windows", r"C:\Program Files\qemu\qemu.exe",
                        Endpoint(pipe="\\\\.\\pipe\\cove-0a1b2c3d4e-default-qmp"))
    # QMP on a named pipe QEMU creates (it adds \\.\pipe\ itself): never TCP, which
    # any local user and the containers (through 10.0.2.2) could reach, unauthenticated.
    assert _arg(cmd, "-chardev") == "pipe,id=qmp,path=cove-0a1b2c3d4e-default-qmp"
    assert _arg(cmd, "-mon") == "chardev=qmp,mode=control"
    assert "-qmp" not in cmd and not any(a.startswith("tcp:") for a in cmd)
    assert _arg(cmd, "-accel") == "whpx"
    assert _arg(cmd, "-cpu") == "max"  # QEMU's WHPX does not take -cpu host
    assert "hpet" not in _arg(cmd, "-machine")
    assert not any("unix:" in a for a in cmd)


def test_command_boot_config_by_file_not_token(spec: VMSpec) -> None:
    cmd = build_command(spec, "kvm", "linux", "qemu-system-x86_64",
                        Endpoint(path=qmp_socket(spec)))
    assert _arg(cmd, "-fw_cfg") == f"name=opt/org.cove/boot,file={spec.boot_config}"
    assert not any(TOKEN in a for a in cmd)
    assert not any("token" in a.lower() for a in cmd)


def test_command_hostfwd_loopback_only(spec: VMSpec) -> None:
    cmd = build_command(spec, "tcg", "linux", "qemu-system-x86_64",
                        Endpoint(path=qmp_socket(spec)), Forwards(41234, 41235))
    netdev = _arg(cmd, "-netdev")
    fwds = [p for p in netdev.split(",") if p.startswith("hostfwd=")]
    assert fwds == ["hostfwd=tcp:127.0.0.1:41234-:10811", "hostfwd=tcp:127.0.0.1:41235-:22"]
    cmd = build_command(spec, "tcg", "linux", "qemu-system-x86_64",
                        Endpoint(path=qmp_socket(spec)), Forwards(41234, ssh_port=0))
    fwds = [p for p in _arg(cmd, "-netdev").split(",") if p.startswith("hostfwd=")]
    assert fwds == ["hostfwd=tcp:127.0.0.1:41234-:10811"]


def test_extra_forwards_are_checked_before_they_reach_qemu(spec: VMSpec) -> None:
    fwd = Forwards(41234, 41235, ("tcp:127.0.0.1:19001-:19001",))
    cmd = build_command(spec, "tcg", "linux", "qemu-system-x86_64",
                        Endpoint(path=qmp_socket(spec)), fwd)
    assert "hostfwd=tcp:127.0.0.1:19001-:19001" in _arg(cmd, "-netdev").split(",")
    # All interfaces, or a smuggled QEMU option: refused with the expected form.
    for bad in ("tcp::19001-:80", "tcp:127.0.0.1:1-:2,restrict=off", "tcp:0.0.0.0:1-:2"):
        with pytest.raises(DriverError, match="HOSTPORT-:GUESTPORT"):
            build_command(spec, "tcg", "linux", "qemu-system-x86_64",
                          Endpoint(path=qmp_socket(spec)), Forwards(41234, 41235, (bad,)))


def test_driver_picks_its_forwards_and_reads_the_extra_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The ports and COVE_QEMU_HOSTFWD are the QEMU driver's own, chosen at each start."""
    d = QemuDriver("amd64", os_name="linux")
    assert d.ssh_address() is None  # not started: nothing forwarded yet
    monkeypatch.setenv("COVE_QEMU_HOSTFWD", "tcp:127.0.0.1:19001-:19001 udp:127.0.0.1:5-:6")
    fwd = QemuDriver.pick_forwards()
    assert fwd.link_port > 0 and fwd.ssh_port > 0
    assert fwd.extra == ("tcp:127.0.0.1:19001-:19001", "udp:127.0.0.1:5-:6")
    monkeypatch.delenv("COVE_QEMU_HOSTFWD")
    assert QemuDriver.pick_forwards().extra == ()
    d.forwards = fwd
    assert d.ssh_address() == ("127.0.0.1", fwd.ssh_port)
    assert f"hostfwd=tcp:127.0.0.1:{fwd.link_port}-:10811" in _arg(
        d.command(VMSpec("x", Path("/i"), Path("/k"), Path("/r"), Path("/s"),
                         Path("/d"), Path("/b"))), "-netdev").split(",")


def test_a_second_monitor_carries_qemus_events_except_on_windows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from desktop.platform import _windows

    spec = VMSpec("x", Path("/i"), Path("/k"), Path("/r"), Path("/s"), Path("/d"),
                  Path("/b"))
    cmd = QemuDriver("amd64", os_name="linux").command(spec)
    monitors = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-qmp"]
    assert monitors == [f"unix:{qmp_socket(spec)},server=on,wait=off",
                        "unix:/i/qmp-events.sock,server=on,wait=off"]
    # Windows: one monitor, on the user's own pipe; the driver's session reads its events.
    monkeypatch.setattr(_windows, "_tag", "0a1b2c3d4e")
    win = QemuDriver("amd64", os_name="windows").command(spec)
    assert "-qmp" not in win
    assert _args(win, "-chardev") == ["pipe,id=qmp,path=cove-0a1b2c3d4e-x-qmp"]
    assert _args(win, "-mon") == ["chardev=qmp,mode=control"]


def test_command_probe(spec: VMSpec) -> None:
    cmd = build_command(spec, "kvm", "linux", "qemu-system-x86_64", Endpoint(),
                        probe=True)
    assert "cove.probe" in _arg(cmd, "-append").split()
    for flag in ("-drive", "-netdev", "-fw_cfg", "-qmp", "-device"):
        assert flag not in cmd
    assert not any(str(spec.data_disk) in a or str(spec.root_image) in a for a in cmd)
    assert "-kernel" in cmd and "-initrd" in cmd and "-serial" in cmd


def test_command_extra_args_last(spec: VMSpec) -> None:
    cmd = build_command(spec, "tcg", "linux", "q", Endpoint(path=qmp_socket(spec)),
                        extra_args=["-d", "guest_errors"])
    assert cmd[-2:] == ["-d", "guest_errors"]


def test_endpoint() -> None:
    e = Endpoint(path=Path("/run/x/qmp.sock"))
    assert e.qemu_args("qmp") == ["-qmp", "unix:/run/x/qmp.sock,server=on,wait=off"]
    p = Endpoint(pipe="\\\\.\\pipe\\cove-u-a,b-qmp")
    assert p.qemu_args("m") == ["-chardev", "pipe,id=m,path=cove-u-a,,b-qmp",
                                "-mon", "chardev=m,mode=control"]


# -- accelerators ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("os_name", "guest", "host", "expected"),
    [
        ("linux", "amd64", "amd64", ["kvm", "tcg"]),
        ("linux", "arm64", "amd64", ["tcg"]),
        ("linux", "arm64", "arm64", ["kvm", "tcg"]),
        ("darwin", "arm64", "arm64", ["hvf", "tcg"]),
        ("darwin", "amd64", "arm64", ["tcg"]),  # Apple silicon cannot run x86 in HVF
        ("darwin", "amd64", "amd64", ["hvf", "tcg"]),
        ("windows", "amd64", "amd64", ["whpx", "tcg"]),
        ("freebsd14", "amd64", "amd64", ["tcg"]),
    ],
)
def test_accel_candidates(os_name: str, guest: str, host: str, expected: list[str]) -> None:
    assert accel_candidates(os_name, guest, host) == expected


def test_host_arch_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostinfo.platform, "machine", lambda: "x86_64")
    assert hostinfo.host_arch() == "amd64"
    monkeypatch.setattr(hostinfo.platform, "machine", lambda: "AArch64")
    assert hostinfo.host_arch() == "arm64"


FAKE_QEMU = """#!/bin/sh
# Mimics a QEMU whose KVM does not work (nested virtualisation gone wrong).
if [ "$1" = "--version" ]; then
    echo "QEMU emulator version 8.2.2 (Debian 1:8.2.2+ds-0ubuntu1)"
    exit 0
fi
echo "$@" >> "{counter}"
echo "error: failed to set MSR 0x48b to 0x1582e00000000" >&2
echo "qemu-system-x86_64: ../target/i386/kvm/kvm.c:3216: kvm_buf_set_msrs: Assertion failed." >&2
exit 1
"""


@pytest.fixture
def fake_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    counter = tmp_path / "runs.txt"
    script = tmp_path / "qemu-system-x86_64"
    script.write_text(FAKE_QEMU.replace("{counter}", str(counter)))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    real_access = os.access

    def access(path: object, mode: int, *args: object, **kw: object) -> bool:
        if str(path) == "/dev/kvm":
            return True
        return real_access(path, mode, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(qaccel.os, "access", access)
    monkeypatch.setattr(qaccel, "host_arch", lambda: "amd64")
    return script, counter


def _runs(counter: Path) -> list[str]:
    return counter.read_text().splitlines() if counter.exists() else []


def test_probe_accel_falls_back_to_tcg_and_caches(spec: VMSpec, tmp_path: Path,
                                                  fake_qemu: tuple[Path, Path]) -> None:
    script, counter = fake_qemu
    cache = tmp_path / "cove" / "accel.json"
    accel, skipped = probe_accel(spec, str(script), cache, os_name="linux", timeout=5)
    assert accel == "tcg"
    assert len(skipped) == 1
    assert skipped[0].startswith("kvm: ")
    assert "failed to set MSR" in skipped[0]
    runs = _runs(counter)
    assert len(runs) == 1
    # The trial boot was a probe: kvm, cove.probe, no disks.
    assert "-accel kvm" in runs[0] and "cove.probe" in runs[0]
    assert str(spec.data_disk) not in runs[0]
    assert not list(spec.folder.glob("probe-*.log"))  # its serial log is cleaned up
    verdict = json.loads(cache.read_text())
    assert verdict["accel"] == "tcg" and verdict["skipped"] == skipped

    # Second time: the cached verdict, no trial boot.
    again = probe_accel(spec, str(script), cache, os_name="linux", timeout=5)
    assert again == ("tcg", skipped)
    assert len(_runs(counter)) == 1


def test_probe_cache_invalidated_by_a_new_kernel(spec: VMSpec, tmp_path: Path,
                                                 fake_qemu: tuple[Path, Path]) -> None:
    script, counter = fake_qemu
    cache = tmp_path / "accel.json"
    probe_accel(spec, str(script), cache, os_name="linux", timeout=5)
    assert len(_runs(counter)) == 1
    spec.kernel.write_bytes(b"\x00a bigger kernel" * 200)
    probe_accel(spec, str(script), cache, os_name="linux", timeout=5)
    assert len(_runs(counter)) == 2


def test_probe_accel_kvm_when_the_probe_boots(spec: VMSpec, tmp_path: Path,
                                              fake_qemu: tuple[Path, Path]) -> None:
    script, counter = fake_qemu
    # A QEMU whose guest prints the marker on its serial console (-serial file:PATH).
    script.write_text(
        '#!/bin/sh\n[ "$1" = "--version" ] && { echo "QEMU emulator version 9.0.0"; exit 0; }\n'
        f'echo run >> "{counter}"\n'
        'while [ $# -gt 0 ]; do\n'
        '  if [ "$1" = "-serial" ]; then printf "boot...\\nCOVE-PROBE-OK\\n" > "${2#file:}"; fi\n'
        '  shift\n'
        'done\n'
    )
    accel, skipped = probe_accel(spec, str(script), tmp_path / "a.json", os_name="linux",
                                 timeout=5)
    assert (accel, skipped) == ("kvm", [])
    assert len(_runs(counter)) == 1


def test_probe_accel_no_kvm_device(spec: VMSpec, tmp_path: Path,
                                   fake_qemu: tuple[Path, Path],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    script, counter = fake_qemu
    monkeypatch.setattr(qaccel.os, "access", lambda path, mode, *a, **k: False)
    accel, skipped = probe_accel(spec, str(script), tmp_path / "a.json", os_name="linux",
                                 timeout=5)
    assert accel == "tcg"
    assert "/dev/kvm" in skipped[0] and "kvm group" in skipped[0]
    assert _runs(counter) == []  # no trial boot without the device


def test_probe_accel_foreign_guest_needs_no_trial(spec: VMSpec, tmp_path: Path,
                                                  fake_qemu: tuple[Path, Path]) -> None:
    script, counter = fake_qemu
    spec.arch = "arm64"  # on an amd64 host: TCG is the only candidate
    assert probe_accel(spec, str(script), tmp_path / "a.json", os_name="linux",
                       timeout=5) == ("tcg", [])
    assert _runs(counter) == []


# -- data disk ---------------------------------------------------------------------------


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _info(p: Path) -> dict:
    assert QEMU_IMG is not None
    out = subprocess.run([QEMU_IMG, "info", "--output=json", "-U", str(p)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_ensure_disk_creates_sparse_qcow2(tmp_path: Path) -> None:
    assert QEMU_IMG is not None, "qemu-img is needed (apt-get install qemu-utils)"
    disk = tmp_path / "data.qcow2"
    ensure_disk(disk, 64)
    info = _info(disk)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 64 * 2**30
    assert "backing-filename" not in info
    assert disk.stat().st_size < 16 * 2**20  # sparse: no 64 GiB file
    # Checking it again changes nothing.
    before = _sha256(disk)
    ensure_disk(disk, 64)
    assert _sha256(disk) == before


def test_ensure_disk_grows_but_never_shrinks(tmp_path: Path) -> None:
    disk = tmp_path / "data.qcow2"
    ensure_disk(disk, 8)
    ensure_disk(disk, 16)
    assert _info(disk)["virtual-size"] == 16 * 2**30
    ensure_disk(disk, 8)
    assert _info(disk)["virtual-size"] == 16 * 2**30


def test_ensure_disk_refuses_a_backing_file(tmp_path: Path) -> None:
    assert QEMU_IMG is not None
    base = tmp_path / "base.qcow2"
    disk = tmp_path / "data.qcow2"
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(base), "1G"], check=True)
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
                    str(disk)], check=True)
    before = _sha256(disk)
    with pytest.raises(DiskError, match="backing") as e:
        ensure_disk(disk, 8)
    assert str(base) in str(e.value) or "base.qcow2" in str(e.value)
    assert _sha256(disk) == before


def test_ensure_disk_says_whether_the_disk_is_provably_blank(tmp_path: Path) -> None:
    disk = tmp_path / "data.qcow2"
    assert ensure_disk(disk, 8) is True  # created now
    assert ensure_disk(disk, 8) is True  # nothing written since
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 64k", str(disk)],
                   check=True, capture_output=True)
    assert ensure_disk(disk, 8) is False  # data on it: the guest must check, not format


def test_a_disk_a_live_vm_holds_is_in_use_and_left_alone(tmp_path: Path) -> None:
    """The backend was killed, QEMU still runs: the disk is not inspected, repaired or
    reset; the message names the process that holds it."""
    disk = tmp_path / "data.qcow2"
    ensure_disk(disk, 8)
    holder = subprocess.Popen(["qemu-io", "-f", "qcow2", "-c", "sleep 20000", str(disk)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not any(pid == holder.pid for pid, _ in disk_mod.holders(disk)):
            assert time.monotonic() < deadline, "qemu-io did not open the disk"
            time.sleep(0.05)
        before = _sha256(disk)
        with pytest.raises(DiskError) as e:
            ensure_disk(disk, 16)
        msg = str(e.value)
        assert f"in use by pid {holder.pid} (qemu-io)" in msg
        assert "reset" not in msg and "-r all" not in msg and "cove stop" in msg
        assert _sha256(disk) == before
    finally:
        holder.kill()
        holder.wait()
    assert ensure_disk(disk, 8) is True


def test_ensure_disk_refuses_garbage(tmp_path: Path) -> None:
    disk = tmp_path / "data.qcow2"
    disk.write_bytes(os.urandom(3 * 2**20))
    before = _sha256(disk)
    with pytest.raises(DiskError) as e:
        ensure_disk(disk, 8)
    assert str(disk) in str(e.value)
    assert "cove reset" in str(e.value)
    assert _sha256(disk) == before
    assert disk.stat().st_size == 3 * 2**20


def test_ensure_disk_refuses_a_damaged_qcow2(tmp_path: Path) -> None:
    disk = tmp_path / "data.qcow2"
    ensure_disk(disk, 8)
    # Break the header: the L1 table offset (bytes 40-47) points far past the end.
    data = bytearray(disk.read_bytes())
    data[40:48] = (0x7FFFFFFFFFFF0000).to_bytes(8, "big")
    disk.write_bytes(bytes(data))
    before = _sha256(disk)
    with pytest.raises(DiskError) as e:
        ensure_disk(disk, 8)
    assert str(disk) in str(e.value)
    assert _sha256(disk) == before


def test_ensure_disk_accepts_leaked_clusters(tmp_path: Path) -> None:
    """Leaked clusters (refcount > 0, unreferenced) are what an unclean stop with
    lazy_refcounts leaves behind: "waste of disk space, but no harm to data" in
    qemu-img's words (`check` exits 3). Such a disk must still boot, not be called damaged
    with `cove reset` (which deletes everything) as the suggested way out."""
    assert QEMU_IMG is not None
    disk = tmp_path / "data.qcow2"
    ensure_disk(disk, 8)
    data = bytearray(disk.read_bytes())
    cluster = 1 << int.from_bytes(data[20:24], "big")
    refcount_table = int.from_bytes(data[48:56], "big")
    refcount_block = int.from_bytes(data[refcount_table : refcount_table + 8], "big")
    data += bytes(6 * cluster - len(data))  # room for a cluster nothing refers to
    data[refcount_block + 2 * 5 : refcount_block + 2 * 5 + 2] = (1).to_bytes(2, "big")
    disk.write_bytes(bytes(data))
    check = subprocess.run([QEMU_IMG, "check", "-q", "-U", str(disk)], capture_output=True)
    assert check.returncode == 3  # leaks only: the situation under test
    ensure_disk(disk, 8)
    assert _info(disk)["format"] == "qcow2"


def test_ensure_disk_without_qemu_img(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(DriverError, match="qemu-utils"):
        ensure_disk(tmp_path / "data.qcow2", 8)
    assert not (tmp_path / "data.qcow2").exists()


def test_driver_available_names_the_package(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    ok, why = QemuDriver("arm64", os_name="linux").available()
    assert not ok and "qemu-system-aarch64" in why and "qemu-system-arm" in why


def test_registry_picks_qemu_with_the_options(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from desktop import drivers

    d = drivers.pick(arch="amd64", accel_cache=tmp_path / "accel.json")
    assert isinstance(d, QemuDriver)
    assert d.arch == "amd64" and d.qemu == "qemu-system-x86_64"
    assert d.accel_cache == tmp_path / "accel.json"
    # Without the arm64 emulator, nothing is usable, and the error says what to install.
    real_which = shutil.which
    monkeypatch.setattr(qdriver.shutil, "which",
                        lambda n: None if n == "qemu-system-aarch64" else real_which(n))
    with pytest.raises(drivers.DriverError, match="apt-get install qemu-system-arm"):
        drivers.pick(arch="arm64")
    with pytest.raises(drivers.DriverError, match="unknown driver 'hyperv-nope'"):
        drivers.pick("hyperv-nope")


# -- shared folders ----------------------------------------------------------------------

RUST_VFS = Virtiofsd("/usr/libexec/virtiofsd", "rust")
C_VFS = Virtiofsd("/usr/lib/qemu/virtiofsd", "c")


@pytest.fixture
def folders(tmp_path: Path) -> list[str]:
    out = []
    for name in ("code", "data", "more"):
        (tmp_path / name).mkdir()
        out.append(str(tmp_path / name))
    return out


def _sf(path: str, i: int, transport: str) -> SharedFolder:
    return SharedFolder(path, f"cove{i}", transport)


@pytest.mark.parametrize(("vfs", "is_root"), [(RUST_VFS, False), (RUST_VFS, True),
                                               (C_VFS, True)])
def test_resolve_shares_auto_takes_virtiofs_where_usable(folders: list[str],
                                                         vfs: Virtiofsd,
                                                         is_root: bool) -> None:
    shares, notes = resolve_shares([(folders[0], "auto"), (folders[1], "9p"),
                                    (folders[2], "virtiofs")], "linux", vfs, is_root)
    assert shares == [_sf(folders[0], 0, "virtiofs"), _sf(folders[1], 1, "9p"),
                      _sf(folders[2], 2, "virtiofs")]
    # Nothing to say, root or not: the guest's share guard keeps set-uid bits off the host.
    assert notes == []


def test_resolve_shares_c_virtiofsd_unprivileged_falls_back_to_9p(folders: list[str]) -> None:
    shares, notes = resolve_shares([(folders[0], "auto"), (folders[1], "auto")],
                                   "linux", C_VFS, False)
    assert shares == [_sf(folders[0], 0, "9p"), _sf(folders[1], 1, "9p")]
    assert len(notes) == 1  # said once, not per folder
    assert notes[0].startswith("shares use 9p: /usr/lib/qemu/virtiofsd (QEMU's C virtiofsd) "
                               "needs root")
    assert "install the virtiofsd package" in notes[0]


def test_resolve_shares_c_virtiofsd_unprivileged_refuses_explicit_virtiofs(
        folders: list[str]) -> None:
    with pytest.raises(DriverError) as e:
        resolve_shares([(folders[0], "virtiofs")], "linux", C_VFS, False)
    msg = str(e.value)
    assert msg.startswith(f"cannot share {folders[0]} over virtiofs: ")
    assert "needs root" in msg
    assert msg.endswith("set its transport to 9p or auto")


def test_resolve_shares_without_virtiofsd(folders: list[str]) -> None:
    shares, notes = resolve_shares([(folders[0], "auto")], "linux", None, True)
    assert shares == [_sf(folders[0], 0, "9p")]
    assert notes == ["shares use 9p: virtiofsd is not installed (Debian: apt-get install "
                     "virtiofsd, or qemu-system-common on Debian 12)"]
    with pytest.raises(DriverError, match="over virtiofs: virtiofsd is not installed"):
        resolve_shares([(folders[0], "virtiofs")], "linux", None, True)


def test_resolve_shares_macos_uses_9p(folders: list[str]) -> None:
    # A virtiofsd on the PATH does not matter: QEMU on macOS has no vhost-user.
    shares, notes = resolve_shares([(folders[0], "auto"), (folders[1], "9p")],
                                   "darwin", RUST_VFS, False)
    assert shares == [_sf(folders[0], 0, "9p"), _sf(folders[1], 1, "9p")]
    assert notes == ["shares use 9p: QEMU has no virtiofs on this host"]
    with pytest.raises(DriverError) as e:
        resolve_shares([(folders[0], "virtiofs")], "darwin", RUST_VFS, True)
    assert str(e.value) == (f"cannot share {folders[0]} over virtiofs: QEMU has no virtiofs "
                            "on this host; set its transport to 9p or auto")


def test_resolve_shares_explicit_9p_needs_no_note(folders: list[str]) -> None:
    assert resolve_shares([(folders[0], "9p")], "linux", None, False) == (
   [_sf(folders[0], 0, "9p")], [])


@pytest.mark.parametrize("transport", ["9p", "virtiofs"])
def test_resolve_shares_windows_has_no_share_device(folders: list[str], transport: str) -> None:
    assert resolve_shares([], "windows", None, False) == ([], [])
    with pytest.raises(DriverError) as e:
        resolve_shares([("C:\\src", transport)], "windows", None, False)
    assert str(e.value) == (f"cannot share C:\\src over {transport}: QEMU on Windows has no "
                            "virtiofs or 9p device; set its transport to auto (Cove serves it "
                            "over the guest link)")


@pytest.mark.parametrize("transport", ["auto", "link"])
def test_resolve_shares_windows_serves_over_the_link_under_mnt_host(
        monkeypatch: pytest.MonkeyPatch, transport: str) -> None:
    monkeypatch.setattr("os.path.isdir", lambda p: p == "C:\\Users\\me")
    shares, notes = resolve_shares([("C:\\Users\\me", transport)], "windows", None,
                                   False)
    assert (shares, notes) == ([SharedFolder("C:\\Users\\me", "cove0", "link",
                                             vm_path="/mnt/host/c/Users/me")], [])
    assert shares[0].boot_entry() == {"path": "/mnt/host/c/Users/me", "tag": "cove0",
                                      "transport": "link"}


def test_resolve_shares_link_anywhere_mounts_at_the_same_path(folders: list[str]) -> None:
    shares, _ = resolve_shares([(folders[0], "link")], "linux", None, False)
    assert shares == [SharedFolder(folders[0], "cove0", "link")]
    assert shares[0].guest_path == folders[0]


@pytest.mark.parametrize("what", ["missing", "file"])
def test_resolve_shares_refuses_what_is_not_a_folder(tmp_path: Path, folders: list[str],
                                                     what: str) -> None:
    bad = tmp_path / "gone"
    if what == "file":
        bad.write_text("x")
    with pytest.raises(DriverError) as e:
        resolve_shares([(folders[0], "auto"), (str(bad), "auto")], "linux", RUST_VFS,
                       False)
    assert str(e.value) == (f"cannot share {bad}: it is not a folder on this computer; "
                            "create it or remove it from the shares setting")


def test_virtiofsd_usable() -> None:
    assert RUST_VFS.usable(False) == (True, "")
    assert RUST_VFS.usable(True) == (True, "")
    assert C_VFS.usable(True) == (True, "")
    ok, why = C_VFS.usable(False)
    assert not ok and why.startswith("/usr/lib/qemu/virtiofsd (QEMU's C virtiofsd) needs root")


def test_virtiofsd_command_rust(tmp_path: Path) -> None:
    sock = tmp_path / "virtiofs-0.sock"
    base = ["/usr/libexec/virtiofsd", f"--socket-path={sock}", "--shared-dir=/home/me,x",
            "--cache=auto", "--announce-submounts"]
    assert RUST_VFS.command(sock, "/home/me,x", False) == [*base, "--sandbox=none"]
    assert RUST_VFS.command(sock, "/home/me,x", True) == [*base, "--sandbox=namespace"]


def test_virtiofsd_command_c(tmp_path: Path) -> None:
    sock = tmp_path / "virtiofs-0.sock"
    assert C_VFS.command(sock, "/home/me", True) == [
        "/usr/lib/qemu/virtiofsd", f"--socket-path={sock}", "-o", "source=/home/me",
        "-o", "cache=auto", "-o", "sandbox=namespace", "-o", "announce_submounts"]


def test_opt_doubles_commas() -> None:
    assert opt("/a,b,,c") == "/a,,b,,,,c"
    assert opt(Path("/plain")) == "/plain"
    assert opt(42) == "42"


def _cmd(spec: VMSpec, **kw: object) -> list[str]:
    return build_command(spec, "kvm", "linux", "qemu-system-x86_64",
                         Endpoint(path=qmp_socket(spec)), **kw)  # type: ignore[arg-type]


def test_command_without_shares_has_no_share_devices(spec: VMSpec) -> None:
    cmd = _cmd(spec)
    assert "-fsdev" not in cmd and "-object" not in cmd
    assert not any(a.startswith(("vhost-user-fs", "virtio-9p")) for a in cmd)
    assert share_args(spec, "pci", False) == []


@pytest.mark.parametrize(("is_root", "model"), [(False, "none"), (True, "passthrough")])
def test_command_9p_share(spec: VMSpec, is_root: bool, model: str) -> None:
    spec.shares = [SharedFolder("/home/me/src", "cove0", "9p")]
    cmd = _cmd(spec, is_root=is_root)
    assert _args(cmd, "-fsdev") == [
        f"local,id=fsdev0,path=/home/me/src,security_model={model},multidevs=remap"]
    assert "virtio-9p-pci,fsdev=fsdev0,mount_tag=cove0" in _args(cmd, "-device")
    # 9p needs no shared guest memory.
    assert "-object" not in cmd
    assert _arg(cmd, "-machine") == "q35,vmport=off,hpet=off"
    assert "-chardev" not in cmd


def test_command_link_share_adds_no_device(spec: VMSpec) -> None:
    """A "link" share is served over the guest link: QEMU gets no device, and the folder
    (here a Windows one) never reaches its command line."""
    spec.shares = [SharedFolder("C:\\Users\\me", "cove0", "link", "/mnt/host/c/Users/me"),
                   SharedFolder("/home/me/src", "cove1", "9p")]
    cmd = _cmd(spec)
    assert _args(cmd, "-fsdev") == [
        "local,id=fsdev1,path=/home/me/src,security_model=none,multidevs=remap"]
    assert not any("Users" in a or "cove0" in a for a in cmd)


def test_command_9p_path_with_commas_is_escaped(spec: VMSpec) -> None:
    spec.shares = [SharedFolder("/home/me/a,b,security_model=passthrough", "cove0", "9p")]
    fsdev = _arg(_cmd(spec), "-fsdev")
    assert fsdev == ("local,id=fsdev0,path=/home/me/a,,b,,security_model=passthrough,"
                     "security_model=none,multidevs=remap")


def test_command_virtiofs_share(spec: VMSpec) -> None:
    spec.shares = [SharedFolder("/home/me", "cove0", "virtiofs")]
    cmd = _cmd(spec)
    sock = spec.folder / "virtiofs-0.sock"
    assert virtiofs_socket(spec, 0) == sock
    assert _args(cmd, "-chardev") == [f"socket,id=fs0,path={sock}"]
    assert "vhost-user-fs-pci,queue-size=1024,chardev=fs0,tag=cove0" in _args(cmd, "-device")
    # The guest's RAM is a shareable memfd of the VM's size, used as its memory.
    assert _args(cmd, "-object") == ["memory-backend-memfd,id=mem,size=4096M,share=on"]
    assert _args(cmd, "-machine") == ["q35,vmport=off,hpet=off", "memory-backend=mem"]
    assert _arg(cmd, "-m") == "4096M"
    assert "-fsdev" not in cmd
    # The host folder reaches virtiofsd, never QEMU.
    assert not any("/home/me" in a for a in cmd)


def test_command_virtiofs_socket_path_with_commas(spec: VMSpec, tmp_path: Path) -> None:
    spec.folder = tmp_path / "a,b"
    spec.shares = [SharedFolder("/home/me", "cove0", "virtiofs")]
    assert _arg(_cmd(spec), "-chardev") == (
        f"socket,id=fs0,path={tmp_path}/a,,b/virtiofs-0.sock")


def test_command_both_transports_keep_their_indexes(spec: VMSpec) -> None:
    spec.shares = [SharedFolder("/srv/a", "cove0", "9p"),
                   SharedFolder("/srv/b", "cove1", "virtiofs"),
                   SharedFolder("/srv/c", "cove2", "9p")]
    cmd = _cmd(spec, is_root=True)
    assert _args(cmd, "-fsdev") == [
        "local,id=fsdev0,path=/srv/a,security_model=passthrough,multidevs=remap",
        "local,id=fsdev2,path=/srv/c,security_model=passthrough,multidevs=remap"]
    assert _args(cmd, "-chardev") == [f"socket,id=fs1,path={spec.folder}/virtiofs-1.sock"]
    devices = _args(cmd, "-device")
    assert "virtio-9p-pci,fsdev=fsdev0,mount_tag=cove0" in devices
    assert "vhost-user-fs-pci,queue-size=1024,chardev=fs1,tag=cove1" in devices
    assert "virtio-9p-pci,fsdev=fsdev2,mount_tag=cove2" in devices
    assert _args(cmd, "-object") == ["memory-backend-memfd,id=mem,size=4096M,share=on"]


def test_command_arm64_virtiofs(spec: VMSpec) -> None:
    spec.arch = "arm64"
    spec.memory_mib = 2048
    spec.shares = [SharedFolder("/Users/me", "cove0", "virtiofs")]
    cmd = build_command(spec, "kvm", "linux", "qemu-system-aarch64",
                        Endpoint(path=qmp_socket(spec)))
    assert _args(cmd, "-machine") == ["virt", "memory-backend=mem"]
    assert _args(cmd, "-object") == ["memory-backend-memfd,id=mem,size=2048M,share=on"]


def test_probe_boot_has_no_shares_nor_memory_backend(spec: VMSpec) -> None:
    spec.shares = [SharedFolder("/srv/a", "cove0", "virtiofs"),
                   SharedFolder("/srv/b", "cove1", "9p")]
    cmd = _cmd(spec, probe=True)
    assert "-object" not in cmd and "-fsdev" not in cmd and "-chardev" not in cmd
    assert _arg(cmd, "-machine") == "q35,vmport=off,hpet=off"
    assert not any("memory-backend" in a for a in cmd)


def test_driver_command_passes_root_to_the_9p_security_model(
        spec: VMSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    spec.shares = [SharedFolder("/srv/a", "cove0", "9p")]
    d = QemuDriver("amd64", os_name="linux")
    monkeypatch.setattr(QemuDriver, "is_root", staticmethod(lambda: True))
    assert "security_model=passthrough" in _arg(d.command(spec), "-fsdev")
    monkeypatch.setattr(QemuDriver, "is_root", staticmethod(lambda: False))
    assert "security_model=none" in _arg(d.command(spec), "-fsdev")


# -- finding virtiofsd -------------------------------------------------------------------

RUST_HELP = """Usage: virtiofsd [OPTIONS] --shared-dir <shared-dir>
      --shared-dir <shared-dir>  Shared directory path
      --socket-path <socket-path>
"""
C_HELP = """usage: virtiofsd [options]
    -o source=PATH             shared directory tree
    --socket-path=PATH         path for the vhost-user socket
"""


def _exe(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def _help_exe(path: Path, text: str, to_stderr: bool = False, code: int = 0) -> str:
    return _exe(path, f"cat {'>&2 ' if to_stderr else ''}<<'EOF'\n{text}EOF\nexit {code}\n")


@pytest.fixture
def no_virtiofsd_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.delenv("COVE_VIRTIOFSD", raising=False)
    if shutil.which("virtiofsd"):
        pytest.skip("a virtiofsd is on /usr/bin or /bin")
    return bin_dir


def test_find_virtiofsd_rust_flavour(tmp_path: Path, no_virtiofsd_on_path: Path) -> None:
    p = _help_exe(tmp_path / "vfs-rust", RUST_HELP)
    assert find_virtiofsd((p,)) == Virtiofsd(p, "rust")


def test_find_virtiofsd_c_flavour_help_on_stderr(tmp_path: Path,
                                                 no_virtiofsd_on_path: Path) -> None:
    # QEMU's C virtiofsd prints its usage on stderr and exits 1: still found.
    p = _help_exe(tmp_path / "vfs-c", C_HELP, to_stderr=True, code=1)
    assert find_virtiofsd((p,)) == Virtiofsd(p, "c")
    # And a Rust one whose help is on stderr is still Rust.
    r = _help_exe(tmp_path / "vfs-r2", RUST_HELP, to_stderr=True)
    assert find_virtiofsd((r,)) == Virtiofsd(r, "rust")


def test_find_virtiofsd_skips_what_cannot_run(tmp_path: Path,
                                              no_virtiofsd_on_path: Path) -> None:
    missing = str(tmp_path / "nope")
    not_exec = tmp_path / "not-exec"
    not_exec.write_text("#!/bin/sh\necho --shared-dir\n")
    not_exec.chmod(0o644)
    bad_interp = tmp_path / "bad-interp"
    bad_interp.write_text("#!/nonexistent/interpreter\n")
    bad_interp.chmod(0o755)
    folder = tmp_path / "a-folder"
    folder.mkdir()
    good = _help_exe(tmp_path / "good", C_HELP)
    cands = (missing, str(not_exec), str(bad_interp), str(folder), good)
    assert find_virtiofsd(cands) == Virtiofsd(good, "c")
    assert find_virtiofsd(cands[:-1]) is None
    assert find_virtiofsd(()) is None


def test_find_virtiofsd_order(tmp_path: Path, no_virtiofsd_on_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    first = _help_exe(tmp_path / "first", C_HELP)
    second = _help_exe(tmp_path / "second", RUST_HELP)
    on_path = _help_exe(no_virtiofsd_on_path / "virtiofsd", RUST_HELP)
    assert find_virtiofsd((first, second)) == Virtiofsd(first, "c")
    assert find_virtiofsd(()) == Virtiofsd(on_path, "rust")  # PATH comes last
    # COVE_VIRTIOFSD comes before every candidate.
    override = _help_exe(tmp_path / "override", RUST_HELP)
    monkeypatch.setenv("COVE_VIRTIOFSD", override)
    assert find_virtiofsd((first, second)) == Virtiofsd(override, "rust")
    # One that does not exist is passed over.
    monkeypatch.setenv("COVE_VIRTIOFSD", str(tmp_path / "missing"))
    assert find_virtiofsd((first,)) == Virtiofsd(first, "c")


def test_driver_looks_for_virtiofsd_once_and_only_on_linux(
        monkeypatch: pytest.MonkeyPatch, folders: list[str]) -> None:
    calls: list[int] = []

    def find() -> Virtiofsd:
        calls.append(1)
        return RUST_VFS

    monkeypatch.setattr(qdriver, "find_virtiofsd", find)
    monkeypatch.setattr(QemuDriver, "is_root", staticmethod(lambda: False))
    d = QemuDriver("amd64", os_name="linux")
    assert d.resolve_shares([]) == ([], [])
    assert calls == []  # no shares: no probing
    assert d.resolve_shares([(folders[0], "auto")]) == ([_sf(folders[0], 0, "virtiofs")], [])
    d.resolve_shares([(folders[1], "auto")])
    assert calls == [1]
    mac = QemuDriver("arm64", os_name="darwin")
    assert mac.resolve_shares([(folders[0], "auto")])[0] == [_sf(folders[0], 0, "9p")]
    assert mac.virtiofsd() is None
    assert calls == [1]


# -- starting virtiofsd ------------------------------------------------------------------

FAKE_VIRTIOFSD = """
for a in "$@"; do
    case "$a" in --socket-path=*) sock="${a#--socket-path=}" ;; esac
done
echo "pid $$ args: $*"
echo $$ >> "{pids}"
{action}
"""


def _fake_virtiofsd(tmp_path: Path, action: str) -> tuple[Virtiofsd, Path]:
    pids = tmp_path / "vfs-pids"
    path = _exe(tmp_path / "fake-virtiofsd",
                FAKE_VIRTIOFSD.replace("{pids}", str(pids)).replace("{action}", action))
    return Virtiofsd(path, "rust"), pids


def _driver_with(vfs: Virtiofsd | None, monkeypatch: pytest.MonkeyPatch,
                 ) -> QemuDriver:
    d = QemuDriver("amd64", os_name="linux")
    d._virtiofsd, d._virtiofsd_looked = vfs, True
    monkeypatch.setattr(QemuDriver, "is_root", staticmethod(lambda: False))
    return d


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_start_virtiofsd_one_per_virtiofs_share(spec: VMSpec, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    vfs, pids = _fake_virtiofsd(tmp_path, ': > "$sock"\nexec sleep 30')
    d = _driver_with(vfs, monkeypatch)
    spec.shares = [SharedFolder("/srv/a", "cove0", "9p"),
                   SharedFolder("/srv/b", "cove1", "virtiofs"),
                   SharedFolder("/srv/c", "cove2", "virtiofs")]
    try:
        d._start_virtiofsd(spec)
        assert len(d.helpers) == 2
        assert all(p.poll() is None for p in d.helpers)
        assert not (spec.folder / "virtiofs-0.sock").exists()  # 9p: no helper
        assert (spec.folder / "virtiofs-1.sock").exists()
        assert (spec.folder / "virtiofs-2.sock").exists()
        log1 = (spec.folder / "virtiofsd-1.log").read_text()
        assert f"--socket-path={spec.folder}/virtiofs-1.sock" in log1
        assert "--shared-dir=/srv/b" in log1 and "--sandbox=none" in log1
        assert "--shared-dir=/srv/c" in (spec.folder / "virtiofsd-2.log").read_text()
        started = [int(x) for x in pids.read_text().split()]
        assert len(started) == 2
    finally:
        helpers = list(d.helpers)
        d._stop_helpers()
    assert d.helpers == []
    assert all(p.returncode is not None for p in helpers)
    assert all(_gone(pid) for pid in started)


def test_start_virtiofsd_replaces_helpers_of_an_earlier_boot(
        spec: VMSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vfs, _ = _fake_virtiofsd(tmp_path, ': > "$sock"\nexec sleep 30')
    d = _driver_with(vfs, monkeypatch)
    spec.shares = [SharedFolder("/srv/b", "cove0", "virtiofs")]
    try:
        d._start_virtiofsd(spec)
        first = d.helpers[0]
        (spec.folder / "virtiofs-0.sock").unlink()
        d._start_virtiofsd(spec)
        assert first.returncode is not None  # stopped, not leaked
        assert len(d.helpers) == 1 and d.helpers[0] is not first
        d.kill()  # no QEMU: still stops the helpers
        assert d.helpers == []
    finally:
        d._stop_helpers()


def test_start_virtiofsd_that_exits_names_its_log(spec: VMSpec, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    vfs, _ = _fake_virtiofsd(
        tmp_path, 'echo "virtiofsd: Error creating listener: Address in use" >&2\nexit 1')
    d = _driver_with(vfs, monkeypatch)
    spec.shares = [SharedFolder("/srv/b", "cove0", "virtiofs")]
    stale = spec.folder / "virtiofs-0.sock"
    stale.write_text("")  # left by an earlier run: removed, not mistaken for the socket
    with pytest.raises(DriverError) as e:
        d._start_virtiofsd(spec)
    msg = str(e.value)
    assert msg.startswith("virtiofsd for /srv/b did not start (its log: ")
    assert "virtiofsd-0.log" in msg
    assert "Error creating listener: Address in use" in msg  # the log's last lines
    assert not stale.exists()
    assert d.helpers == []


def test_start_virtiofsd_without_a_socket_in_time(spec: VMSpec, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    vfs, pids = _fake_virtiofsd(tmp_path, "exec sleep 30")  # never listens

    class Clock:
        t = 0.0

        def monotonic(self) -> float:
            self.t += 4.0  # 10 s pass in a few polls
            return self.t

        def sleep(self, s: float) -> None:
            pass

    d = _driver_with(vfs, monkeypatch)
    spec.shares = [SharedFolder("/srv/b", "cove0", "virtiofs")]
    # Wait until the helper runs, so that the test sees it stopped rather than not started.
    real_popen = subprocess.Popen

    def popen(*a: object, **kw: object) -> subprocess.Popen:
        p = real_popen(*a, **kw)  # type: ignore[call-overload]
        deadline = time.monotonic() + 10
        while not pids.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return p

    monkeypatch.setattr(qvfs.subprocess, "Popen", popen)
    monkeypatch.setattr(qvfs, "time", Clock())
    with pytest.raises(DriverError) as e:
        d._start_virtiofsd(spec)
    assert str(e.value).startswith("virtiofsd for /srv/b did not start (its log: ")
    assert d.helpers == []
    assert _gone(int(pids.read_text().split()[0]))


def test_start_virtiofsd_not_installed(spec: VMSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _driver_with(None, monkeypatch)
    spec.shares = [SharedFolder("/srv/a", "cove0", "9p")]
    d._start_virtiofsd(spec)  # 9p only: nothing to start, nothing needed
    assert d.helpers == []
    spec.shares = [SharedFolder("/srv/b", "cove0", "virtiofs")]
    with pytest.raises(DriverError, match="cannot share /srv/b over virtiofs: virtiofsd is "
                                          "not installed"):
        d._start_virtiofsd(spec)


@pytest.mark.parametrize(("share", "vm", "host", "want"), [
    ("/home/me", "", "/home/me/src/a.js", "/home/me/src/a.js"),
    ("/home/me", "", "/home/me", "/home/me"),
    ("/home/me", "", "/home/me2/x", None),
    ("/home/me", "", "/home", None),
    ("C:\\Users\\me", "/mnt/host/c/Users/me", "C:\\Users\\me\\src\\a.js",
     "/mnt/host/c/Users/me/src/a.js"),
    ("C:\\Users\\me", "/mnt/host/c/Users/me", "c:\\users\\ME\\Src", "/mnt/host/c/Users/me/Src"),
    ("C:\\Users\\me", "/mnt/host/c/Users/me", "C:\\Users\\me", "/mnt/host/c/Users/me"),
    ("C:\\Users\\me", "/mnt/host/c/Users/me", "C:\\Users\\me2\\x", None),
    ("C:\\Users\\me", "/mnt/host/c/Users/me", "D:\\Users\\me\\x", None),
    ("D:\\", "/mnt/host/d", "D:\\src\\x", "/mnt/host/d/src/x"),
])
def test_a_host_path_in_a_share_has_its_vm_path(share: str, vm: str, host: str,
                                                want: str | None) -> None:
    assert SharedFolder(share, "cove0", "link", vm).vm_path_of(host) == want


def test_the_private_host_ports_are_the_next_boots_forwards() -> None:
    d = QemuDriver("amd64", os_name="linux")
    ports = d.private_host_ports()
    assert d.private_host_ports() == ports  # picked once, for the boot about to start
    assert ports == [d.forwards.link_port, d.ssh_address()[1]]  # type: ignore[index]


def test_a_qemu_older_than_7_on_apple_silicon_is_refused_with_the_upgrade(
        spec: VMSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU before 7.0 lays the virt machine out past the 36 address bits an M1 gives a
    guest and HVF refuses the VM (a probe would then fall back to TCG with a misleading
    hint); Cove says to upgrade before it boots anything. 7.0 and later, an Intel Mac,
    Linux, and a version it cannot read go on."""
    from desktop.drivers.qemu import accel

    old = "QEMU emulator version 6.2.0"
    why = accel.too_old_for_hvf("darwin", "arm64", old)
    assert why is not None and "brew upgrade qemu" in why and why.startswith(old)
    for os_name, arch, line in (("darwin", "arm64", "QEMU emulator version 7.0.0"),
                                ("darwin", "arm64", "QEMU emulator version 10.0.2"),
                                ("darwin", "amd64", old), ("linux", "arm64", old),
                                ("darwin", "arm64", "")):
        assert accel.too_old_for_hvf(os_name, arch, line) is None, (os_name, arch, line)
    qemu = tmp_path / "qemu-system-aarch64"
    qemu.write_text(f"#!/bin/sh\necho '{old}'\necho 'Copyright (c) 2003-2021'\n")
    qemu.chmod(0o755)
    spec.arch = "arm64"
    d = QemuDriver("arm64", os_name="darwin")
    d.qemu = str(qemu)
    with pytest.raises(DriverError, match=r"6\.2\.0 is older than 7\.0.*brew upgrade qemu"):
        d.start(spec)
    assert d.proc is None and not d.accel  # nothing probed, nothing started


def test_the_tcg_translation_buffer_is_qemus_unless_the_environment_sizes_it(
        spec: VMSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU's default unless COVE_QEMU_TB_MIB asks for a size (TCG only); a size QEMU
    would refuse, or one that is not a number, is the start's error, naming the variable
    and the range."""
    from desktop.drivers.qemu.command import tcg_tb_mib

    assert tcg_tb_mib({}) is None and tcg_tb_mib({"COVE_QEMU_TB_MIB": "256"}) == 256
    for bad in ("0", "8", "99999", "1G", "-5", "big"):
        with pytest.raises(DriverError, match="COVE_QEMU_TB_MIB=.*from 16 to 4096"):
            tcg_tb_mib({"COVE_QEMU_TB_MIB": bad})
    d = QemuDriver("amd64", os_name="linux")
    d.accel = "tcg"
    monkeypatch.delenv("COVE_QEMU_TB_MIB", raising=False)
    assert _arg(d.command(spec), "-accel") == "tcg"
    monkeypatch.setenv("COVE_QEMU_TB_MIB", "256")
    assert _arg(d.command(spec), "-accel") == "tcg,tb-size=256"
    d.accel = "kvm"
    assert _arg(d.command(spec), "-accel") == "kvm"  # hardware: no translation buffer
    monkeypatch.setenv("COVE_QEMU_TB_MIB", "lots")
    d.accel = "tcg"
    with pytest.raises(DriverError, match="'lots' is not a size in MiB"):
        d.command(spec)


