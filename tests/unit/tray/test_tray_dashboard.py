"""The Dashboard window against a fake backend and a fake engine (the Docker API on a
unix socket, driven through the real Docker SDK)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QGuiApplication, QKeySequence  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402
from pytestqt.qtbot import QtBot  # noqa: E402

from desktop.instance import Instance  # noqa: E402
from desktop.tray.controller import TrayController  # noqa: E402
from desktop.tray.dashboard import Dashboard, ProjectRow  # noqa: E402
from tests.helpers.tray_fakes import FakeBackend, FakeDockerAPI, container  # noqa: E402

WEB, DB, JOB = "c1" * 32, "c2" * 32, "c3" * 32


class Env:
    def __init__(self, tmp_path: Path, qtbot: QtBot) -> None:
        self.inst = Instance("t", home=tmp_path / "h")
        self.backend = FakeBackend(self.inst)
        self.engine = FakeDockerAPI(self.inst.docker_socket)
        self.controller = TrayController(self.inst, spawn=lambda i: None)
        self.urls: list[str] = []
        self.terminals: list[tuple[str, str]] = []
        self.questions: list[str] = []
        self.answer = True
        self.dash = Dashboard(self.controller, open_url=lambda u: self.urls.append(u.toString()),
                              open_terminal=lambda *a: self.terminals.append(a),
                              confirm=self._confirm)
        qtbot.addWidget(self.dash)
        self.qtbot = qtbot
        self.controller.start_following()
        qtbot.waitUntil(lambda: len(self.dash.containers) == 3, timeout=5000)

    def _confirm(self, q: str) -> bool:
        self.questions.append(q)
        return self.answer

    def names(self) -> list[str]:
        t = self.dash.container_table
        return [t.item(i, 0).text() for i in range(t.rowCount())]

    def state_of(self, name: str) -> str:
        t = self.dash.container_table
        return next(t.item(i, 2).text() for i in range(t.rowCount())
                    if t.item(i, 0).text() == name)

    def calls(self, method: str, path: str) -> int:
        return self.engine.calls.count((method, path))

    def close(self) -> None:
        self.dash.close()
        self.controller.close()
        self.engine.close()
        self.backend.close()


@pytest.fixture
def env(tmp_path: Path, qtbot: QtBot) -> Iterator[Env]:
    e = Env(tmp_path, qtbot)
    yield e
    e.close()


def test_lists_containers_images_volumes(env: Env) -> None:
    assert env.names() == ["db", "web", "job"]  # running first, then by name
    t = env.dash.container_table
    assert [t.item(1, c).text() for c in (0, 1, 2)] == ["web", "nginx:1.27", "Up 2 minutes"]
    assert t.item(1, 4).text()  # created
    ports = t.cellWidget(1, 3).text()
    assert ports == '5353→53/udp, <a href="http://localhost:8080/">8080→80</a>'
    it = env.dash.image_table
    assert [it.item(0, c).text() for c in range(4)][:3] == ["nginx:1.27", "a" * 12, "187.0 MB"]
    assert it.item(1, 0).text() == "<untagged>"
    assert env.dash.volume_table.item(0, 0).text() == "pgdata"
    assert env.dash.banner.text() == "Cove is running — 2 containers"


def test_an_untagged_or_long_image_name_keeps_state_and_ports_in_view(env: Env) -> None:
    """Real data: a container of an untagged image shows its image as `sha256:` and 64
    hex digits, and registry paths run long. The column shows a short ID, cuts long
    names (the whole name in the tooltip), and the window needs no horizontal scroll."""
    from tests.helpers.tray_fakes import container

    digest = "sha256:" + "9f" * 32
    long_name = "registry.example.com:5000/team/platform/service-with-a-long-name:2026.12.01-rc1"
    env.engine.containers = [container("d1" * 32, "built", digest),
                             container("d2" * 32, "pushed", long_name)]
    env.dash.refresh()
    env.qtbot.waitUntil(lambda: env.names() == ["built", "pushed"], timeout=5000)
    t = env.dash.container_table
    assert t.item(0, 1).text() == "9f" * 6
    assert t.item(1, 1).text() == long_name and t.item(1, 1).toolTip() == long_name
    assert t.columnWidth(1) <= 220
    env.dash.show()
    env.qtbot.waitExposed(env.dash)
    for width, height in ((960, 620), (1280, 800)):  # the default size, a 13" laptop's
        env.dash.resize(width, height)
        env.qtbot.waitUntil(lambda w=width: env.dash.width() == w, timeout=2000)
        assert t.horizontalHeader().length() <= t.viewport().width(), \
            f"State, Ports, Created pushed out of view at {width}x{height}"


def test_the_filters_keep_running_or_stopped_containers_or_a_name(env: Env) -> None:
    assert env.names() == ["db", "web", "job"]
    env.dash.state_filter.setCurrentText("Running")
    assert env.names() == ["db", "web"]
    env.dash.state_filter.setCurrentText("Not running")
    assert env.names() == ["job"]
    env.dash.state_filter.setCurrentText("All")
    env.dash.container_filter.setText("NGINX")  # names and images, any case
    assert env.names() == ["web"]
    env.dash.container_filter.setText("o")  # db's image postgres, job
    assert env.names() == ["db", "job"]
    env.dash.container_table.selectRow(1)
    assert env.dash.selected_container().name == "job"  # rows map to what is shown
    env.dash.refresh()  # a refresh keeps the filters
    env.qtbot.wait(300)
    assert env.names() == ["db", "job"]
    env.dash.container_filter.clear()
    assert env.names() == ["db", "web", "job"]


def test_images_and_volumes_say_which_containers_use_them(env: Env) -> None:
    """A stopped container keeps its image and volume in use, as the engine sees it."""
    it, vt = env.dash.image_table, env.dash.volume_table
    assert it.horizontalHeaderItem(4).text() == "In use by"
    assert [it.item(i, 4).text() for i in range(it.rowCount())] == ["job, web", ""]
    assert vt.horizontalHeaderItem(3).text() == "In use by"
    assert vt.item(0, 0).text() == "pgdata" and vt.item(0, 3).text() == "db, job"


def test_port_link_opens_the_browser(env: Env) -> None:
    label = env.dash.container_table.cellWidget(1, 3)
    label.linkActivated.emit("http://localhost:8080/")
    assert env.urls == ["http://localhost:8080/"]


def test_a_port_the_backend_cannot_forward_shows_why(env: Env) -> None:
    """A port_failed event (another program holds 8080 on the host): that port turns red,
    no link, the reason in the cell's tooltip; port_forwarded makes it a link again."""
    def cell() -> str:
        return env.dash.container_table.cellWidget(env.names().index("web"), 3).text()

    env.backend.emit("port_failed", proto="tcp", host_port=8080, container="web",
                     state="conflict", reason="127.0.0.1:8080 is in use by another program "
                     "(nginx, pid 4242); retrying")
    env.qtbot.waitUntil(lambda: "⚠" in cell(), timeout=5000)
    assert cell() == '5353→53/udp, <span style="color:#d63a3a">8080→80 ⚠</span>'
    tip = env.dash.container_table.cellWidget(env.names().index("web"), 3).toolTip()
    assert tip == ("port 8080/tcp: 127.0.0.1:8080 is in use by another program (nginx, "
                   "pid 4242); retrying")
    env.backend.emit("port_forwarded", proto="tcp", host_port=8080, container="web")
    env.qtbot.waitUntil(lambda: "⚠" not in cell(), timeout=5000)
    assert cell() == '5353→53/udp, <a href="http://localhost:8080/">8080→80</a>'


