"""The first step, before logging: the kernel's filesystems (/proc, /sys, /dev, /run,
cgroup2...) and the cgroup that keeps the kernel's static keys flipped."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from guest_engine.boot import paths, system

log = logging.getLogger(__name__)


def _mount(fstype: str, source: str, target: str, options: str = "") -> None:
    os.makedirs(target, exist_ok=True)
    if os.path.ismount(target):
        return
    cmd = ["mount", "-t", fstype] + (["-o", options] if options else []) + [source, target]
    system.run(cmd)


def mount_filesystems() -> None:
    _mount("proc", "proc", "/proc")
    _mount("sysfs", "sysfs", "/sys")
    _mount("devtmpfs", "devtmpfs", "/dev")
    _mount("devpts", "devpts", "/dev/pts", "gid=5,mode=620,ptmxmode=666")
    _mount("tmpfs", "shm", "/dev/shm", "mode=1777,nosuid,nodev")
    _mount("mqueue", "mqueue", "/dev/mqueue")
    _mount("tmpfs", "run", "/run", "mode=0755,nosuid,nodev")
    _mount("tmpfs", "tmp", "/tmp", "mode=1777,nosuid,nodev")
    _mount("cgroup2", "cgroup2", "/sys/fs/cgroup", "nsdelegate")
    for fs, path in (("securityfs", "/sys/kernel/security"), ("bpf", "/sys/fs/bpf"),
                     ("fusectl", "/sys/fs/fuse/connections")):
        try:
            _mount(fs, fs, path)
        except (RuntimeError, OSError) as e:
            log.debug("optional mount %s: %s", path, e)
    paths.RUN_DIR.mkdir(parents=True, exist_ok=True)
    # Delegate every controller to child cgroups (the engine's containers).
    try:
        controllers = Path("/sys/fs/cgroup/cgroup.controllers").read_text().split()
        Path("/sys/fs/cgroup/cgroup.subtree_control").write_text(
            " ".join("+" + c for c in controllers)
        )
    except OSError as e:
        log.warning("cgroup controllers not delegated: %s", e)
    pin_cgroup_keys()


# A child cgroup that lives as long as the VM. The kernel flips static keys (live code
# patching) when the first child cgroup of a controller appears (cpuset's is tested in
# the page allocator) and flips some back when the last one goes. Under software
# emulation with several vCPUs a vCPU can run the half-patched code and the kernel dies
# ("Oops: int3"); seen at a container's first start after boot. Made here, the flip
# happens before the agent answers, where a crash is met by the host booting again, and
# no container start or exit flips it later.
PINNED_CGROUP = Path("/sys/fs/cgroup/cove.pin")


def pin_cgroup_keys(path: Path = PINNED_CGROUP) -> bool:
    try:
        path.mkdir(exist_ok=True)
    except OSError as e:
        log.warning("cgroup %s not made: %s", path, e)
        return False
    return True
