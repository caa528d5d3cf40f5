"""Socket paths too long to bind (macOS: 104-byte sun_path, Linux: 108): refused before
anything starts, with the path, its length, the limit and the fix; nothing to check on
Windows, which has no socket files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from desktop import home, lifecycle
from desktop.backend import Backend
from desktop.instance import Instance
from desktop.platform import sockets


def _path(size: int) -> Path:
    p = Path("/h/" + "x" * (size - len("/h/")))
    assert len(os.fsencode(p)) == size
    return p


@pytest.mark.parametrize(("platform", "limit"), [("darwin", 103), ("linux", 107)])
def test_each_system_has_its_limit(platform: str, limit: int) -> None:
    assert sockets.socket_path_limit(platform) == limit
    sockets.check_socket_paths([_path(limit)], platform)  # fits, with its NUL
    with pytest.raises(sockets.SocketPathTooLong) as e:
        sockets.check_socket_paths([_path(20), _path(limit + 1)], platform)
    msg = str(e.value)
    assert str(_path(limit + 1)) in msg and f"{limit + 1} bytes" in msg
    assert f"at most {limit}" in msg and "COVE_HOME" in msg


def test_windows_has_no_socket_files() -> None:
    assert sockets.socket_path_limit("win32") is None
    sockets.check_socket_paths([_path(300)], "win32")


def test_the_instances_sockets_include_qemus_and_virtiofsds() -> None:
    names = [p.name for p in home.socket_paths(Path("/h/default"), shares=2)]
    assert names == ["docker.sock", "control.sock", "qmp.sock", "qmp-events.sock",
                     "virtiofs-0.sock", "virtiofs-1.sock"]


def _long_home(tmp_path: Path, limit: int) -> Path:
    """A COVE_HOME where control.sock fits but qmp-events.sock (QEMU's) does not."""
    base = len(os.fsencode(tmp_path / "h" / "default")) + 1  # the folder and "/"
    pad = limit - base - len("control.sock")
    assert pad >= 0, "the test folder is too long for this test"
    h = tmp_path / ("h" + "x" * pad)
    assert len(os.fsencode(h / "default" / "control.sock")) <= limit
    assert len(os.fsencode(h / "default" / "qmp-events.sock")) > limit
    return h


def test_cove_start_refuses_before_spawning(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    limit = sockets.socket_path_limit()
    assert limit is not None
    inst = Instance("default", _long_home(tmp_path, limit))  # made: status, delete work

    def popen(*a: Any, **k: Any) -> None:
        raise AssertionError("the backend must not start")

    monkeypatch.setattr(subprocess, "Popen", popen)
    with pytest.raises(lifecycle.LifecycleError, match="qmp-events.sock.*COVE_HOME"):
        lifecycle.spawn_backend(inst)
    assert not inst.folder.exists()  # nothing was made


def test_the_backend_refuses_before_any_socket(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    limit = sockets.socket_path_limit()
    assert limit is not None
    inst = Instance("default", _long_home(tmp_path, limit))
    assert Backend(inst).run() == 2
    assert "qmp-events.sock" in capsys.readouterr().err
    assert not inst.control_socket.exists()
