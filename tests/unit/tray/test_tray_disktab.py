"""The Dashboard's Disk tab (desktop.tray.disktab): `docker system df` summed, the data
disk's allocation on the host, and Reclaim space waiting for the file to shrink; the
Dashboard against the fake engine, on a real sparse file standing in for the disk."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from pytestqt.qtbot import QtBot  # noqa: E402

from desktop.tray import disktab  # noqa: E402
from desktop.tray.docker_service import disk_usage  # noqa: E402
from tests.unit.tray.test_tray_dashboard import Env  # noqa: E402

MIB = 2**20


def _fill(path: Path, mib: int) -> None:
    with open(path, "wb") as f:
        f.write(os.urandom(mib * MIB))
        f.flush()
        os.fsync(f.fileno())


def _punch(path: Path, keep_mib: int) -> None:
    """What the guest's trim does to the host's file: blocks freed, the size kept."""
    size = path.stat().st_size
    os.truncate(path, keep_mib * MIB)
    os.truncate(path, size)


def test_system_df_summed_as_docker_system_df() -> None:
    u = disk_usage({
        "LayersSize": 300,
        "Images": [{"Size": 200, "SharedSize": 50, "Containers": 0},
                   {"Size": 100, "SharedSize": -1, "Containers": 2},
                   {"Size": 40, "SharedSize": 0, "Containers": -1}],  # not counted
        "Containers": [{"SizeRw": 10, "State": "running"}, {"SizeRw": 7, "State": "exited"}],
        "Volumes": [{"UsageData": {"Size": 30, "RefCount": 0}},
                    {"UsageData": {"Size": -1, "RefCount": 1}}],  # size not computed
        "BuildCache": [{"Size": 5, "InUse": True}, {"Size": 9, "InUse": False}]})
    assert u.images == (300, 150)  # unused image, less what it shares
    assert (u.containers, u.volumes, u.build_cache) == ((17, 7), (30, 30), (14, 9))
    assert disk_usage({}) == disktab.DiskUsage((0, 0), (0, 0), (0, 0), (0, 0))


class Engine:
    """DockerService.reclaim: what was ticked, and 64 MiB freed when anything was."""

    def __init__(self) -> None:
        self.asked: list[dict[str, bool]] = []

    def reclaim(self, **ticked: bool) -> int:
        self.asked.append(ticked)
        return 64 * MIB if any(ticked.values()) else 0


def test_reclaim_waits_for_the_trim_to_reach_the_file(tmp_path: Path) -> None:
    disk = tmp_path / "data.qcow2"
    _fill(disk, 8)
    engine = Engine()
    polls: list[float] = []

    def sleep(s: float) -> None:  # the guest trims between two polls
        polls.append(s)
        if len(polls) == 2:
            _punch(disk, 2)

    freed, before, after = disktab.reclaim(engine, disk, {"images": True}, settle=60,
                                           poll=0.5, sleep=sleep)  # type: ignore[arg-type]
    assert freed == 64 * MIB and before >= 8 * MIB and after <= 2 * MIB + 64 * 1024
    assert len(polls) == 3  # shrank at the 2nd, stayed put at the 3rd
    assert engine.asked == [{"images": True}]


def test_reclaim_asks_for_the_trim_after_the_prune(tmp_path: Path) -> None:
    disk = tmp_path / "data.qcow2"
    _fill(disk, 4)
    order: list[str] = []
    engine = Engine()
    real = engine.reclaim
    engine.reclaim = lambda **t: order.append("prune") or real(**t)  # type: ignore[method-assign]

    def trim() -> None:
        order.append("trim")
        _punch(disk, 0)

    freed, before, after = disktab.reclaim(engine, disk, {"images": True},  # type: ignore[arg-type]
                                           poll=0.01, sleep=lambda s: None, trim=trim)
    assert order == ["prune", "trim"] and after < before


def test_reclaim_that_frees_nothing_does_not_wait(tmp_path: Path) -> None:
    disk = tmp_path / "data.qcow2"
    _fill(disk, 1)
    waited: list[float] = []
    r = disktab.reclaim(Engine(), disk, {"images": False},  # type: ignore[arg-type]
                        sleep=waited.append)
    assert r[0] == 0 and waited == []


@pytest.fixture
def env(tmp_path: Path, qtbot: QtBot, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    monkeypatch.setattr(disktab, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(disktab, "SETTLE_SECONDS", 10.0)
    e = Env(tmp_path, qtbot)
    yield e
    e.close()


def test_the_disk_tab_shows_the_figures_and_reclaims(env: Env, qtbot: QtBot) -> None:
    disk = env.inst.data_disk
    _fill(disk, 6)
    env.backend.on_trim = lambda: _punch(disk, 1)  # the guest's fstrim, asked at once
    tab = env.dash.disk_tab
    env.dash.tabs.setCurrentWidget(tab)  # opening it reads the figures
    qtbot.waitUntil(lambda: tab.usage is not None, timeout=5000)
    assert tab.host_label.text().startswith("The data disk takes 6.")
    rows = {tab.table.item(i, 0).text(): (tab.table.item(i, 1).text(),
                                          tab.table.item(i, 2).text()) for i in range(4)}
    assert rows == {"Images": ("192.0 MB", "5.0 MB"), "Containers": ("2.0 MB", "0 B"),
                    "Volumes": ("5.0 MB", "0 B"), "Build cache": ("3.0 MB", "2.0 MB")}
    assert [b.isChecked() for b in tab.boxes.values()] == [True, True, False, True]
    env.answer = False
    tab.reclaim_button.click()
    assert env.questions[-1] == ("Remove images no container uses, stopped containers, "
                                 "build cache? This cannot be undone.")
    assert env.calls("POST", "/containers/prune") == 0
    env.answer = True
    tab.reclaim_button.click()
    qtbot.waitUntil(lambda: tab.result.text().startswith("Freed"), timeout=10000)
    # job (exited) and the image nothing uses (the untagged one) went; the volume stayed.
    assert tab.result.text().startswith("Freed 8.0 MB in the VM; the data disk's file on "
                                        "this computer shrank by 5.")
    assert env.calls("POST", "/containers/prune") == 1
    assert len(env.backend.ops("trim")) == 1
    assert env.calls("POST", "/build/prune") == 1
    assert env.calls("POST", "/volumes/prune") == 0
    assert [v["Name"] for v in env.engine.volumes] == ["pgdata"]


def test_nothing_ticked_asks_nothing(env: Env) -> None:
    tab = env.dash.disk_tab
    for b in tab.boxes.values():
        b.setChecked(False)
    tab.reclaim_button.click()
    assert env.questions == [] and "Tick what to remove" in \
        env.dash.statusBar().currentMessage()
