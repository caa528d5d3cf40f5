"""The data disk's ext4 detection (guest_engine.boot.ext4_state) on a crafted superblock."""

from __future__ import annotations

import struct

import pytest

from guest_engine import boot


def _superblock(magic: int = 0xEF53, incompat: int = 0x2 | 0x40 | 0x80 | 0x200) -> bytes:
    """A 1024-byte ext4 superblock: magic at 0x38, feature_incompat at 0x60.

    The default incompat flags are a freshly made ext4's: filetype, extents, 64bit,
    flex_bg (needs_recovery, 0x4, clear).
    """
    sb = bytearray(1024)
    struct.pack_into("<I", sb, 0x00, 65536)  # s_inodes_count
    struct.pack_into("<I", sb, 0x04, 262144)  # s_blocks_count_lo
    struct.pack_into("<I", sb, 0x18, 2)  # s_log_block_size: 4 KiB blocks
    struct.pack_into("<H", sb, 0x38, magic)
    struct.pack_into("<H", sb, 0x3A, 1)  # s_state: cleanly unmounted
    struct.pack_into("<I", sb, 0x5C, 0x3C)  # feature_compat
    struct.pack_into("<I", sb, 0x60, incompat)
    struct.pack_into("<I", sb, 0x64, 0x6B)  # feature_ro_compat
    sb[0x78:0x88] = b"cove-data".ljust(16, b"\0")  # s_volume_name
    return bytes(sb)


class FakeDisk:
    """Stands in for /dev/<dev>: `boot._read_at` serves reads from `data`."""

    def __init__(self) -> None:
        self.data = b""
        self.reads: list[tuple[str, int, int]] = []

    def read_at(self, dev: str, offset: int, size: int) -> bytes:
        assert dev == "vdb"
        self.reads.append((dev, offset, size))
        return self.data[offset : offset + size]


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> FakeDisk:
    d = FakeDisk()
    monkeypatch.setattr(boot, "_read_at", d.read_at)
    return d


def test_clean_ext4(disk: FakeDisk) -> None:
    disk.data = bytes(1024) + _superblock()
    assert boot.ext4_state("vdb") == (True, False)
    # The superblock is read at byte 1024, not at the start of the disk.
    assert disk.reads == [("vdb", 1024, 1024)]


def test_ext4_needs_recovery(disk: FakeDisk) -> None:
    disk.data = bytes(1024) + _superblock(incompat=0x2 | 0x4 | 0x40 | 0x80 | 0x200)
    assert boot.ext4_state("vdb") == (True, True)


def test_only_recovery_bit_counts(disk: FakeDisk) -> None:
    # Every incompat flag but needs_recovery: still clean.
    disk.data = bytes(1024) + _superblock(incompat=0xFFFFFFFF & ~0x4)
    assert boot.ext4_state("vdb") == (True, False)


def test_blank_disk(disk: FakeDisk) -> None:
    disk.data = bytes(2048)
    assert boot.ext4_state("vdb") == (False, False)


def test_other_filesystem(disk: FakeDisk) -> None:
    # A non-ext4 magic with the recovery bit set must not count as an unclean ext4.
    disk.data = bytes(1024) + _superblock(magic=0x5346, incompat=0x4)
    assert boot.ext4_state("vdb") == (False, False)
    # The magic in the wrong byte order is not ext4 either.
    disk.data = bytes(1024) + _superblock(magic=0x53EF)
    assert boot.ext4_state("vdb") == (False, False)


def test_short_device(disk: FakeDisk) -> None:
    # A device smaller than the superblock area (or a truncated read).
    disk.data = bytes(1024) + _superblock()[:0x50]
    assert boot.ext4_state("vdb") == (False, False)
    disk.data = b""
    assert boot.ext4_state("vdb") == (False, False)
