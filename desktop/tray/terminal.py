"""A terminal in a container: `docker exec -it` in the user's own terminal emulator.

`terminal_command` is a pure function of the platform and of which programs exist, so
every platform's command line is unit-tested here; `open_terminal` runs it.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable

# Linux terminals in order of preference, with how each takes a command to run.
LINUX_TERMINALS: list[tuple[str, list[str]]] = [
    ("x-terminal-emulator", ["-e"]),  # Debian's alternative: xterm's -e convention
    ("gnome-terminal", ["--"]),
    ("konsole", ["-e"]),
    ("xterm", ["-e"]),
]


class TerminalError(Exception):
    """No terminal emulator could be found; the message names the ones tried."""


def exec_command(container: str, docker_host: str, shell: str = "sh") -> list[str]:
    """The docker command that opens a shell in `container` through Cove's engine."""
    return ["docker", "-H", docker_host, "exec", "-it", container, shell]


def _applescript_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def terminal_command(platform: str, container: str, docker_host: str,
                     which: Callable[[str], str | None] = shutil.which,
                     shell: str = "sh") -> list[str]:
    """The command line that opens a terminal window running the container's shell."""
    cmd = exec_command(container, docker_host, shell)
    if platform == "darwin":
        script = 'tell application "Terminal" to do script ' + \
            _applescript_string(shlex.join(cmd))
        return ["osascript", "-e", script, "-e", 'tell application "Terminal" to activate']
    if platform == "win32":
        # `start` opens a new console window; its first quoted argument is the title.
        return ["cmd", "/c", "start", f"Cove: {container}", *cmd]
    for name, run_flag in LINUX_TERMINALS:
        path = which(name)
        if path:
            return [path, *run_flag, *cmd]
    raise TerminalError("no terminal emulator found (tried "
                        f"{', '.join(n for n, _ in LINUX_TERMINALS)}); run: {shlex.join(cmd)}")


def open_terminal(container: str, docker_host: str) -> None:
    argv = terminal_command(sys.platform, container, docker_host)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    threading.Thread(target=proc.wait, daemon=True, name="terminal-reaper").start()
