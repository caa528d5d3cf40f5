"""`docker buildx build --platform linux/amd64,linux/arm64`: one image for both
architectures, built through Cove's socket with BuildKit's default (docker) driver.

That needs the engine's containerd image store: the classic store keeps one architecture
per tag, and BuildKit says "Multi-platform build is not supported for the docker driver".
The store is one line of daemon.json (`features.containerd-snapshotter`), which a user
sets in Settings or `engine_config`; this module's own instance turns it on the way the
Settings dialog does (the control op `engine_config`, the engine restarted with it).
The RUN step of the other architecture runs under the guest's qemu-user emulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Cove, guest_busybox, own_instance

STORE = {"features": {"containerd-snapshotter": True}}
PLATFORMS = {"amd64": "x86_64", "arm64": "aarch64"}

@pytest.fixture(scope="module")
def multi(cove_home: tuple[Path, Path]) -> Iterator[Cove]:
    with own_instance(cove_home, "multi", "--resource-saver", "0") as c:
        c.control("engine_config", config=STORE)
        yield c


@pytest.fixture(scope="module")
def context(multi: Cove, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("multi")
    for arch in PLATFORMS:
        guest_busybox(arch, multi.env["COVE_IMAGES"], d / f"busybox-{arch}")
    (d / "Dockerfile").write_text(
        "FROM scratch\n"
        "ARG TARGETARCH\n"
        "COPY busybox-$TARGETARCH /bin/busybox\n"
        'RUN ["/bin/busybox", "sh", "-c", "/bin/busybox uname -m > /built-on"]\n'
        'CMD ["/bin/busybox", "cat", "/built-on"]\n')
    return d


def test_the_engine_runs_the_containerd_image_store(multi: Cove) -> None:
    info = json.loads(multi.docker("info", "--format", "{{json .}}").stdout)
    status = dict(info.get("DriverStatus") or [])
    assert status.get("driver-type") == "io.containerd.snapshotter.v1", info.get("DriverStatus")


def test_one_tag_holds_both_architectures_and_each_runs(multi: Cove, context: Path) -> None:
    tag = "cove-multi:latest"
    built = multi.docker("buildx", "build", "--platform",
                         ",".join(f"linux/{a}" for a in PLATFORMS), "-t", tag,
                         str(context), timeout=900)
    assert "legacy builder" not in built.stderr
    for arch, machine in PLATFORMS.items():
        # What the RUN step saw at build time (emulated for the other architecture), and
        # what the container sees now: the same architecture, from the one tag.
        got = multi.docker("run", "--rm", "--platform", f"linux/{arch}", tag)
        assert got.stdout.strip() == machine, (arch, got.stdout, got.stderr)
        now = multi.docker("run", "--rm", "--platform", f"linux/{arch}", "--entrypoint",
                           "/bin/busybox", tag, "uname", "-m")
        assert now.stdout.strip() == machine
