"""The tray's icons: one per state (stopped, starting, running, error), from assets/.

The SVGs in the repository's ``assets/`` folder are the source; where they are not
shipped next to the code, a plain disc of the state's colour is drawn instead, so the
tray always shows something that tells the states apart.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap

ASSETS = Path(__file__).resolve().parents[2] / "assets"
STATES = ("stopped", "starting", "running", "error")
COLOURS = {"stopped": "#9aa1ab", "starting": "#e8a317", "running": "#1f9d6b",
           "error": "#d63a3a"}


def icon_path(state: str) -> Path:
    return ASSETS / f"tray-{state}.svg"


def _drawn(state: str) -> QIcon:
    icon = QIcon()
    for size in (16, 22, 32, 64):
        pm = QPixmap(size, size)
        pm.fill(Qt.GlobalColor.transparent)
        p = QPainter(pm)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setPen(QColor("#202020"))
        p.setBrush(QColor(COLOURS[state]))
        p.drawEllipse(1, 1, size - 2, size - 2)
        p.end()
        icon.addPixmap(pm)
    return icon


@cache
def tray_icon(state: str) -> QIcon:
    if state not in STATES:
        raise ValueError(f"no tray icon for state {state!r}; states: {', '.join(STATES)}")
    path = icon_path(state)
    if path.exists():
        icon = QIcon(str(path))
        if not icon.isNull():
            return icon
    return _drawn(state)


def app_icon() -> QIcon:
    path = ASSETS / "cove.svg"
    return QIcon(str(path)) if path.exists() else tray_icon("running")
