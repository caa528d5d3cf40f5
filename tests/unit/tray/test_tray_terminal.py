"""The terminal command lines (desktop.tray.terminal), one per platform."""

from __future__ import annotations

import pytest

from desktop.tray.terminal import TerminalError, terminal_command

HOST = "unix:///home/me/.cove/default/docker.sock"
EXEC = ["docker", "-H", HOST, "exec", "-it", "web", "sh"]


def _which(*present: str):
    return lambda name: f"/usr/bin/{name}" if name in present else None


def test_linux_prefers_the_debian_alternative() -> None:
    cmd = terminal_command("linux", "web", HOST, _which("x-terminal-emulator", "xterm"))
    assert cmd == ["/usr/bin/x-terminal-emulator", "-e", *EXEC]


def test_linux_gnome_terminal_takes_a_double_dash() -> None:
    assert terminal_command("linux", "web", HOST, _which("gnome-terminal", "xterm")) == \
        ["/usr/bin/gnome-terminal", "--", *EXEC]


def test_linux_konsole_and_xterm() -> None:
    assert terminal_command("linux", "web", HOST, _which("konsole")) == \
        ["/usr/bin/konsole", "-e", *EXEC]
    assert terminal_command("linux", "web", HOST, _which("xterm")) == \
        ["/usr/bin/xterm", "-e", *EXEC]


def test_linux_without_a_terminal_says_what_to_run() -> None:
    with pytest.raises(TerminalError) as e:
        terminal_command("linux", "web", HOST, _which())
    assert "x-terminal-emulator, gnome-terminal, konsole, xterm" in str(e.value)
    assert f"docker -H {HOST} exec -it web sh" in str(e.value)


def test_macos_terminal_app_through_osascript() -> None:
    cmd = terminal_command("darwin", "web", HOST, _which())
    assert cmd == ["osascript", "-e",
                   f'tell application "Terminal" to do script "docker -H {HOST} exec -it web sh"',
                   "-e", 'tell application "Terminal" to activate']


def test_macos_quotes_for_applescript_and_the_shell() -> None:
    cmd = terminal_command("darwin", 'we"b', "unix:///Users/a b/.cove/docker.sock", _which())
    # The shell sees one quoted word per argument; AppleScript sees escaped quotes.
    assert cmd[2] == ('tell application "Terminal" to do script "docker -H '
                      "'unix:///Users/a b/.cove/docker.sock' exec -it 'we\\\"b' sh\"")


def test_windows_start_opens_a_titled_console() -> None:
    assert terminal_command("win32", "web", "npipe:////./pipe/cove", _which()) == \
        ["cmd", "/c", "start", "Cove: web", "docker", "-H", "npipe:////./pipe/cove", "exec",
         "-it", "web", "sh"]
