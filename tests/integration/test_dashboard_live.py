"""The Dashboard on the session's real instance (pytest-qt, offscreen): the real backend's
status and events, the real engine through Cove's socket. A Compose project shows as a
group whose buttons act on all of it, a busy container's CPU figure moves, and Inspect
shows the engine's record."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from pytestqt.qtbot import QtBot  # noqa: E402

from desktop.instance import Instance  # noqa: E402
from desktop.tray.controller import TrayController  # noqa: E402
from desktop.tray.dashboard import Dashboard, ProjectRow  # noqa: E402
from tests.integration.conftest import Cove  # noqa: E402


@pytest.fixture
def dash(cove: Cove, qtbot: QtBot) -> Iterator[Dashboard]:
    inst = Instance(cove.name, home=cove.home)
    controller = TrayController(inst, spawn=lambda i: None)
    d = Dashboard(controller, confirm=lambda q: True)
    qtbot.addWidget(d)
    controller.start_following()
    qtbot.waitUntil(lambda: controller.state.is_up, timeout=30000)
    d.show()
    try:
        yield d
    finally:
        d.close()
        controller.close()


def _names(d: Dashboard) -> list[str]:
    t = d.container_table
    return [t.item(i, 0).text() for i in range(t.rowCount())]


def test_the_status_bar_reads_the_real_backend(cove: Cove, dash: Dashboard,
                                               qtbot: QtBot) -> None:
    st = cove.status()
    qtbot.waitUntil(lambda: dash.status_label.text() != "", timeout=10000)
    text = dash.status_label.text()
    assert text.startswith(f"Docker {st['engine_version']} · {st['accel']}")
    assert f"context {st['context']}" in text and "Resource Saver: off" in text


def test_a_compose_project_is_a_group_and_a_busy_containers_cpu_moves(
        cove: Cove, hello_image: str, dash: Dashboard, qtbot: QtBot,
        tmp_path: Path) -> None:
    project = f"dash{uuid.uuid4().hex[:6]}"
    (tmp_path / "compose.yaml").write_text(
        "services:\n"
        "  busy:\n"
        f"    image: {hello_image}\n"
        "    command: [sh, -c, 'while :; do :; done']\n"
        "  idle:\n"
        f"    image: {hello_image}\n"
        "    command: [sleep, '3600']\n")
    up = ["compose", "-p", project, "-f", str(tmp_path / "compose.yaml")]
    cove.docker(*up, "up", "-d", timeout=300)
    try:
        qtbot.waitUntil(lambda: f"▾ {project}" in _names(dash), timeout=30000)
        names = _names(dash)
        head = names.index(f"▾ {project}")
        assert sorted(names[head + 1:head + 3]) == [f"    {project}-busy-1",
                                                    f"    {project}-idle-1"]
        row = dash.rows[head]
        assert isinstance(row, ProjectRow) and row.summary == "2 of 2 running"
        # The busy one's CPU figure: two readings apart, most of a core under emulation.
        busy = names.index(f"    {project}-busy-1")
        t = dash.container_table

        def cpu() -> float:
            text = t.item(busy, 5).text() if t.item(busy, 5) else ""
            return float(text.removesuffix(" %")) if text else -1.0

        qtbot.waitUntil(lambda: cpu() > 20.0, timeout=60000)
        assert " / " in t.item(busy, 6).text()  # memory: used / limit
        # Inspect: the engine's own record.
        dash.select_container(f"{project}-busy-1")
        dash.container_buttons["Inspect"].click()
        qtbot.waitUntil(lambda: dash.inspector is not None, timeout=30000)
        assert dash.inspector is not None
        record = json.loads(dash.inspector.view.toPlainText())
        assert record["Config"]["Labels"]["com.docker.compose.project"] == project
        # Stop the whole project from its header row.
        dash.select_project(project)
        dash.container_buttons["Stop"].click()

        def stopped() -> bool:
            rows = [r for r in dash.rows if isinstance(r, ProjectRow) and r.name == project]
            return bool(rows) and rows[0].running == 0

        qtbot.waitUntil(stopped, timeout=120000)
        ps = cove.docker("ps", "-q", "--filter", f"label=com.docker.compose.project={project}")
        assert ps.stdout.strip() == ""
    finally:
        cove.docker(*up, "down", "-t", "1", check=False, timeout=300)


def test_a_pull_from_a_local_registry_shows_progress_and_a_bad_name_says_so(
        cove: Cove, hello_image: str, registry: int, dash: Dashboard, qtbot: QtBot,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The Dashboard pulls with the credentials `docker login` kept (the SDK reads the
    CLI's config), from the registry running in the VM behind a published port."""
    ref = f"localhost:{registry}/cove/dash:{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("DOCKER_CONFIG", str(cove.docker_config))
    cove.docker("login", f"localhost:{registry}", "-u", "cove", "--password-stdin",
                input="s3cret-pw\n")
    try:
        cove.docker("tag", hello_image, ref)
        cove.docker("push", ref, timeout=300)
        cove.docker("rmi", ref)
        values: list[int] = []
        dash.pull_progress.valueChanged.connect(values.append)
        dash.tabs.setCurrentIndex(1)
        dash.pull_name.setText(ref)
        dash.pull_button.click()
        qtbot.waitUntil(lambda: dash.statusBar().currentMessage().startswith(
            ("Pulled", "Cannot pull")), timeout=300000)
        assert dash.statusBar().currentMessage().startswith(f"Pulled {ref}"), \
            dash.statusBar().currentMessage()
        assert values and max(values) == 100
        qtbot.waitUntil(lambda: any(ref in i.tags for i in dash.images), timeout=30000)
        missing = f"localhost:{registry}/cove/none:1"
        dash.pull_name.setText(missing)
        dash.pull_button.click()
        qtbot.waitUntil(lambda: dash.statusBar().currentMessage().startswith(
            f"Cannot pull {missing}"), timeout=120000)
        assert "no such image" in dash.statusBar().currentMessage()
    finally:
        cove.docker("logout", f"localhost:{registry}", check=False)
        cove.docker("rmi", "-f", ref, check=False)


