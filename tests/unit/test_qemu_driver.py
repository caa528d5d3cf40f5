"""The QEMU driver (desktop.drivers.qemu): command lines, accelerator choice, data disk."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from desktop.drivers import DiskError, DriverError, VMSpec, qemu
from desktop.drivers.qemu import Endpoint

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
                  memory_mib=4096, disk_gib=64, arch="amd64", link_port=41234,
                  ssh_port=41235)


def _arg(cmd: list[str], flag: str) -> str:
    """The value after `flag` (which must occur once)."""
    assert cmd.count(flag) == 1, f"{flag} occurs {cmd.count(flag)} times in {cmd}"
    return cmd[cmd.index(flag) + 1]


def _args(cmd: list[str], flag: str) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == flag]


# -- build_command -----------------------------------------------------------------------


def test_command_amd64_tcg_linux(spec: VMSpec, tmp_path: Path) -> None:
    qmp = Endpoint(path=spec.qmp_socket)
    cmd = qemu.build_command(spec, "tcg", "linux", "/usr/bin/qemu-system-x86_64", qmp)
    assert cmd[0] == "/usr/bin/qemu-system-x86_64"
    assert _arg(cmd, "-machine") == "q35,vmport=off,hpet=off"
    assert _arg(cmd, "-accel") == "tcg"
    assert _arg(cmd, "-cpu") == "max"
    assert _arg(cmd, "-smp") == "4"
    assert _arg(cmd, "-m") == "4096M"
    assert _arg(cmd, "-kernel") == str(spec.kernel)
    assert _arg(cmd, "-initrd") == str(spec.initramfs)
    append = _arg(cmd, "-append")
    assert "console=ttyS0" in append.split()
    assert "cove.probe" not in append
    assert _arg(cmd, "-serial") == f"file:{spec.serial_log}"
    assert _arg(cmd, "-qmp") == f"unix:{spec.qmp_socket},server=on,wait=off"
    assert "-no-reboot" in cmd and "-nodefaults" in cmd
    drives = _args(cmd, "-drive")
    assert f"if=none,id=root,file={spec.root_image},format=raw,readonly=on" in drives
    data = next(d for d in drives if "id=data" in d)
    assert f"file={spec.data_disk}" in data and "format=qcow2" in data
    assert "discard=unmap" in data
    devices = _args(cmd, "-device")
    assert "virtio-blk-pci,drive=data,serial=cove-data" in devices
    assert "virtio-blk-pci,drive=root,serial=cove-root" in devices
    # No virtio-serial control port unless asked for.
    assert not any("virtserialport" in d for d in devices)


def test_command_kvm_uses_host_cpu(spec: VMSpec) -> None:
    cmd = qemu.build_command(spec, "kvm", "linux", "qemu-system-x86_64",
                             Endpoint(path=spec.qmp_socket))
    assert _arg(cmd, "-accel") == "kvm"
    assert _arg(cmd, "-cpu") == "host"
    assert _arg(cmd, "-machine").startswith("q35")


def test_command_arm64_hvf_darwin(spec: VMSpec) -> None:
    spec.arch = "arm64"
    cmd = qemu.build_command(spec, "hvf", "darwin", "/opt/homebrew/bin/qemu-system-aarch64",
                             Endpoint(path=spec.qmp_socket))
    assert _arg(cmd, "-machine") == "virt"
    assert _arg(cmd, "-accel") == "hvf"
    assert _arg(cmd, "-cpu") == "host"
    append = _arg(cmd, "-append").split()
    assert "console=ttyAMA0" in append and "console=ttyS0" not in append
    assert not any("q35" in a or "hpet" in a for a in cmd)


def test_command_arm64_tcg(spec: VMSpec) -> None:
    spec.arch = "arm64"
    cmd = qemu.build_command(spec, "tcg", "linux", "qemu-system-aarch64",
                             Endpoint(path=spec.qmp_socket))
    assert _arg(cmd, "-machine") == "virt,gic-version=max"
    assert _arg(cmd, "-cpu") == "max"


def test_command_amd64_whpx_windows(spec: VMSpec) -> None:
    cmd = qemu.build_command(spec, "whpx", "windows", r"C:\Program Files\qemu\qemu.exe",
                             Endpoint(port=50123), control=Endpoint(port=50124))
    assert _arg(cmd, "-qmp") == "tcp:127.0.0.1:50123,server=on,wait=off"
    assert _arg(cmd, "-accel") == "whpx"
    assert _arg(cmd, "-cpu") == "max"  # QEMU's WHPX does not take -cpu host
    assert "hpet" not in _arg(cmd, "-machine")
    chardev = _arg(cmd, "-chardev")
    assert chardev == "socket,id=ctl,host=127.0.0.1,port=50124,server=on,wait=off"
    assert "virtserialport,chardev=ctl,name=org.cove.control" in _args(cmd, "-device")
    assert not any("unix:" in a for a in cmd)


def test_command_boot_config_by_file_not_token(spec: VMSpec) -> None:
    cmd = qemu.build_command(spec, "kvm", "linux", "qemu-system-x86_64",
                             Endpoint(path=spec.qmp_socket))
    assert _arg(cmd, "-fw_cfg") == f"name=opt/org.cove/boot,file={spec.boot_config}"
    assert not any(TOKEN in a for a in cmd)
    assert not any("token" in a.lower() for a in cmd)


def test_command_hostfwd_loopback_only(spec: VMSpec) -> None:
    cmd = qemu.build_command(spec, "tcg", "linux", "qemu-system-x86_64",
                             Endpoint(path=spec.qmp_socket))
    netdev = _arg(cmd, "-netdev")
    fwds = [p for p in netdev.split(",") if p.startswith("hostfwd=")]
    assert fwds == ["hostfwd=tcp:127.0.0.1:41234-:10811", "hostfwd=tcp:127.0.0.1:41235-:22"]
    spec.ssh_port = 0
    cmd = qemu.build_command(spec, "tcg", "linux", "qemu-system-x86_64",
                             Endpoint(path=spec.qmp_socket))
    fwds = [p for p in _arg(cmd, "-netdev").split(",") if p.startswith("hostfwd=")]
    assert fwds == ["hostfwd=tcp:127.0.0.1:41234-:10811"]


def test_extra_forwards_are_checked_before_they_reach_qemu(spec: VMSpec) -> None:
    spec.extra_hostfwd = ["tcp:127.0.0.1:19001-:19001"]
    cmd = qemu.build_command(spec, "tcg", "linux", "qemu-system-x86_64",
                             Endpoint(path=spec.qmp_socket))
    assert "hostfwd=tcp:127.0.0.1:19001-:19001" in _arg(cmd, "-netdev").split(",")
    # All interfaces, or a smuggled QEMU option: refused with the expected form.
    for bad in ("tcp::19001-:80", "tcp:127.0.0.1:1-:2,restrict=off", "tcp:0.0.0.0:1-:2"):
        spec.extra_hostfwd = [bad]
        with pytest.raises(DriverError, match="HOSTPORT-:GUESTPORT"):
            qemu.build_command(spec, "tcg", "linux", "qemu-system-x86_64",
                               Endpoint(path=spec.qmp_socket))


def test_command_probe(spec: VMSpec) -> None:
    cmd = qemu.build_command(spec, "kvm", "linux", "qemu-system-x86_64", Endpoint(),
                             probe=True)
    assert "cove.probe" in _arg(cmd, "-append").split()
    for flag in ("-drive", "-netdev", "-fw_cfg", "-qmp", "-device"):
        assert flag not in cmd
    assert not any(str(spec.data_disk) in a or str(spec.root_image) in a for a in cmd)
    assert "-kernel" in cmd and "-initrd" in cmd and "-serial" in cmd


def test_command_extra_args_last(spec: VMSpec) -> None:
    spec.extra_args = ["-d", "guest_errors"]
    cmd = qemu.build_command(spec, "tcg", "linux", "q", Endpoint(path=spec.qmp_socket))
    assert cmd[-2:] == ["-d", "guest_errors"]


def test_endpoint() -> None:
    e = Endpoint(path=Path("/run/x/qmp.sock"))
    assert e.qemu_arg() == "unix:/run/x/qmp.sock,server=on,wait=off"
    assert e.chardev_arg() == "path=/run/x/qmp.sock,server=on,wait=off"
    assert e.address() == "/run/x/qmp.sock"
    t = Endpoint(port=4444)
    assert t.address() == ("127.0.0.1", 4444)


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
    assert qemu.accel_candidates(os_name, guest, host) == expected


def test_host_arch_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu.platform, "machine", lambda: "x86_64")
    assert qemu.host_arch() == "amd64"
    monkeypatch.setattr(qemu.platform, "machine", lambda: "AArch64")
    assert qemu.host_arch() == "arm64"


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

    monkeypatch.setattr(qemu.os, "access", access)
    monkeypatch.setattr(qemu, "host_arch", lambda: "amd64")
    return script, counter


def _runs(counter: Path) -> list[str]:
    return counter.read_text().splitlines() if counter.exists() else []


def test_probe_accel_falls_back_to_tcg_and_caches(spec: VMSpec, tmp_path: Path,
                                                  fake_qemu: tuple[Path, Path]) -> None:
    script, counter = fake_qemu
    cache = tmp_path / "cove" / "accel.json"
    accel, skipped = qemu.probe_accel(spec, str(script), cache, os_name="linux", timeout=5)
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
    again = qemu.probe_accel(spec, str(script), cache, os_name="linux", timeout=5)
    assert again == ("tcg", skipped)
    assert len(_runs(counter)) == 1


def test_probe_cache_invalidated_by_a_new_kernel(spec: VMSpec, tmp_path: Path,
                                                 fake_qemu: tuple[Path, Path]) -> None:
    script, counter = fake_qemu
    cache = tmp_path / "accel.json"
    qemu.probe_accel(spec, str(script), cache, os_name="linux", timeout=5)
    assert len(_runs(counter)) == 1
    spec.kernel.write_bytes(b"\x00a bigger kernel" * 200)
    qemu.probe_accel(spec, str(script), cache, os_name="linux", timeout=5)
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
    accel, skipped = qemu.probe_accel(spec, str(script), tmp_path / "a.json", os_name="linux",
                                      timeout=5)
    assert (accel, skipped) == ("kvm", [])
    assert len(_runs(counter)) == 1


def test_probe_accel_no_kvm_device(spec: VMSpec, tmp_path: Path,
                                   fake_qemu: tuple[Path, Path],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    script, counter = fake_qemu
    monkeypatch.setattr(qemu.os, "access", lambda path, mode, *a, **k: False)
    accel, skipped = qemu.probe_accel(spec, str(script), tmp_path / "a.json", os_name="linux",
                                      timeout=5)
    assert accel == "tcg"
    assert "/dev/kvm" in skipped[0] and "kvm group" in skipped[0]
    assert _runs(counter) == []  # no trial boot without the device


def test_probe_accel_foreign_guest_needs_no_trial(spec: VMSpec, tmp_path: Path,
                                                  fake_qemu: tuple[Path, Path]) -> None:
    script, counter = fake_qemu
    spec.arch = "arm64"  # on an amd64 host: TCG is the only candidate
    assert qemu.probe_accel(spec, str(script), tmp_path / "a.json", os_name="linux",
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
    qemu.ensure_disk(disk, 64)
    info = _info(disk)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 64 * 2**30
    assert "backing-filename" not in info
    assert disk.stat().st_size < 16 * 2**20  # sparse: no 64 GiB file
    # Checking it again changes nothing.
    before = _sha256(disk)
    qemu.ensure_disk(disk, 64)
    assert _sha256(disk) == before


def test_ensure_disk_grows_but_never_shrinks(tmp_path: Path) -> None:
    disk = tmp_path / "data.qcow2"
    qemu.ensure_disk(disk, 8)
    qemu.ensure_disk(disk, 16)
    assert _info(disk)["virtual-size"] == 16 * 2**30
    qemu.ensure_disk(disk, 8)
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
        qemu.ensure_disk(disk, 8)
    assert str(base) in str(e.value) or "base.qcow2" in str(e.value)
    assert _sha256(disk) == before


def test_ensure_disk_refuses_garbage(tmp_path: Path) -> None:
    disk = tmp_path / "data.qcow2"
    disk.write_bytes(os.urandom(3 * 2**20))
    before = _sha256(disk)
    with pytest.raises(DiskError) as e:
        qemu.ensure_disk(disk, 8)
    assert str(disk) in str(e.value)
    assert "cove reset" in str(e.value)
    assert _sha256(disk) == before
    assert disk.stat().st_size == 3 * 2**20


def test_ensure_disk_refuses_a_damaged_qcow2(tmp_path: Path) -> None:
    disk = tmp_path / "data.qcow2"
    qemu.ensure_disk(disk, 8)
    # Break the header: the L1 table offset (bytes 40-47) points far past the end.
    data = bytearray(disk.read_bytes())
    data[40:48] = (0x7FFFFFFFFFFF0000).to_bytes(8, "big")
    disk.write_bytes(bytes(data))
    before = _sha256(disk)
    with pytest.raises(DiskError) as e:
        qemu.ensure_disk(disk, 8)
    assert str(disk) in str(e.value)
    assert _sha256(disk) == before


def test_ensure_disk_accepts_leaked_clusters(tmp_path: Path) -> None:
    """Leaked clusters (refcount > 0, unreferenced) are what an unclean stop with
    lazy_refcounts leaves behind: "waste of disk space, but no harm to data" in
    qemu-img's words (`check` exits 3). Such a disk must still boot, not be called damaged
    with `cove reset` (which deletes everything) as the suggested way out."""
    assert QEMU_IMG is not None
    disk = tmp_path / "data.qcow2"
    qemu.ensure_disk(disk, 8)
    data = bytearray(disk.read_bytes())
    cluster = 1 << int.from_bytes(data[20:24], "big")
    refcount_table = int.from_bytes(data[48:56], "big")
    refcount_block = int.from_bytes(data[refcount_table : refcount_table + 8], "big")
    data += bytes(6 * cluster - len(data))  # room for a cluster nothing refers to
    data[refcount_block + 2 * 5 : refcount_block + 2 * 5 + 2] = (1).to_bytes(2, "big")
    disk.write_bytes(bytes(data))
    check = subprocess.run([QEMU_IMG, "check", "-q", "-U", str(disk)], capture_output=True)
    assert check.returncode == 3  # leaks only: the situation under test
    qemu.ensure_disk(disk, 8)
    assert _info(disk)["format"] == "qcow2"


def test_ensure_disk_without_qemu_img(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(qemu.DriverError, match="qemu-utils"):
        qemu.ensure_disk(tmp_path / "data.qcow2", 8)
    assert not (tmp_path / "data.qcow2").exists()


def test_driver_available_names_the_package(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    ok, why = qemu.QemuDriver("arm64", os_name="linux").available()
    assert not ok and "qemu-system-aarch64" in why and "qemu-system-arm" in why


def test_registry_picks_qemu_with_the_options(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from desktop import drivers

    d = drivers.pick(arch="amd64", accel_cache=tmp_path / "accel.json")
    assert isinstance(d, qemu.QemuDriver)
    assert d.arch == "amd64" and d.qemu == "qemu-system-x86_64"
    assert d.accel_cache == tmp_path / "accel.json"
    # Without the arm64 emulator, nothing is usable, and the error says what to install.
    real_which = shutil.which
    monkeypatch.setattr(qemu.shutil, "which",
                        lambda n: None if n == "qemu-system-aarch64" else real_which(n))
    with pytest.raises(drivers.DriverError, match="apt-get install qemu-system-arm"):
        drivers.pick(arch="arm64")
    with pytest.raises(drivers.DriverError, match="unknown driver 'hyperv-nope'"):
        drivers.pick("hyperv-nope")
