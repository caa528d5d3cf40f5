"""Turn a built guest image into the two disks a Hyper-V Generation 2 VM boots from.

Hyper-V has no direct kernel boot: a Generation 2 VM starts UEFI firmware, which runs
``\\EFI\\BOOT\\BOOTX64.EFI`` from the first disk's EFI system partition. So:

* ``boot.vhdx``: a GPT disk with one EFI system partition (FAT32) holding a unified
  kernel image (UKI) as ``EFI/BOOT/BOOTX64.EFI``: systemd's EFI stub (Debian's
  ``systemd-boot-efi``) with the kernel, the initramfs and the kernel command line
  added as PE sections (``.linux``, ``.initrd``, ``.cmdline``, ``.osrel``) by objcopy.
  The stub loads the kernel (Debian's kernels are EFI-stub capable) and hands it the
  initramfs and command line: no boot loader, no boot menu.
* ``root.vhdx``: the squashfs root as a whole disk, as QEMU attaches it; the initramfs
  finds it by its magic, on ``sd*`` (Hyper-V's SCSI) as on ``vd*``.

This is an explicit step, not part of `vm_image.builder` (whose cache key is left
alone): ``python -m vm_image.hyperv <image folder> [--out <folder>]``, on Linux, where
the tools are (objcopy, mkfs.vfat, mtools, qemu-img). Windows installers ship
the result; the Hyper-V driver looks for the disks beside the image.

Errors are `vm_image.builder.BuildError`: the message names the problem and the fix.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import uuid
import zlib
from pathlib import Path

from vm_image.builder import BuildError

log = logging.getLogger(__name__)

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
# The serial console is COM1 (Set-VMComPort); tsc is reliable under Hyper-V's TSC page.
CMDLINE = "console=ttyS0 panic=-1 quiet loglevel=3"
ESP_MIB = 64  # FAT32 needs at least 65525 clusters: 64 MiB with 512-byte clusters
ESP_START = 2048  # sectors: the partition starts at 1 MiB, as partitioners align it
SECTOR = 512
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
PAGE = 4096
TOOLS = {
    "objcopy": "binutils", "objdump": "binutils",
    "mkfs.vfat": "dosfstools", "mmd": "mtools", "mcopy": "mtools", "qemu-img": "qemu-utils",
}
OS_RELEASE = 'NAME="Cove"\nID=cove\nPRETTY_NAME="Cove guest"\n'


def check_tools(stub: Path = STUB) -> None:
    missing = {t: pkg for t, pkg in TOOLS.items() if shutil.which(t) is None}
    if not stub.exists():
        missing[str(stub)] = "systemd-boot-efi"
    if missing:
        pkgs = " ".join(sorted(set(missing.values())))
        raise BuildError(f"missing {', '.join(sorted(missing))}; install them "
                         f"(Debian: apt-get install {pkgs})")


def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"{what} failed ({' '.join(cmd[:2])}, exit {proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc.stdout


_SECTION = re.compile(r"^\s*\d+\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s", re.M)


def section_end(objdump_h: str) -> int:
    """The first address past the stub's own sections (from ``objdump -h``)."""
    ends = [int(vma, 16) + int(size, 16) for _, size, vma in _SECTION.findall(objdump_h)]
    if not ends:
        raise BuildError("objdump listed no sections in the EFI stub; is it a PE file?")
    return max(ends)


def image_base(objdump_p: str) -> int:
    m = re.search(r"^ImageBase\s+([0-9a-fA-F]+)", objdump_p, re.M)
    return int(m.group(1), 16) if m else 0


def uki_sections(sections: list[tuple[str, Path]], end: int, base: int) -> list[str]:
    """objcopy arguments adding each (name, file) after `end`, page-aligned, in order.

    The stub finds its payload by section name; each section must lie past the stub's
    own and not overlap the next, so addresses are laid out from the files' sizes.
    """
    args: list[str] = []
    addr = end
    for name, path in sections:
        addr = (addr + PAGE - 1) // PAGE * PAGE
        args += ["--add-section", f"{name}={path}",
                 "--change-section-vma", f"{name}={base + addr:#x}"]
        addr += path.stat().st_size
    return args


def make_uki(kernel: Path, initramfs: Path, out: Path, cmdline: str = CMDLINE,
             stub: Path = STUB) -> None:
    with tempfile.TemporaryDirectory(prefix="cove-uki-") as tmp:
        osrel = Path(tmp) / "os-release"
        osrel.write_text(OS_RELEASE)
        cmd = Path(tmp) / "cmdline"
        cmd.write_text(cmdline + "\0")
        end = section_end(_run(["objdump", "-h", str(stub)], "reading the EFI stub"))
        base = image_base(_run(["objdump", "-p", str(stub)], "reading the EFI stub"))
        args = uki_sections([(".osrel", osrel), (".cmdline", cmd), (".linux", kernel),
                             (".initrd", initramfs)], end, base)
        _run(["objcopy", *args, str(stub), str(out)], "building the unified kernel image")


GPT_ENTRIES = 128
GPT_ENTRY_SIZE = 128