def test_run_from_the_form_and_reach_the_port(cove: Cove, hello_image: str,
                                              shares: dict[str, Path], dash: Dashboard,
                                              qtbot: QtBot) -> None:
    """The Run form on the real engine: a web server with a published port and a bind of
    a shared folder, reached from the host through Cove's forward."""
    from tests.integration.conftest import free_port, http_get, wait_for

    site = shares["auto"] / f"site-{uuid.uuid4().hex[:6]}"
    site.mkdir()
    (site / "index.html").write_text("run from the Dashboard\n")
    port = free_port()
    name = f"dashrun{uuid.uuid4().hex[:6]}"
    dash.tabs.setCurrentIndex(1)
    dash.image_table.clearSelection()
    dash.image_buttons["Run…"].click()
    dlg = dash.run_dialog
    assert dlg is not None
    dlg.image.setText(hello_image)
    dlg.name.setText(name)
    dlg.command.setText("httpd -f -p 8080 -h /www")
    dlg.ports.setText(f"127.0.0.1:{port}:8080")
    dlg.binds.setPlainText(f"{site}:/www:ro")
    dlg.run_button.click()
    try:
        qtbot.waitUntil(lambda: dash.statusBar().currentMessage().startswith(
            (f"Started {name}", "Cannot run")), timeout=120000)
        assert dash.statusBar().currentMessage().startswith(f"Started {name}"), \
            dash.statusBar().currentMessage()
        body = wait_for("the port from the host", lambda: http_get(port, "/index.html"))
        assert body == b"run from the Dashboard\n"
        qtbot.waitUntil(lambda: name in _names(dash), timeout=30000)
        # A folder outside the shares is refused by the form, with the fix.
        dash.image_buttons["Run…"].click()
        dlg2 = dash.run_dialog
        assert dlg2 is not None and dlg2 is not dlg
        dlg2.image.setText(hello_image)
        dlg2.binds.setPlainText("/srv/not-shared:/x")
        dlg2.run_button.click()
        assert "is not in a folder Cove shares with the VM" in dlg2.error.text()
        assert str(shares["auto"]) in dlg2.error.text()
        dlg2.reject()
    finally:
        cove.docker("rm", "-f", name, check=False)


def test_reclaim_space_gives_the_hosts_disk_back(cove: Cove, hello_image: str,
                                                 dash: Dashboard, qtbot: QtBot) -> None:
    """400 MiB written to a volume no container mounts any more: Reclaim (volumes ticked
    alone) removes it, asks the guest to trim at once, and the data disk's file on the
    host shrinks."""
    from desktop.tray.disktab import allocated

    volume = f"reclaim-{uuid.uuid4().hex[:6]}"
    cove.docker("run", "--rm", "-v", f"{volume}:/v", hello_image, "sh", "-c",
                "dd if=/dev/urandom of=/v/big bs=1M count=400 2>/dev/null && sync",
                timeout=300)
    # The Volumes tab sizes it (the engine's own walk of the volume, ?type=volume).
    dash.refresh()
    qtbot.waitUntil(lambda: volume in [v.name for v in dash.volumes], timeout=30000)
    dash.tabs.setCurrentWidget(dash.volume_page)
    qtbot.waitUntil(lambda: dash.volume_sizes.get(volume, 0) >= 400 * 2**20, timeout=60000)
    tab = dash.disk_tab
    dash.tabs.setCurrentWidget(tab)
    qtbot.waitUntil(lambda: tab.usage is not None, timeout=60000)
    assert tab.usage is not None and tab.usage.volumes[1] >= 400 * 2**20
    before = allocated(cove.folder / "data.qcow2")
    for key, box in tab.boxes.items():
        box.setChecked(key == "volumes")
    tab.reclaim_button.click()
    qtbot.waitUntil(lambda: tab.result.text().startswith(("Freed", "Reclaim failed",
                                                          "Nothing")), timeout=180000)
    assert tab.result.text().startswith("Freed"), tab.result.text()
    after = allocated(cove.folder / "data.qcow2")
    assert cove.docker("volume", "inspect", volume, check=False).returncode != 0
    assert before - after > 300 * 2**20, (before, after, tab.result.text())


def test_the_resources_tab_reads_qemu_and_the_guest(cove: Cove, dash: Dashboard,
                                                    qtbot: QtBot) -> None:
    tab = dash.resources_tab
    dash.tabs.setCurrentWidget(tab)
    for n in (1, 2):
        tab.sample_now()
        qtbot.waitUntil(lambda: len(tab.samples) >= n, timeout=30000)  # noqa: B023
    s = tab.samples[-1]
    assert s.rss is not None and s.rss > 100 * 2**20  # QEMU holds the guest's RAM
    assert s.cpu is not None and s.cpu >= 0
    assert s.guest_total is not None and 1.5 * 2**30 < s.guest_total <= 2 * 2**30
    assert s.guest_used is not None and 0 < s.guest_used < s.guest_total
    assert tab.labels["back"].text() != "-"
