"""The real `WindowsHost` (`desktop.windows_engine.engine`): processes, PowerShell and named pipes.

On a host that is not Windows it still answers `system()` truthfully, which is all the
engine switch asks of it before refusing; the rest is only reached on Windows.
"""

from __future__ import annotations

import base64
import os
import platform
import subprocess
import sys
from pathlib import Path

from desktop.windows_engine.http import http_get

TIMEOUT = 120.0


class SystemHost:
    def system(self) -> str:
        return platform.system()

    def run(self, argv: list[str]) -> tuple[int, str]:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT,
                               stdin=subprocess.DEVNULL,
                               creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        except (OSError, subprocess.TimeoutExpired) as e:
            return 1, str(e)
        return p.returncode, p.stdout + p.stderr

    def run_elevated(self, script: str) -> tuple[int, str]:
        """The script runs in an elevated PowerShell started through the UAC prompt;
        -EncodedCommand (UTF-16LE, base64) carries it without any quoting to get wrong."""
        encoded = base64.b64encode(script.encode("utf-16-le")).decode()
        outer = ("$p = Start-Process -FilePath powershell.exe -Verb RunAs -Wait -PassThru "
                 "-WindowStyle Hidden -ArgumentList '-NoProfile','-NonInteractive',"
                 f"'-EncodedCommand','{encoded}'; exit $p.ExitCode")
        return self.run(["powershell.exe", "-NoProfile", "-NonInteractive", "-Command",
                         outer])

    def exists(self, path: str) -> bool:
        return os.path.isfile(path)

    def env(self, name: str) -> str | None:
        return os.environ.get(name)

    def install_dir(self) -> str:
        # A frozen build's folder, else the Python environment Cove is installed in.
        return str(Path(sys.executable).resolve().parent)

    def user(self) -> str:
        name = os.environ.get("USERNAME", "")
        domain = os.environ.get("USERDOMAIN", "")
        return f"{domain}\\{name}" if domain else name

    def pipe_get(self, pipe: str, path: str) -> tuple[int, bytes]:
        if sys.platform != "win32":
            raise OSError(f"named pipes are a Windows thing; \\\\.\\pipe\\{pipe} is not here")
        # A named pipe opens like a file; the engine closes it after its answer.
        with open(f"\\\\.\\pipe\\{pipe}", "r+b", buffering=0) as f:
            return http_get(f, path)