def test_start_stop_restart_delete(env: Env) -> None:
    env.dash.select_container("job")
    b = env.dash.container_buttons
    assert b["Start"].isEnabled() and not b["Stop"].isEnabled()
    assert not b["Terminal"].isEnabled()
    b["Start"].click()
    env.qtbot.waitUntil(lambda: env.state_of("job") == "Up Less than a second", timeout=5000)
    assert env.calls("POST", f"/containers/{JOB}/start") == 1

    env.dash.select_container("web")
    b["Stop"].click()
    env.qtbot.waitUntil(lambda: env.state_of("web").startswith("Exited"), timeout=5000)
    assert env.calls("POST", f"/containers/{WEB}/stop") == 1

    env.dash.select_container("db")
    b["Restart"].click()
    env.qtbot.waitUntil(lambda: env.calls("POST", f"/containers/{DB}/restart") == 1,
                        timeout=5000)

    env.dash.select_container("db")  # running: deleting asks first
    env.answer = False
    b["Delete"].click()
    assert env.questions == ["Delete db? It is running; it will be stopped first."]
    env.qtbot.wait(100)
    assert env.calls("DELETE", f"/containers/{DB}") == 0
    env.answer = True
    b["Delete"].click()
    env.qtbot.waitUntil(lambda: "db" not in env.names(), timeout=5000)
    assert env.calls("DELETE", f"/containers/{DB}") == 1
    assert "Deleted db" in env.dash.statusBar().currentMessage()


