"""The Settings dialog: validation by Settings itself, applying, restarts, daemon.json."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from pytestqt.qtbot import QtBot  # noqa: E402

from desktop.instance import Instance  # noqa: E402
from desktop.settings import Settings, SettingsError  # noqa: E402
from desktop.tray.autostart import XdgAutostart  # noqa: E402
from desktop.tray.controller import TrayController  # noqa: E402
from desktop.tray.settings_dialog import (  # noqa: E402
    Form,
    SettingsDialog,
    pending_changes,
    settings_from_form,
)
from tests.helpers.tray_fakes import FakeBackend  # noqa: E402

pytestmark = pytest.mark.usefixtures("fixed_host")  # 8 CPUs, 16 GiB (tests/conftest.py)


BASE = Settings(cpus=2, memory_mib=4096, disk_gib=64, shares=["/home/me"])


def _form(**kw: object) -> Form:
    values = {"cpus": 2, "memory_gib": 4.0, "disk_gib": 64, "daemon_json": "{}",
              "shares": ["/home/me"], "expose_all": False, **kw}
    return Form(**values)  # type: ignore[arg-type]


def test_form_values_are_validated_by_settings_itself() -> None:
    with pytest.raises(SettingsError) as e:
        settings_from_form(BASE, _form(cpus=12), disk_exists=False)
    assert str(e.value) == "cpus: 12 is more than this computer has (8); use at most 8"
    with pytest.raises(SettingsError, match=r"memory: 256 MiB is too little; use at least 512M"):
        settings_from_form(BASE, _form(memory_gib=0.25), disk_exists=False)
    with pytest.raises(SettingsError, match="shares: 'relative/dir' is not an absolute path"):
        settings_from_form(BASE, _form(shares=["relative/dir"]), disk_exists=False)
    with pytest.raises(SettingsError, match="engine_config: must be a JSON object"):
        settings_from_form(BASE, _form(daemon_json="[1, 2]"), disk_exists=False)
    with pytest.raises(SettingsError, match="daemon.json is not valid JSON"):
        settings_from_form(BASE, _form(daemon_json="{debug: true}"), disk_exists=False)


def test_disk_only_grows_once_it_exists() -> None:
    with pytest.raises(SettingsError, match=r"the data disk can only grow \(it is 64G now\)"):
        settings_from_form(BASE, _form(disk_gib=32), disk_exists=True)
    assert settings_from_form(BASE, _form(disk_gib=32), disk_exists=False).disk_gib == 32
    assert settings_from_form(BASE, _form(disk_gib=128), disk_exists=True).disk_gib == 128


def test_pending_changes() -> None:
    new = settings_from_form(BASE, _form(cpus=4, memory_gib=6, daemon_json='{"debug": true}',
                                         expose_all=True), disk_exists=False)
    assert new.memory_mib == 6144
    assert pending_changes(BASE, new) == (["CPUs", "memory", "port exposure"], True)
    same = settings_from_form(BASE, _form(), disk_exists=False)
    assert pending_changes(BASE, same) == ([], False)


class Env:
    def __init__(self, tmp_path: Path, qtbot: QtBot, running: bool) -> None:
        self.inst = Instance("t", home=tmp_path / "h")
        self.inst.save_settings(Settings(cpus=2, memory_mib=4096, disk_gib=64,
                                         shares=[str(tmp_path)]))
        self.backend = FakeBackend(self.inst) if running else None
        self.spawned: list[Instance] = []
        self.controller = TrayController(self.inst, spawn=self.spawned.append)
        if running:
            self.controller.start_following()
            qtbot.waitUntil(lambda: self.controller.state.state == "running", timeout=5000)
        self.autostart = XdgAutostart(tmp_path / "config")
        self.questions: list[str] = []
        self.answer = False
        self.dialog = SettingsDialog(self.controller, self.autostart,
                                     confirm=lambda q: self.questions.append(q) is None
                                     and self.answer)
        qtbot.addWidget(self.dialog)

    def close(self) -> None:
        self.controller.close()
        if self.backend is not None:
            self.backend.close()


@pytest.fixture
def running(tmp_path: Path, qtbot: QtBot) -> Iterator[Env]:
    e = Env(tmp_path, qtbot, running=True)
    yield e
    e.close()


@pytest.fixture
def stopped(tmp_path: Path, qtbot: QtBot) -> Iterator[Env]:
    e = Env(tmp_path, qtbot, running=False)
    yield e
    e.close()


def test_dialog_refuses_bad_values_with_the_reason(stopped: Env) -> None:
    d = stopped.dialog
    assert d.cpus.value() == 2 and d.memory.value() == 4.0 and d.disk.value() == 64
    d.cpus.setValue(20)
    assert d.error.text() == "cpus: 20 is more than this computer has (8); use at most 8"
    assert not d.apply_button.isEnabled()
    d.apply()  # even when called directly, nothing is saved
    assert stopped.inst.load_settings().cpus == 2
    d.cpus.setValue(4)
    assert d.error.text() == "" and d.apply_button.isEnabled()
    d.daemon_json.setPlainText('{"debug": tru')
    assert "daemon.json is not valid JSON" in d.error.text()


def test_stopped_cove_saves_and_needs_no_restart(stopped: Env, tmp_path: Path) -> None:
    d = stopped.dialog
    d.cpus.setValue(4)
    d.daemon_json.setPlainText('{"log-level": "warn"}')
    assert d.hint.text() == ("Changing CPUs needs a restart of Cove (applied at the next "
                             "start). daemon.json is applied at the next start.")
    d.login.setChecked(True)
    d.apply()
    s = stopped.inst.load_settings()
    assert s.cpus == 4 and s.engine_config == {"log-level": "warn"}
    assert d.outcome == "saved" and stopped.questions == []
    assert stopped.autostart.is_enabled()
    assert "Exec=" in stopped.autostart.path.read_text()


def test_shares_are_edited_in_the_dialog(stopped: Env, tmp_path: Path) -> None:
    d = stopped.dialog
    extra = tmp_path / "data"
    extra.mkdir()
    d.add_share(str(extra))
    assert d.error.text() == f"shares: {extra} is inside {tmp_path}, which is shared too; " \
                             "keep only one of them"
    d.shares_list.setCurrentRow(0)
    d._remove_share()
    assert d.error.text() == ""
    d.apply()
    assert stopped.inst.load_settings().shares == [str(extra)]


def test_running_cove_asks_to_restart(qtbot: QtBot, running: Env) -> None:
    d = running.dialog
    d.memory.setValue(6)
    assert d.hint.text() == "Changing memory needs a restart of Cove."
    running.answer = True
    d.apply()
    assert running.questions == ["Changing memory needs a restart of Cove. Restart now? "
                                 "Running containers stop (those with a restart policy start "
                                 "again)."]
    assert d.outcome == "restarting"
    assert running.inst.load_settings().memory_mib == 6144
    assert running.backend is not None
    qtbot.waitUntil(lambda: running.spawned == [running.inst], timeout=10000)
    assert running.backend.ops("stop")


def test_declined_restart_is_remembered(qtbot: QtBot, running: Env) -> None:
    d = running.dialog
    d.expose_all.setChecked(True)
    running.answer = False
    with qtbot.waitSignal(running.controller.notify) as sig:
        d.apply()
    assert d.outcome == "restart needed"
    assert sig.args[0].title == "Cove needs a restart"
    assert running.controller.state.restart_needed
    assert running.inst.load_settings().expose_ports_on_all_interfaces is True


def test_daemon_json_goes_through_the_engine(qtbot: QtBot, running: Env) -> None:
    assert running.backend is not None
    running.backend.engine_config_error = "unable to configure the Docker daemon: the " \
        "following directives don't match any configuration option: bogus"
    d = running.dialog
    d.daemon_json.setPlainText('{"bogus": 1}')
    d.apply()
    qtbot.waitUntil(lambda: d.error.text() != "", timeout=5000)
    assert d.error.text() == "the engine refused the config: unable to configure the " \
        "Docker daemon: the following directives don't match any configuration option: bogus"
    assert running.inst.load_settings().engine_config == {}  # nothing saved
    assert d.outcome == ""
    running.backend.engine_config_error = ""
    d.daemon_json.setPlainText(json.dumps({"log-level": "debug"}))
    d.apply()
    qtbot.waitUntil(lambda: d.outcome == "saved", timeout=5000)
    assert running.backend.ops("engine_config")[-1]["config"] == {"log-level": "debug"}
    assert running.inst.load_settings().engine_config == {"log-level": "debug"}
    assert running.questions == []  # daemon.json needs no VM restart


def test_the_image_store_box_edits_daemon_json_and_follows_it(stopped: Env) -> None:
    """The containerd image store is one daemon.json key: the box sets and clears it,
    keeping every other key and feature; the text, edited by hand, moves the box; and
    the hint says what the switch hides."""
    d = stopped.dialog
    assert not d.image_store.isChecked()
    d.daemon_json.setPlainText('{"debug": true, "features": {"buildkit": true}}')
    d.image_store.setChecked(True)
    assert json.loads(d.daemon_json.toPlainText()) == {
        "debug": True, "features": {"buildkit": True, "containerd-snapshotter": True}}
    assert "Images in the store you leave are not listed" in d.hint.text()
    d.image_store.setChecked(False)
    assert json.loads(d.daemon_json.toPlainText()) == {"debug": True,
                                                        "features": {"buildkit": True}}
    d.daemon_json.setPlainText('{"features": {"containerd-snapshotter": true}}')
    assert d.image_store.isChecked()
    d.daemon_json.setPlainText('{"features": ')  # broken text is never rewritten
    d.image_store.setChecked(False)
    assert d.daemon_json.toPlainText() == '{"features": '
    assert d.image_store.isChecked() and "mend daemon.json first" in d.error.text()
    d.daemon_json.setPlainText('{"features": {"containerd-snapshotter": true}}')
    d.apply()
    assert stopped.inst.load_settings().engine_config == {
        "features": {"containerd-snapshotter": True}}


def test_every_field_has_an_alt_key(stopped: Env, qtbot: QtBot) -> None:
    """The keyboard pass: each field's label has an Alt key that moves the focus to it,
    and a check box's toggles it."""
    from PySide6.QtGui import QKeySequence

    d = stopped.dialog
    d.show()
    d.activateWindow()
    qtbot.waitUntil(d.isActiveWindow, timeout=5000)
    for seq, field in (("Alt+M", d.memory), ("Alt+K", d.disk), ("Alt+E", d.daemon_json),
                       ("Alt+C", d.cpus)):
        qtbot.keySequence(d, QKeySequence(seq))
        assert field.hasFocus(), f"{seq} does not reach {field}"
    login = d.login.isChecked()
    qtbot.keySequence(d, QKeySequence("Alt+L"))
    qtbot.waitUntil(lambda: d.login.isChecked() != login, timeout=2000)  # an animated click
