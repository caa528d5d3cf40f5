"""The Troubleshoot window: restart, open the logs, save a diagnostics bundle, reset.

Reset is `cove reset` (`desktop.lifecycle.reset_instance`): it stops Cove and deletes the
instance's folder, after a warning that lists what goes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QDialog,
    QFileDialog,
    QLabel,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop import lifecycle
from desktop.tray import diagnostics
from desktop.tray.controller import TrayController
from desktop.tray.tones import HINT, tone

RESET_WARNING = (
    "Reset Cove ({name}) to factory defaults?\n\n"
    "This stops Cove and deletes, for good:\n"
    "  • every container, image and volume (the data disk, {disk})\n"
    "  • Cove's settings for this instance (CPUs, memory, shared folders, daemon.json)\n"
    "  • its logs\n\n"
    "Your shared folders on this computer are not touched."
)


class Troubleshoot(QDialog):
    def __init__(self, controller: TrayController, parent: QWidget | None = None, *,
                 confirm: Callable[[str], bool] | None = None,
                 save_path: Callable[[], Path | None] | None = None,
                 open_url: Callable[[QUrl], Any] | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.inst = controller.inst
        self.confirm = confirm or self._ask
        self.save_path = save_path or self._ask_path
        self.open_url = open_url or QDesktopServices.openUrl
        self.setWindowTitle("Troubleshoot Cove")
        self.setMinimumWidth(380)
        self.result_label = QLabel()
        self.result_label.setWordWrap(True)
        lay = QVBoxLayout(self)
        for text, hint, slot in (
            ("&Restart Cove", "Stop the VM and start it again.", self.restart),
            ("Open &logs", "The folder with the backend's, the VM's and the events' logs.",
             self.open_logs),
            ("&Save diagnostics…", "A zip of logs, settings, versions and `docker info`, "
             "with secrets and environment values removed.", self.save_diagnostics),
            ("Reset to &factory defaults…", "Delete all containers, images, volumes and "
             "settings of this instance.", self.reset),
        ):
            b = QPushButton(text)
            b.clicked.connect(slot)
            label = QLabel(hint)
            label.setWordWrap(True)
            label.setStyleSheet(f"color: {tone(label, HINT)}; margin-bottom: 8px;")
            lay.addWidget(b)
            lay.addWidget(label)
        lay.addWidget(self.result_label)

    def restart(self) -> None:
        self.controller.restart()
        self.result_label.setText("Restarting Cove…")

    def open_logs(self) -> None:
        self.inst.ensure_folder()
        self.open_url(QUrl.fromLocalFile(str(self.inst.folder)))

    def save_diagnostics(self) -> None:
        dest = self.save_path()
        if dest is None:
            return
        ctl = self.controller
        up = ctl.state.is_up
        self.result_label.setText("Collecting diagnostics…")
        ctl.worker.submit(
            lambda: diagnostics.build_bundle(
                self.inst, dest, docker_info=ctl.docker.info if up else None,
                status=(lambda: ctl.client.request("status", timeout=5))
                if ctl.backend_running() else None),
            lambda p: self.result_label.setText(f"Saved {p}"),
            lambda e: self.result_label.setText(f"Could not save the diagnostics: {e}"))

    def reset(self) -> None:
        disk = "not created yet"
        if self.inst.data_disk.exists():
            disk = f"{self.inst.data_disk.stat().st_size / 2**30:.1f} GiB on this computer"
        if not self.confirm(RESET_WARNING.format(name=self.inst.name, disk=disk)):
            return
        self.result_label.setText("Resetting Cove…")
        self.controller.worker.submit(
            lambda: lifecycle.reset_instance(self.inst),
            lambda _: self.result_label.setText(
                "Cove is reset to factory defaults. Start it from the tray menu."),
            lambda e: self.result_label.setText(f"Reset failed: {e}"))

    def _ask(self, question: str) -> bool:
        box = QMessageBox(QMessageBox.Icon.Warning, "Cove", question,
                          QMessageBox.StandardButton.Cancel, self)
        ok = box.addButton("Delete everything and reset",
                           QMessageBox.ButtonRole.DestructiveRole)
        box.exec()
        return box.clickedButton() is ok

    def _ask_path(self) -> Path | None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save diagnostics", str(Path.home() / diagnostics.default_name()),
            "Zip files (*.zip)")
        return Path(path) if path else None
