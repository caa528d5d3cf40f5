"""One instance: its folder under ``$COVE_HOME``, the paths in it, its settings file.

Every path is built from the names in `desktop.home`; the settings themselves and their
checks are `desktop.settings`. A settings file that fails those checks is never
overwritten: `load_settings` raises `SettingsError` naming the file and the fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from desktop import home
from desktop.home import cove_home
from desktop.platform.files import NotPrivateError, atomic_write, private_folder
from desktop.platform.locks import FileLock, LockHeld
from desktop.settings import Settings, SettingsError

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,30}")  # used with fullmatch
DEFAULT_INSTANCE = "default"


def validate_name(name: str) -> str:
    if name in home.RESERVED_NAMES:
        raise SettingsError(
            f"instance name {name!r} is reserved (Cove keeps its {name} there); choose "
            "another name"
        )
    if not NAME_RE.fullmatch(name or ""):
        raise SettingsError(
            f"instance name {name!r} is not allowed; use 1-31 lowercase letters, digits, "
            "'-' or '_', starting with a letter or digit (no '/' or '..')"
        )
    return name


class Instance:
    """Paths and settings of one instance."""

    def __init__(self, name: str = DEFAULT_INSTANCE, home: Path | None = None) -> None:
        self.name = validate_name(name)
        self.home = home or cove_home()
        self.folder = self.home / self.name

    @property
    def context_name(self) -> str:
        return "cove" if self.name == DEFAULT_INSTANCE else f"cove-{self.name}"

    def path(self, name: str) -> Path:
        """The file `name` (one of `desktop.home`'s) in this instance's folder."""
        return self.folder / name

    settings_file = property(lambda self: self.folder / home.SETTINGS)
    data_disk = property(lambda self: self.folder / home.DATA_DISK)
    docker_socket = property(lambda self: self.folder / home.DOCKER_SOCK)
    control_socket = property(lambda self: self.folder / home.CONTROL_SOCK)
    pid_file = property(lambda self: self.folder / home.BACKEND_PID)
    boot_config = property(lambda self: self.folder / home.BOOT_CONFIG)
    events_log = property(lambda self: self.folder / home.EVENTS_LOG)
    backend_log = property(lambda self: self.folder / home.BACKEND_LOG)
    backend_out = property(lambda self: self.folder / home.BACKEND_OUT)
    serial_log = property(lambda self: self.folder / home.SERIAL_LOG)
    ssh_config = property(lambda self: self.folder / home.SSH_CONFIG)
    no_activate_marker = property(lambda self: self.folder / home.NO_ACTIVATE)
    previous_context = property(lambda self: self.folder / home.PREVIOUS_CONTEXT)
    accel_cache = property(lambda self: self.home / home.ACCEL_CACHE)

    def exists(self) -> bool:
        return self.folder.is_dir()

    def ensure_folder(self) -> None:
        """Make $COVE_HOME and the instance folder private (0700, ours): they hold the
        sockets, the logs and ssh_config. SettingsError when another user owns one."""
        try:
            private_folder(self.home)
            private_folder(self.folder)
        except NotPrivateError as e:
            raise SettingsError(str(e)) from None

    def load_settings(self) -> Settings:
        if not self.settings_file.exists():
            return Settings()
        try:
            data = json.loads(self.settings_file.read_text())
        except (ValueError, RecursionError) as e:  # RecursionError: nested past the parser
            raise SettingsError(
                f"{self.settings_file} is not valid JSON ({e}); fix it or move it aside "
                "to start from the defaults"
            ) from None
        try:
            return Settings.from_json(data, str(self.settings_file))
        except SettingsError as e:
            if str(self.settings_file) in str(e):
                raise
            # A value's check names the field; say which file holds it (not a flag).
            raise SettingsError(f"{self.settings_file}: {e}") from None

    def save_settings(self, settings: Settings) -> None:
        """Validate and write `settings` whole (atomically). A writer that changes a few
        fields uses `update_settings`, so that it keeps what others wrote meanwhile."""
        settings.validate()
        self.ensure_folder()
        atomic_write(self.settings_file,
                     json.dumps(settings.to_json(), indent=2, sort_keys=True) + "\n")

    def update_settings(self, change: Callable[[Settings], bool | None]) -> Settings:
        """Read the settings file, apply `change`, write it back: all under the instance's
        settings lock, so the CLI, the tray and the backend never undo each other's
        changes. `change` returning False means nothing changed (nothing is written,
        unless there was no file yet). Returns the settings as written."""
        self.ensure_folder()
        try:
            with FileLock(self.folder / home.SETTINGS_LOCK, timeout=10):
                settings = self.load_settings()
                if change(settings) is not False or not self.settings_file.exists():
                    self.save_settings(settings)
                return settings
        except LockHeld:
            raise SettingsError(f"{self.settings_file} is being changed by another Cove "
                                "program for more than 10 s; try again") from None


def list_instances(home_dir: Path | None = None) -> list[str]:
    h = home_dir or cove_home()
    if not h.is_dir():
        return []
    return sorted(p.name for p in h.iterdir() if p.is_dir() and NAME_RE.fullmatch(p.name)
                  and p.name not in home.RESERVED_NAMES)