def test_engine_errors_go_to_the_status_bar(env: Env) -> None:
    env.dash.select_container("web")
    env.engine.containers = [c for c in env.engine.containers if c["Id"] != WEB]
    env.dash.container_buttons["Stop"].click()
    env.qtbot.waitUntil(lambda: "No such container" in env.dash.statusBar().currentMessage(),
                        timeout=5000)


def test_log_view_follows_the_selected_container(env: Env) -> None:
    env.dash.select_container("web")
    env.qtbot.waitUntil(lambda: env.engine.log_followers(WEB) == 1, timeout=5000)
    env.engine.log(WEB, "GET / 200")
    env.engine.log(WEB, "GET /favicon.ico 404")
    env.qtbot.waitUntil(lambda: env.dash.log_view.toPlainText() ==
                        "GET / 200\nGET /favicon.ico 404", timeout=5000)
    env.dash.select_container("db")  # the old stream ends, the new one starts
    env.qtbot.waitUntil(lambda: env.engine.log_followers(WEB) == 0, timeout=5000)
    env.qtbot.waitUntil(lambda: env.engine.log_followers(DB) == 1, timeout=5000)
    assert env.dash.log_view.toPlainText() == ""
    env.engine.log(DB, "ready to accept connections")
    env.qtbot.waitUntil(lambda: "ready to accept" in env.dash.log_view.toPlainText(),
                        timeout=5000)


def test_terminal_runs_docker_exec_on_coves_socket(env: Env) -> None:
    env.dash.select_container("web")
    env.dash.container_buttons["Terminal"].click()
    assert env.terminals == [("web", f"unix://{env.inst.docker_socket}")]


def test_the_status_bar_shows_engine_accelerator_context_and_saver(env: Env) -> None:
    env.qtbot.waitUntil(lambda: env.dash.status_label.text() != "", timeout=5000)
    assert env.dash.status_label.text() == (
        "Docker 26.1.5 · tcg (/dev/kvm cannot run this guest: software emulation (slower)) "
        "· context cove-t · Resource Saver: rests after 5 idle min")
    assert env.dash.status_label.toolTip().startswith("accelerator tcg\n")
    env.backend.emit("resting")
    env.qtbot.waitUntil(lambda: env.dash.status_label.text().endswith(
        "Resource Saver: resting"), timeout=5000)


def test_inspect_shows_the_record_formatted_and_copies_it(env: Env) -> None:
    b = env.dash.container_buttons
    env.dash.container_table.clearSelection()
    assert not b["Inspect"].isEnabled()
    env.dash.select_container("job")  # not running: its record is there all the same
    assert b["Inspect"].isEnabled()
    b["Inspect"].click()
    env.qtbot.waitUntil(lambda: env.dash.inspector is not None, timeout=5000)
    dlg = env.dash.inspector
    assert dlg is not None and dlg.windowTitle() == "Inspect job"
    want = json.dumps({"Id": JOB, "Name": "/job", "Config": {"Tty": False,
                                                             "Env": ["SECRET=x"]}}, indent=2)
    assert dlg.view.toPlainText() == want and dlg.view.isReadOnly()
    dlg.copy_button.click()
    assert QGuiApplication.clipboard().text() == want
    # Another container's replaces it (one inspect window at a time).
    env.dash.select_container("web")
    b["Inspect"].click()
    env.qtbot.waitUntil(lambda: env.dash.inspector is not dlg, timeout=5000)
    assert '"Name": "/web"' in env.dash.inspector.view.toPlainText()  # type: ignore[union-attr]


