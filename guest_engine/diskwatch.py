"""The data disk's fill level, told to the host as it changes, and its freed space given
back to the host's disk.

Every `INTERVAL` seconds a statvfs of the data disk and ext4's count of the bytes it has
written (nothing else: cheap when idle): the level ("ok", "low", "full") goes to the
host as a ``disk`` event when it changes, so `cove status` and the tray can say the disk
is full and how to grow it. Space freed since the last trim (images, containers, volumes
deleted) is trimmed once the free space has held for one more check: the qcow2 file on
the host then shrinks by as much.

Freed space is the larger of two readings: how far the free space rose over its lowest
since the last trim, and what was written since beyond what is still taken. The second
catches what the first cannot see: a volume written and deleted between two checks
leaves the free space as it was, but its blocks allocated in the qcow2 file. It counts
rewrites in place too (a database's), so it may trim when little was freed: a trim of
block groups with nothing freed since is cheap, ext4 skips them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

INTERVAL = 10.0
MIB = 2**20
GIB = 2**30
# Freed space worth a trim (each trim walks the free space of the whole filesystem).
TRIM_GAIN = 256 * MIB


def level(size: int, free: int) -> str:
    """"full" when writes are about to fail, "low" when it is time to act, else "ok"."""
    if free < max(256 * MIB, size // 100):
        return "full"
    if free < max(GIB, size // 10):
        return "low"
    return "ok"


def fs_written(mount: str, mounts: str = "/proc/mounts",
               sysfs: str = "/sys/fs/ext4") -> int | None:
    """Bytes the ext4 filesystem mounted at `mount` has written to its device since it
    was mounted; None where it is not ext4 or the kernel does not say."""
    try:
        for line in Path(mounts).read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[1] == mount and parts[2] == "ext4":
                name = os.path.basename(parts[0])
                return int(Path(sysfs, name, "session_write_kbytes").read_text()) * 1024
    except (OSError, ValueError):
        return None
    return None


class DiskWatcher:
    def __init__(self, path: str, broadcast: Callable[[dict[str, Any]], None],
                 trim: Callable[[], str],
                 statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
                 sync: Callable[[], None] = os.sync,
                 written: Callable[[str], int | None] = fs_written) -> None:
        self.path = path
        self.broadcast = broadcast
        self.trim = trim
        self.statvfs = statvfs
        self.sync = sync
        self.written = written
        self.last: dict[str, Any] = {}  # the last reading, as sent
        self._trimmed_free: int | None = None  # the lowest free space since the last trim
        self._candidate = 0  # free space of the check before, when space had been freed
        # At the last trim: the free space, and the bytes written by then (None: unknown).
        self._mark_free = 0
        self._mark_written: int | None = None

    def read(self) -> dict[str, Any]:
        vfs = self.statvfs(self.path)
        size, free = vfs.f_blocks * vfs.f_frsize, vfs.f_bavail * vfs.f_frsize
        return {"size": size, "free": free, "level": level(size, free)}

    def check(self) -> None:
        """One reading: an event if the level changed; a trim if space was freed."""
        try:
            now = self.read()
        except OSError as e:
            log.warning("data disk: %s", e)
            return
        if now["level"] != self.last.get("level"):
            log.info("data disk: %s (%d MiB free of %d MiB)", now["level"],
                     now["free"] // MIB, now["size"] // MIB)
            self.broadcast({"event": "disk", **now})
        self.last = now
        self._maybe_trim(now["free"], self.written(self.path))

    def _mark(self, free: int, written: int | None) -> None:
        self._trimmed_free = self._mark_free = free
        self._mark_written = written
        self._candidate = 0

    def _freed(self, free: int, written: int | None) -> int:
        """Bytes freed since the last trim, at least (see the module's doc)."""
        assert self._trimmed_free is not None
        rose = free - self._trimmed_free
        if written is None or self._mark_written is None or written < self._mark_written:
            return rose  # no count (or a new mount): the free space alone
        return max(rose, (written - self._mark_written) - (self._mark_free - free))

    def _maybe_trim(self, free: int, written: int | None = None) -> None:
        if self._trimmed_free is None:
            self._mark(free, written)
            return
        if free < self._trimmed_free:
            self._trimmed_free = free  # space taken since: the low mark follows it down
            self._candidate = 0
            return
        freed = self._freed(free, written)
        if freed < TRIM_GAIN:
            self._candidate = 0
            return
        if not self._candidate or abs(free - self._candidate) >= TRIM_GAIN:
            self._candidate = free  # freed just now: trim once it has settled
            return
        log.info("data disk: %d MiB freed; trim: %s", freed // MIB, self.trim())
        self._mark(free, written)

    def trim_now(self) -> dict[str, Any]:
        """Trim at once (the host asked: the Dashboard's Reclaim space), whatever was
        freed; the marks start again from here. {"trimmed": fstrim's words, "free"}.

        A sync first: ext4 trims blocks freed in a transaction only once the journal has
        committed it, and the host asks right after the engine deleted the files."""
        self.sync()
        said = self.trim()
        free = self.read()["free"]
        self._mark(free, self.written(self.path))
        log.info("data disk: trim asked by the host: %s", said)
        return {"trimmed": said, "free": free}

    def run(self, stop: threading.Event) -> None:
        self.check()
        while not stop.wait(INTERVAL):
            self.check()
