"""Cove's .deb, installed into a clean Debian 12 root: `cove version`, `cove start` and a
container through the installed files, an upgrade N -> N+1 that keeps the instance, and a
purge that leaves nothing behind but the user's own data.

Slow (a few minutes: two bundles, a root, two VM boots under emulation) and root only
(mmdebstrap, chroot, mount namespaces). The guest image is ``$COVE_PKG_IMAGE`` or the one
`make image` built for the current sources; version N is the sources' version and N+1 is
N with "+1" appended, both built by installers/linux/package.py into
``$COVE_PKG_CACHE/debs`` and reused while their inputs are unchanged. Figures (sizes,
install time, `cove version` start time) go to benchmarks/results/package.json.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.package.chroot import CACHE, UID, USER, Chroot, depends_of, root_tarball

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "installers" / "linux"))

import package as pkg  # noqa: E402  (installers/linux/package.py)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mmdebstrap, chroot)"),
    pytest.mark.skipif(shutil.which("mmdebstrap") is None,
                       reason="needs mmdebstrap (apt-get install mmdebstrap)"),
]

ARCH = "amd64"
INSTANCE = "pkg"
HOME = f"/home/{USER}"
RESULTS = REPO / "benchmarks" / "results" / "package.json"
FIGURES: dict = {}
# Qt plugins for Wayland sessions and GNOME's theme: loaded only where those libraries
# are installed (they come with the desktop); without them Qt uses X11 (xcb), which is
# bundled, and its own style.
OPTIONAL_QT_PLUGINS = tuple(f"./PySide6/Qt/{p}" for p in (
    "plugins/platformthemes/libqgtk3.so", "plugins/platforms/libqwayland",
    "plugins/wayland-", "lib/libQt6WaylandClient", "lib/libQt6WlShellIntegration",
    "plugins/platforms/libqeglfs", "plugins/egldeviceintegrations/",
    "lib/libQt6EglFs"))


def _image() -> Path:
    if os.environ.get("COVE_PKG_IMAGE"):
        return Path(os.environ["COVE_PKG_IMAGE"])
    from vm_image import builder

    img = builder.find_image(ARCH)
    if img is None:
        pytest.fail("no guest image for the current sources: run `make image` first, or "
                    "set COVE_PKG_IMAGE to a built image folder")
    return img.path


def _renamed_image(image: Path, folder: Path) -> Path:
    """The same image under another key, so that N and N+1 ship different images and the
    upgrade test can tell which one the VM boots (a copy: the source is read only)."""
    dest = folder / f"{ARCH}-0000{image.name[-12:]}"
    mf = "manifest.json"
    if (dest / mf).is_file() and (dest / mf).read_bytes() == (image / mf).read_bytes():
        return dest
    shutil.rmtree(folder, ignore_errors=True)  # older copies too
    shutil.copytree(image, dest)
    return dest


@pytest.fixture(scope="module")
def debs() -> tuple[Path, Path, dict, dict]:
    image = _image()
    out = CACHE / "debs"
    out.mkdir(parents=True, exist_ok=True)
    base = pkg.bundle.source_version()
    old_image = _renamed_image(image, CACHE / "images")
    deb_n, fig_n = pkg.package(out, base, old_image, ARCH)
    deb_n1, fig_n1 = pkg.package(out, f"{base}+1", image, ARCH)
    FIGURES.update(version_n=base, deb_bytes=fig_n1["deb_bytes"],
                   installed_bytes=fig_n1["bundle_bytes"], app_bytes=fig_n1["app_bytes"],
                   image_bytes=fig_n1["image"]["bytes"])
    return deb_n, deb_n1, fig_n, fig_n1


@pytest.fixture(scope="module")
def root(debs: tuple[Path, Path, dict, dict]) -> Iterator[Chroot]:
    control = (REPO / "installers/linux/control.in").read_text()
    control = control.replace("@QEMU@", pkg.deb.QEMU_PACKAGE[ARCH])
    t0 = time.monotonic()
    tar = root_tarball(depends_of(control))
    folder = Path(tempfile.mkdtemp(prefix="cove-pkg-", dir="/tmp"))
    r = Chroot.unpack(tar, folder / "r")
    FIGURES["root_seconds"] = round(time.monotonic() - t0, 1)
    for deb in debs[:2]:
        shutil.copy2(deb, r.path / "tmp" / deb.name)
    yield r
    _stop_backend(r)
    shutil.rmtree(folder, ignore_errors=True)


def _backend_pid(r: Chroot) -> int | None:
    try:
        return int((r.home / ".cove" / INSTANCE / "backend.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stop_backend(r: Chroot) -> None:
    """Stop our instance's backend (politely, then by its own pid) so no VM outlives us."""
    pid = _backend_pid(r)
    if pid is None or not Path(f"/proc/{pid}").exists():
        return
    r.run("cove", "stop", "-i", INSTANCE, user=True, check=False, timeout=240)
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGTERM)


def _cove(r: Chroot, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return r.run("cove", *args, user=True, timeout=timeout)


def _docker(r: Chroot, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    sock = r.home / ".cove" / INSTANCE / "docker.sock"
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}",
           "DOCKER_CONFIG": str(r.path / "tmp" / "docker-config")}
    env.pop("DOCKER_CONTEXT", None)
    proc = subprocess.run(["docker", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    if check and proc.returncode != 0:
        where = _keep_logs(r)
        raise AssertionError(f"docker {' '.join(args)} failed (the instance's logs are in "
                             f"{where}):\n{proc.stdout}{proc.stderr}")
    return proc


def _keep_logs(r: Chroot) -> Path:
    """Copy the instance's logs (and the guest's agent and dockerd logs) out of the root,
    which is deleted after the test, for a failure's post-mortem."""
    dest = Path(os.environ.get("COVE_TEST_LOGS", "/tmp/cove-test-logs")) / "package"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    folder = r.home / ".cove" / INSTANCE
    for name in ("backend.log", "events.log", "serial.log", "serial.prev.log",
                 "backend.out"):
        if (folder / name).exists():
            shutil.copy2(folder / name, dest / name)
    for name in ("agent", "dockerd", "containerd"):
        got = r.run("cove", "logs", "-i", INSTANCE, name, "-n", "300", user=True,
                    check=False, timeout=60)
        (dest / f"{name}.log").write_text(got.stdout + got.stderr)
    return dest


def _version_seconds(r: Chroot, runs: int = 5) -> float:
    """Median wall time of `cove version` from the installed files, timed in the root."""
    proc = r.run("bash", "-c", f"TIMEFORMAT=%R; for i in $(seq {runs}); do "
                 "{ time cove version >/dev/null; } 2>&1; done", user=True)
    return statistics.median(float(x) for x in proc.stdout.split())


def _booted_image(r: Chroot) -> str:
    """The image key of the last boot, from the backend's own events."""
    key = ""
    for line in (r.home / ".cove" / INSTANCE / "events.log").read_text().splitlines():
        ev = json.loads(line)
        key = ev.get("image", key)
    return key


def test_package_contents(debs: tuple[Path, Path, dict, dict]) -> None:
    deb = debs[1]
    info = subprocess.run(["dpkg-deb", "--info", str(deb)], capture_output=True,
                          text=True, check=True).stdout
    # Nothing runs at install, upgrade or removal: no maintainer scripts at all.
    for script in ("preinst", "postinst", "prerm", "postrm"):
        assert f" {script} " not in info
    assert "Depends: qemu-system-x86" in info and "qemu-utils" in info
    listing = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True,
                             text=True, check=True).stdout
    paths = {line.split()[5].removeprefix("."): line for line in listing.splitlines()}
    assert "-> ../lib/cove/cove" in paths["/usr/bin/cove"]
    assert "-> ../lib/cove/cove-desktop" in paths["/usr/bin/cove-desktop"]
    for p in ("/usr/share/applications/cove.desktop",
              "/usr/share/icons/hicolor/scalable/apps/cove.svg",
              f"/usr/lib/cove/images/{debs[3]['image']['key']}/root.sqfs"):
        assert p in paths
    assert paths["/usr/lib/cove/cove"].startswith("-rwxr-xr-x root/root")


def test_install_start_upgrade_purge(root: Chroot, debs: tuple[Path, Path, dict, dict]
                                     ) -> None:
    r = root
    deb_n, deb_n1, fig_n, fig_n1 = debs
    version_n, version_n1 = fig_n["version"], fig_n1["version"]
    # The root has no Python at all: the bundle brings its own.
    assert not list((r.path / "usr/bin").glob("python3*"))
    before = r.files()

    took, _ = r.timed("apt-get", "install", "-y", "-q", f"/tmp/{deb_n.name}")
    FIGURES["install_seconds"] = round(took, 1)
    assert (r.path / "usr/share/applications/cove.desktop").is_file()
    out = _cove(r, "version").stdout
    assert out.startswith(f"cove {version_n} (") and "packaged" in out
    assert f"{fig_n['image']['key']}, shipped with this Cove" in out
    assert f"/usr/lib/cove/images/{fig_n['image']['key']}" in out
    FIGURES["version_start_seconds"] = _version_seconds(r)
    # Every library of the bundle resolves in a root with only the package's Depends
    # (the bundle's loader puts _internal on the library path, as here), except Qt's
    # plugins for other desktops, which Qt skips when their libraries are absent.
    script = ("cd /usr/lib/cove/_internal && find . -name '*.so*' -type f | sort | "
              "while read -r f; do m=$(LD_LIBRARY_PATH=. ldd \"$f\" | grep 'not found' "
              "| awk '{print $1}' | sort -u | tr '\\n' ' '); "
              "[ -z \"$m\" ] || echo \"$f: $m\"; done")
    missing = r.run("sh", "-c", script).stdout.splitlines()
    required = [m for m in missing if not m.startswith(OPTIONAL_QT_PLUGINS)]
    assert required == [], "libraries missing in a clean root:\n" + "\n".join(required)
    # The tray starts from the installed files (offscreen: no display here) and keeps
    # running; its state goes to a scratch home, not the one compared after the purge.
    tray = r.run("timeout", "6", "cove-desktop", "--no-start", user=True, check=False,
                 env={"QT_QPA_PLATFORM": "offscreen", "HOME": "/tmp/tray",
                      "COVE_HOME": "/tmp/tray/.cove"})
    assert tray.returncode == 124 and "Traceback" not in tray.stderr, tray.stderr
    # A packaged Cove never builds an image: it names the fix instead.
    assert "is up to date" in _cove(r, "image", "build").stderr
    build = r.run("cove", "image", "build", "--force", user=True, check=False)
    assert build.returncode == 1 and "packaged Cove" in build.stderr, build.stderr

    t0 = time.monotonic()
    _cove(r, "start", "-i", INSTANCE, "--cpus", "2", "--memory", "2G")
    FIGURES["first_start_seconds"] = round(time.monotonic() - t0, 1)
    pid = _backend_pid(r)
    assert pid is not None
    assert os.stat(f"/proc/{pid}").st_uid == UID  # the backend is the user's, not root's
    assert _booted_image(r) == fig_n["image"]["key"]
    from desktop.demo import build_hello_image

    sock = r.home / ".cove" / INSTANCE / "docker.sock"
    build_hello_image(["docker", "-H", f"unix://{sock}"], "cove-pkg-hello",
                      env={**os.environ, "DOCKER_CONFIG": str(r.path / "tmp/docker-config")})
    _docker(r, "run", "--name", "keep", "-v", "keepvol:/data", "cove-pkg-hello",
            "sh", "-c", f"echo {version_n} > /data/marker")
    settings = (r.home / ".cove" / INSTANCE / "settings.json").read_text()
    _cove(r, "stop", "-i", INSTANCE, timeout=300)

    took, _ = r.timed("apt-get", "install", "-y", "-q", f"/tmp/{deb_n1.name}")
    FIGURES["upgrade_seconds"] = round(took, 1)
    assert _cove(r, "version").stdout.startswith(f"cove {version_n1} (")
    images = sorted(p.name for p in (r.path / "usr/lib/cove/images").iterdir())
    assert images == [fig_n1["image"]["key"]]  # N's image went with N
    assert (r.home / ".cove" / INSTANCE / "settings.json").read_text() == settings
    _cove(r, "start", "-i", INSTANCE)
    assert _booted_image(r) == fig_n1["image"]["key"]
    ps = _docker(r, "ps", "-a", "--filter", "name=^keep$", "--format", "{{.Names}}")
    assert ps.stdout.split() == ["keep"]
    cat = _docker(r, "run", "--rm", "-v", "keepvol:/data", "cove-pkg-hello",
                  "cat", "/data/marker")
    assert cat.stdout.strip() == version_n
    _cove(r, "stop", "-i", INSTANCE, timeout=300)

    took, _ = r.timed("apt-get", "purge", "-y", "-q", "cove")
    FIGURES["purge_seconds"] = round(took, 1)
    left = r.files() - before
    user_data = (f"{HOME[1:]}/.cove", f"{HOME[1:]}/.docker")
    assert sorted(p for p in left if not p.startswith(user_data)) == []
    assert (r.home / ".cove" / INSTANCE / "data.qcow2").is_file()  # the user's, kept


def teardown_module() -> None:
    if FIGURES:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        FIGURES["measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        RESULTS.write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")