def test_inspect_of_a_container_gone_meanwhile_says_so(env: Env) -> None:
    env.dash.select_container("web")
    env.engine.containers = [c for c in env.engine.containers if c["Id"] != WEB]
    env.dash.container_buttons["Inspect"].click()
    env.qtbot.waitUntil(lambda: "No such container" in env.dash.statusBar().currentMessage(),
                        timeout=5000)
    assert env.dash.inspector is None


def test_refreshes_on_docker_events(env: Env) -> None:
    env.qtbot.waitUntil(lambda: env.engine.event_streams() == 1, timeout=5000)
    env.engine.containers.append({**env.engine.containers[0], "Id": "c4" * 32,
                                  "Names": ["/cache"], "Image": "redis:7"})
    env.engine.event("container", "create", name="cache")
    env.qtbot.waitUntil(lambda: "cache" in env.names(), timeout=5000)


def test_running_containers_show_live_cpu_and_memory(env: Env) -> None:
    """Read on the worker from the engine's stats, two readings for a CPU figure; not
    while the window is hidden; stopped containers show none."""
    env.dash.sample_stats()
    env.qtbot.wait(200)
    assert env.engine.stats_reads == {}  # hidden: nothing read
    env.dash.show()
    env.dash.sample_stats()
    env.qtbot.waitUntil(lambda: env.engine.stats_reads.get(WEB) == 1, timeout=5000)
    t = env.dash.container_table
    row = env.names().index("web")
    env.qtbot.waitUntil(lambda: t.item(row, 6).text() == "20.0 MB / 2.0 GB", timeout=5000)
    assert t.item(row, 5).text() == ""  # one reading: no CPU figure yet
    env.dash.sample_stats()
    env.qtbot.waitUntil(lambda: t.item(row, 5).text() == "50.0 %", timeout=5000)
    job = env.names().index("job")
    assert (t.item(job, 5).text(), t.item(job, 6).text()) == ("", "")
    assert JOB not in env.engine.stats_reads
    assert t.horizontalHeaderItem(5).text() == "CPU"


SHOP_API, SHOP_DB = "d1" * 32, "d2" * 32


def _shop(env: Env) -> None:
    """A Compose project "shop": api running, db exited."""
    label = {"com.docker.compose.project": "shop"}
    env.engine.containers += [
        container(SHOP_API, "shop-api-1", "shop-api", labels=label),
        container(SHOP_DB, "shop-db-1", "postgres:16", state="exited", labels=label)]
    env.dash.refresh()
    env.qtbot.waitUntil(lambda: "▾ shop" in env.names(), timeout=5000)


def test_compose_projects_are_groups_that_collapse(env: Env) -> None:
    _shop(env)
    assert env.names() == ["▾ shop", "    shop-api-1", "    shop-db-1", "db", "web", "job"]
    t = env.dash.container_table
    assert t.item(0, 2).text() == "1 of 2 running"
    assert t.item(0, 0).font().bold()
    env.dash.select_project("shop")
    t.itemActivated.emit(t.item(0, 0))  # Enter, or a double-click
    assert env.names() == ["▸ shop", "db", "web", "job"]
    assert env.dash.selected_project() is not None  # still selected, collapsed
    env.dash.toggle_project("shop")
    assert env.names()[:3] == ["▾ shop", "    shop-api-1", "    shop-db-1"]
    # The filters apply inside a project: the header counts what is shown.
    env.dash.state_filter.setCurrentText("Running")
    assert env.names() == ["▾ shop", "    shop-api-1", "db", "web"]
    assert t.item(0, 2).text() == "1 of 1 running"