def gpt(total_sectors: int, start: int, end: int, disk_id: uuid.UUID, part_id: uuid.UUID,
        type_id: str = ESP_TYPE, name: str = "EFI System") -> tuple[bytes, bytes]:
    """A GPT with one partition over sectors start..end (inclusive): (the first 34
    sectors: protective MBR, header, entries; the last 33: entries, backup header).

    Written here rather than by sfdisk: a fixed layout is a few lines, needs no tool,
    and the same inputs give the same bytes.
    """
    last = total_sectors - 1
    entry = struct.pack("<16s16sQQQ72s", uuid.UUID(type_id).bytes_le, part_id.bytes_le,
                        start, end, 0, name.encode("utf-16-le"))
    entries = entry.ljust(GPT_ENTRIES * GPT_ENTRY_SIZE, b"\0")
    entries_crc = zlib.crc32(entries)

    def header(current: int, backup: int, entries_lba: int) -> bytes:
        fields = (b"EFI PART", 0x00010000, 92, 0, 0, current, backup, 34, last - 33,
                  disk_id.bytes_le, entries_lba, GPT_ENTRIES, GPT_ENTRY_SIZE, entries_crc)
        fmt = "<8sIIIIQQQQ16sQIII"
        crc = zlib.crc32(struct.pack(fmt, *fields))
        h = struct.pack(fmt, *fields[:3], crc, *fields[4:])
        return h.ljust(SECTOR, b"\0")

    mbr = bytearray(SECTOR)
    # The protective MBR: one partition of type 0xEE over the whole disk, so tools that
    # know only MBR see the disk as in use.
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1,
                               min(last, 0xFFFFFFFF))
    mbr[510:512] = b"\x55\xaa"
    head = bytes(mbr) + header(1, last, 2) + entries
    tail = entries + header(last, 1, last - 32)
    return head, tail


def make_esp_disk(uki: Path, raw: Path) -> None:
    """A raw GPT disk whose one partition is a FAT32 EFI system partition with `uki` as
    the removable-media boot path (what firmware runs with no boot entries)."""
    esp_sectors = ESP_MIB * 2**20 // SECTOR
    need = uki.stat().st_size + 2**20
    if need > ESP_MIB * 2**20 * 0.9:
        raise BuildError(f"the kernel image ({need >> 20} MiB) does not fit the "
                         f"{ESP_MIB} MiB EFI partition; raise ESP_MIB")
    total = (ESP_START + esp_sectors + 2048) * SECTOR  # room for the backup GPT at the end
    # The disk's ids follow from its content, so a rebuild gives the same disk.
    digest = hashlib.sha256(uki.read_bytes()).hexdigest()
    seed = uuid.uuid5(uuid.NAMESPACE_URL, f"cove-esp:{digest}")
    head, tail = gpt(total // SECTOR, ESP_START, ESP_START + esp_sectors - 1,
                     uuid.uuid5(seed, "disk"), uuid.uuid5(seed, "esp"))
    with open(raw, "wb") as f:
        f.truncate(total)
        f.write(head)
        f.seek(total - len(tail))
        f.write(tail)
    _run(["mkfs.vfat", "-F", "32", "-s", "1", "-n", "COVE-EFI", "-i", seed.hex[:8],
          "--offset", str(ESP_START), str(raw), str(esp_sectors * SECTOR // 1024)],
         "formatting the EFI partition")
    img = f"{raw}@@{ESP_START * SECTOR}"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    for cmd in (["mmd", "-i", img, "::/EFI", "::/EFI/BOOT"],
                ["mcopy", "-i", img, str(uki), "::/EFI/BOOT/BOOTX64.EFI"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise BuildError(f"writing the EFI partition failed ({cmd[0]}): "
                             f"{proc.stderr.strip()}")


def to_vhdx(raw: Path, out: Path) -> None:
    """A dynamic VHDX of `raw`. Hyper-V wants a virtual size in whole MiB; pad to it."""
    size = raw.stat().st_size
    if size % 2**20:
        with open(raw, "r+b") as f:
            f.truncate((size + 2**20 - 1) // 2**20 * 2**20)
    _run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "vhdx", "-o", "subformat=dynamic",
          str(raw), str(out)], f"converting {raw.name} to VHDX")


def convert(image: Path, out: Path | None = None, stub: Path = STUB,
            cmdline: str = CMDLINE) -> dict[str, Path]:
    """Write ``boot.vhdx`` and ``root.vhdx`` for the image in `image` into `out` (the
    image folder by default); each is written beside and renamed into place, so a
    failed run leaves no half disk. Returns their paths."""
    out = out or image
    for name in ("vmlinuz", "initramfs", "root.sqfs"):
        if not (image / name).exists():
            raise BuildError(f"{image} has no {name}: is it a built image? "
                             "(`cove image path` prints the current one)")
    check_tools(stub)
    out.mkdir(parents=True, exist_ok=True)
    result = {"boot": out / "boot.vhdx", "root": out / "root.vhdx"}
    with tempfile.TemporaryDirectory(prefix="cove-hyperv-", dir=out) as tmp:
        t = Path(tmp)
        make_uki(image / "vmlinuz", image / "initramfs", t / "BOOTX64.EFI", cmdline, stub)
        make_esp_disk(t / "BOOTX64.EFI", t / "boot.raw")
        to_vhdx(t / "boot.raw", t / "boot.vhdx")
        shutil.copyfile(image / "root.sqfs", t / "root.raw")
        to_vhdx(t / "root.raw", t / "root.vhdx")
        for path in result.values():
            (t / path.name).replace(path)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vm_image.hyperv",
        description="Make a built guest image's Hyper-V boot and root disks.")
    parser.add_argument("image", type=Path, help="the image folder (`cove image path`)")
    parser.add_argument("--out", type=Path, help="where to write them (default: the image "
                        "folder)")
    args = parser.parse_args(argv)
    try:
        disks = convert(args.image, args.out)
    except BuildError as e:
        print(f"cove: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: str(v) for k, v in disks.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
