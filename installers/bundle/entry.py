"""The entry point of Cove's bundle (PyInstaller): one executable for the `cove` CLI, the
tray (`cove-desktop`, a symlink to the same file) and the backend the CLI starts.

From source, Cove starts its helpers as ``sys.executable -m desktop backend ...`` and
``sys.executable -m desktop.tray``; in the bundle `sys.executable` is this program, so
those two forms are understood here as well.
"""

from __future__ import annotations

import os
import sys


def _cli(argv: list[str]) -> int:
    from desktop.cli import main

    return main(argv)


def _tray(argv: list[str]) -> int:
    from desktop.tray import main

    return main(argv)


MODULES = {"desktop": _cli, "desktop.tray": _tray}

# Where QEMU is installed when it does not come with the system. An app started from
# Finder or at login gets a minimal PATH without these, so they are added here; the
# driver then finds qemu-system-* or says it is missing (see installers/README.md).
QEMU_PATHS = {
    "darwin": ["/opt/homebrew/bin", "/usr/local/bin", "/opt/local/bin"],
    "win32": [os.path.join(os.environ.get("PROGRAMFILES", r"C:\Program Files"), "qemu")],
}


def extend_path(platform: str = sys.platform) -> None:
    parts = os.environ.get("PATH", "").split(os.pathsep)
    extra = [d for d in QEMU_PATHS.get(platform, []) if d not in parts and os.path.isdir(d)]
    if extra:
        os.environ["PATH"] = os.pathsep.join([p for p in parts if p] + extra)


def main() -> int:
    extend_path()
    argv = sys.argv[1:]
    if argv[:1] == ["-m"]:
        module = argv[1] if len(argv) > 1 else ""
        if module not in MODULES:
            print(f"cove: error: this packaged Cove runs only {', '.join(MODULES)} with -m, "
                  f"not {module!r}; use the `cove` command", file=sys.stderr)
            return 2
        return MODULES[module](argv[2:])
    if os.path.basename(sys.argv[0]).startswith("cove-desktop"):
        return _tray(argv)
    return _cli(argv)


if __name__ == "__main__":
    sys.exit(main())
