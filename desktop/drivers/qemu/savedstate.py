"""A stopped VM's saved state, and whether the next start may restore it.

`cove stop` on a VM whose device set QEMU can migrate writes the VM's whole state (RAM,
devices, vCPUs) to ``saved.state`` in the instance folder and ends QEMU; the next start
loads it instead of booting. Beside it, ``saved.json`` (the manifest) holds what the
state is only valid with:

* the QEMU command line it ran with, exactly (the image's files, CPUs, memory, shares,
  accelerator, the forwarded ports the guest's firewall was told about);
* the size, modification time and inode of every file the VM reads: the QEMU program,
  the kernel, the initramfs, the root image and the data disk. A data disk written since
  (another tool, a resize, a repair) no longer matches its RAM: its state is discarded,
  never restored;
* what the host must hand back unchanged (`host`: the guest's boot config with its link
  token: the guest read it at its boot and holds it).

A state is loaded once: the files go before the restored VM's vCPUs run, so a state can
never be restored over a disk it has already changed. Anything that does not match, or
a manifest that cannot be read, and the start boots as usual (the state is deleted: it is
the VM's memory, not the user's data, which is on the disk, synced before the save).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from desktop import home
from desktop.drivers import VMSpec
from desktop.platform.files import atomic_write

log = logging.getLogger(__name__)

STATE = home.SAVED_STATE  # QEMU's migration stream
PARTIAL = home.SAVED_STATE + ".part"  # being written: never loaded
MANIFEST = home.SAVED_MANIFEST
VERSION = 1
QEMU_DEVICE_SHARES = ("virtiofs", "9p")  # devices QEMU 7.2 will not migrate


def blocked(spec: VMSpec, os_name: str) -> str:
    """Why this VM's state cannot be saved here ("" when it can be tried; QEMU may still
    refuse, for a reason of its own)."""
    if os_name == "windows":
        return "QEMU on Windows cannot write a VM's state to a file Cove reads back"
    for sh in spec.shares:
        if sh.transport in QEMU_DEVICE_SHARES:
            return (f"the shared folder {sh.path} uses {sh.transport}: QEMU cannot save a "
                    f"VM with a mounted {sh.transport} share")
    if spec.shares:
        # The guest's mounts of link shares hold streams of the backend that saved them;
        # a restored guest would have to mount them anew. Not done yet.
        return f"the VM has shared folders ({spec.shares[0].path})"
    return ""


def watched_files(spec: VMSpec, qemu: str) -> list[Path]:
    return [Path(qemu), spec.kernel, spec.initramfs, spec.root_image, spec.data_disk]


def fingerprint(paths: list[Path]) -> list[list[Any]]:
    """[path, size, mtime_ns, inode] of each file (a missing one: size -1)."""
    out: list[list[Any]] = []
    for p in paths:
        try:
            st = p.stat()
            out.append([str(p), st.st_size, st.st_mtime_ns, st.st_ino])
        except OSError:
            out.append([str(p), -1, 0, 0])
    return out


def write(folder: Path, command: list[str], forwards: dict[str, Any], host: dict[str, Any],
          files: list[Path]) -> None:
    """Make the written stream the saved state: synced, renamed, then its manifest (a
    state without one is never loaded)."""
    part = folder / PARTIAL
    with part.open("rb") as f:
        os.fsync(f.fileno())
    part.replace(folder / STATE)
    manifest = {"version": VERSION, "command": command, "forwards": forwards, "host": host,
                "files": fingerprint(files)}
    atomic_write(folder / MANIFEST, json.dumps(manifest), 0o600)  # the token: 0600


def read(folder: Path) -> tuple[dict[str, Any] | None, str]:
    """(the manifest, "") of a complete saved state; (None, why not) otherwise."""
    if not (folder / STATE).exists():
        return None, ""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        return None, f"its manifest cannot be read ({e})"
    if not isinstance(manifest, dict) or manifest.get("version") != VERSION or not all(
            isinstance(manifest.get(k), t) for k, t in
            (("command", list), ("forwards", dict), ("host", dict), ("files", list))):
        return None, "its manifest is not one this Cove wrote"
    return manifest, ""


def mismatch(manifest: dict[str, Any], command: list[str], files: list[Path]) -> str:
    """What differs between the saved state and this start ("" when nothing does)."""
    if manifest["command"] != command:
        old, new = manifest["command"], command
        diff = next((f"{a!r} is now {b!r}" for a, b in zip(old, new, strict=False)
                     if a != b),
                    f"{len(old)} arguments are now {len(new)}")
        return f"the VM's settings changed since the save ({diff})"
    saved = {tuple(f)[0]: list(f) for f in manifest["files"] if isinstance(f, list) and f}
    for now in fingerprint(files):
        if saved.get(now[0]) != now:
            return f"{now[0]} changed since the save"
    return ""


def discard(folder: Path, why: str = "") -> None:
    """Delete the saved state (and a half-written one)."""
    existed = False
    for name in (STATE, PARTIAL, MANIFEST):
        try:
            (folder / name).unlink()
            existed = True
        except FileNotFoundError:
            pass
    if existed and why:
        log.info("the saved VM state is discarded: %s", why)


def exists(folder: Path) -> bool:
    return (folder / STATE).exists() and (folder / MANIFEST).exists()
