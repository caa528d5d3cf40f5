"""Screenshots from a real instance, for the README: the second half of `make screenshots`.

`python -m desktop.tray.live_screenshots OUT_DIR` starts a throwaway instance (its own
`COVE_HOME` in a temporary folder, the guest image from the cache), gives it what a user's
engine holds (a Compose project with a web server, its database and a job that exited, a
volume, a container that keeps a CPU busy), runs the real tray app with a panel of
`trayer` as the tray host, and saves the screen as it shows the tray icon in the panel, the
menu opened from it and the Dashboard fed by the engine; then its Resources tab (the
figures printed beside what `ps` says of QEMU) and its Disk tab after Reclaim space gave
back a volume's data (printed beside what `du` says of the data disk). Then it deletes
the instance.

Run it under an X display with room for the windows: `xvfb-run -a -s "-screen 0
1440x900x24"` (the Makefile's target does). The screenshots made from fixtures
(`desktop.tray.screenshots`) show every window with tidy names; these show what a user
meets.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from desktop.demo import HELLO_IMAGE as HELLO
from desktop.demo import build_hello_image
from vm_image.builder import images_dir

# What it saves, each named in the README.
SHOTS = ("tray-panel-live.png", "tray-menu-live.png", "dashboard-live.png",
         "resources-live.png", "disk-live.png")
RECLAIM_MIB = 400  # written to a volume no container keeps, for Reclaim space to give back
PANEL_HEIGHT = 28
COMPOSE = f"""\
services:
  web:
    image: {HELLO}
    command: ["httpd", "-f", "-p", "80", "-h", "/etc"]
    ports: ["8080:80"]
  db:
    image: {HELLO}
    command: ["sh", "-c", "while :; do echo \\"$$(date) checkpoint\\"; sleep 2; done"]
    volumes: ["data:/data"]
  migrate:
    image: {HELLO}
    command: ["echo", "migrated"]
volumes:
  data: {{}}
