"""The data disk's watcher: a level event only when the level changes, and a trim once
freed space has settled (the qcow2 file on the host shrinks by as much)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from guest_engine import diskwatch
from guest_engine.diskwatch import GIB, MIB, DiskWatcher, level


class Disk:
    """statvfs of a filesystem of `size` bytes with `free` bytes free (4 KiB blocks);
    `written` is ext4's count of bytes written since the mount (None: not counted)."""

    def __init__(self, size: int, free: int, written: int | None = None) -> None:
        self.size, self.free, self.written = size, free, written

    def statvfs(self, path: str) -> os.statvfs_result:
        blocks, avail = self.size // 4096, self.free // 4096
        return os.statvfs_result((4096, 4096, blocks, avail, avail, 0, 0, 0, 0, 255))


def _watcher(disk: Disk) -> tuple[DiskWatcher, list[dict[str, Any]], list[int]]:
    events: list[dict[str, Any]] = []
    trims: list[int] = []

    def trim() -> str:
        trims.append(disk.free)
        return "trimmed"

    return DiskWatcher("/mnt/data", events.append, trim, statvfs=disk.statvfs,
                       written=lambda path: disk.written), events, trims


def test_levels() -> None:
    assert level(64 * GIB, 30 * GIB) == "ok"
    assert level(64 * GIB, 5 * GIB) == "low"  # under a tenth
    assert level(64 * GIB, 500 * MIB) == "full"  # under a hundredth
    assert level(8 * GIB, 900 * MIB) == "low"  # under 1 GiB on a small disk
    assert level(8 * GIB, 200 * MIB) == "full"  # under 256 MiB
    assert level(8 * GIB, 0) == "full"


def test_an_event_at_start_and_at_each_change_of_level_only() -> None:
    disk = Disk(8 * GIB, 6 * GIB)
    w, events, _ = _watcher(disk)
    w.check()
    disk.free = 5 * GIB
    w.check()  # still ok: nothing said
    disk.free = 100 * MIB
    w.check()
    disk.free = 90 * MIB
    w.check()
    disk.free = 7 * GIB
    w.check()
    assert [(e["event"], e["level"]) for e in events] == [
        ("disk", "ok"), ("disk", "full"), ("disk", "ok")]
    assert events[1]["free"] == 100 * MIB and events[1]["size"] == 8 * GIB


def test_freed_space_is_trimmed_once_it_has_settled() -> None:
    disk = Disk(8 * GIB, 1 * GIB)
    w, _, trims = _watcher(disk)
    w.check()  # the mark: 1 GiB free
    disk.free = 1 * GIB + 100 * MIB
    w.check()  # too little freed
    disk.free = 5 * GIB
    w.check()  # freed just now (an image deleted): wait one check
    assert trims == []
    disk.free = 5 * GIB + 10 * MIB
    w.check()
    assert trims == [5 * GIB + 10 * MIB]
    w.check()
    w.check()  # nothing freed since that trim: no other
    assert len(trims) == 1
    disk.free = 2 * GIB  # space taken again: the mark follows it down
    w.check()
    disk.free = 3 * GIB
    w.check()
    w.check()
    assert trims == [5 * GIB + 10 * MIB, 3 * GIB]


def test_a_statvfs_error_is_logged_not_raised() -> None:
    def broken(path: str) -> os.statvfs_result:
        raise OSError(5, "Input/output error")

    w = DiskWatcher("/mnt/data", lambda e: None, lambda: "", statvfs=broken)
    w.check()
    assert w.last == {}
    assert diskwatch.INTERVAL > 0


def test_a_trim_the_host_asks_for_runs_at_once_and_moves_the_marks() -> None:
    """The Dashboard's Reclaim space: less than TRIM_GAIN freed, trimmed all the same;
    the watcher then counts what is freed from there (no second trim for the same)."""
    disk = Disk(8 * GIB, 1 * GIB)
    w, _, trims = _watcher(disk)
    w.check()
    disk.free = 1 * GIB + 100 * MIB  # under TRIM_GAIN: the watcher would wait for more
    w.check()
    w.check()
    assert trims == []
    order: list[str] = []
    w.sync = lambda: order.append("sync")
    real_trim = w.trim
    w.trim = lambda: order.append("trim") or real_trim()  # type: ignore[func-returns-value]
    assert w.trim_now() == {"trimmed": "trimmed", "free": 1 * GIB + 100 * MIB}
    assert trims == [1 * GIB + 100 * MIB]
    assert order == ["sync", "trim"]  # the journal committed first, or ext4 skips it
    disk.free = 1 * GIB + 300 * MIB  # 200 MiB since the trim: still under the gain
    w.check()
    w.check()
    assert len(trims) == 1


def test_a_volume_written_and_deleted_between_two_checks_is_trimmed_by_the_write_count(
        ) -> None:
    """The free space is the same at both checks, but 512 MiB went to the disk (and so
    into the qcow2 file on the host) between them: that is freed space to trim."""
    disk = Disk(64 * GIB, 60 * GIB, written=10 * GIB)
    w, _, trims = _watcher(disk)
    w.check()  # the marks
    disk.written += 512 * MIB  # written and synced, then deleted: free as before
    w.check()
    assert trims == []  # freed just now: once more to settle
    w.check()
    assert trims == [60 * GIB]
    w.check()
    assert len(trims) == 1  # nothing written since that trim


def test_writes_that_are_still_held_are_not_freed_space() -> None:
    disk = Disk(64 * GIB, 60 * GIB, written=0)
    w, _, trims = _watcher(disk)
    w.check()
    disk.written += 2 * GIB
    disk.free -= 2 * GIB  # an image pulled: written and kept
    w.check()
    w.check()
    disk.written += 100 * MIB  # under TRIM_GAIN more, rewritten in place
    w.check()
    w.check()
    assert trims == []


def test_the_write_count_comes_from_ext4_for_the_mount(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/vda / squashfs ro 0 0\n/dev/vdb /mnt/data ext4 rw 0 0\n")
    (tmp_path / "ext4" / "vdb").mkdir(parents=True)
    (tmp_path / "ext4" / "vdb" / "session_write_kbytes").write_text("524288\n")
    read = lambda mount: diskwatch.fs_written(  # noqa: E731
        mount, str(mounts), str(tmp_path / "ext4"))
    assert read("/mnt/data") == 512 * MIB
    assert read("/") is None  # not ext4
    assert read("/mnt/other") is None
    (tmp_path / "ext4" / "vdb" / "session_write_kbytes").write_text("junk")
    assert read("/mnt/data") is None
