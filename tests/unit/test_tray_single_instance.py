"""One tray per user (desktop.tray.single_instance)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pytestqt.qtbot import QtBot  # noqa: E402

from desktop.tray.single_instance import SingleInstance, server_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _name() -> str:
    return server_name(f"test-{uuid.uuid4().hex[:8]}")


def test_server_name_is_per_user_and_instance() -> None:
    assert server_name("default", user="1000") == "cove-tray-1000-default"
    assert server_name("work", user="DOMAIN\\me") == "cove-tray-DOMAIN_me-work"
    assert server_name("default") == f"cove-tray-{os.getuid()}-default"


def test_second_launch_activates_the_first(qtbot: QtBot) -> None:
    name = _name()
    first = SingleInstance(name)
    assert first.claim()
    try:
        second = SingleInstance(name)
        with qtbot.waitSignal(first.activated, timeout=5000) as sig:
            assert not second.claim("show")
        assert sig.args == ["show"]
        assert second.server is None
    finally:
        first.close()


def test_leftover_socket_of_a_dead_tray_is_taken_over(qtbot: QtBot) -> None:
    name = _name()
    dead = SingleInstance(name)
    assert dead.claim()
    dead.close()  # the server is gone; no one answers
    again = SingleInstance(name)
    assert again.claim()
    again.close()


def test_another_process_is_turned_away(qtbot: QtBot) -> None:
    name = _name()
    first = SingleInstance(name)
    assert first.claim()
    code = (
        "import sys\n"
        "from PySide6.QtCore import QCoreApplication\n"
        "from desktop.tray.single_instance import SingleInstance\n"
        "app = QCoreApplication([])\n"
        f"sys.exit(0 if SingleInstance({name!r}).claim('show') else 7)\n"
    )
    try:
        with qtbot.waitSignal(first.activated, timeout=10000):
            proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
            qtbot.waitUntil(lambda: proc.poll() is not None, timeout=10000)
        assert proc.returncode == 7
    finally:
        first.close()