def test_a_projects_buttons_act_on_all_its_containers(env: Env) -> None:
    _shop(env)
    env.dash.select_project("shop")
    b = env.dash.container_buttons
    assert b["Start"].isEnabled() and b["Stop"].isEnabled() and b["Delete"].isEnabled()
    assert not b["Terminal"].isEnabled() and not b["Inspect"].isEnabled()
    assert env.dash.log_container == ""  # a project has no log of its own
    b["Start"].click()  # only the one not running
    env.qtbot.waitUntil(lambda: env.dash.rows and isinstance(env.dash.rows[0], ProjectRow)
                        and env.dash.rows[0].summary == "2 of 2 running", timeout=5000)
    assert env.calls("POST", f"/containers/{SHOP_DB}/start") == 1
    assert env.calls("POST", f"/containers/{SHOP_API}/start") == 0
    assert not b["Start"].isEnabled()  # the project stays selected after the refresh
    b["Stop"].click()
    env.qtbot.waitUntil(lambda: env.state_of("    shop-api-1").startswith("Exited"),
                        timeout=5000)
    assert env.calls("POST", f"/containers/{SHOP_API}/stop") == 1
    assert "Stopped project shop (2 containers)" in env.dash.statusBar().currentMessage()
    env.answer = False
    b["Delete"].click()
    assert env.questions == ["Delete the 2 containers of Compose project shop? Running ones "
                             "are stopped first; its volumes and networks stay."]
    env.qtbot.wait(100)
    assert "▾ shop" in env.names()
    env.answer = True
    b["Delete"].click()
    env.qtbot.waitUntil(lambda: "▾ shop" not in env.names(), timeout=5000)
    assert env.names() == ["db", "web", "job"]
    assert env.calls("DELETE", f"/containers/{SHOP_API}") == 1
    assert env.calls("DELETE", f"/containers/{SHOP_DB}") == 1


def test_pull_shows_progress_then_lists_the_image(env: Env) -> None:
    seen: list[int] = []
    env.dash.pull_progress.valueChanged.connect(seen.append)
    env.dash.pull_name.setText("alpine:3.20")
    env.dash.pull_button.click()
    env.qtbot.waitUntil(lambda: "Pulled alpine:3.20" in env.dash.statusBar().currentMessage(),
                        timeout=5000)
    assert env.engine.pulls == ["alpine:3.20"]
    assert seen and max(seen) == 100 and 50 in seen  # halfway through both, then done
    assert "Downloaded newer image" in env.dash.statusBar().currentMessage()
    env.qtbot.waitUntil(lambda: any("alpine:3.20" in i.tags for i in env.dash.images),
                        timeout=5000)
    assert env.dash.pull_name.text() == "" and env.dash.pull_button.isEnabled()
    assert not env.dash.pull_progress.isVisible()
    # Enter in the box pulls too; a bare name is its latest tag.
    env.dash.pull_name.setText("busybox")
    env.qtbot.keyClick(env.dash.pull_name, Qt.Key.Key_Return)
    env.qtbot.waitUntil(lambda: env.engine.pulls[-1:] == ["busybox:latest"], timeout=5000)


@pytest.mark.parametrize(("name", "says"), [
    ("nosuch/thing:1", "Cannot pull nosuch/thing:1: no such image in docker.io, or it is "
                       "private (check the name and tag; docker login docker.io if it is "
                       "yours): pull access denied for nosuch/thing"),
    ("offline/app", "Cannot pull offline/app: the registry docker.io cannot be reached (no "
                    "network, a proxy needed, or the registry is down): dial tcp: lookup "
                    "registry.example: no such host"),
])
def test_a_pull_that_fails_says_why_and_what_to_do(env: Env, name: str, says: str) -> None:
    env.dash.pull_name.setText(name)
    env.dash.pull_button.click()
    env.qtbot.waitUntil(lambda: env.dash.statusBar().currentMessage().startswith(
        "Cannot pull"), timeout=5000)
    assert env.dash.statusBar().currentMessage().startswith(says)
    assert env.dash.pull_button.isEnabled() and env.dash.pull_name.text() == name


def test_run_an_image_from_the_form(env: Env) -> None:
    """The selected image prefilled; the container made with the form's options and
    shown in Containers. The shares offered are the VM's (the backend's status)."""
    env.controller.state.shares = [str(env.inst.folder.parent)]
    env.dash.tabs.setCurrentIndex(1)
    env.dash.image_table.selectRow(0)  # nginx:1.27
    env.dash.image_buttons["Run…"].click()
    dlg = env.dash.run_dialog
    assert dlg is not None and dlg.image.text() == "nginx:1.27"
    dlg.name.setText("site")
    dlg.ports.setText("8081:80")
    dlg.binds.setPlainText(f"{env.inst.folder}:/usr/share/nginx/html:ro")
    dlg.env.setPlainText("MODE=dev")
    dlg.restart.setCurrentText("always")
    dlg.run_button.click()
    env.qtbot.waitUntil(lambda: "Started site from nginx:1.27" in
                        env.dash.statusBar().currentMessage(), timeout=5000)
    name, body = env.engine.created[-1]
    assert name == "site" and body["Image"] == "nginx:1.27" and body["Env"] == ["MODE=dev"]
    host = body["HostConfig"]
    assert host["PortBindings"] == {"80/tcp": [{"HostIp": "", "HostPort": "8081"}]}
    assert host["Binds"] == [f"{env.inst.folder}:/usr/share/nginx/html:ro"]
    assert host["RestartPolicy"] == {"Name": "always"}
    assert env.dash.tabs.currentIndex() == 0
    env.qtbot.waitUntil(lambda: "site" in env.names(), timeout=5000)


