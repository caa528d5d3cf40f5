"""Integration tests: a real VM booted by `cove start`, driven by the real docker CLI and
the Docker SDK through Cove's socket.

One instance is booted per session (tests that share it must not stop it); the
lifecycle tests that stop, kill and restart the VM run last (see test_zz_lifecycle.py).
The guest image comes from the shared cache (`COVE_IMAGES`, default ~/.cove/images),
which `make test` fills before pytest runs; everything else lives in a temporary
COVE_HOME and DOCKER_CONFIG, so the developer's own instances and docker config are
never touched.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.dbus import BusDaemon

ROOT = Path(__file__).resolve().parents[2]
HELLO = "cove-hello"


class Cove:
    """The session's instance: its environment and helpers to run cove and docker."""

    def __init__(self, home: Path, docker_config: Path, name: str = "default") -> None:
        self.home = home
        self.name = name
        self.docker_config = docker_config
        # COVE_TEST_OPS: the backends `cove start` spawns serve the test-only control ops
        # (clock_offset).
        self.env = {**os.environ, "COVE_HOME": str(home), "DOCKER_CONFIG": str(docker_config),
                    "COVE_TEST_OPS": "1"}
        self.env.pop("DOCKER_HOST", None)
        self.env.pop("DOCKER_CONTEXT", None)
        self.env.setdefault("COVE_IMAGES", str(Path.home() / ".cove" / "images"))

    @property
    def folder(self) -> Path:
        return self.home / self.name

    @property
    def socket(self) -> Path:
        return self.folder / "docker.sock"

    @property
    def context(self) -> str:
        return "cove" if self.name == "default" else f"cove-{self.name}"

    def cove(self, *args: str, check: bool = True, timeout: float = 600,
             input: str | None = None) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "desktop", *args]
        if args and args[0] not in ("image", "version"):
            argv[3:4] = [args[0], "--instance", self.name]
        proc = subprocess.run(argv,
                              env=self.env, capture_output=True, text=True, timeout=timeout,
                              cwd=ROOT, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"cove {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def docker(self, *args: str, check: bool = True, timeout: float = 300,
               input: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(["docker", "--context", self.context, *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def status(self) -> dict:
        import json

        return json.loads(self.cove("status", "--json").stdout)

    def control(self, op: str, **params: object) -> object:
        from desktop.control import ControlClient

        return ControlClient(self.folder / "control.sock").request(op, **params)


@pytest.fixture(scope="session")
def system_bus() -> Iterator[BusDaemon]:
    """The session's backends take this bus for the system bus (logind's sleep and wake
    signal): a test sends logind's signal on it, and the host's own logind, if any,
    never reaches a test."""
    bus = BusDaemon()
    before = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
    yield bus
    if before is None:
        os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
    else:
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = before
    bus.close()


@pytest.fixture(scope="session")
def cove_home(system_bus: BusDaemon) -> Iterator[tuple[Path, Path]]:
    # Short on purpose: socket paths must stay under 104 bytes.
    d = Path(tempfile.mkdtemp(prefix="cove-it-"))
    home, dcfg = d / "home", d / "docker"
    home.mkdir()
    dcfg.mkdir()
    yield home, dcfg
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def shares(cove_home: tuple[Path, Path]) -> dict[str, Path]:
    """Three host folders the session's VM shares: one over the default transport
    (virtiofs here), one over 9p, one served by Cove over the guest link (as on Windows)."""
    base = cove_home[0].parent
    out = {"auto": base / "share-auto", "9p": base / "share-9p", "link": base / "share-link"}
    for p in out.values():
        p.mkdir()
    return out


@pytest.fixture(scope="session")
def cove(cove_home: tuple[Path, Path], shares: dict[str, Path]) -> Iterator[Cove]:
    """A running instance (booted once per session), deleted at the end."""
    c = Cove(*cove_home)
    images = Path(c.env["COVE_IMAGES"])
    assert images.is_dir(), f"no guest images in {images}: run `make image` first"
    # The default shares (home, the temporary folder) are not the tests': theirs are
    # inside the temporary folder, and shares must not nest.
    c.cove("shares", "remove", str(Path.home()))
    c.cove("shares", "remove", tempfile.gettempdir(), check=False)
    for transport, path in shares.items():
        c.cove("shares", "add", str(path), "--transport", transport)
    # No Resource Saver: a test's pauses would rest the VM under the next one
    # (test_resource_saver.py turns it on for itself).
    c.cove("start", "--cpus", "2", "--memory", "2G", "--resource-saver", "0", timeout=900)
    try:
        yield c
    finally:
        keep_logs(c)
        c.cove("delete", "--force", check=False, timeout=300)


@contextlib.contextmanager
def own_instance(cove_home: tuple[Path, Path], name: str, *start: str,
                 before: Callable[[Cove], object] = lambda c: None) -> Iterator[Cove]:
    """A module's own instance beside the session's: `before` (its settings), then
    `cove start --cpus 2 --memory 2G --no-activate` plus `start`; its logs kept and the
    instance deleted at the end."""
    c = Cove(*cove_home, name=name)
    before(c)
    c.cove("start", "--cpus", "2", "--memory", "2G", "--no-activate", *start, timeout=900)
    try:
        yield c
    finally:
        keep_logs(c)
        c.cove("delete", "--force", check=False, timeout=300)


def free_port() -> int:
    """A TCP port free on the host's loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
    """`check()`'s first truthy answer (an OSError counts as not yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
            if got:
                return got
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.5)


def http_get(port: int, path: str = "/", auth: str = "") -> bytes:
    """GET http://127.0.0.1:PORT/PATH, with basic auth "user:password" if given."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(req, timeout=5) as r:
        return bytes(r.read())


REGISTRY_CONFIG = """\
version: 0.1
storage:
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
auth:
  htpasswd:
    realm: cove-test
    path: /etc/docker/registry/htpasswd
"""


@pytest.fixture(scope="module")
def registry(cove: Cove, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Debian's docker-registry (the host's binary and the libc it links), as an image
    built here and run with its port published (per module: a running container would
    keep later modules' VM from resting): the engine in the VM pushes to
    localhost:PORT, which the host reaches through Cove's forward. htpasswd auth, user
    cove / password s3cret-pw."""
    import bcrypt

    binary = Path(shutil.which("docker-registry") or "/usr/bin/docker-registry")
    assert binary.exists(), "docker-registry is not installed (make deps installs it)"
    d = tmp_path_factory.mktemp("registry")
    libs = [line.split("=>")[-1].split("(")[0].strip() for line in subprocess.run(
        ["ldd", str(binary)], capture_output=True, text=True, check=True).stdout.splitlines()
        if "/" in line]
    lines = ["FROM scratch", "COPY docker-registry /bin/docker-registry"]
    for i, lib in enumerate(libs):
        shutil.copy(lib, d / f"lib{i}")
        lines.append(f"COPY lib{i} {lib}")
    shutil.copy(binary, d / "docker-registry")
    (d / "config.yml").write_text(REGISTRY_CONFIG)
    pw = bcrypt.hashpw(b"s3cret-pw", bcrypt.gensalt(rounds=5)).decode()
    (d / "htpasswd").write_text(f"cove:{pw}\n")
    lines += ["COPY config.yml /etc/docker/registry/config.yml",
              "COPY htpasswd /etc/docker/registry/htpasswd",
              'ENTRYPOINT ["/bin/docker-registry", "serve", "/etc/docker/registry/config.yml"]']
    (d / "Dockerfile").write_text("\n".join(lines) + "\n")
    tag = f"cove-registry-{uuid.uuid4().hex[:6]}"
    cove.docker("build", "-q", "-t", tag, str(d), timeout=600)
    port = free_port()
    name = f"registry{uuid.uuid4().hex[:6]}"
    cove.docker("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:5000", tag)
    try:
        wait_for("the registry through Cove's forward", lambda: http_get(
            port, "/v2/", auth="cove:s3cret-pw") == b"{}", timeout=120)
        yield port
    finally:
        cove.docker("rm", "-f", name, check=False)
        cove.docker("rmi", "-f", tag, check=False)


LOGS = Path(os.environ.get("COVE_TEST_LOGS", "/tmp/cove-test-logs"))


def keep_logs(c: Cove) -> None:
    """Copy the instance's logs out before it is deleted, for a failure's post-mortem."""
    dest = LOGS / c.name
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("backend.log", "events.log", "serial.log", "serial.prev.log",
                 "serial.crash.log", "qemu.log",
                 "backend.out"):
        if (c.folder / name).exists():
            shutil.copy2(c.folder / name, dest / name)
    for name in ("agent", "dockerd", "containerd"):
        got = c.cove("logs", name, "-n", "400", check=False)
        (dest / f"{name}.log").write_text(got.stdout)


@pytest.fixture(scope="session")
def hello_image(cove: Cove) -> str:
    """`cove-hello`: FROM scratch + Debian's static busybox, built in the VM."""
    sys.path.insert(0, str(ROOT))
    from desktop.demo import build_hello_image

    build_hello_image(["docker", "--context", cove.context], HELLO, env=cove.env)
    return HELLO


# The other 64-bit architecture than this host's: its Debian name, and `uname -m` there.
OTHER_ARCH = ("arm64", "aarch64") if os.uname().machine == "x86_64" else ("amd64", "x86_64")


def guest_busybox(arch: str, images: str, dest: Path) -> Path:
    """The static busybox of Cove's guest image for `arch` (Debian amd64 or arm64), copied
    to `dest`; the image build makes that image when it is missing (cached after)."""
    env = {**os.environ, "COVE_IMAGES": images}
    out = subprocess.run([sys.executable, "-m", "vm_image", "build", "--arch", arch],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800,
                         check=True)
    root_sqfs = Path(json.loads(out.stdout)["path"]) / "root.sqfs"
    x = Path(tempfile.mkdtemp(prefix="cove-busybox-")) / "x"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(x), str(root_sqfs),
                    "usr/bin/busybox"], check=True, capture_output=True)
    (x / "usr/bin/busybox").rename(dest)
    shutil.rmtree(x.parent)
    return dest


@pytest.fixture(scope="session")
def other_arch_image(cove: Cove, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An image of the other architecture, made here: its static busybox, taken from
    Cove's guest image of that architecture."""
    arch = OTHER_ARCH[0]
    d = tmp_path_factory.mktemp(f"{arch}-rootfs")
    (d / "rootfs/bin").mkdir(parents=True)
    guest_busybox(arch, cove.env["COVE_IMAGES"], d / "rootfs/bin/busybox")
    subprocess.run(["tar", "-C", str(d / "rootfs"), "-cf", str(d / "rootfs.tar"), "."],
                   check=True)
    name = f"cove-{arch}-busybox"
    cove.docker("import", "--platform", f"linux/{arch}", str(d / "rootfs.tar"), name)
    return name


@pytest.fixture(scope="session")
def sdk(cove: Cove) -> Iterator[object]:
    import docker

    client = docker.DockerClient(base_url=f"unix://{cove.socket}", timeout=300)
    yield client
    client.close()
