"""The data disk's fill level, told to the host as it changes, and its freed space given
back to the host's disk.

Every `INTERVAL` seconds a statvfs of the data disk (nothing else: cheap when idle):
the level ("ok", "low", "full") goes to the host as a ``disk`` event when it changes, so
`cove status` and the tray can say the disk is full and how to grow it. Space freed
since the last trim (images, containers, volumes deleted) is trimmed once it has stayed
free for one more check: the qcow2 file on the host then shrinks by as much.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
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


class DiskWatcher:
    def __init__(self, path: str, broadcast: Callable[[dict[str, Any]], None],
                 trim: Callable[[], str],
                 statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
                 sync: Callable[[], None] = os.sync) -> None:
        self.path = path
        self.broadcast = broadcast
        self.trim = trim
        self.statvfs = statvfs
        self.sync = sync
        self.last: dict[str, Any] = {}  # the last reading, as sent
        self._trimmed_free: int | None = None  # free space right after the last trim
        self._candidate = 0  # free space of the check before, when it had grown

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
        self._maybe_trim(now["free"])

    def _maybe_trim(self, free: int) -> None:
        if self._trimmed_free is None or free < self._trimmed_free:
            self._trimmed_free = free  # space taken since: the mark follows it down
            self._candidate = 0
            return
        if free - self._trimmed_free < TRIM_GAIN:
            self._candidate = 0
            return
        if not self._candidate or abs(free - self._candidate) >= TRIM_GAIN:
            self._candidate = free  # freed just now: trim once it has settled
            return
        log.info("data disk: %d MiB freed; trim: %s", (free - self._trimmed_free) // MIB,
                 self.trim())
        self._trimmed_free = free
        self._candidate = 0

    def trim_now(self) -> dict[str, Any]:
        """Trim at once (the host asked: the Dashboard's Reclaim space), whatever was
        freed; the marks start again from here. {"trimmed": fstrim's words, "free"}.

        A sync first: ext4 trims blocks freed in a transaction only once the journal has
        committed it, and the host asks right after the engine deleted the files."""
        self.sync()
        said = self.trim()
        free = self.read()["free"]
        self._trimmed_free, self._candidate = free, 0
        log.info("data disk: trim asked by the host: %s", said)
        return {"trimmed": said, "free": free}

    def run(self, stop: threading.Event) -> None:
        self.check()
        while not stop.wait(INTERVAL):
            self.check()
