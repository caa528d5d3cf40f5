"""The Cove tray application: the tray icon and its menu, the windows, notifications.

`TrayApp` owns the QSystemTrayIcon, the windows (created on first use) and the
`TrayController` whose signals drive them. The menu is rebuilt from the controller's
state each time it opens (`model.menu_entries`). `main()` is `cove desktop` and
`cove-desktop`: one tray per user and instance (a second launch raises the first one's
dashboard), and the backend started when it is not running.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QTimer
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QApplication, QMenu, QMessageBox, QSystemTrayIcon, QWidget

from desktop import __version__
from desktop.instance import DEFAULT_INSTANCE, Instance
from desktop.platform.processes import Meter
from desktop.settings import SettingsError
from desktop.tray import autostart, icons, model
from desktop.tray.controller import TrayController
from desktop.tray.single_instance import SingleInstance

HOST_LOOK_S = 10.0  # how often the tooltip's figures of QEMU are read while the VM runs
NOTICE_ICONS = {"information": QSystemTrayIcon.MessageIcon.Information,
                "warning": QSystemTrayIcon.MessageIcon.Warning,
                "critical": QSystemTrayIcon.MessageIcon.Critical}


class TrayApp(QObject):
    def __init__(self, controller: TrayController, platform: str = sys.platform,
                 confirm: Callable[[str, str], bool] | None = None) -> None:
        super().__init__()
        self.controller = controller
        self.platform = platform
        self.confirm = confirm or self._ask
        self.tray = QSystemTrayIcon(icons.tray_icon("stopped"))
        self.menu = QMenu()
        self.menu.aboutToShow.connect(self.rebuild_menu)
        self.tray.setContextMenu(self.menu)
        self.tray.activated.connect(self._activated)
        self.dashboard: Any = None
        self.settings: Any = None
        self.troubleshoot: Any = None
        self.quitting = False
        self.actions: dict[str, QAction] = {}
        controller.changed.connect(self.update_icon)
        controller.notify.connect(self.show_notice)
        controller.action_failed.connect(
            lambda msg: self.show_notice(model.Notice("Cove", msg, "warning")))
        # What QEMU costs the host now, for the tooltip: read on the host alone (the
        # guest is never asked, so a resting VM stays asleep), only while the VM runs.
        self.host_timer = QTimer(self)
        self.host_timer.setInterval(int(HOST_LOOK_S * 1000))
        self.host_timer.timeout.connect(self.look_at_host)
        self._meter: Meter | None = None
        self.update_icon(controller.state)
        self.rebuild_menu()

    # -- icon and menu -----------------------------------------------------------------

    def update_icon(self, st: model.TrayState) -> None:
        vm = st.qemu_pid if st.is_up or st.state == "resting" else None
        if vm is None:
            self.host_timer.stop()
            self._meter, st.host_now = None, None
        elif self._meter is None or self._meter.pid != vm:
            self._meter, st.host_now = Meter(vm), None
            self.look_at_host(show=False)  # the first look: memory now, CPU from the next
            self.host_timer.start()
        self.tray.setIcon(icons.tray_icon(model.icon_name(st)))
        self.tray.setToolTip(model.tooltip(st))
        if self.quitting and st.state in ("stopped", "error"):
            QApplication.quit()

    def look_at_host(self, show: bool = True) -> None:
        st = self.controller.state
        st.host_now = self._meter.read() if self._meter is not None else None
        if show:
            self.tray.setToolTip(model.tooltip(st))

    def rebuild_menu(self) -> None:
        self.menu.clear()
        self.actions = {}
        handlers = {
            "dashboard": self.show_dashboard, "settings": self.show_settings,
            "start": self.controller.start, "stop": lambda: self.controller.stop(),
            "restart": self.controller.restart,
            "switch_windows": lambda: self.controller.switch_engine("windows"),
            "switch_linux": lambda: self.controller.switch_engine("linux"),
            "troubleshoot": self.show_troubleshoot, "about": self.about, "quit": self.quit,
        }
        for e in model.menu_entries(self.controller.state, self.platform):
            if e.key == "-":
                self.menu.addSeparator()
                continue
            action = self.menu.addAction(e.text)
            action.setEnabled(e.enabled)
            if e.key is not None:
                action.triggered.connect(handlers[e.key])
                self.actions.setdefault(e.key, action)

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason == QSystemTrayIcon.ActivationReason.Trigger and self.platform != "darwin":
            self.show_dashboard()

    def show_notice(self, notice: model.Notice) -> None:
        self.tray.showMessage(notice.title, notice.message, NOTICE_ICONS[notice.level], 8000)

    # -- windows -------------------------------------------------------------------------

    @staticmethod
    def _raise(w: QWidget) -> None:
        w.show()
        w.raise_()
        w.activateWindow()

    def show_dashboard(self) -> None:
        if self.dashboard is None:
            from desktop.tray.dashboard import Dashboard

            self.dashboard = Dashboard(self.controller)
            self.dashboard.setWindowIcon(icons.app_icon())
        self._raise(self.dashboard)
        self.dashboard.refresh()

    def show_settings(self) -> None:
        from desktop.tray.settings_dialog import SettingsDialog

        try:
            self.settings = SettingsDialog(self.controller, autostart.for_platform())
        except SettingsError as e:
            self.show_notice(model.Notice("Cove's settings file is invalid", str(e),
                                          "critical"))
            return
        self._raise(self.settings)

    def show_troubleshoot(self) -> None:
        if self.troubleshoot is None:
            from desktop.tray.troubleshoot import Troubleshoot

            self.troubleshoot = Troubleshoot(self.controller)
        self._raise(self.troubleshoot)

    def about(self) -> None:
        QMessageBox.about(None, "About Cove",
                          f"<b>Cove {__version__}</b><br>Linux containers on this computer: "
                          "a small VM with the Docker engine.<br>Instance: "
                          f"{self.controller.inst.name}<br>Engine: "
                          f"{self.controller.state.engine_version or 'not running'}")

    # -- quitting --------------------------------------------------------------------------

    def quit(self) -> None:
        """Quit Cove: stop the VM (asking first when containers run), then exit."""
        st = self.controller.state
        if st.state in ("stopped", "error") and not self.controller.backend_running():
            QApplication.quit()
            return
        n = st.containers or 0
        if n and not self.confirm(
                "Quit Cove?",
                f"{n} container{'s are' if n != 1 else ' is'} running. Quitting Cove stops "
                "them and the VM."):
            return
        self.quitting = True
        self.controller.stop(on_done=lambda _: QApplication.quit())

    def _ask(self, title: str, question: str) -> bool:
        return QMessageBox.question(None, title, question) == QMessageBox.StandardButton.Yes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cove-desktop", description="The Cove tray app")
    p.add_argument("--instance", "-i", default=os.environ.get("COVE_INSTANCE",
                                                               DEFAULT_INSTANCE))
    p.add_argument("--no-start", action="store_true",
                   help="do not start the backend when it is not running")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    try:
        inst = Instance(args.instance)
        inst.ensure_folder()  # private: the tray's lock and socket live there
    except SettingsError as e:
        print(f"cove-desktop: error: {e}", file=sys.stderr)
        return 1
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setApplicationName("Cove")
    app.setQuitOnLastWindowClosed(False)
    app.setWindowIcon(icons.app_icon())
    # Per user and instance folder: instances of another COVE_HOME have their own tray.
    home_key = hashlib.sha256(str(inst.folder).encode()).hexdigest()[:8]
    single = SingleInstance(inst.folder, f"{inst.name}-{home_key}")
    if not single.claim("show"):
        print("Cove's tray is already running" + ("; its dashboard was brought forward"
                                                  if single.delivered else ""),
              file=sys.stderr)
        return 0
    if single.listen_error:
        print(f"cove-desktop: {single.listen_error}; a second launch will not bring this "
              "tray's dashboard forward", file=sys.stderr)
    controller = TrayController(inst)
    tray = TrayApp(controller)
    single.activated.connect(lambda _msg: tray.show_dashboard())
    tray.tray.show()
    if os.environ.get("COVE_TRAY_TIMING"):
        print(f"tray shown after {time.monotonic() - t0:.3f} s", file=sys.stderr, flush=True)
    if not QSystemTrayIcon.isSystemTrayAvailable():
        # No tray host (some desktops): the dashboard is the way in.
        QTimer.singleShot(0, tray.show_dashboard)
    controller.start_following()
    if not args.no_start:
        controller.ensure_started()
    try:
        return int(app.exec())
    finally:
        controller.close()
        single.close()
