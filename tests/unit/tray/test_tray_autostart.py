"""Start at login (desktop.tray.autostart): the XDG file, the LaunchAgent, the Run key."""

from __future__ import annotations

import plistlib
from pathlib import Path
from typing import Any

from desktop.tray import autostart
from desktop.tray.autostart import LaunchAgent, WindowsRunKey, XdgAutostart

CMD = ["/opt/cove/.venv/bin/cove-desktop"]


def test_xdg_desktop_file(tmp_path: Path) -> None:
    a = XdgAutostart(tmp_path / "config")
    assert not a.is_enabled()
    a.enable(CMD)
    path = tmp_path / "config" / "autostart" / "cove.desktop"
    assert a.path == path and a.is_enabled()
    assert path.read_text() == (
        "[Desktop Entry]\nType=Application\nName=Cove\n"
        "Comment=Run Linux containers: the Cove tray\n"
        "Exec=/opt/cove/.venv/bin/cove-desktop\nIcon=cove\nTerminal=false\n"
        "X-GNOME-Autostart-enabled=true\n")
    a.disable()
    assert not path.exists() and not a.is_enabled()
    a.disable()  # twice is fine


def test_xdg_exec_quoting() -> None:
    entry = autostart.desktop_entry(["/home/me/my apps/python", "-m", "desktop.tray",
                                     '--x=a"$b', "100%"])
    exec_line = next(ln for ln in entry.splitlines() if ln.startswith("Exec="))
    assert exec_line == ('Exec="/home/me/my apps/python" -m desktop.tray '
                         '"--x=a\\"\\$b" 100%%')


def test_xdg_follows_xdg_config_home(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert XdgAutostart().path == tmp_path / "xdg" / "autostart" / "cove.desktop"


def test_launch_agent_plist(tmp_path: Path) -> None:
    a = LaunchAgent(home=tmp_path)
    a.enable(["/Applications/Cove.app/Contents/MacOS/cove-desktop", "--instance", "work"])
    path = tmp_path / "Library" / "LaunchAgents" / "org.cove.tray.plist"
    assert a.is_enabled()
    data = plistlib.loads(path.read_bytes())
    assert data == {"Label": "org.cove.tray",
                    "ProgramArguments": ["/Applications/Cove.app/Contents/MacOS/cove-desktop",
                                         "--instance", "work"],
                    "RunAtLoad": True, "KeepAlive": False, "ProcessType": "Interactive",
                    "LimitLoadToSessionType": "Aqua"}
    assert path.read_bytes().startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    a.disable()
    assert not path.exists()


class FakeWinreg:
    """The parts of winreg the Run key uses, recording every call."""

    HKEY_CURRENT_USER = "HKCU"
    KEY_READ = 0x20019
    KEY_SET_VALUE = 0x0002
    REG_SZ = 1

    def __init__(self) -> None:
        self.values: dict[tuple[str, str, str], tuple[int, str]] = {}
        self.calls: list[tuple[Any, ...]] = []

    class _Key:
        def __init__(self, reg: FakeWinreg, root: str, path: str) -> None:
            self.reg, self.root, self.path = reg, root, path

        def __enter__(self) -> FakeWinreg._Key:
            return self

        def __exit__(self, *exc: Any) -> None:
            self.reg.calls.append(("CloseKey", self.path))

    def OpenKey(self, root: str, path: str, reserved: int, access: int) -> _Key:  # noqa: N802
        self.calls.append(("OpenKey", root, path, access))
        return self._Key(self, root, path)

    def CreateKeyEx(self, root: str, path: str, reserved: int, access: int) -> _Key:  # noqa: N802
        self.calls.append(("CreateKeyEx", root, path, access))
        return self._Key(self, root, path)

    def SetValueEx(self, key: _Key, name: str, reserved: int, kind: int, data: str) -> None:  # noqa: N802
        self.calls.append(("SetValueEx", key.path, name, kind, data))
        self.values[(key.root, key.path, name)] = (kind, data)

    def QueryValueEx(self, key: _Key, name: str) -> tuple[str, int]:  # noqa: N802
        try:
            kind, data = self.values[(key.root, key.path, name)]
        except KeyError:
            raise FileNotFoundError(2, "The system cannot find the file specified") from None
        return data, kind

    def DeleteValue(self, key: _Key, name: str) -> None:  # noqa: N802
        self.calls.append(("DeleteValue", key.path, name))
        if self.values.pop((key.root, key.path, name), None) is None:
            raise FileNotFoundError(2, "The system cannot find the file specified")


def test_windows_run_key() -> None:
    reg = FakeWinreg()
    a = WindowsRunKey(reg)
    run = r"Software\Microsoft\Windows\CurrentVersion\Run"
    assert not a.is_enabled()
    a.enable([r"C:\Program Files\Cove\cove-desktop.exe", "--instance", "default"])
    assert ("CreateKeyEx", "HKCU", run, reg.KEY_SET_VALUE) in reg.calls
    assert ("SetValueEx", run, "Cove", reg.REG_SZ,
            r'"C:\Program Files\Cove\cove-desktop.exe" --instance default') in reg.calls
    assert a.is_enabled()
    a.disable()
    assert ("DeleteValue", run, "Cove") in reg.calls
    assert not a.is_enabled()
    a.disable()  # no value: nothing to do, no error


def test_for_platform_picks_one_class() -> None:
    assert isinstance(autostart.for_platform("linux"), XdgAutostart)
    assert isinstance(autostart.for_platform("darwin"), LaunchAgent)


def test_tray_command_is_runnable() -> None:
    cmd = autostart.tray_command()
    assert Path(cmd[0]).exists()
    assert cmd[0].endswith("cove-desktop") or cmd[1:] == ["-m", "desktop.tray"]
