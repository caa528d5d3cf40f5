"""The tray's controller against the session's real backend: it sees the running state
(from the backend's status and events) and the engine's containers."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pytestqt.qtbot import QtBot  # noqa: E402

from desktop.instance import Instance  # noqa: E402
from desktop.tray import model  # noqa: E402
from desktop.tray.controller import TrayController  # noqa: E402
from tests.integration.conftest import Cove  # noqa: E402


def test_tray_follows_the_real_backend(cove: Cove, hello_image: str, qtbot: QtBot,
                                       monkeypatch) -> None:
    monkeypatch.setenv("COVE_HOME", str(cove.home))
    spawned: list[Instance] = []
    ctl = TrayController(Instance(cove.name, home=Path(cove.home)), spawn=spawned.append)
    try:
        ctl.start_following()
        qtbot.waitUntil(lambda: ctl.state.state == "running", timeout=20000)
        assert ctl.state.engine_version and spawned == []  # it found the running backend
        assert model.status_line(ctl.state).startswith("Cove is running")
        name = f"tray-{uuid.uuid4().hex[:6]}"
        before = ctl.state.containers
        cove.docker("run", "-d", "--name", name, hello_image, "sleep", "300")
        try:
            qtbot.waitUntil(lambda: ctl.state.containers is not None and
                            ctl.state.containers == (before or 0) + 1, timeout=20000)
            assert "1 container" in model.status_line(ctl.state) or \
                "containers" in model.status_line(ctl.state)
        finally:
            cove.docker("rm", "-f", name)
        qtbot.waitUntil(lambda: ctl.state.containers == (before or 0), timeout=20000)
    finally:
        ctl.close()
