"""The Dashboard's Resources tab (desktop.tray.resources): host figures read for real from
a process (this test's own, standing in for QEMU), the guest's from the fake backend's
agent_status, and no question to a resting guest."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from pytestqt.qtbot import QtBot  # noqa: E402

from desktop.platform.processes import Meter  # noqa: E402
from desktop.tray.resources import Sample, Sampler, describe  # noqa: E402
from tests.unit.tray.test_tray_dashboard import Env  # noqa: E402


def test_the_meter_reads_a_busy_process_and_lets_go_of_a_gone_one() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # past its exec: the interpreter is in memory
        m = Meter(busy.pid)
        first = m.read()
        assert first is not None and first[0] is None and first[1] > 1_000_000
        time.sleep(0.5)
        second = m.read()
        assert second is not None and second[0] is not None and second[0] > 30.0
    finally:
        busy.kill()
        busy.wait()
    assert m.read() is None


def test_describe_says_what_qemu_holds_beyond_the_guest() -> None:
    s = Sample(0, 12.34, 1_100_000_000, 600_000_000, 2_000_000_000)
    assert describe(s, False) == {
        "cpu": "12.3 % of a core", "held": "1.1 GB (QEMU's resident memory)",
        "guest": "600.0 MB of 2.0 GB",
        "back": "QEMU holds 500.0 MB more than the guest uses (its page cache, and memory "
                "not given back yet)"}
    hyperv = describe(Sample(0, None, None, 600_000_000, 2_000_000_000), False)
    assert (hyperv["cpu"], hyperv["held"], hyperv["back"]) == ("-", "-", "-")
    assert describe(Sample(0, 0.0, 100, None, None), True)["guest"] == \
        "resting: the guest is paused, not asked"


def test_a_resting_guest_is_not_asked() -> None:
    asked: list[int] = []
    sampler = Sampler(lambda: asked.append(1) or {})  # type: ignore[func-returns-value]
    sampler.sample(os.getpid(), guest_awake=False)
    assert asked == []
    sampler.sample(os.getpid(), guest_awake=True)
    assert asked == [1]


@pytest.fixture
def env(tmp_path: Path, qtbot: QtBot) -> Iterator[Env]:
    e = Env(tmp_path, qtbot)
    yield e
    e.close()


def _agent_questions(env: Env) -> int:
    return len(env.backend.ops("agent_status"))


def test_the_tab_samples_while_shown_and_draws_the_series(env: Env, qtbot: QtBot) -> None:
    env.controller.state.qemu_pid = os.getpid()  # QEMU, as far as the tab knows
    tab = env.dash.resources_tab
    tab.sample_now()
    assert tab.samples == [] and _agent_questions(env) == 0  # not shown: nothing read
    env.dash.show()
    env.dash.tabs.setCurrentWidget(tab)
    for n in (1, 2, 3):
        tab.sample_now()
        qtbot.waitUntil(lambda: len(tab.samples) == n, timeout=5000)  # noqa: B023
    assert _agent_questions(env) == 3
    assert tab.labels["guest"].text() == "512.0 MB of 2.0 GB"
    assert tab.labels["cpu"].text().endswith("% of a core")
    assert tab.labels["held"].text().endswith("(QEMU's resident memory)")
    assert len(tab.cpu_line.points()) == 2  # the first reading has no CPU figure
    assert len(tab.memory_line.points()) == 3
    env.qtbot.waitExposed(tab)
    tab.cpu_line.repaint()  # paints without error
    # Resting: the host figures go on, the guest is not asked.
    env.backend.emit("resting")
    qtbot.waitUntil(lambda: env.controller.state.state == "resting", timeout=5000)
    tab.sample_now()
    qtbot.waitUntil(lambda: len(tab.samples) == 4, timeout=5000)
    assert _agent_questions(env) == 3
    assert tab.labels["guest"].text() == "resting: the guest is paused, not asked"
