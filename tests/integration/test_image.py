"""The built guest image: its manifest, its cache, and that it boots the engine."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import OTHER_ARCH, ROOT, Cove

MiB = 2**20


@pytest.fixture(scope="module")
def image_dir(cove: Cove) -> Path:
    env = {**os.environ, "COVE_IMAGES": cove.env["COVE_IMAGES"]}
    out = subprocess.run([sys.executable, "-m", "vm_image", "build"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=1800, check=True)
    return Path(json.loads(out.stdout)["path"])


def test_cached_build_reuses_the_image(cove: Cove, image_dir: Path) -> None:
    env = {**os.environ, "COVE_IMAGES": cove.env["COVE_IMAGES"]}
    before = (image_dir / "manifest.json").read_bytes()
    out = subprocess.run([sys.executable, "-m", "vm_image", "build"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout)["path"] == str(image_dir)
    assert "up to date" in out.stderr
    assert (image_dir / "manifest.json").read_bytes() == before


def test_manifest_matches_the_files(image_dir: Path) -> None:
    m = json.loads((image_dir / "manifest.json").read_text())
    assert m["arch"] == "amd64" and m["suite"] == "trixie" and m["key"] == image_dir.name
    for name in ("vmlinuz", "initramfs", "root.sqfs"):
        data = (image_dir / name).read_bytes()
        assert m["files"][name]["size"] == len(data)
        assert m["files"][name]["sha256"] == hashlib.sha256(data).hexdigest()
    pk = m["packages"]
    assert pk["docker.io"].startswith("26.")
    for name in ("containerd", "runc", "tini", "iptables", "e2fsprogs", "python3"):
        assert name in pk
    assert not any(n.startswith(("systemd", "udev")) for n in pk)


def test_sizes_stay_in_budget(image_dir: Path) -> None:
    assert (image_dir / "root.sqfs").stat().st_size <= 150 * MiB
    assert (image_dir / "initramfs").stat().st_size <= 4 * MiB


def test_root_has_no_docs_and_the_agent(image_dir: Path, tmp_path: Path) -> None:
    listing = subprocess.run(["unsquashfs", "-l", "-d", "", str(image_dir / "root.sqfs")],
                             capture_output=True, text=True, check=True).stdout.split()
    names = set(listing)
    assert "/usr/lib/python3/dist-packages/guest_engine/agent.py" in names
    assert "/usr/sbin/dockerd" in names and "/usr/bin/containerd" in names
    assert not [n for n in names if n.startswith(("/usr/share/man/", "/usr/share/doc/",
                                                  "/usr/share/locale/"))]
    assert any(n.endswith("modules.dep") for n in names)


def test_engine_in_the_vm_answers_and_runs_a_container(cove: Cove, hello_image: str) -> None:
    info = json.loads(cove.docker("info", "--format", "{{json .}}").stdout)
    assert info["ServerVersion"].startswith("26.")
    assert info["Driver"] == "overlay2" and info["CgroupVersion"] == "2"
    assert info["DockerRootDir"] == "/var/lib/docker"
    out = cove.docker("run", "--rm", hello_image, "sh", "-c", "echo line-from-the-vm")
    assert out.stdout == "line-from-the-vm\n"


def test_unreachable_mirror_is_a_clear_error_and_keeps_the_image(cove: Cove,
                                                                  image_dir: Path) -> None:
    env = {**os.environ, "COVE_IMAGES": cove.env["COVE_IMAGES"],
           "COVE_DEBIAN_MIRROR": "http://127.0.0.1:9/debian"}
    before = {p.name: p.stat().st_mtime for p in image_dir.iterdir()}
    out = subprocess.run([sys.executable, "-m", "vm_image", "build", "--force"], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 1
    assert "could not be reached" in out.stderr and "COVE_DEBIAN_MIRROR" in out.stderr
    assert {p.name: p.stat().st_mtime for p in image_dir.iterdir()} == before
    images = Path(cove.env["COVE_IMAGES"])
    assert not [p for p in images.iterdir() if p.name.startswith((".base-", ".build-"))]


def test_a_container_of_the_other_architecture_runs(cove: Cove, other_arch_image: str
                                                    ) -> None:
    """`docker run --platform` with an image of the other architecture: the VM's
    binfmt_misc hands its programs to QEMU's user-mode emulator (the F flag: the
    container needs no emulator of its own)."""
    arch, machine = OTHER_ARCH
    got = cove.docker("run", "--rm", "--platform", f"linux/{arch}", other_arch_image,
                      "/bin/busybox", "uname", "-m")
    assert got.stdout.strip() == machine
    assert cove.docker("image", "inspect", "-f", "{{.Architecture}}",
                       other_arch_image).stdout.strip() == arch
    vm = cove.cove("shell", "ls", "/proc/sys/fs/binfmt_misc").stdout.split()
    assert f"qemu-{machine}" in vm


@pytest.fixture(scope="module")
def armv7_image(cove: Cove, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A linux/arm/v7 image made here: Debian's static busybox for armhf, fetched from the
    mirror the guest image is built from (checked against the suite's index)."""
    import lzma
    import urllib.request

    from vm_image import recipe

    base = recipe.mirror().rstrip("/")
    index = urllib.request.urlopen(
        f"{base}/dists/{recipe.SUITE}/main/binary-armhf/Packages.xz", timeout=300).read()
    stanza = next(s for s in lzma.decompress(index).decode().split("\n\n")
                  if s.startswith("Package: busybox-static\n"))
    fields = dict(line.split(": ", 1) for line in stanza.splitlines()
                  if ": " in line and not line.startswith(" "))
    deb = urllib.request.urlopen(f"{base}/{fields['Filename']}", timeout=300).read()
    assert hashlib.sha256(deb).hexdigest() == fields["SHA256"]
    d = tmp_path_factory.mktemp("armhf")
    (d / "busybox.deb").write_bytes(deb)
    subprocess.run(["dpkg-deb", "-x", str(d / "busybox.deb"), str(d / "x")], check=True)
    (d / "rootfs/bin").mkdir(parents=True)
    (d / "x/usr/bin/busybox").rename(d / "rootfs/bin/busybox")
    data = (d / "rootfs/bin/busybox").read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 1 and data[18] == 0x28  # ELF32, EM_ARM
    subprocess.run(["tar", "-C", str(d / "rootfs"), "-cf", str(d / "rootfs.tar"), "."],
                   check=True)
    cove.docker("import", "--platform", "linux/arm/v7", str(d / "rootfs.tar"),
                "cove-armv7-busybox")
    return "cove-armv7-busybox"


def test_a_32_bit_arm_container_runs(cove: Cove, armv7_image: str) -> None:
    """linux/arm/v7 (Raspberry Pi images, old IoT bases): QEMU's arm emulator, on amd64
    hosts and on Apple silicon alike (it has no AArch32)."""
    got = cove.docker("run", "--rm", "--platform", "linux/arm/v7", armv7_image,
                      "/bin/busybox", "sh", "-c", "uname -m && echo $((6 * 7))")
    assert got.stdout.split() == ["armv7l", "42"], got.stderr
    assert cove.docker("image", "inspect", "-f", "{{.Architecture}}/{{.Variant}}",
                       armv7_image).stdout.strip() == "arm/v7"
    assert "qemu-arm" in cove.cove("shell", "ls", "/proc/sys/fs/binfmt_misc").stdout.split()
