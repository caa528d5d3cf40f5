"""The tray's controller and tray icon against a fake backend (a real control socket
speaking the backend's protocol) and a fake engine (the Docker API on a unix socket)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from pytestqt.qtbot import QtBot  # noqa: E402

from desktop.instance import Instance  # noqa: E402
from desktop.tray import model  # noqa: E402
from desktop.tray.app import TrayApp  # noqa: E402
from desktop.tray.controller import TrayController  # noqa: E402
from tests.helpers.tray_fakes import ENGINE_VERSION, FakeBackend, FakeDockerAPI  # noqa: E402


@pytest.fixture
def inst(docker_config: Path, tmp_path: Path) -> Instance:
    return Instance("t", home=tmp_path / "h")


@pytest.fixture
def spawned() -> list[Instance]:
    return []


@pytest.fixture
def controller(inst: Instance, spawned: list[Instance], qtbot: QtBot) -> Iterator[TrayController]:
    c = TrayController(inst, spawn=spawned.append)
    yield c
    c.close()


@pytest.fixture
def backend(inst: Instance) -> Iterator[FakeBackend]:
    b = FakeBackend(inst)
    yield b
    b.close()


@pytest.fixture
def engine(inst: Instance) -> Iterator[FakeDockerAPI]:
    api = FakeDockerAPI(inst.docker_socket)
    yield api
    api.close()


def _wait_state(qtbot: QtBot, c: TrayController, state: str) -> None:
    qtbot.waitUntil(lambda: c.state.state == state, timeout=5000)


def test_follows_a_running_backend(qtbot: QtBot, backend: FakeBackend,
                                   engine: FakeDockerAPI, controller: TrayController) -> None:
    controller.start_following()
    _wait_state(qtbot, controller, "running")
    assert controller.state.engine_version == ENGINE_VERSION
    # The container count comes from the engine (two of the three containers run).
    qtbot.waitUntil(lambda: controller.state.containers == 2, timeout=5000)
    assert model.status_line(controller.state) == "Cove is running — 2 containers"
    qtbot.waitUntil(lambda: engine.event_streams() == 1, timeout=5000)
    engine.containers[2]["State"] = "running"
    with qtbot.waitSignal(controller.docker_changed, timeout=5000):
        engine.event("container", "start", name="job")
    qtbot.waitUntil(lambda: controller.state.containers == 3, timeout=5000)


def test_no_backend_is_stopped_and_the_tray_starts_one(qtbot: QtBot, inst: Instance,
                                                      controller: TrayController,
                                                      spawned: list[Instance]) -> None:
    controller.start_following()
    qtbot.wait(100)
    assert controller.state.state == "stopped"
    assert not controller.backend_running()
    controller.ensure_started()
    assert spawned == [inst]
    assert controller.state.state == "starting"
    assert model.status_line(controller.state) == "Cove is starting (launching the backend)…"


def test_a_vm_left_running_by_a_dead_backend_is_shown(qtbot: QtBot, inst: Instance,
                                                     spawned: list[Instance]) -> None:
    c = TrayController(inst, spawn=spawned.append, orphan=lambda i: 4242)
    try:
        c.start_following()
        qtbot.waitUntil(lambda: c.state.orphan_pid == 4242, timeout=5000)
        assert c.state.state == "stopped"
        assert "its VM (pid 4242) still runs without a backend" in model.status_line(c.state)
        assert "Start stops it cleanly" in model.tooltip(c.state)
    finally:
        c.close()


def test_ensure_started_leaves_a_running_backend_alone(qtbot: QtBot, backend: FakeBackend,
                                                       controller: TrayController,
                                                       spawned: list[Instance]) -> None:
    controller.ensure_started()
    controller.start()
    assert spawned == []


def test_state_changes_come_from_events(qtbot: QtBot, inst: Instance,
                                        controller: TrayController) -> None:
    backend = FakeBackend(inst, state="")
    try:
        controller.start_following()
        qtbot.waitUntil(lambda: backend.subscribers() == 1, timeout=5000)
        backend.emit("starting", step="agent")
        _wait_state(qtbot, controller, "starting")
        assert controller.state.step == "agent"
        with qtbot.waitSignal(controller.notify, timeout=5000) as sig:
            backend.emit("error", reason="the guest agent did not answer in time; the "
                         "guest's last lines:\n[ 0.4] Oops: int3")
        notice = sig.args[0]
        assert notice == model.Notice("Cove's engine failed to start",
                                      "the guest agent did not answer in time; the guest's "
                                      "last lines:", "critical")
        backend.stop_now()
        qtbot.wait(200)
        assert controller.state.state == "error"  # the reason stays until the next start
    finally:
        backend.close()


def test_port_failed_is_a_notification(qtbot: QtBot, backend: FakeBackend,
                                       controller: TrayController) -> None:
    controller.start_following()
    _wait_state(qtbot, controller, "running")  # connected, and the status applied
    with qtbot.waitSignal(controller.notify, timeout=5000) as sig:
        backend.emit("port_failed", proto="tcp", host_port=8080, container="web",
                     reason="port 8080 is already in use on the host by another program; "
                            "the container runs, but localhost:8080 does not reach it")
    assert sig.args[0].title == "Port 8080/tcp could not be published"
    assert "already in use" in sig.args[0].message


def test_history_is_not_announced_again(qtbot: QtBot, inst: Instance,
                                        controller: TrayController) -> None:
    backend = FakeBackend(inst)
    backend.emit("port_failed", proto="tcp", host_port=80, container="web", reason="x")
    notices: list[Any] = []
    controller.notify.connect(notices.append)
    try:
        controller.start_following()
        _wait_state(qtbot, controller, "running")
        qtbot.wait(100)
        assert "80/tcp" in controller.state.failed_ports
        assert notices == []
    finally:
        backend.close()


def test_stop_asks_the_backend(qtbot: QtBot, backend: FakeBackend,
                               controller: TrayController) -> None:
    controller.start_following()
    _wait_state(qtbot, controller, "running")
    done: list[Any] = []
    controller.stop(on_done=done.append)
    qtbot.waitUntil(lambda: done == [True], timeout=10000)
    assert [r["op"] for r in backend.requests if r["op"] not in ("events", "status")] == \
        ["stop"]
    _wait_state(qtbot, controller, "stopped")
    assert not controller.backend_running()


def test_restart_stops_then_starts(qtbot: QtBot, inst: Instance, backend: FakeBackend,
                                   controller: TrayController,
                                   spawned: list[Instance]) -> None:
    controller.start_following()
    _wait_state(qtbot, controller, "running")
    controller.restart()
    qtbot.waitUntil(lambda: spawned == [inst], timeout=10000)
    assert backend.ops("stop")


def test_engine_config_refusal_is_the_engines_message(qtbot: QtBot, backend: FakeBackend,
                                                      controller: TrayController) -> None:
    backend.engine_config_error = "unable to configure the Docker daemon: the following " \
                                  "directives don't match any configuration option: bogus"
    errors: list[str] = []
    controller.apply_engine_config({"bogus": 1}, lambda _: None, errors.append)
    qtbot.waitUntil(lambda: errors != [], timeout=5000)
    assert errors == ["the engine refused the config: unable to configure the Docker "
                      "daemon: the following directives don't match any configuration "
                      "option: bogus"]
    assert backend.ops("engine_config")[0]["config"] == {"bogus": 1}


# -- the tray icon and its menu -----------------------------------------------------------


def _menu(app: TrayApp) -> list[tuple[str, bool]]:
    app.menu.aboutToShow.emit()  # what opening the menu does
    return [(a.text(), a.isEnabled()) for a in app.menu.actions() if not a.isSeparator()]


def test_menu_is_rebuilt_from_state_when_it_opens(qtbot: QtBot, backend: FakeBackend,
                                                  engine: FakeDockerAPI,
                                                  controller: TrayController) -> None:
    app = TrayApp(controller, platform="linux")
    assert _menu(app)[0] == ("Cove is stopped", False)
    assert app.tray.toolTip() == "Cove is stopped"
    controller.start_following()
    qtbot.waitUntil(lambda: controller.state.containers == 2, timeout=5000)
    menu = _menu(app)
    assert menu == [("Cove is running — 2 containers", False), ("Dashboard", True),
                    ("Settings…", True), ("Start", False), ("Stop", True),
                    ("Restart", True), ("Troubleshoot…", True), ("About Cove", True),
                    ("Quit Cove", True)]
    assert app.tray.toolTip().startswith("Cove is running — 2 containers")
    assert not app.tray.icon().isNull()


def test_windows_menu_has_the_switch(qtbot: QtBot, controller: TrayController) -> None:
    app = TrayApp(controller, platform="win32")
    assert ("Switch to Windows containers…", True) in _menu(app)


def test_notifications_reach_the_tray(qtbot: QtBot, controller: TrayController,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    app = TrayApp(controller, platform="linux")
    shown: list[tuple[Any, ...]] = []
    monkeypatch.setattr(app.tray, "showMessage", lambda *a: shown.append(a))
    controller.note_restart_needed("CPUs")
    assert shown == [("Cove needs a restart", "Restart Cove to apply the new settings: CPUs",
                      app.tray.MessageIcon.Information, 8000)]
    assert ("Restart to apply settings", True) in _menu(app)


def test_quit_asks_before_stopping_running_containers(qtbot: QtBot, backend: FakeBackend,
                                                      engine: FakeDockerAPI,
                                                      controller: TrayController) -> None:
    questions: list[str] = []
    app = TrayApp(controller, platform="linux",
                  confirm=lambda title, q: questions.append(q) is not None)
    controller.start_following()
    qtbot.waitUntil(lambda: controller.state.containers == 2, timeout=5000)
    app.quit()  # the user says no
    assert questions == ["2 containers are running. Quitting Cove stops them and the VM."]
    qtbot.wait(100)
    assert not backend.ops("stop") and not app.quitting


def test_quit_stops_cove(qtbot: QtBot, backend: FakeBackend, engine: FakeDockerAPI,
                         controller: TrayController, monkeypatch: pytest.MonkeyPatch) -> None:
    from PySide6.QtWidgets import QApplication

    quits: list[int] = []
    monkeypatch.setattr(QApplication, "quit", lambda: quits.append(1))
    app = TrayApp(controller, platform="linux", confirm=lambda title, q: True)
    controller.start_following()
    qtbot.waitUntil(lambda: controller.state.containers == 2, timeout=5000)
    app.quit()
    qtbot.waitUntil(lambda: bool(quits), timeout=10000)
    assert backend.ops("stop")


def test_switch_engine_runs_on_the_worker_and_shows_a_refusal(
        qtbot: QtBot, inst: Instance, spawned: list[Instance]) -> None:
    from tests.helpers.windows_fakes import FakeWindowsHost, switcher

    host = FakeWindowsHost(system="Linux")
    c = TrayController(inst, spawn=spawned.append,
                       switcher=lambda: switcher(inst.home, host, inst.docker_socket))
    app = TrayApp(c, platform="win32")
    notices: list[model.Notice] = []
    c.notify.connect(notices.append)
    try:
        app.actions["switch_windows"].trigger()
        assert c.state.switching_to == "windows"
        assert ("Switching to Windows containers…", False) in _menu(app)
        qtbot.waitUntil(lambda: bool(notices), timeout=5000)
        assert notices == [model.Notice("Cove could not switch to Windows containers",
                                        "Windows containers need a Windows host; this is "
                                        "Linux", "warning")]
        assert c.state.switching_to == "" and c.state.engine_mode == "linux"
        # On a Windows host it switches, and the menu then offers the way back.
        host._system = "Windows"
        app.rebuild_menu()
        app.actions["switch_windows"].trigger()
        qtbot.waitUntil(lambda: c.state.engine_mode == "windows", timeout=5000)
        assert notices[-1].title == "Cove uses Windows containers"
        assert ("Switch to Linux containers…", True) in _menu(app)
        assert host.service == "running"
    finally:
        c.close()


class _BrokenStream:
    """An events stream whose connection breaks after one event."""

    def __init__(self) -> None:
        self.closed = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        yield {"Type": "network"}
        raise ConnectionResetError("the relay dropped the connection")

    def close(self) -> None:
        self.closed = True


class _Docker:
    def __init__(self) -> None:
        self.streams: list[_BrokenStream] = []

    def events(self) -> _BrokenStream:
        self.streams.append(_BrokenStream())
        return self.streams[-1]

    def running_count(self) -> int:
        return 0

    def close(self) -> None:
        pass


def test_an_events_stream_that_broke_is_closed_before_the_next(qtbot: QtBot,
                                                                inst: Instance) -> None:
    """The tray watches the engine's events and opens a new stream when one breaks; the
    broken one's socket is closed then, not left open until the garbage collector."""
    docker = _Docker()
    c = TrayController(inst, spawn=lambda i: None, docker=docker)  # type: ignore[arg-type]
    try:
        c._start_docker_watch()
        qtbot.waitUntil(lambda: len(docker.streams) >= 2, timeout=10000)
        assert docker.streams[0].closed
    finally:
        c.close()


