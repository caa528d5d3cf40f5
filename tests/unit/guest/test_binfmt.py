"""Registering the image's emulators with binfmt_misc (`guest_engine.boot.binfmt`), over a
folder standing in for /proc/sys/fs/binfmt_misc (a write to `register` is recorded as the
kernel would take it; each registered entry then appears as a file of its name)."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest_engine.boot import binfmt
from tests.unit.guest.test_boot import FakeRun, fake_run  # noqa: F401 - a fixture

AARCH64 = (r":qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00"
           r"\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff"
           r"\xff\xff\xfe\xff\xff\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF")


def test_the_f_flag_is_added_and_the_rest_kept() -> None:
    assert binfmt.entry_line(AARCH64) == AARCH64  # Debian's has F already
    no_f = AARCH64.removesuffix(":OPF") + ":OP"
    assert binfmt.entry_line("# qemu\n\n" + no_f + "\n") == no_f + "F"
    assert binfmt.entry_line(",x,E,,exe,,/bin/wine,") == ",x,E,,exe,,/bin/wine,F"


@pytest.mark.parametrize("text", ["", "# only a comment\n", ":too:few:", ":name:M::magic::"])
def test_a_file_without_an_entry_is_none(text: str) -> None:
    assert binfmt.entry_line(text) is None


class FakeBinfmt:
    def __init__(self, root: Path, refuse: str = "") -> None:
        self.dir = root
        self.refuse = refuse
        self.lines: list[str] = []
        root.mkdir()
        (root / "register").write_text("")

    def take(self) -> None:
        """What the kernel did with the writes (the file holds the last)."""
        line = (self.dir / "register").read_text()
        if line:
            self.lines.append(line)
            (self.dir / line[1:].split(line[0])[0]).write_text("enabled\n")
            (self.dir / "register").write_text("")


def test_each_emulator_is_registered_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    confs = tmp_path / "binfmt.d"
    confs.mkdir()
    (confs / "qemu-aarch64.conf").write_text(AARCH64 + "\n")
    (confs / "qemu-arm.conf").write_text(AARCH64.replace("aarch64", "arm") + "\n")
    (confs / "other.conf").write_text(":other:E::exe::/bin/x:\n")  # not QEMU's: left
    fake = FakeBinfmt(tmp_path / "binfmt_misc")
    real_write = Path.write_text

    def write(self: Path, data: str, *a: object, **k: object) -> int:
        n = real_write(self, data)
        if self.name == "register" and data:
            fake.take()
        return n

    monkeypatch.setattr(Path, "write_text", write)
    assert binfmt.register(confs, fake.dir) == ["qemu-aarch64", "qemu-arm"]
    assert [ln.split(":")[1] for ln in fake.lines] == ["qemu-aarch64", "qemu-arm"]
    # A second boot step (or an agent restart) finds them there and writes nothing.
    assert binfmt.register(confs, fake.dir) == ["qemu-aarch64", "qemu-arm"]
    assert len(fake.lines) == 2


def test_binfmt_misc_is_mounted_when_it_is_not(tmp_path: Path,
                                               fake_run: FakeRun) -> None:  # noqa: F811
    confs = tmp_path / "binfmt.d"
    confs.mkdir()
    (confs / "qemu-arm.conf").write_text(AARCH64.replace("aarch64", "arm"))
    # The fake mount makes no register file: the entry fails, logged, and is not listed.
    assert binfmt.register(confs, tmp_path / "binfmt_misc") == []
    assert fake_run.commands("mount") == [
        ["mount", "-t", "binfmt_misc", "binfmt_misc", str(tmp_path / "binfmt_misc")]]


def test_no_emulators_in_the_image_is_nothing_to_do(
        tmp_path: Path, fake_run: FakeRun) -> None:  # noqa: F811
    assert binfmt.register(tmp_path / "none", tmp_path / "binfmt_misc") == []
    assert fake_run.calls == []
