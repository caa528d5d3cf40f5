"""The Dashboard window: the engine's containers, images and volumes.

Everything it shows comes from `DockerService` calls run on the worker pool; it
refreshes when the controller relays a Docker event (`docker_changed`), after each of
its own actions, and when Cove comes up. The log view follows the selected container
through a `Follower`. Nothing here blocks the GUI thread on the engine.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import Qt, QTimer, QUrl
from PySide6.QtGui import (
    QDesktopServices,
    QFontDatabase,
    QGuiApplication,
    QKeySequence,
    QShortcut,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from desktop.tray import model, terminal
from desktop.tray.controller import TrayController
from desktop.tray.disktab import DiskTab
from desktop.tray.docker_service import (
    ContainerRow,
    DockerError,
    DockerService,
    ImageRow,
    PullProgress,
    Usage,
    VolumeRow,
    human_size,
    pull_message,
    usage,
    users,
)
from desktop.tray.resources import ResourcesTab, Sampler
from desktop.tray.runform import RunDialog
from desktop.tray.worker import Follower

# The state filter's choices: which containers each keeps, by their state.
RUNNING = frozenset({"running", "restarting", "paused"})
STATE_FILTERS: dict[str, Callable[[str], bool]] = {
    "All": lambda state: True,
    "Running": lambda state: state in RUNNING,
    "Not running": lambda state: state not in RUNNING,
}
STATS_INTERVAL_MS = 2000  # how often running containers' CPU and memory are read
# The Dashboard's keys beside the buttons' Alt keys (the README lists them).
KEYS = (("Ctrl+1 … Ctrl+5", "the Containers, Images, Volumes, Disk and Resources tabs"),
        ("Ctrl+F", "filter the containers (Escape clears the filter)"),
        ("Ctrl+L", "the name of an image to pull"),
        ("F5, Ctrl+R", "refresh"),
        ("Delete", "delete the selected container, project, image or volume"),
        ("Ctrl+I", "inspect the selected container"),
        ("Ctrl+T", "a terminal in the selected container"),
        ("Ctrl+B", "the selected container's first web port, in the browser"),
        ("Enter", "collapse or expand the selected Compose project"))
IMAGE_COLUMN_MAX = 220  # px: wider image names are cut, their whole name in the tooltip
VOLUME_SIZES_SECONDS = 30.0  # the engine walks every volume to size them
STATE_COLOURS = {"running": "#1f9d6b", "exited": "#8a8f98", "created": "#8a8f98",
                 "paused": "#e8a317", "restarting": "#e8a317", "dead": "#d63a3a"}


@dataclass(frozen=True)
class ProjectRow:
    """A Compose project's header row: its containers (those the filters keep) follow it
    unless it is collapsed."""

    name: str
    members: tuple[ContainerRow, ...]

    @property
    def running(self) -> int:
        return sum(c.state in RUNNING for c in self.members)

    @property
    def summary(self) -> str:
        return f"{self.running} of {len(self.members)} running"


def grouped(containers: list[ContainerRow], collapsed: set[str]
            ) -> list[ContainerRow | ProjectRow]:
    """The table's rows: each Compose project (by name) as a header, then its containers
    unless collapsed; then the containers no project made, in the order given."""
    projects: dict[str, list[ContainerRow]] = {}
    loose: list[ContainerRow | ProjectRow] = []
    for c in containers:
        if c.project:
            projects.setdefault(c.project, []).append(c)
        else:
            loose.append(c)
    rows: list[ContainerRow | ProjectRow] = []
    for name in sorted(projects):
        rows.append(ProjectRow(name, tuple(projects[name])))
        if name not in collapsed:
            rows += projects[name]
    return rows + loose


def _created(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else ""


def ports_html(row: ContainerRow, trouble: dict[str, str] | None = None) -> str:
    """The ports cell: a link per TCP port; a port whose forward is in trouble (the
    backend's conflict, failed, stalled, recovering: `TrayState.failed_ports`) in red,
    not a link, marked with a warning sign (`port_trouble` says why)."""
    parts = []
    for p in row.ports:
        if f"{p.host_port}/{p.proto}" in (trouble or {}):
            parts.append(f'<span style="color:{STATE_COLOURS["dead"]}">{p.text} ⚠</span>')
        else:
            parts.append(f'<a href="{p.url}">{p.text}</a>' if p.url else p.text)
    return ", ".join(parts)


def port_trouble(row: ContainerRow, trouble: dict[str, str]) -> str:
    """Why each of the row's ports is not forwarded, a line each ("" when all are)."""
    lines = []
    for p in row.ports:
        key = f"{p.host_port}/{p.proto}"
        if key in trouble:
            lines.append(f"port {key}: {trouble[key] or 'not forwarded'}")
    return "\n".join(lines)


def _table(headers: list[str]) -> QTableWidget:
    t = QTableWidget(0, len(headers))
    t.setHorizontalHeaderLabels(headers)
    t.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    t.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    t.verticalHeader().setVisible(False)
    t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    t.horizontalHeader().setStretchLastSection(True)
    t.setAlternatingRowColors(True)
    return t


def _buttons(*labels: str) -> tuple[QHBoxLayout, dict[str, QPushButton]]:
    """A row of buttons, keyed by their names; an "&" in a label marks its Alt key."""
    row = QHBoxLayout()
    out = {}
    for label in labels:
        b = QPushButton(label)
        row.addWidget(b)
        out[label.replace("&", "")] = b
    row.addStretch()
    return row, out


class Dashboard(QMainWindow):
    """`open_url`, `open_terminal` and `confirm` are the window's ways out to the desktop
    (the browser, a terminal window, a question); tests pass their own."""

    def __init__(self, controller: TrayController, docker: DockerService | None = None,
                 *, open_url: Callable[[QUrl], Any] | None = None,
                 open_terminal: Callable[[str, str], Any] | None = None,
                 confirm: Callable[[str], bool] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.docker = docker or controller.docker
        self.worker = controller.worker
        self.open_url = open_url or QDesktopServices.openUrl
        self.open_terminal = open_terminal or terminal.open_terminal
        self.confirm = confirm or self._ask
        self.containers: list[ContainerRow] = []  # those shown (the filters applied)
        self.rows: list[ContainerRow | ProjectRow] = []  # the table's, row by row
        self.collapsed: set[str] = set()  # Compose projects shown as their header only
        self._shown_trouble: dict[str, str] = {}  # the port trouble the rows show
        self.all_containers: list[ContainerRow] = []
        self.images: list[ImageRow] = []
        self.volumes: list[VolumeRow] = []
        self.log_follower: Follower | None = None
        self.log_container = ""
        self.setWindowTitle(f"Cove Dashboard ({controller.inst.name})")
        self.resize(960, 620)

        self.banner = QLabel()
        self.banner.setWordWrap(True)
        self.banner.setStyleSheet("padding: 6px;")
        self.tabs = QTabWidget()

        # Containers
        self.container_table = _table(["Name", "Image", "State", "Ports", "Created", "CPU",
                                       "Memory"])
        # A long image name is cut (its whole name in the tooltip), so State, Ports and
        # Created stay in view.
        self.container_table.horizontalHeader().setSectionResizeMode(
            1, QHeaderView.ResizeMode.Interactive)
        self.container_table.itemSelectionChanged.connect(self._selection_changed)
        # A project's header: double-click or Enter collapses or expands it.
        self.container_table.itemActivated.connect(
            lambda item: self._toggle_row(item.row()))
        bar, self.container_buttons = _buttons("&Start", "S&top", "&Restart", "&Delete",
                                               "Ter&minal", "&Inspect")
        b = self.container_buttons
        b["Start"].clicked.connect(lambda: self._container_action("start", "Started"))
        b["Stop"].clicked.connect(lambda: self._container_action("stop", "Stopped"))
        b["Restart"].clicked.connect(lambda: self._container_action("restart", "Restarted"))
        b["Delete"].clicked.connect(self.delete_container)
        b["Terminal"].clicked.connect(self.terminal)
        b["Inspect"].clicked.connect(self.inspect)
        self.inspector: InspectDialog | None = None
        # Exited containers (a test suite leaves many) need not crowd out running ones.
        self.container_filter = QLineEdit()
        self.container_filter.setPlaceholderText("Filter by name or image")
        self.container_filter.setClearButtonEnabled(True)
        self.container_filter.textChanged.connect(self._apply_filters)
        self.state_filter = QComboBox()
        self.state_filter.addItems(list(STATE_FILTERS))
        self.state_filter.currentIndexChanged.connect(self._apply_filters)
        bar.addWidget(self.container_filter)
        bar.addWidget(self.state_filter)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)
        self.log_view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.log_view.setPlaceholderText("Select a container to follow its log")
        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addLayout(bar)
        tl.addWidget(self.container_table)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top)
        split.addWidget(self.log_view)
        split.setSizes([360, 200])
        self.tabs.addTab(split, "Containers")

        # Images
        self.image_table = _table(["Tags", "ID", "Size", "Created", "In use by"])
        ibar, self.image_buttons = _buttons("R&un…", "&Delete", "&Prune unused")
        self.image_buttons["Run…"].clicked.connect(self.run_image)
        self.run_dialog: RunDialog | None = None
        self.image_buttons["Delete"].clicked.connect(self.delete_image)
        self.image_buttons["Prune unused"].clicked.connect(self.prune_images)
        self.pull_name = QLineEdit()
        self.pull_name.setPlaceholderText("Image to pull, e.g. alpine:3.20")
        self.pull_name.returnPressed.connect(self.pull)
        self.pull_button = QPushButton("Pull")
        self.pull_button.clicked.connect(self.pull)
        self.pull_progress = QProgressBar()
        self.pull_progress.setVisible(False)
        self.puller: Follower | None = None
        for w in (self.pull_name, self.pull_button, self.pull_progress):
            ibar.addWidget(w)
        self.tabs.addTab(self._page(ibar, self.image_table), "Images")

        # Volumes
        self.volume_table = _table(["Name", "Driver", "Mount point", "In use by", "Size"])
        self.volume_sizes: dict[str, int] = {}  # read while the Volumes tab is shown
        self._sizes_read = -VOLUME_SIZES_SECONDS
        vbar, self.volume_buttons = _buttons("&Delete", "&Prune unused")
        self.volume_buttons["Delete"].clicked.connect(self.delete_volume)
        self.volume_buttons["Prune unused"].clicked.connect(self.prune_volumes)
        self.volume_page = self._page(vbar, self.volume_table)
        self.tabs.addTab(self.volume_page, "Volumes")

        # Disk: docker system df, the host file, Reclaim space.
        self.disk_tab = DiskTab(lambda: self.docker, controller.inst.data_disk,
                                lambda: self.controller.state.disk_bytes, self.worker.submit,
                                self.confirm, self.status,
                                trim=lambda: controller.client.request("trim", timeout=600))
        self.tabs.addTab(self.disk_tab, "Disk")
        self.resources_tab = ResourcesTab(
            Sampler(lambda: controller.client.request("agent_status", timeout=10)),
            lambda: self.controller.state, self.worker.submit,
            lambda: self.isVisible() and self.tabs.currentWidget() is self.resources_tab)
        self.tabs.addTab(self.resources_tab, "Resources")
        self.tabs.currentChanged.connect(self._tab_shown)

        central = QWidget()
        cl = QVBoxLayout(central)
        cl.addWidget(self.banner)
        cl.addWidget(self.tabs)
        self.setCentralWidget(central)

        # Live CPU and memory of running containers: one reading each per interval, on
        # the worker (never the GUI thread), only while the window is shown.
        self.readings: dict[str, dict[str, Any]] = {}  # container id -> its last reading
        self.usage: dict[str, Usage] = {}
        self._sampling = False
        self._stats_timer = QTimer(self)
        self._stats_timer.setInterval(STATS_INTERVAL_MS)
        self._stats_timer.timeout.connect(self.sample_stats)
        self._stats_timer.start()

        self.status_label = QLabel()
        self.statusBar().addPermanentWidget(self.status_label)

        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(150)  # one refresh for a burst of events
        self._refresh_timer.timeout.connect(self.refresh)
        controller.docker_changed.connect(self._refresh_timer.start)
        controller.changed.connect(self._state_changed)
        self._was_up = controller.state.is_up
        self._state_changed(controller.state)
        self._update_buttons()
        self._keys()

    def _keys(self) -> None:
        """Everything the mouse does, from the keyboard (KEYS lists them; the buttons'
        Alt keys are underlined in their labels)."""
        def key(seq: QKeySequence | QKeySequence.StandardKey | str, fn: Callable[[], Any],
                widget: QWidget | None = None) -> None:
            s = QShortcut(QKeySequence(seq), widget or self)
            if widget is not None:  # only while that widget has the focus
                s.setContext(Qt.ShortcutContext.WidgetShortcut)
            s.activated.connect(fn)

        for i in range(self.tabs.count()):
            key(f"Ctrl+{i + 1}", functools.partial(self.tabs.setCurrentIndex, i))
        key("Ctrl+F", self.focus_filter)
        key("Ctrl+L", self.focus_pull)
        key("F5", self.refresh)
        key("Ctrl+R", self.refresh)
        key("Ctrl+I", self.inspect)
        key("Ctrl+T", self.terminal)
        key("Ctrl+B", self.open_selected_port)
        key(QKeySequence.StandardKey.Delete, self.delete_container, self.container_table)
        key(QKeySequence.StandardKey.Delete, self.delete_image, self.image_table)
        key(QKeySequence.StandardKey.Delete, self.delete_volume, self.volume_table)
        key("Escape", self.container_filter.clear, self.container_filter)
        tips = {self.container_buttons["Inspect"]: "Ctrl+I",
                self.container_buttons["Terminal"]: "Ctrl+T",
                self.container_buttons["Delete"]: "Delete",
                self.image_buttons["Delete"]: "Delete",
                self.volume_buttons["Delete"]: "Delete",
                self.container_filter: "Ctrl+F", self.pull_name: "Ctrl+L"}
        for w, seq in tips.items():
            w.setToolTip(seq)
        for i in range(self.tabs.count()):
            self.tabs.setTabToolTip(i, f"Ctrl+{i + 1}")

    def focus_filter(self) -> None:
        self.tabs.setCurrentIndex(0)
        self.container_filter.setFocus(Qt.FocusReason.ShortcutFocusReason)
        self.container_filter.selectAll()

    def focus_pull(self) -> None:
        self.tabs.setCurrentIndex(1)
        self.pull_name.setFocus(Qt.FocusReason.ShortcutFocusReason)
        self.pull_name.selectAll()

    def open_selected_port(self) -> None:
        """The selected container's first web port, in the browser (a port's link in
        the table is a mouse's only)."""
        c = self.selected_container()
        url = next((p.url for p in c.ports if p.url), None) if c else None
        if url is None:
            self.status("The selected container publishes no TCP port" if c else
                        "Select a container to open its port")
            return
        self.open_link(url)

    @staticmethod
    def _page(bar: QHBoxLayout, table: QTableWidget) -> QWidget:
        w = QWidget()
        lay = QVBoxLayout(w)
        lay.addLayout(bar)
        lay.addWidget(table)
        return w

    # -- state -----------------------------------------------------------------------

    def _state_changed(self, st: model.TrayState) -> None:
        self.banner.setText(model.status_line(st))
        text, tip = model.status_bar(st)
        self.status_label.setText(text)
        self.status_label.setToolTip(tip)
        colour = {"running": "#e6f4ea", "error": "#fdecea"}.get(st.state, "#f1f3f4")
        self.banner.setStyleSheet(f"padding: 6px; background: {colour}; color: #202124;")
        if st.is_up and not self._was_up:
            self.refresh()
        if not st.is_up and self._was_up:
            self._stop_logs()
            self.show_rows([], [], [])
        if st.failed_ports != self._shown_trouble and self.rows:
            self.show_rows(self.all_containers, self.images, self.volumes)
        self._was_up = st.is_up
        self.tabs.setEnabled(st.is_up or bool(self.containers))

    def status(self, text: str) -> None:
        self.statusBar().showMessage(text, 10000)

    # -- refreshing --------------------------------------------------------------------

    def refresh(self) -> None:
        if not self.controller.state.is_up:
            return
        d = self.docker
        self.worker.submit(lambda: (d.containers(), d.images(), d.volumes()),
                           lambda r: self.show_rows(*r), self.status)
        if self.tabs.currentWidget() is self.volume_page:
            self.read_volume_sizes()

    def _tab_shown(self, i: int) -> None:
        if self.tabs.widget(i) is self.disk_tab:
            self.disk_tab.refresh()
        elif self.tabs.widget(i) is self.volume_page:
            self.read_volume_sizes(at_once=True)

    def read_volume_sizes(self, at_once: bool = False) -> None:
        """Ask the engine what each volume takes (it walks their files: at most once per
        VOLUME_SIZES_SECONDS from refreshes, at once when the tab is opened)."""
        now = time.monotonic()
        if not self.controller.state.is_up or (
                not at_once and now - self._sizes_read < VOLUME_SIZES_SECONDS):
            return
        self._sizes_read = now
        self.worker.submit(self.docker.volume_sizes, self._show_volume_sizes, self.status)

    def _show_volume_sizes(self, sizes: dict[str, int]) -> None:
        self.volume_sizes = sizes
        vt = self.volume_table
        for i, v in enumerate(self.volumes[:vt.rowCount()]):
            vt.setItem(i, 4, self._size_item(v.name))

    def _size_item(self, name: str) -> QTableWidgetItem:
        size = self.volume_sizes.get(name)
        item = QTableWidgetItem("-" if size is None else human_size(size))
        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return item

    def show_rows(self, containers: list[ContainerRow], images: list[ImageRow],
                  volumes: list[VolumeRow]) -> None:
        selected = self.selected_container()
        selected_project = self.selected_project()
        self.all_containers, self.images, self.volumes = containers, images, volumes
        self.containers = containers = [c for c in containers if self._shown(c)]
        self.rows = grouped(containers, self.collapsed)
        self._shown_trouble = dict(self.controller.state.failed_ports)
        t = self.container_table
        t.blockSignals(True)
        # Sized once when filled, not again for each cell set (200 rows: most of the time
        # the refresh held the GUI thread went there).
        t.setUpdatesEnabled(False)
        header = t.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        t.clearSpans()
        t.setRowCount(len(self.rows))
        for i, row in enumerate(self.rows):
            if isinstance(row, ProjectRow):
                self._project_row(i, row)
                if selected_project is not None and row.name == selected_project.name:
                    t.selectRow(i)
                continue
            c = row
            indent = "    " if c.project else ""
            t.setItem(i, 0, QTableWidgetItem(indent + c.name))
            image = QTableWidgetItem(c.image)
            image.setToolTip(c.image)
            t.setItem(i, 1, image)
            state = QTableWidgetItem(c.status or c.state)
            state.setForeground(_brush(STATE_COLOURS.get(c.state, "#202124")))
            t.setItem(i, 2, state)
            t.setItem(i, 3, QTableWidgetItem(""))
            trouble = self.controller.state.failed_ports
            link = QLabel(ports_html(c, trouble))
            link.setToolTip(port_trouble(c, trouble))
            link.setTextInteractionFlags(Qt.TextInteractionFlag.LinksAccessibleByMouse)
            link.linkActivated.connect(self.open_link)
            link.setContentsMargins(4, 0, 4, 0)
            t.setCellWidget(i, 3, link)
            t.setItem(i, 4, QTableWidgetItem(_created(c.created)))
            self._usage_cells(i, c)
            if selected is not None and c.id == selected.id:
                t.selectRow(i)
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Interactive)
        t.resizeColumnToContents(1)
        t.setColumnWidth(1, min(t.columnWidth(1), IMAGE_COLUMN_MAX))
        t.setUpdatesEnabled(True)
        t.blockSignals(False)
        image_users, volume_users = users(self.all_containers)
        it = self.image_table
        it.setRowCount(len(images))
        for i, im in enumerate(images):
            it.setItem(i, 0, QTableWidgetItem(", ".join(im.tags) or "<untagged>"))
            it.setItem(i, 1, QTableWidgetItem(im.id.removeprefix("sha256:")[:12]))
            it.setItem(i, 2, QTableWidgetItem(human_size(im.size)))
            it.setItem(i, 3, QTableWidgetItem(_created(im.created)))
            it.setItem(i, 4, QTableWidgetItem(", ".join(image_users.get(im.id, []))))
        vt = self.volume_table
        vt.setRowCount(len(volumes))
        for i, v in enumerate(volumes):
            vt.setItem(i, 0, QTableWidgetItem(v.name))
            vt.setItem(i, 1, QTableWidgetItem(v.driver))
            vt.setItem(i, 2, QTableWidgetItem(v.mountpoint))
            vt.setItem(i, 3, QTableWidgetItem(", ".join(volume_users.get(v.name, []))))
            vt.setItem(i, 4, self._size_item(v.name))
        self.tabs.setEnabled(self.controller.state.is_up or bool(containers))
        self._update_buttons()
        if (self.selected_container() or None) is None and self.log_container:
            self._stop_logs()

    # -- selection -----------------------------------------------------------------------

    def _shown(self, c: ContainerRow) -> bool:
        text = self.container_filter.text().strip().lower()
        keeps = STATE_FILTERS[self.state_filter.currentText()]
        return (not text or text in c.name.lower() or text in c.image.lower()) and \
            keeps(c.state)

    def _apply_filters(self) -> None:
        self.show_rows(self.all_containers, self.images, self.volumes)

    def _project_row(self, i: int, p: ProjectRow) -> None:
        t = self.container_table
        arrow = "▸" if p.name in self.collapsed else "▾"
        head = QTableWidgetItem(f"{arrow} {p.name}")
        font = head.font()
        font.setBold(True)
        head.setFont(font)
        head.setToolTip(f"Compose project {p.name}: double-click or Enter to "
                        f"{'expand' if p.name in self.collapsed else 'collapse'}")
        t.setItem(i, 0, head)
        t.setItem(i, 1, QTableWidgetItem(""))
        state = QTableWidgetItem(p.summary)
        state.setForeground(_brush(STATE_COLOURS["running" if p.running else "exited"]))
        t.setItem(i, 2, state)
        for col in (3, 4, 5, 6):
            t.setItem(i, col, QTableWidgetItem(""))

    def _usage_cells(self, i: int, c: ContainerRow) -> None:
        u = self.usage.get(c.id) if c.state == "running" else None
        t = self.container_table
        t.setItem(i, 5, QTableWidgetItem(u.cpu_text if u else ""))
        t.setItem(i, 6, QTableWidgetItem(u.memory_text if u else ""))

    def sample_stats(self) -> None:
        """Read each running container's counters once (the worker), then show CPU and
        memory from this reading and the last."""
        if self._sampling or not self.isVisible() or not self.controller.state.is_up:
            return
        running = [c for c in self.all_containers if c.state == "running"]
        if not running:
            return
        self._sampling = True

        def read() -> dict[str, dict[str, Any]]:
            out = {}
            for c in running:
                try:
                    out[c.id] = self.docker.stats_sample(c.id)
                except DockerError:
                    pass  # stopped or removed meanwhile: the next refresh shows it
            return out

        def done(readings: dict[str, dict[str, Any]]) -> None:
            self._sampling = False
            self.usage = {cid: usage(self.readings.get(cid), r) for cid, r in readings.items()}
            self.readings = readings
            for i, row in enumerate(self.rows):
                if isinstance(row, ContainerRow):
                    self._usage_cells(i, row)

        def failed(message: str) -> None:
            self._sampling = False

        self.worker.submit(read, done, failed)

    def _selected_row(self) -> ContainerRow | ProjectRow | None:
        rows = self.container_table.selectionModel().selectedRows()
        if rows and rows[0].row() < len(self.rows):
            return self.rows[rows[0].row()]
        return None

    def selected_container(self) -> ContainerRow | None:
        row = self._selected_row()
        return row if isinstance(row, ContainerRow) else None

    def selected_project(self) -> ProjectRow | None:
        row = self._selected_row()
        return row if isinstance(row, ProjectRow) else None

    def select_project(self, name: str) -> None:
        for i, r in enumerate(self.rows):
            if isinstance(r, ProjectRow) and r.name == name:
                self.container_table.selectRow(i)
                return
        raise KeyError(name)

    def _toggle_row(self, i: int) -> None:
        if i < len(self.rows) and isinstance(p := self.rows[i], ProjectRow):
            self.toggle_project(p.name)

    def toggle_project(self, name: str) -> None:
        """Collapse a Compose project to its header row, or expand it again."""
        self.collapsed ^= {name}
        self.show_rows(self.all_containers, self.images, self.volumes)

    def _selected(self, table: QTableWidget, items: list[Any]) -> Any:
        rows = table.selectionModel().selectedRows()
        return items[rows[0].row()] if rows and rows[0].row() < len(items) else None

    def select_container(self, name: str) -> None:
        for i, c in enumerate(self.rows):
            if isinstance(c, ContainerRow) and c.name == name:
                self.container_table.selectRow(i)
                return
        raise KeyError(name)

    def _selection_changed(self) -> None:
        self._update_buttons()
        c = self.selected_container()
        if c is None:
            self._stop_logs()
        elif c.id != self.log_container:
            self.follow_logs(c)

    def _update_buttons(self) -> None:
        c = self.selected_container()
        b = self.container_buttons
        if (p := self.selected_project()) is not None:  # the whole project
            b["Start"].setEnabled(p.running < len(p.members))
            b["Stop"].setEnabled(p.running > 0)
            b["Restart"].setEnabled(True)
            b["Delete"].setEnabled(True)
            b["Terminal"].setEnabled(False)
            b["Inspect"].setEnabled(False)
            return
        running = c is not None and c.state in ("running", "restarting", "paused")
        b["Start"].setEnabled(c is not None and not running)
        b["Stop"].setEnabled(running)
        b["Restart"].setEnabled(c is not None)
        b["Delete"].setEnabled(c is not None)
        b["Terminal"].setEnabled(c is not None and c.state == "running")
        b["Inspect"].setEnabled(c is not None)

    # -- container actions ---------------------------------------------------------------

    def _done(self, message: str) -> Callable[[Any], None]:
        def done(_: Any) -> None:
            self.status(message)
            self.refresh()
        return done

    def _container_action(self, action: str, verb: str) -> None:
        if (p := self.selected_project()) is not None:
            return self._project_action(p, action, verb)
        c = self.selected_container()
        if c is None:
            return
        fn = getattr(self.docker, action)
        self.status(f"{action.capitalize()} {c.name}…")
        self.worker.submit(lambda: fn(c.id), self._done(f"{verb} {c.name}"), self.status)

    def _project_action(self, p: ProjectRow, action: str, verb: str) -> None:
        """Start, stop, restart or remove a whole Compose project's containers (those
        not already in the state asked for), one after the other, in the worker."""
        if action == "start":
            todo = [c for c in p.members if c.state not in RUNNING]
        elif action == "stop":
            todo = [c for c in p.members if c.state in RUNNING]
        else:
            todo = list(p.members)
        fn = getattr(self.docker, action)
        self.status(f"{action.capitalize()} project {p.name}…")

        def run() -> None:
            for c in todo:
                fn(c.id)

        self.worker.submit(run, self._done(f"{verb} project {p.name} ({len(todo)} "
                                           f"container{'s' * (len(todo) != 1)})"),
                           self.status)

    def delete_container(self) -> None:
        if (p := self.selected_project()) is not None:
            n = len(p.members)
            if not self.confirm(f"Delete the {n} container{'s' * (n != 1)} of Compose "
                                f"project {p.name}? Running ones are stopped first; its "
                                "volumes and networks stay."):
                return
            return self._project_action(p, "remove", "Deleted")
        c = self.selected_container()
        if c is None:
            return
        if c.state == "running" and not self.confirm(
                f"Delete {c.name}? It is running; it will be stopped first."):
            return
        self.worker.submit(lambda: self.docker.remove(c.id), self._done(f"Deleted {c.name}"),
                           self.status)

    def terminal(self) -> None:
        c = self.selected_container()
        if c is None:
            return
        try:
            self.open_terminal(c.name, self.docker.base_url)
        except (terminal.TerminalError, OSError) as e:
            self.status(str(e))

    def inspect(self) -> None:
        """The container's `docker inspect` record, formatted, in a window of its own."""
        c = self.selected_container()
        if c is None:
            return
        self.status(f"Inspecting {c.name}…")

        def show(record: dict[str, Any]) -> None:
            if self.inspector is not None:
                self.inspector.close()
            self.inspector = InspectDialog(c.name, record, self)
            self.inspector.show()
            self.status(f"Inspected {c.name}")

        self.worker.submit(lambda: self.docker.inspect(c.id), show, self.status)

    def open_link(self, url: str) -> None:
        self.open_url(QUrl(url))

    # -- logs ------------------------------------------------------------------------------

    def follow_logs(self, c: ContainerRow) -> None:
        self._stop_logs()
        self.log_view.clear()
        self.log_container = c.id
        cid = c.id
        f = Follower(lambda: self.docker.follow_logs(cid), self, name="container-logs")
        f.item.connect(self.log_view.appendPlainText)
        f.ended.connect(lambda err: self.log_view.appendPlainText(
            f"-- the log ended{': ' + err if err else ''} --"))
        self.log_follower = f.start()

    def _stop_logs(self) -> None:
        f, self.log_follower = self.log_follower, None
        self.log_container = ""
        if f is not None:
            f.stop()

    # -- images and volumes --------------------------------------------------------------

    def pull(self) -> None:
        """Pull the image named in the box, its layers' progress in the bar."""
        ref = self.pull_name.text().strip()
        if not ref or self.puller is not None:
            return
        progress = PullProgress()
        self.pull_button.setEnabled(False)
        self.pull_progress.setValue(0)
        self.pull_progress.setVisible(True)
        self.status(f"Pulling {ref}…")

        def step(msg: Any) -> None:
            if isinstance(msg, dict):
                progress.update(msg)
                self.pull_progress.setValue(progress.percent)
                self.pull_progress.setFormat(f"{ref}: {progress.text}")

        def ended(error: str) -> None:
            self.puller = None
            self.pull_button.setEnabled(True)
            self.pull_progress.setVisible(False)
            if error:
                self.status(pull_message(ref, error))
                return
            self.pull_progress.setValue(100)
            self.pull_name.clear()
            self.status(f"Pulled {ref}" + (f" ({progress.status})" if progress.status
                                           else ""))
            self.refresh()

        f = Follower(lambda: self.docker.pull(ref), self, name="image-pull")
        f.item.connect(step)
        f.ended.connect(ended)
        self.puller = f.start()

    def run_image(self) -> None:
        """The Run form for the selected image (or an empty one); Run starts it on the
        worker, and the Containers tab shows it."""
        im = self._selected(self.image_table, self.images)
        dlg = RunDialog(im.tags[0] if im is not None and im.tags else "",
                        self.controller.state.shares, self)
        self.run_dialog = dlg

        def accepted() -> None:
            spec = dlg.result_spec
            if spec is None:
                return
            self.status(f"Starting {spec.image}…")

            def started(name: str) -> None:
                self.status(f"Started {name} from {spec.image}")
                self.tabs.setCurrentIndex(0)
                self.refresh()

            self.worker.submit(lambda: self.docker.run(spec.image, **spec.create_kwargs()),
                               started, lambda e: self.status(f"Cannot run {spec.image}: {e}"))

        dlg.accepted.connect(accepted)
        dlg.open()

    def delete_image(self) -> None:
        im = self._selected(self.image_table, self.images)
        if im is None:
            return
        name = ", ".join(im.tags) or im.id[:19]
        if not self.confirm(f"Delete the image {name}?"):
            return
        self.worker.submit(lambda: self.docker.remove_image(im.id),
                           self._done(f"Deleted {name}"), self.status)

    def prune_images(self) -> None:
        if not self.confirm("Delete every dangling image (untagged and unused)?"):
            return
        self.worker.submit(self.docker.prune_images,
                           lambda n: self._done(f"Pruned images: {human_size(n)} freed")(n),
                           self.status)

    def delete_volume(self) -> None:
        v = self._selected(self.volume_table, self.volumes)
        if v is None:
            return
        if not self.confirm(f"Delete the volume {v.name} and its data?"):
            return
        self.worker.submit(lambda: self.docker.remove_volume(v.name),
                           self._done(f"Deleted {v.name}"), self.status)

    def prune_volumes(self) -> None:
        if not self.confirm("Delete every volume no container uses, with its data?"):
            return
        self.worker.submit(self.docker.prune_volumes,
                           lambda n: self._done(f"Pruned volumes: {human_size(n)} freed")(n),
                           self.status)

    def _ask(self, question: str) -> bool:
        return QMessageBox.question(self, "Cove", question) == \
            QMessageBox.StandardButton.Yes

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        self._stop_logs()
        if self.puller is not None:  # the engine gives the pull up with its client
            self.puller.stop()
            self.puller = None
        super().closeEvent(event)


class InspectDialog(QDialog):
    """One container's inspect record as indented JSON: read-only, selectable, and copied
    whole to the clipboard by Copy."""

    def __init__(self, name: str, record: dict[str, Any], parent: QWidget | None = None
                 ) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Inspect {name}")
        self.resize(720, 560)
        self.text = json.dumps(record, indent=2)
        self.view = QPlainTextEdit(self.text)
        self.view.setReadOnly(True)
        self.view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.copy_button = buttons.addButton("Copy", QDialogButtonBox.ButtonRole.ActionRole)
        self.copy_button.clicked.connect(self.copy)
        buttons.rejected.connect(self.close)
        lay = QVBoxLayout(self)
        lay.addWidget(self.view)
        lay.addWidget(buttons)

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.text)


def _brush(colour: str) -> Any:
    from PySide6.QtGui import QBrush, QColor

    return QBrush(QColor(colour))
