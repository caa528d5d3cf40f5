"""A clean Debian root to install Cove's .deb into, for the package tests.

The root is made by mmdebstrap (Debian 12 with apt and the packages the .deb depends on,
no recommends), kept as a tarball under ``$COVE_PKG_CACHE`` (default
/var/cache/cove-test) keyed by the suite, mirror and package list, and unpacked afresh
for each test session. Commands run in it through ``unshare --mount`` + chroot, with
/proc, /sys and /dev mounted in that private mount namespace only: the mounts vanish with
the namespace's last process (a backend left running keeps its own), and nothing is ever
unmounted from the host.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

SUITE = "bookworm"
MIRROR = os.environ.get("COVE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CACHE = Path(os.environ.get("COVE_PKG_CACHE", "/var/cache/cove-test"))
USER, UID = "tester", 1000
# What dpkg and apt keep for themselves, and the kernel's and runtime's folders: not
# files a package leaves behind.
BOOKKEEPING = ("proc/", "sys/", "dev/", "tmp/", "run/", "var/log/", "var/cache/",
               "var/lib/dpkg/", "var/lib/apt/")


def depends_of(control: str) -> list[str]:
    """The first alternative of each Depends entry of a control file, without versions."""
    m = re.search(r"^Depends: (.*)$", control, re.M)
    if m is None:
        return []
    return [re.sub(r"\s*\(.*\)", "", dep.split("|")[0]).strip()
            for dep in m.group(1).split(",")]


def root_tarball(packages: list[str]) -> Path:
    """The cached tarball of a clean root with `packages`, made by mmdebstrap if absent."""
    key = hashlib.sha256(json.dumps([SUITE, MIRROR, sorted(packages), 1]).encode())
    tar = CACHE / f"debian-{SUITE}-{key.hexdigest()[:16]}.tar"
    if tar.is_file():
        return tar
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = tar.with_suffix(f".tmp{os.getpid()}.tar")
    cmd = ["mmdebstrap", "--mode=root", "--variant=apt", "--quiet",
           "--aptopt=APT::Install-Recommends \"false\"",
           "--include=" + ",".join(sorted(packages)), SUITE, str(tmp), MIRROR]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"mmdebstrap failed ({proc.returncode}); is {MIRROR} reachable? "
                           f"(COVE_DEBIAN_MIRROR names another)\n{proc.stderr[-2000:]}")
    tmp.rename(tar)
    for old in CACHE.glob(f"debian-{SUITE}-*.tar"):
        if old != tar:
            old.unlink()
    return tar


class Chroot:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def unpack(cls, tarball: Path, path: Path) -> Chroot:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        subprocess.run(["tar", "-xf", str(tarball), "-C", str(path), "--numeric-owner"],
                       check=True)
        root = cls(path)
        shutil.copy2("/etc/resolv.conf", path / "etc/resolv.conf")
        home = path / "home" / USER
        home.mkdir(parents=True)
        os.chown(home, UID, UID)
        with (path / "etc/passwd").open("a") as f:
            f.write(f"{USER}:x:{UID}:{UID}::/home/{USER}:/bin/sh\n")
        with (path / "etc/group").open("a") as f:
            f.write(f"{USER}:x:{UID}:\n")
        return root

    def run(self, *argv: str, user: bool = False, env: dict[str, str] | None = None,
            timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        """Run `argv` in the root (as `tester` when `user`), in a private mount namespace
        where /proc, /sys and /dev are mounted."""
        r = str(self.path)
        home = f"/home/{USER}" if user else "/root"
        environ = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": home, "LANG": "C.UTF-8",
                   "DEBIAN_FRONTEND": "noninteractive", **(env or {})}
        inner = ["env", "-i", *(f"{k}={v}" for k, v in environ.items()), *argv]
        chroot = ["chroot", *([f"--userspec={UID}:{UID}"] if user else []), r, *inner]
        script = (f'mount -t proc proc "{r}/proc" && mount -t sysfs sys "{r}/sys" && '
                  f'mount --bind /dev "{r}/dev" && exec "$@"')
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               script, "sh", *chroot],
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed in the chroot "
                                 f"({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def timed(self, *argv: str, **kw) -> tuple[float, subprocess.CompletedProcess]:
        t0 = time.monotonic()
        proc = self.run(*argv, **kw)
        return time.monotonic() - t0, proc

    def files(self) -> set[str]:
        """Every path in the root (relative, folders end in /), less dpkg's bookkeeping."""
        out: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(self.path):
            rel = os.path.relpath(dirpath, self.path)
            rel = "" if rel == "." else rel + "/"
            if rel.startswith(BOOKKEEPING):
                dirnames[:] = []
                continue
            out.add(rel)
            out.update(rel + n for n in filenames)
            out.update(rel + d for d in dirnames if os.path.islink(os.path.join(dirpath, d)))
        return out

    @property
    def home(self) -> Path:
        return self.path / "home" / USER
