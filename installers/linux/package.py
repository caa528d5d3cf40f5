"""`make package`: the bundle (installers/bundle/build.py) and the .deb (deb.py) in one
step, reusing a .deb already built from the same inputs.

    python installers/linux/package.py [--version V] [--image DIR] [--out build/package]

The inputs are the app's sources, the installers, the version, the image's manifest and
the PyInstaller and Python versions; their digest is written beside the .deb
(``cove_<version>_<arch>.deb.key``), so a test or a second `make package` with nothing
changed takes seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "installers" / "bundle"))
sys.path.insert(0, str(HERE))

import build as bundle  # noqa: E402  (installers/bundle/build.py)
import deb  # noqa: E402

INPUTS = ("desktop", "guest_engine", "vm_image", "assets", "installers/bundle",
          "installers/linux")


def inputs_key(version: str, image: Path, arch: str) -> str:
    h = hashlib.sha256(json.dumps([version, arch, sys.version,
                                   metadata.version("pyinstaller")]).encode())
    for top in INPUTS:
        for p in sorted((REPO / top).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
                h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes())
    h.update((image / "manifest.json").read_bytes())
    return h.hexdigest()[:16]


def package(out: Path, version: str | None = None, image: Path | None = None,
            arch: str = "amd64") -> tuple[Path, dict]:
    """Build (or reuse) the .deb; returns it and the build's figures."""
    version = version or bundle.source_version()
    image = image or bundle.default_image(arch)
    key = inputs_key(version, image, arch)
    target = out / f"cove_{version}_{arch}.deb"
    stamp = target.with_name(target.name + ".key")
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == key:
        return target, json.loads(target.with_name(target.name + ".json").read_text())
    t0 = time.monotonic()
    app = bundle.build(out / f"bundle-{version}", version, image, arch)
    t1 = time.monotonic()
    built = deb.build_deb(app, out, version, arch)
    info = json.loads((app / "bundle.json").read_text())
    figures = {"version": version, "arch": arch, "image": info["image"],
               "bundle_bytes": bundle.tree_bytes(app), "app_bytes": info["app_bytes"],
               "deb_bytes": built.stat().st_size, "bundle_seconds": round(t1 - t0, 1),
               "deb_seconds": round(time.monotonic() - t1, 1), "key": key}
    target.with_name(target.name + ".json").write_text(json.dumps(figures, indent=2))
    shutil.rmtree(app.parent.parent)  # the bundle is in the .deb now
    stamp.write_text(key + "\n")
    return built, figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="installers/linux/package.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", default=None)
    p.add_argument("--arch", default="amd64", choices=("amd64", "arm64"))
    p.add_argument("--image", type=Path)
    p.add_argument("--out", type=Path, default=REPO / "build" / "package")
    args = p.parse_args(argv)
    try:
        built, figures = package(args.out.resolve(), args.version or None, args.image,
                                 args.arch)
    except (bundle.BundleError, deb.DebError) as e:
        print(f"package: error: {e}", file=sys.stderr)
        return 1
    mib = 2**20
    print(f"{built}: {figures['deb_bytes'] / mib:.0f} MiB (installed "
          f"{figures['bundle_bytes'] / mib:.0f} MiB, of which the app "
          f"{figures['app_bytes'] / mib:.0f} MiB)", file=sys.stderr)
    print(built)
    return 0


if __name__ == "__main__":
    sys.exit(main())
