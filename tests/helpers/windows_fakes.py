"""A fake Windows host for the engine switch (desktop.windows_engine): commands
answered from the recorded outputs in tests/unit/fixtures/winengine, a service manager
holding one service, the engine behind its pipe, Cove's own pipe server, and a Switcher
wired to them. Used by the engine switch's tests, the CLI's `cove engine` tests and the
tray's switch menu. `RecordingDll`: fake DLLs for the ctypes layer (`_win32`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from desktop import context
from desktop.windows_engine import engine as winengine
from desktop.windows_engine.engine import WindowsEngine
from desktop.windows_engine.switch import LinuxEngine, Switcher
from tests.helpers.paths import FIXTURES as _ALL_FIXTURES

FIXTURES = _ALL_FIXTURES / "winengine"
DOCKERD = r"C:\Program Files\Docker\dockerd.exe"


class RecordingDll:
    """A ctypes DLL stand-in (kernel32, advapi32) for `desktop.platform._win32.Win32Api`:
    every function call is recorded with its arguments in `calls`; a subclass answers
    function F with a method `_F` (else 1, a Win32 TRUE)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.last_error = 0

    def __getattr__(self, name: str) -> Any:
        impl = getattr(type(self), "_" + name, None)

        def call(*args: Any) -> Any:
            self.calls.append((name, *args))
            return impl(self, *args) if impl else 1

        return call


def fixture(name: str) -> str:
    return (FIXTURES / name).read_bytes().decode()


class FakeWindowsHost:
    """A Windows computer as winengine sees it: commands answered from the recorded
    outputs, a service manager holding one service, and the engine behind its pipe
    (answering /_ping `boot_pings` calls after the service starts)."""

    def __init__(self, system: str = "Windows", feature: str = "feature_enabled.json") -> None:
        self._system = system
        self.feature = feature
        self.files = {DOCKERD}
        self.service: str | None = None  # None: not registered; else stopped|running
        self.binpath = ""
        self.decline_uac = False
        self.start_denied = False
        self.boot_pings = 2
        self.pings_left = 0
        self.commands: list[list[str]] = []
        self.elevated: list[str] = []

    def system(self) -> str:
        return self._system

    def run(self, argv: list[str]) -> tuple[int, str]:
        self.commands.append(argv)
        if argv[0] == "powershell.exe" and argv[-1] == winengine.FEATURE_QUERY:
            return (1 if "error" in self.feature else 0), fixture(self.feature)
        if argv[:2] == ["sc.exe", "query"]:
            if self.service is None:
                return 1060, fixture("sc_query_missing.txt")
            return 0, fixture(f"sc_query_{self.service}.txt")
        if argv[:2] == ["sc.exe", "qc"]:
            return 0, fixture("sc_qc.txt").replace("{binpath}", self.binpath)
        if argv[:2] == ["sc.exe", "start"]:
            if self.start_denied:
                return 5, fixture("sc_start_access_denied.txt")
            self.service = "running"
            self.pings_left = self.boot_pings
            return 0, ""
        if argv[:2] == ["sc.exe", "stop"]:
            self.service = "stopped"
            return 0, ""
        raise AssertionError(f"unexpected command {argv}")

    def run_elevated(self, script: str) -> tuple[int, str]:
        self.elevated.append(script)
        if self.decline_uac:
            return 1, fixture("uac_declined.txt")
        # What the script does: register (or re-point) the service.
        binpath = script.split("$bin = '", 1)[1].split("'\n", 1)[0].replace("''", "'")
        self.binpath = binpath
        if self.service is None:
            self.service = "stopped"
        return 0, ""

    def exists(self, path: str) -> bool:
        return path in self.files

    def env(self, name: str) -> str | None:
        return {"ProgramFiles": r"C:\Program Files"}.get(name)

    def install_dir(self) -> str:
        return r"C:\Users\alice\AppData\Local\Programs\Cove"

    def user(self) -> str:
        return r"PC\alice"

    def pipe_get(self, pipe: str, path: str) -> tuple[int, bytes]:
        assert pipe == winengine.PIPE
        if self.service != "running":
            raise FileNotFoundError(2, "The system cannot find the file specified")
        if self.pings_left > 0:  # dockerd is still creating its pipe
            self.pings_left -= 1
            raise FileNotFoundError(2, "The system cannot find the file specified")
        if path == "/_ping":
            return 200, b"OK"
        if path == "/version":
            return 200, json.dumps({"Version": "27.3.1", "Os": "windows"}).encode()
        return 404, b"{}"


class FakePipe:
    """Cove's \\\\.\\pipe\\docker_engine server."""

    def __init__(self, owned: bool = True) -> None:
        self._owned = owned
        self.targets: list[str] = []

    def owned(self) -> bool:
        return self._owned

    def retarget(self, endpoint: str) -> None:
        self.targets.append(endpoint)


def switcher(home: Path, host: FakeWindowsHost, vm_socket: Path,
             pipe: FakePipe | None = None,
             vm_starts: list[str] | None = None) -> Switcher:
    """The engine switch of the instances under `home`: the Linux engine at `vm_socket`
    (whose VM must not be started unless `vm_starts` records it) and `host`'s Windows
    engine."""
    def start_vm() -> None:
        if vm_starts is None:
            raise AssertionError("the VM runs already; it must not be started")
        vm_starts.append("start")

    return Switcher(home, "cove", {"linux": LinuxEngine(vm_socket, start_vm),
                                   "windows": WindowsEngine(home, host)},
                    context, remember=home / "default" / "previous-context", pipe=pipe,
                    sleep=lambda s: None)
