"""The data disk: found by its serial (never the root image or a partitioned boot
disk), checked at each boot (forced after an unclean stop), mounted with the engine's
state bound in place; trimmed, and unmounted cleanly at power-off.

It is formatted only when it is provably new: the host says so (it created the disk, or
not one cluster of it holds data) and no ext4 superblock is found, primary or backup.
A disk whose primary superblock is damaged is repaired from a backup; one with no
superblock that the host cannot vouch for is left untouched and unmounted, and the
engine does not start on an empty folder in its place.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from pathlib import Path

from guest_engine.boot import paths, system

log = logging.getLogger(__name__)

# Engine state that lives on the data disk, bind-mounted where the engine expects it.
DATA_BINDS = {
    "docker": "/var/lib/docker",
    "containerd": "/var/lib/containerd",
    "etc-docker": "/etc/docker",
}
EXT4_MAGIC = 0xEF53
EXT4_INCOMPAT_RECOVER = 0x4  # "needs_recovery": set while mounted, cleared on unmount


def _partitioned(dev: str) -> bool:
    """The disk carries a partition table (MBR signature or a GPT header): never the data
    disk, which is a whole-disk ext4 or blank (Hyper-V's EFI boot disk is the case)."""
    head = _read_at(dev, 0, 1024)
    return head[510:512] == b"\x55\xaa" or head[512:520] == b"EFI PART"


def _block_devices() -> list[str]:
    return sorted(
        p.name for p in Path("/sys/class/block").iterdir()
        if not (p / "partition").exists() and p.name.startswith(("vd", "sd", "xvd"))
    )


def _read_at(dev: str, offset: int, size: int) -> bytes:
    with open(f"/dev/{dev}", "rb") as f:
        f.seek(offset)
        return f.read(size)


def find_data_device() -> str | None:
    """The data disk: the one with serial `cove-data`, else the first that is not the root."""
    candidates = []
    for dev in _block_devices():
        try:
            if _read_at(dev, 0, 4) == b"hsqs":
                continue  # the root image
            serial = Path(f"/sys/class/block/{dev}/serial")
            if serial.exists() and serial.read_text().strip() == "cove-data":
                return dev
            if _partitioned(dev):
                continue  # a boot disk (Hyper-V's EFI disk): formatting it would be a loss
        except OSError:
            continue
        candidates.append(dev)
    return candidates[0] if candidates else None


def ext4_state(dev: str) -> tuple[bool, bool]:
    """(the primary superblock is ext4's, was not unmounted cleanly)."""
    sb = _read_at(dev, 1024, 1024)
    if len(sb) < 0x64 or struct.unpack_from("<H", sb, 0x38)[0] != EXT4_MAGIC:
        return False, False
    incompat = struct.unpack_from("<I", sb, 0x60)[0]
    return True, bool(incompat & EXT4_INCOMPAT_RECOVER)


# The block groups that hold a backup superblock (sparse_super: 1 and powers of 3, 5, 7).
BACKUP_GROUPS = (1, 3, 5, 7, 9, 25, 27, 49, 81, 125, 243, 343)


def backup_superblock(dev: str) -> tuple[int, int] | None:
    """(block, block size) of the first backup superblock found, for ``e2fsck -b -B``;
    None when there is none. A backup names its own group (s_block_group_nr), so a copy
    of a superblock elsewhere in the data is not taken for one."""
    for bs in (4096, 1024, 2048):
        per_group = 8 * bs  # blocks per group: one block of bitmap
        first = 1 if bs == 1024 else 0
        for group in BACKUP_GROUPS:
            block = first + group * per_group
            sb = _read_at(dev, block * bs, 1024)
            if len(sb) < 0x5C or struct.unpack_from("<H", sb, 0x38)[0] != EXT4_MAGIC:
                continue
            if struct.unpack_from("<H", sb, 0x5A)[0] == group and \
                    1024 << struct.unpack_from("<I", sb, 0x18)[0] == bs:
                return block, bs
    return None


class DiskRefused(RuntimeError):
    """The data disk is left untouched and unmounted; the message says why and the fix."""


def setup_data_disk(blank: bool = False) -> tuple[str | None, dict]:
    """Check the data disk (repair a damaged primary superblock from a backup; format it
    only when the host vouches that it is `blank` and no superblock is found), mount it,
    bind the engine's state. DiskRefused leaves it untouched."""
    dev = find_data_device()
    if dev is None:
        raise RuntimeError("no data disk attached")
    info: dict = {"device": dev, "formatted": False}
    has_fs, unclean = ext4_state(dev)
    backup = None if has_fs else backup_superblock(dev)
    if has_fs:
        info["unclean"] = unclean
        _fsck(dev, info, ["-f"] if unclean else [])
    elif backup is not None:
        log.warning("the data disk's primary superblock is damaged; repairing it from the "
                    "backup at block %d", backup[0])
        info.update(unclean=True, repaired_from_backup=backup[0])
        _fsck(dev, info, ["-f", "-b", str(backup[0]), "-B", str(backup[1])])
    elif blank:
        _format(dev, info)
    else:
        raise DiskRefused(
            f"the data disk (/dev/{dev}) has no ext4 superblock, primary or backup, and the "
            "host did not create it blank: it was not formatted and is left untouched "
            "(nothing on it is lost). Move the instance's data.qcow2 aside to start with a "
            "new disk, or inspect it (qemu-img, e2fsck)")
    paths.DATA_MOUNT.mkdir(parents=True, exist_ok=True)
    system.run(["mount", "-t", "ext4", "-o", "noatime", f"/dev/{dev}", str(paths.DATA_MOUNT)])
    _grow(dev, info)
    for sub, target in DATA_BINDS.items():
        src = paths.DATA_MOUNT / sub
        first = not src.exists()
        src.mkdir(parents=True, exist_ok=True)
        if first and sub == "etc-docker" and Path(target).is_dir():
            # Keep what the image's /etc/docker had (seeded once on a new disk).
            system.run(["cp", "-a", f"{target}/.", str(src)])
        os.makedirs(target, exist_ok=True)
        system.run(["mount", "--bind", str(src), target])
    paths.LOG_DIR.mkdir(parents=True, exist_ok=True)
    return dev, info


def fs_bytes(dev: str) -> int:
    """The size of the ext4 filesystem on `dev`, from its superblock (0 if none)."""
    sb = _read_at(dev, 1024, 1024)
    if len(sb) < 0x154 or struct.unpack_from("<H", sb, 0x38)[0] != EXT4_MAGIC:
        return 0
    lo = struct.unpack_from("<I", sb, 0x04)[0]
    hi = struct.unpack_from("<I", sb, 0x150)[0]  # s_blocks_count_hi (64bit feature)
    return (lo | hi << 32) << (10 + struct.unpack_from("<I", sb, 0x18)[0])


def device_bytes(dev: str) -> int:
    return int(Path(f"/sys/class/block/{dev}/size").read_text()) * 512


def _grow(dev: str, info: dict) -> None:
    """A disk the host grew (`cove start --disk`) gets its filesystem grown too, online;
    growing never touches what is stored."""
    try:
        have, room = fs_bytes(dev), device_bytes(dev)
    except (OSError, ValueError):
        return
    if have and room - have >= 16 * 2**20:
        proc = system.run(["resize2fs", f"/dev/{dev}"], check=False, timeout=600)
        info["grown"] = {"from": have, "to": room, "exit": proc.returncode,
                         "output": (proc.stdout + proc.stderr).strip()[-500:]}
        log.info("data disk grown from %d to %d bytes (resize2fs exit %d)", have, room,
                 proc.returncode)


def _format(dev: str, info: dict) -> None:
    t0 = time.monotonic()
    system.run(["mkfs.ext4", "-q", "-F", "-L", "cove-data", "-m", "0",
                "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", f"/dev/{dev}"],
               timeout=300)
    info.update(formatted=True, mkfs_seconds=round(time.monotonic() - t0, 2))


def _fsck(dev: str, info: dict, extra: list[str]) -> None:
    """e2fsck's safe repairs (-p); anything worse leaves the disk unmounted."""
    forced = "-f" in extra
    t0 = time.monotonic()
    proc = system.run(["e2fsck", "-p", *extra, f"/dev/{dev}"], check=False, timeout=1800)
    info["fsck"] = {
        "forced": forced,
        "exit": proc.returncode,
        "seconds": round(time.monotonic() - t0, 2),
        "output": (proc.stdout + proc.stderr).strip()[-2000:],
    }
    if proc.returncode >= 4:
        raise DiskRefused(
            f"the data disk has errors e2fsck -p cannot fix (exit {proc.returncode}); "
            f"the disk is left unmounted so nothing is lost: "
            f"{info['fsck']['output'][-300:]}"
        )


def fstrim() -> str:
    proc = system.run(["fstrim", "-v", str(paths.DATA_MOUNT)], check=False, timeout=600)
    return (proc.stdout + proc.stderr).strip()


def unmount_data_disk() -> None:
    """Sync and unmount the data disk (binds first), leaving the filesystem clean."""
    os.sync()
    for target in DATA_BINDS.values():
        system.run(["umount", target], check=False)
    proc = system.run(["umount", str(paths.DATA_MOUNT)], check=False)
    if proc.returncode != 0:
        system.run(["umount", "-l", str(paths.DATA_MOUNT)], check=False)
        # The lazy unmount may still be pending: remount read-only so the journal is clean.
        system.run(["mount", "-o", "remount,ro", str(paths.DATA_MOUNT)], check=False)
    os.sync()
