"""The guest's unit tests run on the build host: nothing they call may register with the
host's own binfmt_misc (`boot.early` registers the image's emulators)."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest_engine.boot import binfmt


@pytest.fixture(autouse=True)
def no_host_binfmt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(binfmt, "CONF_DIR", tmp_path / "no-binfmt.d")
    monkeypatch.setattr(binfmt, "BINFMT_DIR", tmp_path / "no-binfmt_misc")
