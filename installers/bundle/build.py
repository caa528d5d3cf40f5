"""Build Cove's bundle: the host app (the `cove` CLI, the tray and the backend) frozen with
PyInstaller, plus the guest image for one architecture, into ``OUT/dist/cove/``.

    python installers/bundle/build.py --out build/bundle [--version 0.2.0] [--image DIR]

The sources are staged into ``OUT/src`` first, with ``desktop.__version__`` set to
``--version`` (default: the one in desktop/__init__.py), so the version of a package
comes from one place and can be overridden for a test without touching the tree. The
image (default: the one built for the current sources, ``cove image path``) is copied to
``dist/cove/images/<key>/`` after each file's sha256 is checked against its manifest;
`vm_image.builder.find_image` looks there in a packaged Cove. ``bundle.json`` beside the
executables records the version, the image and the build's measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SPEC = Path(__file__).resolve().parent / "cove.spec"
SOURCES = ("desktop", "guest_engine", "vm_image", "assets")


class BundleError(Exception):
    """The bundle could not be built; the message names the fix."""


def source_version() -> str:
    text = (REPO / "desktop" / "__init__.py").read_text()
    m = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if m is None:
        raise BundleError("desktop/__init__.py has no __version__ = \"...\" line")
    return m.group(1)


def stage_sources(dest: Path, version: str) -> None:
    """Copy the app's sources to `dest`, stamping `version` into desktop/__init__.py."""
    if not re.fullmatch(r"[0-9][0-9A-Za-z.+~-]*", version):
        raise BundleError(f"version {version!r} is not a Debian/PEP 440-like version "
                          "such as 0.2.0 or 0.2.0~rc1")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in SOURCES:
        shutil.copytree(REPO / name, dest / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    init = dest / "desktop" / "__init__.py"
    text = re.sub(r'^__version__ = "[^"]+"', f'__version__ = "{version}"',
                  init.read_text(), count=1, flags=re.M)
    init.write_text(text)


def sha256(path: Path) -> str:
    from vm_image.builder import sha256_file

    return sha256_file(path)


def copy_image(image: Path, images: Path) -> dict:
    """Copy one built image into the bundle's images folder, checking it on the way."""
    mf = image / "manifest.json"
    if not mf.is_file():
        raise BundleError(f"{image} is not a built guest image (no manifest.json); build "
                          "one with `make image` or pass --image")
    manifest = json.loads(mf.read_text())
    dest = images / image.name
    dest.mkdir(parents=True)
    for name, meta in manifest["files"].items():
        shutil.copy2(image / name, dest / name)
        if sha256(dest / name) != meta["sha256"]:
            raise BundleError(f"{image / name} does not match the sha256 in its manifest; "
                              "rebuild the image (cove image build --force)")
    shutil.copy2(mf, dest / "manifest.json")
    return {"key": image.name, "arch": manifest["arch"],
            "bytes": sum(m["size"] for m in manifest["files"].values())}


def default_image(arch: str) -> Path:
    sys.path.insert(0, str(REPO))
    from vm_image import builder

    img = builder.find_image(arch)
    if img is None:
        raise BundleError(f"no {arch} guest image is built for the current sources; run "
                          f"`make image` (or `cove image build --arch {arch}`) first, or "
                          "pass --image DIR")
    return img.path


def tree_bytes(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and
               not p.is_symlink())


def build(out: Path, version: str, image: Path | None, arch: str,
          python: str = sys.executable) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    src = out / "src"
    stage_sources(src, version)
    dist = out / "dist"
    shutil.rmtree(dist / "cove", ignore_errors=True)
    t0 = time.monotonic()
    env = {**os.environ, "COVE_BUNDLE_SRC": str(src), "COVE_VERSION": version,
           "PYTHONPATH": str(src)}
    proc = subprocess.run(
        [python, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
         "--distpath", str(dist), "--workpath", str(out / "work"), str(SPEC)],
        env=env, cwd=out, capture_output=True, text=True,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-20:])
        raise BundleError(f"PyInstaller failed (exit {proc.returncode}); install it with "
                          f"`pip install -e '.[package]'`:\n{tail}")
    seconds = round(time.monotonic() - t0, 1)
    app = dist / "cove"
    # Cove's UI is English only: Qt's translations (7 MB) are not needed.
    for qm in app.rglob("PySide6/Qt/translations"):
        shutil.rmtree(qm)
    app_bytes = tree_bytes(app)
    info: dict = {"version": version, "python": ".".join(map(str, sys.version_info[:3])),
                  "platform": sys.platform, "arch": arch, "pyinstaller_seconds": seconds,
                  "app_bytes": app_bytes, "image": None}
    if image is not None:
        info["image"] = copy_image(image, app / "images")
        if info["image"]["arch"] != arch:
            raise BundleError(f"{image} is a {info['image']['arch']} image, not {arch}")
    (app / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")
    mac_app = dist / "Cove.app"
    if sys.platform == "darwin" and mac_app.is_dir():
        # Data goes to Contents/Resources (Contents/MacOS is for code; codesign insists).
        resources = mac_app / "Contents" / "Resources"
        shutil.rmtree(resources / "images", ignore_errors=True)
        if (app / "images").is_dir():
            shutil.copytree(app / "images", resources / "images")
        shutil.copy2(app / "bundle.json", resources / "bundle.json")
        return mac_app
    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="installers/bundle/build.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "build" / "bundle")
    p.add_argument("--version", default=os.environ.get("VERSION") or None)
    p.add_argument("--arch", default="amd64", choices=("amd64", "arm64"))
    p.add_argument("--image", type=Path, help="a built image folder (has manifest.json)")
    p.add_argument("--no-image", action="store_true",
                   help="leave the image out (only for measuring the app alone)")
    args = p.parse_args(argv)
    try:
        version = args.version or source_version()
        image = None if args.no_image else (args.image or default_image(args.arch))
        app = build(args.out.resolve(), version, image, args.arch)
    except BundleError as e:
        print(f"bundle: error: {e}", file=sys.stderr)
        return 1
    print(app)
    return 0


if __name__ == "__main__":
    sys.exit(main())
