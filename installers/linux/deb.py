"""Build Cove's .deb from a bundle (installers/bundle/build.py) with dpkg-deb.

    python installers/linux/deb.py BUNDLE_DIR --out build/ [--version V] [--arch amd64]

Layout (no maintainer scripts: installing starts nothing and creates no system state; the
desktop-database and icon-cache updates are dpkg file triggers of their own packages):

    /usr/lib/cove/                  the bundle: cove, cove-desktop, _internal/, bundle.json
    /usr/lib/cove/images/<key>/     the guest image (read only; see vm_image.builder)
    /usr/bin/cove, /usr/bin/cove-desktop -> ../lib/cove/...
    /usr/share/applications/cove.desktop
    /usr/share/icons/hicolor/scalable/apps/cove.svg
    /usr/share/doc/cove/copyright

A user's instances live in ~/.cove, which no package script touches: an upgrade keeps
them, and a purge leaves them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
QEMU_PACKAGE = {"amd64": "qemu-system-x86", "arm64": "qemu-system-arm"}


class DebError(Exception):
    """The package could not be built; the message names the fix."""


def _du_kib(root: Path) -> int:
    total = 0
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += (p.stat().st_size + 1023) // 1024
    return total


def stage(bundle: Path, root: Path, version: str, arch: str) -> None:
    shutil.rmtree(root, ignore_errors=True)
    lib = root / "usr/lib/cove"
    lib.parent.mkdir(parents=True)
    shutil.copytree(bundle, lib, symlinks=True)
    (root / "usr/bin").mkdir(parents=True)
    for exe in ("cove", "cove-desktop"):
        if not (lib / exe).is_file():
            raise DebError(f"{bundle} has no {exe}: it is not a Cove bundle; build one with "
                           "installers/bundle/build.py")
        (root / "usr/bin" / exe).symlink_to(f"../lib/cove/{exe}")
    apps = root / "usr/share/applications"
    apps.mkdir(parents=True)
    shutil.copy2(HERE / "cove.desktop", apps / "cove.desktop")
    icons = root / "usr/share/icons/hicolor/scalable/apps"
    icons.mkdir(parents=True)
    shutil.copy2(REPO / "assets/cove.svg", icons / "cove.svg")
    doc = root / "usr/share/doc/cove"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        "Upstream-Name: cove\n\nFiles: *\nLicense: Apache-2.0\n"
        " On Debian systems the license is in /usr/share/common-licenses/Apache-2.0.\n"
        " The bundle in /usr/lib/cove/_internal carries CPython, Qt (PySide6) and other\n"
        " libraries under their own licenses.\n")
    for p in root.rglob("*"):
        if p.is_symlink():
            continue
        # dpkg keeps modes as staged: files 0644 (0755 if executable), folders 0755.
        if p.is_dir():
            p.chmod(0o755)
        else:
            p.chmod(0o755 if p.stat().st_mode & 0o111 else 0o644)
    control = (HERE / "control.in").read_text()
    for k, v in {"@VERSION@": version, "@ARCH@": arch, "@QEMU@": QEMU_PACKAGE[arch],
                 "@INSTALLED_SIZE@": str(_du_kib(root))}.items():
        control = control.replace(k, v)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(control)


def build_deb(bundle: Path, out: Path, version: str | None = None,
              arch: str | None = None, compression: str = "zstd") -> Path:
    info = json.loads((bundle / "bundle.json").read_text())
    version = version or info["version"]
    arch = arch or info["arch"]
    if info["version"] != version:
        raise DebError(f"the bundle is version {info['version']}, not {version}; rebuild "
                       f"it with installers/bundle/build.py --version {version}")
    if shutil.which("dpkg-deb") is None:
        raise DebError("dpkg-deb not found; install it with: apt-get install dpkg-dev")
    out.mkdir(parents=True, exist_ok=True)
    root = out / f"deb-root-{version}"
    stage(bundle, root, version, arch)
    deb = out / f"cove_{version}_{arch}.deb"
    # Measured on the 2-core build machine (bundle of 275 MB, 118 MB of it the image,
    # already zstd-compressed): xz -6 took 130 s for 167 MB; zstd takes seconds for
    # a similar size. dpkg reads zstd since 1.21.18 (Debian 12); the bundle needs
    # Debian 12's glibc anyway. --root-owner-group: the files are root's.
    proc = subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}",
                           "--build", str(root), str(deb)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise DebError(f"dpkg-deb failed: {proc.stderr.strip()}")
    shutil.rmtree(root)
    return deb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="installers/linux/deb.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path, help="the bundle folder (has bundle.json)")
    p.add_argument("--out", type=Path, default=REPO / "build")
    p.add_argument("--version", default=os.environ.get("VERSION") or None)
    p.add_argument("--arch", choices=sorted(QEMU_PACKAGE))
    p.add_argument("--compression", default="zstd", choices=("zstd", "xz", "gzip"))
    args = p.parse_args(argv)
    try:
        print(build_deb(args.bundle, args.out, args.version, args.arch, args.compression))
    except DebError as e:
        print(f"deb: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
