"""Screenshots of the tray's menu and windows, for the README: `make screenshots`.

`python -m desktop.tray.screenshots OUT_DIR` renders, with made-up containers and no
engine, the tray icons on a light and a dark panel, the tray menu, the Dashboard, the
Settings dialog and the Troubleshoot window into PNG files. Run it under a display
(`xvfb-run -a`): fonts and styles then match a desktop's.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QColor, QFont, QPainter, QPalette, QPixmap
from PySide6.QtWidgets import QApplication

from desktop.instance import Instance
from desktop.settings import Settings
from desktop.tray import icons, model
from desktop.tray.autostart import XdgAutostart
from desktop.tray.controller import TrayController
from desktop.tray.docker_service import ContainerRow, ImageRow, PortLink, Usage, VolumeRow

NOW = int(time.time())
CONTAINERS = [
    ContainerRow("a1" * 32, "web", "nginx:1.27", "running", "Up 12 minutes", NOW - 720,
                 [PortLink("127.0.0.1", 8080, 80, "tcp"), PortLink("127.0.0.1", 8443, 443,
                                                                   "tcp")]),
    ContainerRow("b2" * 32, "shop-api-1", "example/api:dev", "running", "Up 12 minutes",
                 NOW - 730, [PortLink("127.0.0.1", 3000, 3000, "tcp")], project="shop"),
    ContainerRow("c3" * 32, "shop-db-1", "postgres:16", "running", "Up 2 hours", NOW - 7300,
                 [PortLink("127.0.0.1", 5432, 5432, "tcp")], project="shop",
                 volumes=("pgdata",)),
    ContainerRow("d4" * 32, "migrate", "example/api:dev", "exited", "Exited (0) 11 minutes "
                 "ago", NOW - 700),
]
USAGE = {"a1" * 32: Usage(0.4, 9_400_000, 4_100_000_000),
         "b2" * 32: Usage(12.5, 88_000_000, 4_100_000_000),
         "c3" * 32: Usage(1.8, 41_000_000, 4_100_000_000)}
IMAGES = [ImageRow("sha256:" + "e" * 64, ["nginx:1.27"], 192_000_000, NOW - 86400 * 20),
          ImageRow("sha256:" + "f" * 64, ["postgres:16"], 438_000_000, NOW - 86400 * 30),
          ImageRow("sha256:" + "9" * 64, ["example/api:dev"], 61_000_000, NOW - 3600)]
VOLUMES = [VolumeRow("pgdata", "local", "/var/lib/docker/volumes/pgdata/_data")]
LOG = ["2026/11/28 10:02:11 [notice] 1#1: nginx/1.27.3",
       "2026/11/28 10:02:11 [notice] 1#1: start worker processes",
       '172.17.0.1 - - [28/Nov/2026:10:14:02 +0000] "GET / HTTP/1.1" 200 615',
       '172.17.0.1 - - [28/Nov/2026:10:14:02 +0000] "GET /favicon.ico HTTP/1.1" 404 153']


def icon_sheet() -> QPixmap:
    """The four tray icons at 22 and 48 px on a light and a dark panel."""
    pm = QPixmap(2 * (4 * 80 + 20), 150)
    pm.fill(QColor("#ffffff"))
    p = QPainter(pm)
    for half, (bg, fg) in enumerate((("#f0f0f0", "#202020"), ("#2b2b2b", "#e8e8e8"))):
        x0 = half * (4 * 80 + 20)
        p.fillRect(x0, 0, 4 * 80 + 20, 150, QColor(bg))
        p.setPen(QColor(fg))
        p.setFont(QFont("Sans", 9))
        for i, state in enumerate(icons.STATES):
            x = x0 + 20 + i * 80
            icon = icons.tray_icon(state)
            p.drawPixmap(x + 13, 14, icon.pixmap(22, 22))
            p.drawPixmap(x, 50, icon.pixmap(48, 48))
            p.drawText(x - 8, 112, 64, 20, Qt.AlignmentFlag.AlignHCenter, state)
    p.end()
    return pm


def dashboard(controller: TrayController) -> Any:
    """The Dashboard with the made-up rows, web selected, its log shown."""
    from desktop.tray.dashboard import Dashboard

    dash = Dashboard(controller)
    dash.resize(960, 620)  # the window's own default size
    dash.usage = dict(USAGE)
    dash.show_rows(CONTAINERS, IMAGES, VOLUMES)
    dash.container_table.blockSignals(True)  # no log stream: there is no engine here
    dash.select_container("web")
    dash.container_table.blockSignals(False)
    dash._update_buttons()
    for line in LOG:
        dash.log_view.appendPlainText(line)
    dash.show()
    QApplication.processEvents()
    return dash


def dark_palette() -> QPalette:
    """A dark desktop theme's colours, as Fusion takes them."""
    pal = QPalette()
    roles = QPalette.ColorRole
    for role, colour in ((roles.Window, "#2b2d30"), (roles.WindowText, "#e8eaed"),
                         (roles.Base, "#1e1f22"), (roles.AlternateBase, "#26282b"),
                         (roles.Text, "#e8eaed"), (roles.Button, "#3c3f41"),
                         (roles.ButtonText, "#e8eaed"), (roles.Highlight, "#2f65ca"),
                         (roles.HighlightedText, "#ffffff"), (roles.Link, "#8ab4f8"),
                         (roles.ToolTipBase, "#3c3f41"), (roles.ToolTipText, "#e8eaed"),
                         (roles.PlaceholderText, "#9aa0a6")):
        pal.setColor(role, QColor(colour))
    pal.setColor(QPalette.ColorGroup.Disabled, roles.ButtonText, QColor("#7a7d80"))
    return pal


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "docs/screenshots")
    out.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setStyle("Fusion")
    home = Path(tempfile.mkdtemp(prefix="cove-shots-"))
    inst = Instance("default", home=home)
    inst.save_settings(Settings(cpus=2, memory_mib=4096, disk_gib=64,
                                engine_config={"log-level": "warn"}, shares=[str(Path.home())]))
    controller = TrayController(inst, spawn=lambda i: None)
    st = controller.state
    for ev in ({"event": "starting", "step": "vm"},
               {"event": "running", "engine_version": "26.1.5"}):
        model.apply_event(st, ev, live=False)
    st.containers = 3
    model.apply_status(st, {"state": "running", "engine_version": "26.1.5", "accel": "kvm",
                            "context": "cove", "resource_saver": {"minutes": 5.0},
                            "disk": 64 * 2**30})

    icon_sheet().save(str(out / "tray-icons.png"))

    from desktop.tray.app import TrayApp

    tray = TrayApp(controller, platform="linux")
    tray.rebuild_menu()
    tray.menu.popup(QPoint(40, 40))
    app.processEvents()
    tray.menu.grab().save(str(out / "tray-menu.png"))
    tray.menu.hide()

    dash = dashboard(controller)
    dash.grab().save(str(out / "dashboard.png"))
    dash.close()
    light = app.palette()
    app.setPalette(dark_palette())  # the same in a dark desktop theme, made in it
    dark = dashboard(controller)
    app.processEvents()
    dark.grab().save(str(out / "dashboard-dark.png"))
    dark.close()
    app.setPalette(light)

    from desktop.tray.settings_dialog import SettingsDialog

    dialog = SettingsDialog(controller, XdgAutostart(home / "config"))
    dialog.cpus.setValue(1)  # a change that needs a restart: the dialog says so
    dialog.show()
    app.processEvents()
    dialog.grab().save(str(out / "settings.png"))
    dialog.close()

    from desktop.tray.troubleshoot import Troubleshoot

    ts = Troubleshoot(controller)
    ts.show()
    app.processEvents()
    ts.grab().save(str(out / "troubleshoot.png"))
    ts.close()
    controller.close()
    for name in sorted(p.name for p in out.glob("*.png")):
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