def test_a_run_the_engine_refuses_says_so(env: Env) -> None:
    env.dash.image_buttons["Run…"].click()
    dlg = env.dash.run_dialog
    assert dlg is not None and dlg.image.text() == ""  # nothing selected: empty
    dlg.image.setText("busybox")
    dlg.name.setText("web")  # taken
    dlg.run_button.click()
    env.qtbot.waitUntil(lambda: env.dash.statusBar().currentMessage().startswith(
        "Cannot run busybox: "), timeout=5000)
    assert 'The container name "/web" is already in use' in \
        env.dash.statusBar().currentMessage()


def test_images_delete_and_prune(env: Env) -> None:
    d = env.dash
    d.image_table.selectRow(0)
    d.image_buttons["Delete"].click()
    assert env.questions[-1] == "Delete the image nginx:1.27?"
    env.qtbot.waitUntil(lambda: d.image_table.rowCount() == 1, timeout=5000)
    assert env.calls("DELETE", "/images/sha256:" + "a" * 64) == 1
    d.image_buttons["Prune unused"].click()
    env.qtbot.waitUntil(lambda: d.image_table.rowCount() == 0, timeout=5000)
    assert env.calls("POST", "/images/prune") == 1
    assert d.statusBar().currentMessage() == "Pruned images: 5.0 MB freed"


def test_volumes_delete_and_prune(env: Env) -> None:
    d = env.dash
    env.answer = False
    d.volume_table.selectRow(0)
    d.volume_buttons["Delete"].click()
    assert env.questions == ["Delete the volume pgdata and its data?"]
    env.answer = True
    d.volume_buttons["Delete"].click()
    env.qtbot.waitUntil(lambda: d.volume_table.rowCount() == 0, timeout=5000)
    assert env.calls("DELETE", "/volumes/pgdata") == 1
    d.volume_buttons["Prune unused"].click()
    env.qtbot.waitUntil(lambda: env.calls("POST", "/volumes/prune") == 1, timeout=5000)


def test_stopping_cove_empties_the_dashboard(env: Env) -> None:
    env.backend.stop_now()
    env.qtbot.waitUntil(lambda: env.dash.container_table.rowCount() == 0, timeout=5000)
    assert env.dash.banner.text() == "Cove is stopped"
    assert not env.dash.tabs.isEnabled()


# -- the engine's address -----------------------------------------------------------------


def test_docker_service_on_a_named_pipe_needs_no_socket_file(tmp_path: Path) -> None:
    from desktop.tray.docker_service import DockerService

    urls: list[str] = []
    svc = DockerService(tmp_path / "absent.sock",
                        client_factory=lambda url: urls.append(url) or object(),
                        base_url="npipe:////./pipe/cove_engine")
    assert svc.client is not None
    assert urls == ["npipe:////./pipe/cove_engine"]


def test_docker_service_on_a_missing_unix_socket_says_start_cove(tmp_path: Path) -> None:
    from desktop.tray.docker_service import DockerError, DockerService

    svc = DockerService(tmp_path / "absent.sock", client_factory=lambda url: object())
    with pytest.raises(DockerError, match="start Cove first"):
        svc.client  # noqa: B018 - the property connects


