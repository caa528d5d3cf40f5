"""Files written atomically (desktop.platform.files) and the SSH key pair (desktop.ssh)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from desktop import ssh
from desktop.platform import files


def test_atomic_write_replaces_and_sets_the_mode(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "boot.json"
    files.atomic_write(p, '{"token": "t"}')
    assert p.read_text() == '{"token": "t"}'
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    files.atomic_write(p, b"new", 0o644)
    assert p.read_bytes() == b"new" and stat.S_IMODE(p.stat().st_mode) == 0o644
    assert os.listdir(p.parent) == ["boot.json"]  # no temporary file left


def test_atomic_write_that_fails_leaves_the_old_file(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "settings.json"
    p.write_text("old")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        files.atomic_write(p, "new")
    monkeypatch.undo()
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["settings.json"]


def test_ssh_key_is_made_once(tmp_path: Path) -> None:
    line = ssh.ensure_key(tmp_path)
    assert line.startswith("ecdsa-sha2-nistp256 ") and line.endswith(" cove")
    assert stat.S_IMODE((tmp_path / "ssh_key").stat().st_mode) == 0o600
    assert ssh.ensure_key(tmp_path) == line


def test_a_missing_public_key_is_derived_again(tmp_path: Path) -> None:
    """A crash after the private key was written and before the public one."""
    line = ssh.ensure_key(tmp_path)
    private = (tmp_path / "ssh_key").read_bytes()
    (tmp_path / "ssh_key.pub").unlink()
    assert ssh.ensure_key(tmp_path) == line
    assert (tmp_path / "ssh_key.pub").read_text() == line + "\n"
    assert (tmp_path / "ssh_key").read_bytes() == private


def test_an_unreadable_private_key_is_kept_aside_and_a_new_pair_made(tmp_path: Path) -> None:
    old = ssh.ensure_key(tmp_path)
    (tmp_path / "ssh_key").write_text("-----BEGIN EC PRIVATE KEY-----\ntrunc")
    new = ssh.ensure_key(tmp_path)
    assert new != old and (tmp_path / "ssh_key.pub").read_text().strip() == new
    assert ssh.ensure_key(tmp_path) == new
    # Never overwritten: the file that could not be read is there as it was.
    assert (tmp_path / "ssh_key.broken").read_text() == "-----BEGIN EC PRIVATE KEY-----\ntrunc"
