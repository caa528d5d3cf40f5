"""Start Cove at login: one small class per platform behind the `Autostart` interface.

* Linux (and other XDG desktops): ``$XDG_CONFIG_HOME/autostart/cove.desktop``
* macOS: a LaunchAgent, ``~/Library/LaunchAgents/org.cove.tray.plist``
* Windows: the value ``Cove`` under HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run

`for_platform()` picks one once. Each takes where it writes (a folder, or a winreg-like
module) as a parameter, so tests check the exact file contents and registry calls.
"""

from __future__ import annotations

import importlib
import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

APP_NAME = "Cove"


class Autostart(Protocol):
    def is_enabled(self) -> bool: ...

    def enable(self, command: list[str]) -> None: ...

    def disable(self) -> None: ...


def tray_command() -> list[str]:
    """How to launch the tray: the installed `cove-desktop` script, else this Python."""
    exe = shutil.which("cove-desktop")
    if exe is None:
        sibling = Path(sys.executable).with_name("cove-desktop")
        exe = str(sibling) if sibling.exists() else None
    return [exe] if exe else [sys.executable, "-m", "desktop.tray"]


def _desktop_quote(arg: str) -> str:
    """Quote one argument of a .desktop file's Exec key (freedesktop's rules)."""
    if arg and not any(c in arg for c in ' \t\n"\'\\><~|&;$*?#()`='):
        return arg
    escaped = "".join("\\" + c if c in '"`$\\' else c for c in arg)
    return f'"{escaped}"'


def desktop_entry(command: list[str]) -> str:
    # In a .desktop file a literal "%" in Exec must be written "%%".
    exec_line = " ".join(_desktop_quote(a) for a in command).replace("%", "%%")
    return (
        "[Desktop Entry]\n"
        "Type=Application\n"
        f"Name={APP_NAME}\n"
        "Comment=Run Linux containers: the Cove tray\n"
        f"Exec={exec_line}\n"
        "Icon=cove\n"
        "Terminal=false\n"
        "X-GNOME-Autostart-enabled=true\n"
    )


class XdgAutostart:
    def __init__(self, config_home: Path | None = None) -> None:
        home = config_home or Path(os.environ.get("XDG_CONFIG_HOME")
                                   or Path.home() / ".config")
        self.path = home / "autostart" / "cove.desktop"

    def is_enabled(self) -> bool:
        return self.path.exists()

    def enable(self, command: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(desktop_entry(command))
        tmp.replace(self.path)

    def disable(self) -> None:
        self.path.unlink(missing_ok=True)


LAUNCH_AGENT_LABEL = "org.cove.tray"


def launch_agent_plist(command: list[str]) -> bytes:
    return plistlib.dumps({
        "Label": LAUNCH_AGENT_LABEL,
        "ProgramArguments": list(command),
        "RunAtLoad": True,
        "KeepAlive": False,
        "ProcessType": "Interactive",
        "LimitLoadToSessionType": "Aqua",
    })


class LaunchAgent:
    """A per-user LaunchAgent; launchd reads the folder at each login, so writing the
    file is enough (no `launchctl load`, which would start a second tray now)."""

    def __init__(self, home: Path | None = None) -> None:
        self.path = (home or Path.home()) / "Library" / "LaunchAgents" / \
            f"{LAUNCH_AGENT_LABEL}.plist"

    def is_enabled(self) -> bool:
        return self.path.exists()

    def enable(self, command: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(launch_agent_plist(command))

    def disable(self) -> None:
        self.path.unlink(missing_ok=True)


RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"


class WindowsRunKey:
    """The current user's Run key. `registry` is the `winreg` module (or a fake)."""

    def __init__(self, registry: Any = None) -> None:
        if registry is None:
            registry = importlib.import_module("winreg")
        self.reg = registry

    def is_enabled(self) -> bool:
        try:
            with self.reg.OpenKey(self.reg.HKEY_CURRENT_USER, RUN_KEY, 0,
                                  self.reg.KEY_READ) as key:
                self.reg.QueryValueEx(key, APP_NAME)
                return True
        except OSError:
            return False

    def enable(self, command: list[str]) -> None:
        with self.reg.CreateKeyEx(self.reg.HKEY_CURRENT_USER, RUN_KEY, 0,
                                  self.reg.KEY_SET_VALUE) as key:
            self.reg.SetValueEx(key, APP_NAME, 0, self.reg.REG_SZ,
                                subprocess.list2cmdline(command))

    def disable(self) -> None:
        try:
            with self.reg.OpenKey(self.reg.HKEY_CURRENT_USER, RUN_KEY, 0,
                                  self.reg.KEY_SET_VALUE) as key:
                self.reg.DeleteValue(key, APP_NAME)
        except FileNotFoundError:
            pass


def for_platform(platform: str = sys.platform) -> Autostart:
    if platform == "win32":
        return WindowsRunKey()
    if platform == "darwin":
        return LaunchAgent()
    return XdgAutostart()
