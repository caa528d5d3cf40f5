"""The Dashboard's "Run" form: a container from an image, with a name, a command,
published ports, bind-mounted folders, environment variables and a restart policy.

`parse_run` turns the form's text into the engine's create options or a RunFormError
naming the field and the fix: a port that is not `HOST:CONTAINER[/udp]`, an env line
without `=`, a bind of a folder the VM does not share (with the fix: share it, and the
restart that takes). The dialog only gathers text; the Dashboard runs it on its worker.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QWidget,
)

from desktop.settings import path_under
from desktop.tray.tones import ERROR, tone

RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")


class RunFormError(ValueError):
    """A field of the form that cannot be run as it is; the message says which and how."""


@dataclass
class RunSpec:
    image: str
    name: str = ""
    ports: dict[str, int | tuple[str, int]] = field(default_factory=dict)  # "80/tcp": 8080
    binds: dict[str, dict[str, str]] = field(default_factory=dict)  # host: {bind, mode}
    environment: list[str] = field(default_factory=list)
    restart: str = "no"
    command: list[str] = field(default_factory=list)  # empty: the image's own

    def create_kwargs(self) -> dict[str, Any]:
        """docker-py's `containers.run` keyword arguments (detached)."""
        kw: dict[str, Any] = {"detach": True}
        if self.name:
            kw["name"] = self.name
        if self.ports:
            kw["ports"] = dict(self.ports)
        if self.binds:
            kw["volumes"] = dict(self.binds)
        if self.environment:
            kw["environment"] = list(self.environment)
        if self.restart != "no":
            kw["restart_policy"] = {"Name": self.restart}
        if self.command:
            kw["command"] = list(self.command)
        return kw


def parse_ports(text: str) -> dict[str, int | tuple[str, int]]:
    """"8080:80, 127.0.0.1:5432:5432, 5353:53/udp" (commas or lines)."""
    out: dict[str, int | tuple[str, int]] = {}
    for item in text.replace(",", "\n").split("\n"):
        item = item.strip()
        if not item:
            continue
        spec, _, proto = item.partition("/")
        proto = proto or "tcp"
        parts = spec.split(":")
        ok = proto in ("tcp", "udp") and len(parts) in (2, 3) and all(
            p.isdigit() and 0 < int(p) < 65536 for p in parts[-2:])
        if not ok:
            raise RunFormError(f"Ports: {item!r} is not HOST:CONTAINER (e.g. 8080:80, "
                               "127.0.0.1:5432:5432 or 5353:53/udp)")
        key = f"{int(parts[-1])}/{proto}"
        out[key] = (parts[0], int(parts[1])) if len(parts) == 3 else int(parts[0])
    return out


def parse_binds(text: str, shares: list[str]) -> dict[str, dict[str, str]]:
    """"HOST:CONTAINER[:ro]" a line; each host folder must be inside a shared folder."""
    out: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        parts = line.split(":")
        mode = "rw"
        if len(parts) == 3 and parts[2] in ("ro", "rw"):
            mode = parts.pop()
        if len(parts) != 2 or not parts[0] or not parts[1].startswith("/"):
            raise RunFormError(f"Folders: {line!r} is not HOST_FOLDER:CONTAINER_PATH[:ro]")
        host = os.path.normpath(os.path.expanduser(parts[0]))
        if not os.path.isabs(host):
            raise RunFormError(f"Folders: {parts[0]!r} is not a full path on this computer")
        if not any(path_under(host, s) for s in shares):
            where = ", ".join(shares) or "none"
            raise RunFormError(
                f"Folders: {host} is not in a folder Cove shares with the VM (shared: "
                f"{where}); share it in Settings > Shared folders (or `cove shares add "
                f"{host}`), which restarts the VM, then run again")
        out[host] = {"bind": parts[1], "mode": mode}
    return out


def parse_env(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        key, eq, _ = line.partition("=")
        if not eq or not key or any(c.isspace() for c in key):
            raise RunFormError(f"Environment: {line!r} is not NAME=VALUE")
        out.append(line)
    return out


def parse_run(image: str, name: str, ports: str, binds: str, env: str, restart: str,
              shares: list[str], command: str = "") -> RunSpec:
    image = image.strip()
    if not image:
        raise RunFormError("Image: name the image to run (e.g. nginx:1.27)")
    name = name.strip()
    if name and (not name[0].isalnum() or not all(c.isalnum() or c in "_.-" for c in name)):
        raise RunFormError(f"Name: {name!r} may hold letters, digits, _ . and - only, and "
                           "must start with a letter or digit")
    if restart not in RESTART_POLICIES:
        raise RunFormError(f"Restart: {restart!r} is not one of {', '.join(RESTART_POLICIES)}")
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise RunFormError(f"Command: {e} (quote as a shell does)") from None
    return RunSpec(image, name, parse_ports(ports), parse_binds(binds, shares),
                   parse_env(env), restart, argv)


class RunDialog(QDialog):
    """The form; `spec()` is its RunSpec or a RunFormError (shown in `error`)."""

    def __init__(self, image: str, shares: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Run {image}" if image else "Run a container")
        self.shares = shares
        self.image = QLineEdit(image)
        self.name = QLineEdit()
        self.name.setPlaceholderText("optional")
        self.command = QLineEdit()
        self.command.setPlaceholderText("optional: the image's own command otherwise")
        self.ports = QLineEdit()
        self.ports.setPlaceholderText("8080:80, 127.0.0.1:5432:5432, 5353:53/udp")
        self.binds = QPlainTextEdit()
        self.binds.setPlaceholderText("/home/me/site:/usr/share/nginx/html:ro  (one a line)")
        self.binds.setTabChangesFocus(True)
        self.env = QPlainTextEdit()
        self.env.setPlaceholderText("NAME=value  (one a line)")
        self.env.setTabChangesFocus(True)
        self.restart = QComboBox()
        self.restart.addItems(list(RESTART_POLICIES))
        self.error = QLabel()
        self.error.setWordWrap(True)
        self.error.setStyleSheet(f"color: {tone(self.error, ERROR)};")
        form = QFormLayout(self)
        for label, w in (("&Image", self.image), ("&Name", self.name),
                         ("&Command", self.command), ("&Ports", self.ports),
                         ("&Folders", self.binds), ("&Environment", self.env),
                         ("&Restart", self.restart)):
            form.addRow(label, w)
        form.addRow(self.error)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.run_button = self.buttons.addButton("Run", QDialogButtonBox.ButtonRole.AcceptRole)
        self.run_button.setDefault(True)
        self.buttons.accepted.connect(self._accept)
        self.buttons.rejected.connect(self.reject)
        form.addRow(self.buttons)
        self.result_spec: RunSpec | None = None

    def spec(self) -> RunSpec:
        return parse_run(self.image.text(), self.name.text(), self.ports.text(),
                         self.binds.toPlainText(), self.env.toPlainText(),
                         self.restart.currentText(), self.shares, self.command.text())

    def _accept(self) -> None:
        try:
            self.result_spec = self.spec()
        except RunFormError as e:
            self.error.setText(str(e))
            return
        self.accept()
