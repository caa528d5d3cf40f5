"""Containers of another architecture: QEMU's user-mode emulators registered with the
kernel's binfmt_misc, so `docker run --platform linux/arm64 ...` runs on an amd64 VM
(and linux/amd64 on an arm64 one).

The image keeps the emulators for its `Arch.emulators` and their entries in
/usr/lib/binfmt.d (Debian's qemu-user-binfmt: one register line per file, magic and
mask included). Each entry is registered with the F flag: the kernel opens the emulator
once, now, so a container needs no copy of its own.
"""

from __future__ import annotations

import logging
from pathlib import Path

from guest_engine.boot import system

log = logging.getLogger(__name__)

CONF_DIR = Path("/usr/lib/binfmt.d")
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")


def entry_line(text: str) -> str | None:
    """The register line of a binfmt.d file (comments and blank lines skipped), with
    the F flag added; None when there is none. The format: ``:name:type:offset:magic:
    mask:interpreter:flags``."""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        fields = line[1:].split(line[0])
        if len(fields) != 7 or not fields[0] or not fields[5]:
            return None
        if "F" not in fields[6]:
            fields[6] += "F"
        return line[0] + line[0].join(fields)
    return None


def register(conf_dir: Path | None = None, binfmt_dir: Path | None = None) -> list[str]:
    """Register every emulator the image has; returns their names (those registered
    before included). Raises OSError or RuntimeError when binfmt_misc is unavailable."""
    conf_dir = conf_dir or CONF_DIR
    binfmt_dir = binfmt_dir or BINFMT_DIR
    confs = sorted(conf_dir.glob("qemu-*.conf"))
    if not confs:
        return []
    if not (binfmt_dir / "register").exists():
        system.run(["modprobe", "-q", "binfmt_misc"], check=False)
        system.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt_dir)])
    names = []
    for conf in confs:
        line = entry_line(conf.read_text())
        if line is None:
            log.warning("%s holds no binfmt entry", conf)
            continue
        name = line[1:].split(line[0])[0]
        if not (binfmt_dir / name).exists():
            try:
                (binfmt_dir / "register").write_text(line)
            except OSError as e:  # e.g. its emulator missing (ENOENT, the F flag opens it)
                log.error("binfmt_misc: %s not registered: %s", name, e)
                continue
        names.append(name)
    log.info("binfmt_misc: %s", ", ".join(names) or "none")
    return names