def test_the_tooltip_says_what_qemu_costs_now_while_the_vm_runs(
        qtbot: QtBot, backend: FakeBackend, engine: FakeDockerAPI,
        controller: TrayController) -> None:
    """The tooltip's live line: QEMU's CPU and resident memory, read on the host (a real
    busy process stands for QEMU here); none while the VM is stopped, and no timer then."""
    import subprocess
    import sys

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        app = TrayApp(controller, platform="linux")
        controller.start_following()
        qtbot.waitUntil(lambda: controller.state.containers == 2, timeout=5000)
        assert "Now:" not in app.tray.toolTip() and not app.host_timer.isActive()
        controller.state.qemu_pid = busy.pid
        app.update_icon(controller.state)
        assert app.host_timer.isActive()
        first = app.tray.toolTip().splitlines()[-1]
        assert first.startswith("Now: ") and first.endswith(" held on this computer")
        assert "% of a core" not in first  # a CPU share needs two looks
        qtbot.wait(300)
        app.look_at_host()
        line = app.tray.toolTip().splitlines()[-1]
        cpu = float(line.removeprefix("Now: ").split(" % of a core")[0])
        assert cpu > 20, line  # the busy loop holds most of a core
        busy.kill()
        busy.wait()
        app.look_at_host()  # the process is gone: no figures rather than old ones
        assert "Now:" not in app.tray.toolTip()
        controller.state.state = "stopped"
        app.update_icon(controller.state)
        assert not app.host_timer.isActive() and controller.state.host_now is None
    finally:
        busy.kill()
        busy.wait()
