"""The engine switch: which Docker engine the `cove` context points at, the Linux VM or
native Windows containers (dockerd.exe beside the VM, Windows only).

Everything outside this package goes through the names below (an import-linter
contract keeps it so):

* `switch`: the modes, the active mode on disk (engine.json), the `Switcher`;
* `engine`: the native Windows engine (a Windows service running dockerd.exe);
* `host`: the real Windows boundary the engine runs on (processes, PowerShell, pipes);
* `http`: one GET over a named pipe; `errors`: the exception hierarchy.
"""

from desktop.windows_engine.engine import WindowsEngine, WindowsSettings
from desktop.windows_engine.errors import EngineError, EngineStateError, SwitchRefused
from desktop.windows_engine.switch import (
    DEFAULT_MODE,
    DESCRIPTIONS,
    MODES,
    Switcher,
    SwitchResult,
    load_mode,
    save_mode,
    switcher_for,
)

__all__ = ["DEFAULT_MODE", "DESCRIPTIONS", "MODES", "EngineError", "EngineStateError",
           "SwitchRefused", "SwitchResult", "Switcher", "WindowsEngine", "WindowsSettings",
           "load_mode", "save_mode", "switcher_for"]
