"""vm_image.hyperv: the GPT it writes, the UKI's section layout, and a whole conversion
of a tiny stand-in image with the real tools (objcopy, mkfs.vfat, mtools, qemu-img)."""

from __future__ import annotations

import struct
import subprocess
import uuid
import zlib
from pathlib import Path

import pytest

from vm_image import hyperv
from vm_image.builder import BuildError

SECTOR = 512

# `objdump -h` of Debian 12's linuxx64.efi.stub (systemd 252).
STUB_SECTIONS = """
/usr/lib/systemd/boot/efi/linuxx64.efi.stub:     file format pei-x86-64

Sections:
Idx Name          Size      VMA               LMA               File off  Algn
  0 .text         0000bff0  0000000000004000  0000000000004000  00000400  2**4
                  CONTENTS, ALLOC, LOAD, READONLY, CODE
  1 .reloc        0000000c  0000000000010000  0000000000010000  0000c400  2**2
                  CONTENTS, ALLOC, LOAD, READONLY, DATA
  2 .data         000034b8  0000000000011000  0000000000011000  0000c600  2**4
                  CONTENTS, ALLOC, LOAD, DATA
  6 .sbat         000000e2  0000000000019000  0000000000019000  00011000  2**2
                  CONTENTS, ALLOC, LOAD, READONLY, DATA
  7 .sdmagic      00000034  0000000000019100  0000000000019100  00011200  2**2
                  CONTENTS, ALLOC, LOAD, READONLY, DATA
"""


def test_section_end_and_layout(tmp_path: Path) -> None:
    end = hyperv.section_end(STUB_SECTIONS)
    assert end == 0x19134
    files = []
    for name, size in ((".osrel", 45), (".cmdline", 40), (".linux", 12_171_200)):
        p = tmp_path / name
        p.write_bytes(b"\0" * size)
        files.append((name, p))
    args = hyperv.uki_sections(files, end, base=0)
    vmas = [int(a.split("=")[1], 16) for a in args[3::4]]
    assert vmas == [0x1A000, 0x1B000, 0x1C000]
    assert args[:4] == ["--add-section", f".osrel={files[0][1]}",
                        "--change-section-vma", ".osrel=0x1a000"]
    with pytest.raises(BuildError, match="no sections"):
        hyperv.section_end("nothing here")
    assert hyperv.image_base("ImageBase\t\t0000000140000000\n") == 0x140000000


def test_gpt_is_valid() -> None:
    total = 2048 + 131072 + 2048
    disk_id, part_id = uuid.UUID(int=1), uuid.UUID(int=2)
    head, tail = hyperv.gpt(total, 2048, 2048 + 131072 - 1, disk_id, part_id)
    assert len(head) == 34 * SECTOR and len(tail) == 33 * SECTOR
    mbr = head[:SECTOR]
    assert mbr[510:512] == b"\x55\xaa" and mbr[446 + 4] == 0xEE
    assert struct.unpack_from("<II", mbr, 446 + 8) == (1, total - 1)

    def check_header(h: bytes, current: int, backup: int, entries_lba: int,
                     entries: bytes) -> None:
        fields = list(struct.unpack_from("<8sIIIIQQQQ16sQIII", h))
        assert fields[0] == b"EFI PART" and fields[2] == 92
        crc = fields[3]
        fields[3] = 0
        assert zlib.crc32(struct.pack("<8sIIIIQQQQ16sQIII", *fields)) == crc
        assert fields[5:9] == [current, backup, 34, total - 34]
        assert uuid.UUID(bytes_le=fields[9]) == disk_id
        assert fields[10:13] == [entries_lba, 128, 128]
        assert zlib.crc32(entries) == fields[13]

    entries = head[2 * SECTOR:34 * SECTOR]
    check_header(head[SECTOR:2 * SECTOR], 1, total - 1, 2, entries)
    check_header(tail[-SECTOR:], total - 1, 1, total - 33, tail[:32 * SECTOR])
    type_id, uniq, first, last = struct.unpack_from("<16s16sQQ", entries)
    assert uuid.UUID(bytes_le=type_id) == uuid.UUID(hyperv.ESP_TYPE)
    assert uuid.UUID(bytes_le=uniq) == part_id
    assert (first, last) == (2048, 2048 + 131072 - 1)
    assert entries[56:56 + 20].decode("utf-16-le") == "EFI System"


def test_convert_refuses_a_folder_that_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="has no vmlinuz: is it a built image"):
        hyperv.convert(tmp_path)


def test_check_tools_names_the_packages(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="apt-get install .*systemd-boot-efi"):
        hyperv.check_tools(stub=tmp_path / "no.stub")


def _tools_here() -> bool:
    try:
        hyperv.check_tools()
    except BuildError:
        return False
    return True


@pytest.mark.skipif(not _tools_here(), reason="needs systemd-boot-efi, dosfstools, mtools, "
                                              "binutils and qemu-utils")
def test_convert_a_small_image(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.mkdir()
    kernel = b"MZ-not-really-a-kernel" * 1000
    (image / "vmlinuz").write_bytes(kernel)
    (image / "initramfs").write_bytes(b"\x1f\x8b-initramfs" * 100)
    root = b"hsqs" + bytes(range(256)) * 4000  # not a MiB multiple: padded in the VHDX
    (image / "root.sqfs").write_bytes(root)
    out = tmp_path / "out"
    disks = hyperv.convert(image, out)
    assert disks == {"boot": out / "boot.vhdx", "root": out / "root.vhdx"}
    assert sorted(p.name for p in out.iterdir()) == ["boot.vhdx", "root.vhdx"]

    def raw(vhdx: Path) -> bytes:
        info = subprocess.run(["qemu-img", "info", str(vhdx)], capture_output=True,
                              text=True, check=True).stdout
        assert "file format: vhdx" in info
        dst = tmp_path / (vhdx.stem + ".raw")
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(vhdx), str(dst)], check=True)
        return dst.read_bytes()

    r = raw(disks["root"])
    assert r.startswith(root) and len(r) % 2**20 == 0 and not r[len(root):].strip(b"\0")
    b = raw(disks["boot"])
    assert b[512:520] == b"EFI PART"
    (tmp_path / "b.raw").write_bytes(b)
    uki = tmp_path / "BOOTX64.EFI"
    subprocess.run(["mcopy", "-n", "-i", f"{tmp_path / 'b.raw'}@@{2048 * SECTOR}",
                    "::/EFI/BOOT/BOOTX64.EFI", str(uki)], check=True,
                   env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"})
    for section, content in ((".linux", kernel), (".cmdline", hyperv.CMDLINE.encode() + b"\0")):
        dump = tmp_path / section
        subprocess.run(["objcopy", "-O", "binary", f"--only-section={section}", str(uki),
                        str(dump)], check=True)
        assert dump.read_bytes()[:len(content)] == content
