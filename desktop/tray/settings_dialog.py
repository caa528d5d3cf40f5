"""The Settings dialog: resources, shared folders, port policy, daemon.json, start at login.

The form's values become a new `Settings` (`settings_from_form`) checked by
`Settings.validate` itself, so the dialog refuses exactly what `cove` and the backend
refuse, with the same words. Applying:

1. daemon.json, when it changed and the engine runs, goes to the backend's
   `engine_config` op first; the engine restarts with it or refuses it (its own message
   is shown and nothing is saved);
2. the other settings are saved;
3. when a change only takes effect at the VM's next start (CPUs, memory, disk, shares,
   port policy), the dialog says so and restarts Cove if the user agrees.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from desktop.instance import Instance
from desktop.settings import GIB, MIB, Settings, SettingsError
from desktop.tray.autostart import Autostart, tray_command
from desktop.tray.controller import TrayController
from desktop.tray.tones import ERROR, tone

SETTING_FIELDS = {f.name for f in fields(Settings)}
# Another part of Cove may not have these settings yet: the dialog shows what exists.
HAS_SHARES = "shares" in SETTING_FIELDS
HAS_PORT_POLICY = "expose_ports_on_all_interfaces" in SETTING_FIELDS

# Settings the VM reads when it boots: changing them needs a restart.
RESTART_FIELDS = {"cpus": "CPUs", "memory_mib": "memory", "disk_gib": "disk size",
                  "shares": "shared folders",
                  "expose_ports_on_all_interfaces": "port exposure", "arch": "architecture"}


@dataclass
class Form:
    cpus: int
    memory_gib: float
    disk_gib: int
    daemon_json: str
    shares: list[Any] | None = None
    expose_all: bool | None = None


def parse_daemon_json(text: str) -> Any:
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except ValueError as e:
        raise SettingsError(f"engine_config: daemon.json is not valid JSON ({e})") from None


# The engine's containerd image store (daemon.json `features`): one tag for several
# architectures (`docker buildx build --platform a,b`). Images kept in the other store
# stay on the data disk but are not listed while this one is in use.
STORE_FEATURE = "containerd-snapshotter"


def uses_containerd_store(config: Any) -> bool:
    features = config.get("features") if isinstance(config, dict) else None
    return isinstance(features, dict) and features.get(STORE_FEATURE) is True


def with_containerd_store(config: dict[str, Any], on: bool) -> dict[str, Any]:
    """`config` with the store turned on or off; other features and keys kept."""
    out = dict(config)
    features = dict(out.get("features") or {}) if isinstance(out.get("features"), dict) \
        else {}
    if on:
        features[STORE_FEATURE] = True
    else:
        features.pop(STORE_FEATURE, None)
    if features:
        out["features"] = features
    else:
        out.pop("features", None)
    return out


def settings_from_form(old: Settings, form: Form, disk_exists: bool) -> Settings:
    """The settings the form asks for, validated; SettingsError names the bad field."""
    new = Settings(**old.to_json())
    new.cpus = form.cpus
    new.memory_mib = int(round(form.memory_gib * GIB / MIB))
    new.disk_gib = form.disk_gib
    new.engine_config = parse_daemon_json(form.daemon_json)
    if form.shares is not None and HAS_SHARES:
        new.shares = list(form.shares)
    if form.expose_all is not None and HAS_PORT_POLICY:
        new.expose_ports_on_all_interfaces = form.expose_all
    if disk_exists and new.disk_gib < old.disk_gib:
        raise SettingsError(f"disk: the data disk can only grow (it is {old.disk_gib}G now)")
    new.validate()
    return new


def pending_changes(old: Settings, new: Settings) -> tuple[list[str], bool]:
    """(what changed that needs a restart, in words; whether daemon.json changed)."""
    a, b = old.to_json(), new.to_json()
    restart = [label for key, label in RESTART_FIELDS.items() if a.get(key) != b.get(key)]
    return restart, a.get("engine_config") != b.get("engine_config")


def _share_path(entry: Any) -> str:
    return entry if isinstance(entry, str) else str(entry.get("path", entry))


class SettingsDialog(QDialog):
    """`confirm(question) -> bool` asks the user (a message box; tests pass their own)."""

    def __init__(self, controller: TrayController, autostart: Autostart,
                 parent: QWidget | None = None,
                 confirm: Callable[[str], bool] | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.inst: Instance = controller.inst
        self.autostart = autostart
        self.confirm = confirm or self._ask
        self.setWindowTitle("Cove Settings")
        self.setMinimumWidth(520)
        self.old = self.inst.load_settings()
        self.outcome = ""  # what applying did, in words (for the tray and tests)

        form = QFormLayout()
        self.cpus = QSpinBox()
        self.cpus.setRange(1, 256)
        self.cpus.setValue(self.old.cpus)
        form.addRow("&CPUs", self.cpus)
        self.memory = QDoubleSpinBox()
        self.memory.setRange(0.25, 1024)
        self.memory.setSingleStep(0.5)
        self.memory.setDecimals(2)
        self.memory.setSuffix(" GiB")
        self.memory.setValue(self.old.memory_mib / 1024)
        form.addRow("&Memory", self.memory)
        self.disk = QSpinBox()
        self.disk.setRange(1, 8192)
        self.disk.setSuffix(" GiB")
        self.disk.setValue(self.old.disk_gib)
        self.disk.setToolTip("The data disk can grow, not shrink")
        form.addRow("Dis&k size (grow only)", self.disk)

        self.shares_list = QListWidget()
        self._share_entries: list[Any] = list(getattr(self.old, "shares", []) or [])
        for e in self._share_entries:
            self.shares_list.addItem(_share_path(e))
        self.shares_list.setMaximumHeight(90)
        share_box = QWidget()
        sb = QHBoxLayout(share_box)
        sb.setContentsMargins(0, 0, 0, 0)
        sb.addWidget(self.shares_list, 1)
        buttons = QVBoxLayout()
        self.add_share_button = QPushButton("&Add…")
        self.remove_share_button = QPushButton("Remo&ve")
        self.add_share_button.clicked.connect(self._add_share_dialog)
        self.remove_share_button.clicked.connect(self._remove_share)
        buttons.addWidget(self.add_share_button)
        buttons.addWidget(self.remove_share_button)
        buttons.addStretch()
        sb.addLayout(buttons)
        form.addRow("Shared &folders", share_box)
        share_box.setEnabled(HAS_SHARES)
        share_box.setVisible(HAS_SHARES)

        self.expose_all = QCheckBox("&Publish ports on all network interfaces when a "
                                    "container asks for it\n(off: only on this computer's "
                                    "localhost)")
        self.expose_all.setChecked(bool(getattr(self.old, "expose_ports_on_all_interfaces",
                                                False)))
        self.expose_all.setVisible(HAS_PORT_POLICY)
        form.addRow("Ports", self.expose_all)

        self.daemon_json = QPlainTextEdit()
        self.daemon_json.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.daemon_json.setPlainText(json.dumps(self.old.engine_config, indent=2)
                                      if self.old.engine_config else "{}")
        self.daemon_json.setMinimumHeight(110)
        form.addRow("&Engine (daemon.json)", self.daemon_json)
        self.image_store = QCheckBox("Use the contai&nerd image store (images for several "
                                     "architectures under one tag)")
        self.image_store.setToolTip(
            "Sets features.containerd-snapshotter in daemon.json. Images kept in the other "
            "store stay on the disk but are not listed until you switch back.")
        self.image_store.setChecked(uses_containerd_store(self.old.engine_config))
        self.image_store.toggled.connect(self._store_toggled)
        form.addRow("", self.image_store)

        self.login = QCheckBox("Start Cove when I &log in")
        self.login.setChecked(self.autostart.is_enabled())
        form.addRow("", self.login)

        self.error = QLabel()
        self.error.setWordWrap(True)
        self.error.setStyleSheet(f"color: {tone(self.error, ERROR)};")
        self.hint = QLabel()
        self.hint.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Apply |
                                        QDialogButtonBox.StandardButton.Cancel)
        self.apply_button = self.buttons.button(QDialogButtonBox.StandardButton.Apply)
        self.apply_button.clicked.connect(self.apply)
        self.buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.error)
        layout.addWidget(self.hint)
        layout.addWidget(self.buttons)
        for w in (self.cpus, self.disk):
            w.valueChanged.connect(self._update_hint)
        self.memory.valueChanged.connect(self._update_hint)
        self.expose_all.toggled.connect(self._update_hint)
        self.daemon_json.textChanged.connect(self._sync_store_box)
        self.daemon_json.textChanged.connect(self._update_hint)
        self._update_hint()

    # -- the form --------------------------------------------------------------------

    def form(self) -> Form:
        return Form(cpus=self.cpus.value(), memory_gib=self.memory.value(),
                    disk_gib=self.disk.value(), daemon_json=self.daemon_json.toPlainText(),
                    shares=list(self._share_entries) if HAS_SHARES else None,
                    expose_all=self.expose_all.isChecked() if HAS_PORT_POLICY else None)

    def add_share(self, path: str) -> None:
        path = os.path.normpath(os.path.abspath(os.path.expanduser(path)))
        if path not in [_share_path(e) for e in self._share_entries]:
            self._share_entries.append(path)
            self.shares_list.addItem(path)
            self._update_hint()

    def _add_share_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Share a folder with the VM")
        if path:
            self.add_share(path)

    def _remove_share(self) -> None:
        row = self.shares_list.currentRow()
        if row >= 0:
            self.shares_list.takeItem(row)
            del self._share_entries[row]
            self._update_hint()

    def _store_toggled(self, on: bool) -> None:
        """The box edits the daemon.json text (the one place the config is kept); text
        that is not a JSON object is left for the user to mend, and the box goes back."""
        try:
            config = parse_daemon_json(self.daemon_json.toPlainText())
        except SettingsError:
            config = None
        if not isinstance(config, dict):
            self.image_store.blockSignals(True)
            self.image_store.setChecked(not on)
            self.image_store.blockSignals(False)
            self.error.setText("engine_config: mend daemon.json first (it must be a JSON "
                               "object) to change the image store")
            return
        if uses_containerd_store(config) != on:
            self.daemon_json.setPlainText(json.dumps(with_containerd_store(config, on),
                                                     indent=2))

    def _sync_store_box(self) -> None:
        try:
            config = parse_daemon_json(self.daemon_json.toPlainText())
        except SettingsError:
            return
        self.image_store.blockSignals(True)
        self.image_store.setChecked(uses_containerd_store(config))
        self.image_store.blockSignals(False)

    def _validated(self) -> Settings:
        return settings_from_form(self.old, self.form(), self.inst.data_disk.exists())

    def _update_hint(self) -> None:
        try:
            new = self._validated()
        except SettingsError as e:
            self.error.setText(str(e))
            self.hint.setText("")
            self.apply_button.setEnabled(False)
            return
        self.error.setText("")
        self.apply_button.setEnabled(True)
        restart, engine = pending_changes(self.old, new)
        up = self.controller.state.state in ("running", "degraded", "resting", "starting")
        notes = []
        if restart:
            notes.append(f"Changing {', '.join(restart)} needs a restart of Cove"
                         + ("" if up else " (applied at the next start)"))
        if engine:
            notes.append("The engine restarts with the new daemon.json" if up else
                         "daemon.json is applied at the next start")
        if uses_containerd_store(self.old.engine_config) != \
                uses_containerd_store(new.engine_config):
            notes.append("Images in the store you leave are not listed after the switch "
                         "(they stay on the disk): pull or build them again")
        self.hint.setText(". ".join(notes) + ("." if notes else ""))

    # -- applying --------------------------------------------------------------------

    def apply(self) -> None:
        try:
            new = self._validated()
        except SettingsError as e:
            self.error.setText(str(e))
            return
        if self.login.isChecked() != self.autostart.is_enabled():
            try:
                if self.login.isChecked():
                    self.autostart.enable(tray_command())
                else:
                    self.autostart.disable()
            except OSError as e:
                self.error.setText(f"Start at login: {e}")
                return
        restart, engine = pending_changes(self.old, new)
        if engine and self.controller.state.is_up:
            self.apply_button.setEnabled(False)
            self.hint.setText("Applying daemon.json (the engine restarts)…")
            self.controller.apply_engine_config(
                new.engine_config, lambda _: self._save(new, restart),
                self._engine_refused)
        else:
            self._save(new, restart)

    def _engine_refused(self, message: str) -> None:
        self.apply_button.setEnabled(True)
        self.hint.setText("")
        self.error.setText(message)

    def _save(self, new: Settings, restart: list[str]) -> None:
        try:
            # The backend saved engine_config itself when it applied it: start from the
            # file as it is now and set every field the dialog owns.
            def change(current: Settings) -> None:
                for f in fields(Settings):
                    setattr(current, f.name, getattr(new, f.name))

            self.inst.update_settings(change)
        except (SettingsError, OSError) as e:
            self.error.setText(str(e))
            self.apply_button.setEnabled(True)
            return
        self.outcome = "saved"
        running = self.controller.state.state in ("running", "degraded", "resting",
                                                  "starting")
        if restart and running:
            what = ", ".join(restart)
            if self.confirm(f"Changing {what} needs a restart of Cove. Restart now? "
                            "Running containers stop (those with a restart policy start "
                            "again)."):
                self.outcome = "restarting"
                self.controller.restart()
            else:
                self.outcome = "restart needed"
                self.controller.note_restart_needed(what)
        self.accept()

    def _ask(self, question: str) -> bool:
        answer = QMessageBox.question(self, "Restart Cove?", question,
                                      QMessageBox.StandardButton.Yes |
                                      QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes
