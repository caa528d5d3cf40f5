"""The Dashboard's Disk tab: what the VM's data disk holds (`docker system df`), what it
takes on this computer's disk, and "Reclaim space": prune what the user ticks, have the
guest trim at once (the backend's `trim` op), and show how much the host's file shrank.

The data disk is a sparse or growing file on the host (qcow2, or Hyper-V's VHDX): what it
takes there is its allocated blocks, not its size.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop.tray.docker_service import DiskUsage, DockerService, human_size

KINDS = (("images", "Images no container uses"), ("containers", "Stopped containers"),
         ("volumes", "Volumes no container mounts (their data is deleted)"),
         ("build_cache", "Build cache"))
SETTLE_SECONDS = 90.0  # how long Reclaim waits for the guest's trim to reach the file
POLL_SECONDS = 2.0


def allocated(path: Path) -> int:
    """Bytes the file takes on the host's disk (its allocated blocks; its size where the
    platform does not say, as on Windows)."""
    st = os.stat(path)
    blocks = getattr(st, "st_blocks", None)
    return int(blocks) * 512 if blocks is not None else int(st.st_size)


def reclaim(docker: DockerService, disk: Path, ticked: dict[str, bool],
            settle: float = SETTLE_SECONDS, poll: float = POLL_SECONDS,
            sleep: Callable[[float], Any] = time.sleep,
            trim: Callable[[], Any] = lambda: None) -> tuple[int, int, int]:
    """Prune, have the guest trim at once (`trim`: the backend's op), then wait until
    the host's file stops shrinking (or `settle` passes): (bytes the engine freed, the
    file's allocation before, after). On the worker."""
    before = allocated(disk)
    freed = docker.reclaim(**ticked)
    if freed:
        trim()
    after = before
    deadline = time.monotonic() + settle
    last = before
    while freed and time.monotonic() < deadline:
        sleep(poll)
        now = allocated(disk)
        if now < before and now == last:  # shrank, and stayed put for a poll
            after = now
            break
        last = after = now
    return freed, before, after


class DiskTab(QWidget):
    """`refresh()` reads the figures on the worker; `reclaim()` asks, then prunes."""

    def __init__(self, docker: Callable[[], DockerService], disk: Path,
                 disk_bytes: Callable[[], int], submit: Callable[..., None],
                 confirm: Callable[[str], bool], status: Callable[[str], None],
                 trim: Callable[[], Any] = lambda: None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._docker, self.disk, self._disk_bytes = docker, disk, disk_bytes
        self._trim = trim
        self._submit, self._confirm, self._status = submit, confirm, status
        self.host_label = QLabel()
        self.table = QTableWidget(4, 3)
        self.table.setHorizontalHeaderLabels(["In the VM", "Size", "Reclaimable"])
        self.table.verticalHeader().setVisible(False)
        self.boxes: dict[str, QCheckBox] = {}
        lay = QVBoxLayout(self)
        lay.addWidget(self.host_label)
        lay.addWidget(self.table)
        for key, text in KINDS:
            box = QCheckBox(text)
            box.setChecked(key != "volumes")  # a volume's data is the user's: opt in
            self.boxes[key] = box
            lay.addWidget(box)
        row = QHBoxLayout()
        self.reclaim_button = QPushButton("Re&claim space")
        self.reclaim_button.clicked.connect(self.reclaim)
        self.refresh_button = QPushButton("Re&fresh")
        self.refresh_button.clicked.connect(self.refresh)
        row.addWidget(self.reclaim_button)
        row.addWidget(self.refresh_button)
        row.addStretch()
        lay.addLayout(row)
        self.result = QLabel()
        self.result.setWordWrap(True)
        lay.addWidget(self.result)
        lay.addStretch()
        self.usage: DiskUsage | None = None

    def _host_text(self) -> str:
        try:
            taken = allocated(self.disk)
        except OSError:
            return "The data disk is not on this computer's disk yet"
        size = self._disk_bytes()
        of = f" (a disk of {human_size(size)})" if size else ""
        return f"The data disk takes {human_size(taken)} on this computer's disk{of}"

    def refresh(self) -> None:
        self.host_label.setText(self._host_text())
        self._submit(lambda: self._docker().disk_usage(), self._show, self._status)

    def _show(self, u: DiskUsage) -> None:
        self.usage = u
        rows = (("Images", u.images), ("Containers", u.containers), ("Volumes", u.volumes),
                ("Build cache", u.build_cache))
        for i, (name, (total, free)) in enumerate(rows):
            self.table.setItem(i, 0, QTableWidgetItem(name))
            self.table.setItem(i, 1, QTableWidgetItem(human_size(total)))
            self.table.setItem(i, 2, QTableWidgetItem(human_size(free)))

    def reclaim(self) -> None:
        ticked = {key: box.isChecked() for key, box in self.boxes.items()}
        if not any(ticked.values()):
            self._status("Tick what to remove first")
            return
        what = ", ".join(text.split(" (")[0].lower() for key, text in KINDS if ticked[key])
        if not self._confirm(f"Remove {what}? This cannot be undone."):
            return
        self.reclaim_button.setEnabled(False)
        self.result.setText("Removing, then waiting for the VM to give the space back…")
        docker = self._docker()

        def done(r: tuple[int, int, int]) -> None:
            freed, before, after = r
            self.reclaim_button.setEnabled(True)
            shrank = before - after
            self.result.setText(
                f"Freed {human_size(freed)} in the VM; the data disk's file on this "
                f"computer shrank by {human_size(max(shrank, 0))} ({human_size(before)} → "
                f"{human_size(after)})" if freed else "Nothing to remove: nothing ticked "
                "was unused")
            self.refresh()

        def failed(message: str) -> None:
            self.reclaim_button.setEnabled(True)
            self.result.setText(f"Reclaim failed: {message}")

        self._submit(lambda: reclaim(docker, self.disk, ticked, SETTLE_SECONDS,
                                     POLL_SECONDS, trim=self._trim), done, failed)
