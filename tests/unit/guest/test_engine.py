"""The engine's supervisor: what it does before the daemons run."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest_engine import engine


def test_page_in_reads_each_program_whole_on_a_thread_and_skips_a_missing_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's programs are read into the page cache while the boot goes on: every
    byte of each (counted through the reads), a missing path skipped, the caller never
    held up."""
    import builtins

    a, b = tmp_path / "containerd", tmp_path / "dockerd"
    a.write_bytes(b"c" * (3 << 20))
    b.write_bytes(b"d" * ((1 << 20) + 5))
    got: dict[str, int] = {}
    real_open = builtins.open

    def counting_open(path, mode="r", *args, **kw):  # type: ignore[no-untyped-def]
        f = real_open(path, mode, *args, **kw)
        real_read = f.read

        def read(n: int = -1) -> bytes:
            data = real_read(n)
            got[str(path)] = got.get(str(path), 0) + len(data)
            return data

        f.read = read
        return f

    monkeypatch.setattr(builtins, "open", counting_open)
    t = engine.page_in((str(a), str(tmp_path / "missing"), str(b)))
    t.join(10)
    assert not t.is_alive() and t.daemon
    assert got == {str(a): 3 << 20, str(b): (1 << 20) + 5}
    assert engine.PROGRAMS == ("/usr/bin/containerd", "/usr/sbin/dockerd")