def test_volume_sizes_are_read_when_the_tab_is_shown_not_at_each_refresh(env: Env) -> None:
    """The engine walks every volume's files to size it: the Dashboard asks for volumes
    alone (?type=volume) when the Volumes tab opens, and refreshes while it stays open ask
    again at most every VOLUME_SIZES_SECONDS. A size the engine did not compute is "-"."""
    d, vt = env.dash, env.dash.volume_table
    assert vt.horizontalHeaderItem(4).text() == "Size"
    assert vt.item(0, 4).text() == "-" and env.engine.df_types == []  # not asked yet
    env.engine.volumes.append({"Name": "cache", "Driver": "local", "Mountpoint": "/m"})
    env.engine.volume_sizes.update(pgdata=123_000_000, cache=-1)
    d.tabs.setCurrentWidget(d.volume_page)
    d.refresh()
    env.qtbot.waitUntil(lambda: vt.rowCount() == 2 and vt.item(1, 4).text() == "123.0 MB",
                        timeout=5000)
    assert [vt.item(i, 0).text() for i in range(2)] == ["cache", "pgdata"]
    assert vt.item(0, 4).text() == "-"
    assert env.engine.df_types == ["volume"]
    for _ in range(3):
        d.refresh()
    env.qtbot.wait(300)
    assert env.engine.df_types == ["volume"]  # within the interval: the sizes shown stay
    assert vt.item(1, 4).text() == "123.0 MB"
    d.tabs.setCurrentIndex(0)
    d.tabs.setCurrentWidget(d.volume_page)  # opened again: read at once
    env.qtbot.waitUntil(lambda: env.engine.df_types == ["volume"] * 2, timeout=5000)


def test_everything_the_mouse_does_the_keyboard_does(env: Env) -> None:
    """The keyboard pass: tabs, the filter, delete, stop through a button's Alt key,
    inspect, and a port's link (the table's links take only the mouse) by keys alone."""
    d = env.dash
    d.show()
    d.activateWindow()
    env.qtbot.waitUntil(d.isActiveWindow, timeout=5000)

    def keys(seq: str, widget: object = None) -> None:
        env.qtbot.keySequence(widget or QApplication.focusWidget() or d, QKeySequence(seq))

    keys("Ctrl+2")
    assert d.tabs.currentIndex() == 1
    keys("Ctrl+L")
    assert d.pull_name.hasFocus()
    keys("Ctrl+5")
    assert d.tabs.currentWidget() is d.resources_tab
    keys("Ctrl+F")  # back to Containers, into the filter
    assert d.tabs.currentIndex() == 0 and d.container_filter.hasFocus()
    env.qtbot.keyClicks(d.container_filter, "db")
    assert env.names() == ["db"]
    env.qtbot.keyClick(d.container_filter, Qt.Key.Key_Escape)
    assert d.container_filter.text() == "" and env.names() == ["db", "web", "job"]

    d.select_container("web")
    d.container_table.setFocus()
    keys("Ctrl+B")
    assert env.urls == ["http://localhost:8080/"]
    keys("Alt+T")  # S&top
    env.qtbot.waitUntil(lambda: env.calls("POST", f"/containers/{WEB}/stop") == 1,
                        timeout=5000)
    keys("Ctrl+I")
    env.qtbot.waitUntil(lambda: d.inspector is not None, timeout=5000)
    d.inspector.close()  # type: ignore[union-attr]
    d.activateWindow()
    env.qtbot.waitUntil(d.isActiveWindow, timeout=5000)

    d.select_container("job")
    d.container_table.setFocus()
    keys("Del")  # not running: deleted without a question
    env.qtbot.waitUntil(lambda: env.calls("DELETE", f"/containers/{JOB}") == 1,
                        timeout=5000)
    assert env.questions == []
    # Delete in the filter edits the text: it deletes no container.
    d.select_container("db")
    d.container_filter.setText("x")
    d.container_filter.setFocus()
    d.container_filter.setCursorPosition(0)
    keys("Del", d.container_filter)
    assert d.container_filter.text() == "" and env.calls("DELETE", f"/containers/{DB}") == 0


def test_a_container_without_a_web_port_says_so_for_ctrl_b(env: Env) -> None:
    env.dash.select_container("job")
    env.dash.open_selected_port()
    assert env.urls == []
    assert "publishes no TCP port" in env.dash.statusBar().currentMessage()


def test_the_readme_lists_every_key() -> None:
    from desktop.tray.dashboard import KEYS

    readme = (Path(__file__).parents[3] / "README.md").read_text()
    for seq, does in KEYS:
        assert f"| {seq} | {does} |" in readme, f"README lacks the key {seq}"
