"""The `image` command: `cove image build|path` and `python -m vm_image ...`."""

from __future__ import annotations

import argparse
import json
import sys
import time

from vm_image import builder, recipe

SOURCE_TEXT = {
    "cache": "built on this machine (read-write cache)",
    "system": "shipped with this Cove (read-only system folder)",
}


def _arch(value: str) -> str:
    try:
        return recipe.get_arch(value).name
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="image_command", required=True, metavar="COMMAND")
    b = sub.add_parser("build", help="build the guest image, or reuse the cached one")
    b.add_argument("--arch", type=_arch, default="amd64",
                   help="amd64 or arm64 (default: amd64)")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    p = sub.add_parser("path", help="print the folder of the current image, if built")
    p.add_argument("--arch", type=_arch, default="amd64")


def run(args: argparse.Namespace) -> int:
    if args.image_command == "path":
        img = builder.find_image(args.arch)
        if img is None:
            print(builder.missing_image_message(args.arch), file=sys.stderr)
            return 1
        print(img.path)
        print(f"image: {img.key}, {SOURCE_TEXT[img.source]}", file=sys.stderr)
        return 0
    t0 = time.monotonic()
    try:
        img = builder.build(args.arch, force=args.force,
                            progress=lambda m: print(f"image: {m}", file=sys.stderr))
    except builder.BuildError as e:
        print(f"cove: image build failed: {e}", file=sys.stderr)
        return 1
    files = img.manifest["files"]
    sizes = ", ".join(f"{n} {f['size'] / 2**20:.1f} MiB" for n, f in files.items())
    print(json.dumps({"path": str(img.path), "key": img.key,
                      "seconds": round(time.monotonic() - t0, 1)}))
    print(f"image: {sizes}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vm_image",
                                     description="Build Cove's guest image.")
    add_arguments(parser)
    return run(parser.parse_args(argv))
