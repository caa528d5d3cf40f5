"""The QEMU driver's data disk: a sparse qcow2, created once and checked at each start.

`ensure_disk` runs ``qemu-img``; it refuses a disk Cove cannot prove is its own and
intact, and never rewrites one it could not read (docs: "Nothing committed is lost").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from desktop.drivers import DiskError, DriverError


def qemu_img(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("qemu-img")
    if exe is None:
        raise DriverError("qemu-img not found; install QEMU (Debian: apt-get install qemu-utils)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def ensure_disk(path: Path, size_gib: int) -> bool:
    """Create the sparse qcow2 data disk, or check the existing one; True when the disk
    is provably blank (created now, or no cluster ever written).

    Refuses a disk another process has open (a VM still running: it says which, and
    suggests no repair), one with a backing file (its data would live elsewhere) and a
    corrupt one (left untouched, with how to repair it).
    """
    if not path.exists():
        proc = qemu_img("create", "-q", "-f", "qcow2", str(path), f"{size_gib}G")
        if proc.returncode != 0:
            raise DiskError(f"could not create the data disk {path}: {proc.stderr.strip()}")
        return True
    info = _info(path)
    _check(path, info)
    size = int(info.get("virtual-size", 0))
    if size < size_gib * 2**30:
        proc = qemu_img("resize", str(path), f"{size_gib}G")
        if proc.returncode != 0:
            raise DiskError(f"could not grow the data disk to {size_gib} GiB: "
                            f"{proc.stderr.strip()}")
    return is_blank(path)


def _info(path: Path) -> dict[str, Any]:
    """qemu-img's info on the disk, once it is known to be a qcow2 of its own that no
    process has open."""
    # Without -U: QEMU's image lock answers whether a VM has the disk open. Nothing after
    # this touches a disk in use (a repair of a live image would corrupt it).
    proc = qemu_img("info", "--output=json", str(path))
    if proc.returncode != 0 and _locked(proc.stderr):
        raise DiskError(in_use_message(path))
    if proc.returncode != 0:
        raise DiskError(
            f"the data disk {path} is not a readable disk image ({proc.stderr.strip()}); "
            "move it aside to keep it, or run `cove reset` to start with a new one"
        )
    info = json.loads(proc.stdout)
    if info.get("format") != "qcow2":
        raise DiskError(f"the data disk {path} is {info.get('format')}, not qcow2; "
                        "move it aside or run `cove reset`")
    if info.get("backing-filename"):
        raise DiskError(
            f"the data disk {path} has a backing file ({info['backing-filename']}); Cove "
            "refuses such disks. Convert it with `qemu-img convert -O qcow2` or `cove reset`"
        )
    return info


def _check(path: Path, info: dict[str, Any]) -> None:
    if info.get("dirty-flag"):
        # Left open by a VM that did not stop (lazy refcounts): QEMU itself repairs such an
        # image when it opens it; do it first so the check below sees the repaired one.
        qemu_img("check", "-q", "-r", "all", str(path))
    check = qemu_img("check", "-q", str(path))
    if check.returncode == 3:
        # Leaked clusters only (an unclean stop with lazy refcounts): no harm to data;
        # give the space back.
        qemu_img("check", "-q", "-r", "leaks", str(path))
    elif check.returncode != 0:
        if _locked(check.stderr):
            raise DiskError(in_use_message(path))
        msg = (check.stderr or check.stdout).strip().splitlines()
        raise DiskError(
            f"the data disk {path} is damaged ({msg[0] if msg else 'qemu-img check failed'}); "
            f"back it up (copy the file), then try `qemu-img check -r all {path}`"
        )


def is_blank(path: Path) -> bool:
    """No cluster of the image holds data: nothing was ever written (or all of it was
    discarded, which leaves nothing to lose either)."""
    proc = qemu_img("map", "--output=json", str(path))
    if proc.returncode != 0:
        return False
    try:
        extents = json.loads(proc.stdout)
    except ValueError:
        return False
    return isinstance(extents, list) and not any(e.get("data") for e in extents)


def _locked(stderr: str) -> bool:
    return "lock" in stderr.lower()


def in_use_message(path: Path) -> str:
    who = holders(path)
    by = ", ".join(f"pid {pid} ({name})" for pid, name in who) or "another process"
    return (f"the data disk {path} is in use by {by}: a VM of this instance still runs. "
            "`cove stop` stops it (or end that process); the disk is left as it is")


def holders(path: Path) -> list[tuple[int, str]]:
    """The processes that have `path` open (Linux's /proc; empty elsewhere)."""
    found = []
    target = os.path.realpath(path)
    for d in Path("/proc").glob("[0-9]*"):
        try:
            fds = list((d / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    found.append((int(d.name), (d / "comm").read_text().strip()))
                    break
            except OSError:
                continue
    return found
