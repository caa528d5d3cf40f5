"""The share guard: no container puts a set-uid or set-gid bit on a file in a host share.

QEMU's 9p device and virtiofsd apply the guest's chmod to the host's file as it is, so a
container's `chmod u+s` in a shared folder would leave a set-uid program on the host (owned
by root when Cove runs as root) that any local user could run. Neither has an option that
stops it, so the guest's kernel refuses it: a BPF LSM program (`share-guard.bpf.c`, built
into the image) answers EPERM to a chmod or a create that asks for either bit on a 9p or
virtiofs file (a folder may keep set-gid). It holds for every container and for VM root
alike; only code that can load BPF programs (a privileged container, which is VM root in
full) could take it away.

Loaded with bpftool at boot, before the shares are mounted and the engine starts, and
pinned under bpffs so it outlives the agent (an agent started again finds it in place).
A kernel without the BPF LSM active is an error the host sees in the boot's errors.
"""

from __future__ import annotations

import logging
from pathlib import Path

from guest_engine.boot import system

log = logging.getLogger(__name__)

OBJECT = Path("/usr/lib/cove/share-guard.bpf.o")
PIN_DIR = Path("/sys/fs/bpf/cove-share-guard")
LSM_LIST = Path("/sys/kernel/security/lsm")
# The programs in the object, one per hook; the pins bpftool leaves are named after them.
PROGRAMS = ("cove_share_chmod", "cove_share_mknod")


def loaded(pin_dir: Path = PIN_DIR) -> list[str]:
    """The guard's programs pinned (attached) now."""
    try:
        return sorted(p.name for p in pin_dir.iterdir() if p.name in PROGRAMS)
    except OSError:
        return []


def load(obj: Path = OBJECT, pin_dir: Path = PIN_DIR, lsm_list: Path = LSM_LIST) -> list[str]:
    """Attach the guard's programs (already attached: nothing to do) and return them.
    Raises RuntimeError naming what is missing."""
    done = loaded(pin_dir)
    if sorted(PROGRAMS) == done:
        return done
    try:
        active = lsm_list.read_text().strip().split(",")
    except OSError as e:
        raise RuntimeError(f"cannot read the active LSMs ({e}): securityfs not mounted") from e
    if "bpf" not in active:
        raise RuntimeError(f"the kernel's BPF LSM is not active (active: {','.join(active)}); "
                           "boot with lsm=...,bpf")
    if not obj.exists():
        raise RuntimeError(f"{obj} is missing from the image")
    if pin_dir.exists():  # a half-done load (the agent stopped during it): start again
        for p in pin_dir.iterdir():
            p.unlink()
        pin_dir.rmdir()
    system.run(["bpftool", "prog", "loadall", str(obj), str(pin_dir), "autoattach"])
    done = loaded(pin_dir)
    if sorted(PROGRAMS) != done:
        raise RuntimeError(f"bpftool attached {done or 'nothing'}, not {list(PROGRAMS)}")
    log.info("share guard attached: %s", ", ".join(done))
    return done
