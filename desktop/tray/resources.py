"""The Dashboard's Resources tab (and the tray's tooltip line): what the VM costs this
computer now, drawn as a short time series.

Every sample, on the worker: QEMU's CPU use and resident memory, read on the host
(`processes.Meter`, by the pid the backend's status gives); the guest's own count of the memory it
uses (the agent's /proc/meminfo, through the control API). What QEMU holds beyond what
the guest uses is the guest's page cache and memory it has not given back yet (free page
reporting returns freed pages while the VM runs). While Resource Saver rests the VM the
guest is not asked (a question would wake it). Under Hyper-V there is no QEMU process:
the host figures are left out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QPointF, Qt, QTimer
from PySide6.QtGui import QColor, QPainter, QPen, QPolygonF
from PySide6.QtWidgets import QGridLayout, QLabel, QVBoxLayout, QWidget

from desktop.platform.processes import Meter
from desktop.tray.docker_service import human_size

SAMPLE_MS = 2000
KEEP = 90  # samples drawn: three minutes


@dataclass(frozen=True)
class Sample:
    t: float
    cpu: float | None  # QEMU's CPU, % of one core
    rss: int | None  # bytes QEMU holds in this computer's memory
    guest_used: int | None  # bytes the guest counts as in use (total less available)
    guest_total: int | None


class Sampler:
    """Takes one Sample; keeps QEMU's Meter between samples (CPU % is measured from one
    reading to the next)."""

    def __init__(self, agent_status: Callable[[], dict[str, Any]]) -> None:
        self.agent_status = agent_status
        self._meter: Meter | None = None

    def sample(self, qemu_pid: int | None, guest_awake: bool) -> Sample:
        cpu: float | None = None
        rss: int | None = None
        if qemu_pid:
            if self._meter is None or self._meter.pid != qemu_pid:
                self._meter = Meter(qemu_pid)
            got = self._meter.read()
            if got is not None:
                cpu, rss = got
        used = total = None
        if guest_awake:
            mem = (self.agent_status() or {}).get("memory") or {}
            if mem.get("total"):  # bytes (the agent converts /proc/meminfo's kB)
                total = int(mem["total"])
                used = total - int(mem.get("available", 0))
        return Sample(time.time(), cpu, rss, used, total)


class Sparkline(QWidget):
    """A line of the last KEEP values, scaled to the largest; None is a gap."""

    def __init__(self, colour: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.values: list[float | None] = []
        self.colour = QColor(colour)
        self.setMinimumHeight(48)

    def set_values(self, values: list[float | None]) -> None:
        self.values = values[-KEEP:]
        self.update()

    def points(self) -> list[QPointF]:
        known = [v for v in self.values if v is not None]
        top = max(known, default=0.0) or 1.0
        w, h = max(self.width() - 2, 1), max(self.height() - 2, 1)
        step = w / max(KEEP - 1, 1)
        return [QPointF(1 + i * step, 1 + h - (v / top) * h)
                for i, v in enumerate(self.values) if v is not None]

    def paintEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setPen(QPen(self.colour, 1.5))
        p.drawPolyline(QPolygonF(self.points()))
        p.end()


def describe(s: Sample, resting: bool) -> dict[str, str]:
    """The figures in words, by row."""
    out = {"cpu": "-" if s.cpu is None else f"{s.cpu:.1f} % of a core",
           "held": "-" if s.rss is None else f"{human_size(s.rss)} (QEMU's resident memory)",
           "guest": ("resting: the guest is paused, not asked" if resting else
                     "-" if s.guest_used is None or not s.guest_total else
                     f"{human_size(s.guest_used)} of {human_size(s.guest_total)}")}
    if s.rss is not None and s.guest_used is not None:
        extra = s.rss - s.guest_used
        out["back"] = (f"QEMU holds {human_size(extra)} more than the guest uses (its page "
                       "cache, and memory not given back yet)" if extra > 0 else
                       "QEMU holds no more than the guest uses")
    else:
        out["back"] = "-"
    return out


class ResourcesTab(QWidget):
    """Samples while it is shown (`active()`), on `submit` (the worker)."""

    ROWS = (("cpu", "VM CPU"), ("held", "Held on this computer"),
            ("guest", "Guest memory in use"), ("back", "Not given back"))

    def __init__(self, sampler: Sampler, state: Callable[[], Any],
                 submit: Callable[..., None], active: Callable[[], bool],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.sampler, self._state, self._submit, self._active = sampler, state, submit, active
        self.samples: list[Sample] = []
        self.labels: dict[str, QLabel] = {}
        grid = QGridLayout()
        for i, (key, title) in enumerate(self.ROWS):
            grid.addWidget(QLabel(title + ":"), i, 0, Qt.AlignmentFlag.AlignRight)
            self.labels[key] = QLabel("-")
            grid.addWidget(self.labels[key], i, 1)
        self.cpu_line = Sparkline("#1f9d6b")
        self.memory_line = Sparkline("#3b6fd6")
        lay = QVBoxLayout(self)
        lay.addLayout(grid)
        lay.addWidget(QLabel("VM CPU, last three minutes"))
        lay.addWidget(self.cpu_line)
        lay.addWidget(QLabel("Memory QEMU holds, last three minutes"))
        lay.addWidget(self.memory_line)
        lay.addStretch()
        self._busy = False
        self.timer = QTimer(self)
        self.timer.setInterval(SAMPLE_MS)
        self.timer.timeout.connect(self.sample_now)
        self.timer.start()

    def sample_now(self) -> None:
        st = self._state()
        if self._busy or not self._active() or not (st.is_up or st.state == "resting"):
            return
        self._busy = True
        resting = st.state == "resting"

        def done(s: Sample) -> None:
            self._busy = False
            self.samples = (self.samples + [s])[-KEEP:]
            for key, text in describe(s, resting).items():
                self.labels[key].setText(text)
            self.cpu_line.set_values([x.cpu for x in self.samples])
            self.memory_line.set_values([None if x.rss is None else float(x.rss)
                                         for x in self.samples])

        def failed(message: str) -> None:
            self._busy = False
            self.labels["guest"].setText(f"- ({message})")

        pid = st.qemu_pid
        self._submit(lambda: self.sampler.sample(pid, not resting), done, failed)
