"""The tray app: cold start to the icon shown, and memory at idle.

Each run launches `python -m desktop.tray --no-start` in a fresh process (a throw-away
COVE_HOME, so no backend is started or found) and measures the time from launching the
process to its QSystemTrayIcon.show() (the tray prints the moment when COVE_TRAY_TIMING
is set), then its resident memory (VmRSS in /proc/<pid>/status) after 5 s idle.

Baseline, same run: a bare PySide6 program that creates a QApplication and shows a
QSystemTrayIcon with a blank icon: what any Qt tray costs before Cove's own code.

Uses the display in $DISPLAY (run under `xvfb-run -a`); without one, Qt's offscreen
platform (no tray host: the icon is created and shown but not visible anywhere).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Figure, rss_mib

ROOT = Path(__file__).resolve().parents[1]
IDLE_SECONDS = 5.0

BARE = r"""
import os, sys, time
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import QApplication, QSystemTrayIcon
app = QApplication(sys.argv[:1])
pm = QPixmap(22, 22)
pm.fill()
tray = QSystemTrayIcon(QIcon(pm))
tray.show()
print("tray shown", file=sys.stderr, flush=True)
sys.exit(app.exec())
"""


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "COVE_HOME": str(home / "h"), "COVE_TRAY_TIMING": "1",
           "DOCKER_CONFIG": str(home / "d"), "XDG_RUNTIME_DIR": str(home)}
    if not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY"):
        env["QT_QPA_PLATFORM"] = "offscreen"
    return env




def measure(argv: list[str], home: Path) -> tuple[float, float]:
    """(seconds from launch to the icon shown, RSS in MiB after idling)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, env=_env(home), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "tray shown" in line:
                shown = time.monotonic() - t0
                break
        else:
            raise RuntimeError(f"the tray exited ({proc.wait()}) before showing its icon")
        time.sleep(IDLE_SECONDS)
        return shown, rss_mib(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(runs: int) -> tuple[list[Figure], str]:
    cove_start, cove_rss, bare_start, bare_rss = [], [], [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="cove-bench-tray-") as d:
            s, r = measure([sys.executable, "-m", "desktop.tray", "--no-start"], Path(d))
            cove_start.append(s)
            cove_rss.append(r)
        with tempfile.TemporaryDirectory(prefix="cove-bench-tray-") as d:
            s, r = measure([sys.executable, "-c", BARE], Path(d))
            bare_start.append(s)
            bare_rss.append(r)
    platform = "xvfb" if os.environ.get("DISPLAY") else "offscreen"
    return [
        Figure("tray: launch to icon shown", "s", cove_start,
               "bare PySide6 tray icon", bare_start, target="<= 1.5 s",
               notes=[f"Qt platform: {platform}"]),
        Figure(f"tray: RSS after {IDLE_SECONDS:.0f} s idle", "MiB", cove_rss,
               "bare PySide6 tray icon", bare_rss, target="<= 150 MiB"),
    ], "n/a"


def main() -> int:
    figs, _ = run(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
    for f in figs:
        r = f.row()
        print(f"{f.name}: {r['value']['median']:.3g} {f.unit} "
              f"({r['value']['min']:.3g}-{r['value']['max']:.3g}); {f.baseline_name}: "
              f"{r['base']['median']:.3g} {f.unit}; ratio {r['ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
