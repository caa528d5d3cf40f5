"""One tray per user and instance (desktop.tray.single_instance)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QLockFile  # noqa: E402
from PySide6.QtNetwork import QLocalServer  # noqa: E402
from pytestqt.qtbot import QtBot  # noqa: E402

from desktop.instance import Instance  # noqa: E402
from desktop.tray.single_instance import SingleInstance  # noqa: E402
from tests.helpers.paths import REPO

KEY = "t-0123abcd"


@pytest.fixture
def folder() -> Iterator[Path]:
    # Short: the socket's path must stay under 104 bytes (pytest's tmp_path is long).
    d = Path(tempfile.mkdtemp(prefix="ct-", dir="/tmp"))
    inst = Instance("t", home=d / "h")
    inst.ensure_folder()
    yield inst.folder
    shutil.rmtree(d, ignore_errors=True)


def test_second_launch_activates_the_first(qtbot: QtBot, folder: Path) -> None:
    first = SingleInstance(folder, KEY)
    assert first.claim()
    try:
        second = SingleInstance(folder, KEY)
        with qtbot.waitSignal(first.activated, timeout=5000) as sig:
            assert not second.claim("show")
        assert sig.args == ["show"]
        assert second.delivered and second.server is None
    finally:
        first.close()


@pytest.mark.skipif(os.name != "posix", reason="a socket path on Unix; a pipe on Windows")
def test_the_lock_and_the_socket_are_in_the_private_folder(
        qtbot: QtBot, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not in the shared temporary folder, where another user could make them first."""
    shared = Path(tempfile.mkdtemp(prefix="shared-", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(shared))
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    first = SingleInstance(folder, KEY)
    try:
        assert first.claim()
        sock, lock = folder / "tray.sock", folder / "tray.lock"
        assert first.name == str(sock)
        assert stat.S_ISSOCK(sock.lstat().st_mode) and lock.is_file()
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert list(shared.iterdir()) == []
    finally:
        first.close()
        shared.rmdir()


def test_what_another_user_made_in_the_temp_folder_does_not_turn_the_tray_away(
        qtbot: QtBot, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A squatter's server and held lock under the tray's old names in /tmp (or any
    name outside the user's folder) are not the tray's: it claims and listens."""
    shared = Path(tempfile.mkdtemp(prefix="shared-", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(shared))
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    old_name = f"cove-tray-{os.getuid() if hasattr(os, 'getuid') else 'me'}-{KEY}"
    squatter = QLocalServer()
    assert squatter.listen(old_name)
    squat_lock = QLockFile(str(shared / f"{old_name}.lock"))
    assert squat_lock.tryLock(0)
    tray = SingleInstance(folder, KEY)
    try:
        assert tray.claim()
        assert tray.server is not None and tray.listen_error == ""
        assert not squatter.hasPendingConnections()
    finally:
        tray.close()
        squatter.close()
        squat_lock.unlock()
        shutil.rmtree(shared, ignore_errors=True)


def test_leftover_socket_of_a_dead_tray_is_taken_over(qtbot: QtBot, folder: Path) -> None:
    dead = SingleInstance(folder, KEY)
    assert dead.claim()
    dead.close()  # the server is gone; no one answers
    (folder / "tray.sock").touch()  # as a crash leaves it (not a socket served by anyone)
    again = SingleInstance(folder, KEY)
    assert again.claim()
    assert again.server is not None
    again.close()


def test_a_name_that_cannot_be_served_does_not_stop_the_tray(qtbot: QtBot,
                                                             folder: Path) -> None:
    """The lock decides who is first; the server only carries "show" (on Windows another
    program may hold a pipe name first)."""
    (folder / "tray.sock").mkdir()
    (folder / "tray.sock" / "x").touch()  # nothing removes it
    tray = SingleInstance(folder, KEY)
    try:
        assert tray.claim()
        assert tray.server is None and "cannot listen" in tray.listen_error
        second = SingleInstance(folder, KEY)
        assert not second.claim(patience=0.2)  # the first holds the lock: it is first
        assert not second.delivered
    finally:
        tray.close()


def test_another_process_is_turned_away(qtbot: QtBot, folder: Path) -> None:
    first = SingleInstance(folder, KEY)
    assert first.claim()
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from PySide6.QtCore import QCoreApplication\n"
        "from desktop.tray.single_instance import SingleInstance\n"
        "app = QCoreApplication([])\n"
        f"s = SingleInstance(Path({str(folder)!r}), {KEY!r})\n"
        "sys.exit(0 if s.claim('show') else 7 if s.delivered else 8)\n"
    )
    try:
        with qtbot.waitSignal(first.activated, timeout=10000):
            proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
            qtbot.waitUntil(lambda: proc.poll() is not None, timeout=10000)
        assert proc.returncode == 7
    finally:
        first.close()


def test_a_tray_that_ended_leaves_the_lock_to_the_next(qtbot: QtBot, folder: Path) -> None:
    """Killed, not closed: the OS lock goes with the process, so the next tray is first."""
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from PySide6.QtCore import QCoreApplication\n"
        "from desktop.tray.single_instance import SingleInstance\n"
        "app = QCoreApplication([])\n"
        f"assert SingleInstance(Path({str(folder)!r}), {KEY!r}).claim()\n"
        "os._exit(9)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 9
    tray = SingleInstance(folder, KEY)
    assert tray.claim()
    tray.close()