"""


def wait(what: str, ready: Callable[[], bool], timeout: float, step: Callable[[], None]) \
        -> None:
    end = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > end:
            raise SystemExit(f"live screenshots: {what} did not happen within {timeout:.0f} s")
        step()
        time.sleep(0.05)


class Scratch:
    """A throwaway instance and the docker CLI pointed at it."""

    def __init__(self, root: Path) -> None:
        images = images_dir()  # the cache of the user's COVE_HOME, before it is replaced
        self.env = {**os.environ, "COVE_HOME": str(root / "home"),
                    "COVE_IMAGES": str(images), "DOCKER_CONFIG": str(root / "docker")}
        os.environ.update(self.env)  # the tray app made below reads the same instance
        self.cove = [sys.executable, "-m", "desktop"]
        self.docker = ["docker", "--context", "cove"]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), env=self.env, check=check, text=True,
                              capture_output=True, timeout=600)

    def start(self) -> None:
        for share in (str(Path.home()), "/tmp"):  # a folder of its own only
            self.run(*self.cove, "shares", "remove", share, check=False)
        got = self.run(*self.cove, "start", "--no-activate", "--resource-saver", "0",
                       check=False)
        if got.returncode != 0:
            raise SystemExit(f"live screenshots: cove start failed:\n{got.stderr}")

    def populate(self, root: Path) -> None:
        build_hello_image(self.docker, HELLO, env=self.env)
        (root / "shop").mkdir()
        (root / "shop" / "compose.yaml").write_text(COMPOSE)
        self.run(*self.docker, "compose", "--project-directory", str(root / "shop"),
                 "-p", "shop", "up", "-d")
        self.run(*self.docker, "run", "-d", "--name", "worker", HELLO, "sh", "-c",
                 "while :; do i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; "
                 "sleep 0.2; done")

    def delete(self) -> None:
        self.run(*self.cove, "delete", "--force", check=False)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "docs/screenshots").resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not shutil.which("trayer"):
        raise SystemExit("live screenshots: no tray host: apt-get install trayer")
    root = Path(tempfile.mkdtemp(prefix="cove-live-shots-"))
    scratch = Scratch(root)
    panel = None
    try:
        print("starting a throwaway instance ...", flush=True)
        scratch.start()
        scratch.populate(root)
        # A top panel across the screen with the tray at its right, as a desktop's.
        panel = subprocess.Popen(
            ["trayer", "--edge", "top", "--align", "right", "--widthtype", "percent",
             "--width", "100", "--heighttype", "pixel", "--height", str(PANEL_HEIGHT),
             "--transparent", "true", "--alpha", "0", "--tint", "0x2b2d30",
             "--SetDockType", "true"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shoot(out, scratch)
    finally:
        if panel is not None:
            panel.send_signal(signal.SIGTERM)
            panel.wait(10)
        scratch.delete()
        shutil.rmtree(root, ignore_errors=True)
    return 0


def shoot(out: Path, scratch: Scratch) -> None:
    from PySide6.QtCore import QPoint, QRect
    from PySide6.QtWidgets import QApplication, QSystemTrayIcon

    from desktop.instance import Instance
    from desktop.tray.app import TrayApp
    from desktop.tray.controller import TrayController

    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setStyle("Fusion")
    events = app.processEvents
    wait("the tray host", QSystemTrayIcon.isSystemTrayAvailable, 20, events)
    controller = TrayController(Instance("default"), spawn=lambda i: None)
    tray = TrayApp(controller)
    tray.tray.show()
    controller.start_following()
    wait("the backend's running state", lambda: controller.state.state == "running", 60,
         events)
    wait("the icon in the panel", lambda: tray.tray.geometry().width() > 0, 20, events)
    screen = app.primaryScreen()

    def grab(name: str, area: QRect) -> None:
        for _ in range(20):  # let the window system draw it first
            events()
            time.sleep(0.05)
        path = out / name
        screen.grabWindow(0).copy(area).save(str(path))
        print(path, flush=True)

    icon = tray.tray.geometry()
    width = screen.geometry().width()
    grab(SHOTS[0], QRect(width - 420, 0, 420, PANEL_HEIGHT))
    tray.rebuild_menu()
    tray.menu.popup(QPoint(icon.x(), icon.bottom() + 1))
    wait("the tray menu", tray.menu.isVisible, 10, events)
    menu = tray.menu.geometry()
    left = min(menu.x(), width - 420) - 10
    grab(SHOTS[1], QRect(left, 0, width - left, menu.bottom() + 12))
    tray.menu.hide()

    tray.show_dashboard()
    dash = tray.dashboard
    dash.move(40, PANEL_HEIGHT + 20)

    def filled() -> bool:
        names = {getattr(r, "name", "") for r in dash.rows}
        running = [r for r in dash.rows if getattr(r, "state", "") == "running"]
        return {"shop-web-1", "worker"} <= names and \
            all(r.id in dash.usage for r in running)

    wait("the Dashboard's containers with their CPU and memory", filled, 90, events)
    dash.select_container("shop-db-1")
    wait("the database's log", lambda: "checkpoint" in dash.log_view.toPlainText(), 30,
         events)
    geo = dash.frameGeometry()
    grab(SHOTS[2], geo)

    # The Resources tab against what `ps` says of QEMU at the same moment.
    tab = dash.resources_tab
    dash.tabs.setCurrentWidget(tab)
    # Enough samples for its lines to show (one every 2 s).
    wait("the Resources tab's samples", lambda: len(tab.samples) >= 10, 60, events)
    pid = controller.state.qemu_pid
    ps = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True,
                        text=True).stdout.strip()
    print(f"figures: Resources tab: held {tab.labels['held'].text()!r}, guest "
          f"{tab.labels['guest'].text()!r}; ps: QEMU RSS {int(ps or 0) / 1024:.0f} MiB",
          flush=True)
    grab(SHOTS[3], geo)

    # Reclaim space: a volume's data no container keeps, removed with the volume ticked.
    disk = dash.disk_tab
    subprocess.run([*scratch.docker, "run", "--rm", "-v", "scratch-data:/v", HELLO, "sh",
                    "-c", f"dd if=/dev/urandom of=/v/big bs=1M count={RECLAIM_MIB} "
                    "2>/dev/null && sync"], env=scratch.env, check=True, timeout=600)
    dash.tabs.setCurrentWidget(disk)
    disk.refresh()
    wait("the Disk tab's figures", lambda: disk.usage is not None
         and disk.usage.volumes[1] >= RECLAIM_MIB * 2**20, 90, events)
    du_before = du_mib(disk.disk)
    for key, box in disk.boxes.items():
        box.setChecked(key == "volumes")
    disk._confirm = lambda question: True  # the question a user answers
    disk.reclaim_button.click()
    wait("Reclaim space's result", lambda: disk.result.text().startswith(
        ("Freed", "Reclaim failed", "Nothing")), 240, events)
    wait("the Disk tab's figures after", lambda: "takes" in disk.host_label.text(), 30,
         events)
    print(f"figures: Disk tab: {disk.result.text()!r}; {disk.host_label.text()!r}; du: "
          f"{du_before:.0f} MiB before, {du_mib(disk.disk):.0f} MiB after", flush=True)
    grab(SHOTS[4], geo)
    dash.close()
    controller.close()


def du_mib(path: Path) -> float:
    """What `du` says the file takes on the host's disk, MiB."""
    out = subprocess.run(["du", "-k", str(path)], capture_output=True, text=True).stdout
    return int(out.split()[0]) / 1024 if out else 0.0


if __name__ == "__main__":
    sys.exit(main())
