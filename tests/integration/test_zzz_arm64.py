"""The arm64 guest (Apple silicon and ARM laptops) booted here under emulation.

`cove start --arch arm64` boots the arm64 image from the same recipe with
qemu-system-aarch64 (TCG on this amd64 machine; HVF on a Mac), and the host's docker CLI
builds and runs an arm64 container in it through Cove's socket. Its own instance, after
the other modules (the session's amd64 VM idles meanwhile).
"""

from __future__ import annotations

import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Cove, own_instance
from tests.smoke import busybox_from_initramfs


def _arm64_busybox(dest: Path) -> None:
    """The static arm64 busybox out of the arm64 image's initramfs."""
    import vm_image

    image = vm_image.find_image("arm64")
    assert image is not None, "no arm64 guest image: `make image` builds it"
    data = busybox_from_initramfs(image.initramfs)
    assert data[:4] == b"\x7fELF" and data[18] == 0xB7, "not an aarch64 ELF binary"
    dest.write_bytes(data)
    dest.chmod(0o755)


@pytest.fixture(scope="module")
def arm(cove_home: tuple[Path, Path]) -> Iterator[Cove]:
    with own_instance(cove_home, "arm", "--arch", "arm64", before=lambda c: c.cove(
            "shares", "remove", str(Path.home()), check=False)) as c:
        yield c


def test_arm64_instance_reports_its_arch(arm: Cove) -> None:
    st = arm.status()
    assert st["state"] == "running"
    assert st["arch"] == "arm64"
    # An amd64 host has no hardware acceleration for an arm64 guest: emulation.
    assert st["accel"] == "tcg"
    server = arm.docker("version", "--format", "{{.Server.Os}}/{{.Server.Arch}}")
    assert server.stdout.strip() == "linux/arm64"


def test_arm64_container_built_and_run_from_the_host_cli(arm: Cove) -> None:
    with tempfile.TemporaryDirectory() as d:
        _arm64_busybox(Path(d) / "busybox")
        (Path(d) / "Dockerfile").write_text(
            "FROM scratch\nCOPY busybox /bin/busybox\n"
            'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n')
        arm.docker("build", "-q", "-t", "arm-hello", d, timeout=600)
    got = arm.docker("run", "--rm", "arm-hello", "uname", "-m", timeout=300)
    assert got.stdout.strip() == "aarch64"
    # A published port reaches the arm64 container from the host, as on amd64.
    arm.docker("run", "-d", "--name", "armweb", "-p", "127.0.0.1:19480:80", "arm-hello",
               "sh", "-c", "mkdir -p /w && echo arm64-ok > /w/index.html && "
               "httpd -f -p 80 -h /w")
    deadline = time.monotonic() + 120
    body = b""
    while time.monotonic() < deadline:
        try:
            body = urllib.request.urlopen("http://127.0.0.1:19480/", timeout=5).read()
            break
        except OSError:
            time.sleep(1)
    assert body.strip() == b"arm64-ok"
