"""The tray's state model (desktop.tray.model): states from events, menu, tooltip."""

from __future__ import annotations

from desktop.tray import model
from desktop.tray.model import TrayState, apply_event


def _keys(st: TrayState, platform: str = "linux") -> list[tuple[str | None, bool]]:
    return [(e.key, e.enabled) for e in model.menu_entries(st, platform) if e.key != "-"]


def _fold(*events: dict, live: bool = True) -> tuple[TrayState, list[model.Notice]]:
    st = TrayState()
    notices: list[model.Notice] = []
    for ev in events:
        notices += apply_event(st, ev, live)
    return st, notices


def test_menu_when_stopped() -> None:
    st = TrayState()
    assert _keys(st) == [(None, False), ("dashboard", True), ("settings", True),
                         ("start", True), ("stop", False), ("restart", False),
                         ("troubleshoot", True), ("about", True), ("quit", True)]
    assert model.menu_entries(st, "linux")[0].text == "Cove is stopped"


def test_menu_when_running_counts_containers() -> None:
    st, _ = _fold({"event": "starting", "step": "vm"},
                  {"event": "running", "engine_version": "26.1.5"})
    st.containers = 3
    entries = model.menu_entries(st, "linux")
    assert entries[0] == model.Entry(None, "Cove is running — 3 containers", False)
    assert dict(_keys(st))["start"] is False
    assert dict(_keys(st))["stop"] is True
    assert dict(_keys(st))["restart"] is True
    st.containers = 1
    assert model.status_line(st) == "Cove is running — 1 container"
    st.containers = 0
    assert model.status_line(st) == "Cove is running — no containers running"


def test_menu_while_starting_shows_the_step() -> None:
    st, _ = _fold({"event": "starting", "step": "engine"})
    assert model.status_line(st) == "Cove is starting (waiting for the Docker engine)…"
    keys = dict(_keys(st))
    assert keys["start"] is False and keys["stop"] is True and keys["restart"] is False
    assert model.icon_name(st) == "starting"


def test_windows_entry_only_on_windows() -> None:
    st = TrayState()
    assert "switch_windows" not in dict(_keys(st, "linux"))
    assert "switch_windows" not in dict(_keys(st, "darwin"))
    win = [e.text for e in model.menu_entries(st, "win32")]
    assert "Switch to Windows containers…" in win
    assert win.index("Switch to Windows containers…") < win.index("Troubleshoot…")


def test_menu_order_and_texts() -> None:
    texts = [e.text for e in model.menu_entries(TrayState(), "linux") if e.key != "-"]
    assert texts == ["Cove is stopped", "Dashboard", "Settings…", "Start", "Stop", "Restart",
                     "Troubleshoot…", "About Cove", "Quit Cove"]


def test_error_keeps_its_reason_after_stopped_and_notifies_once() -> None:
    st, notices = _fold({"event": "starting", "step": "agent"},
                        {"event": "error", "reason": "the guest agent did not answer in "
                         "time; the guest's last lines:\nKernel panic"},
                        {"event": "stopped"})
    assert st.state == "error"
    assert model.icon_name(st) == "error"
    assert model.status_line(st) == "Cove failed: the guest agent did not answer in time; " \
        "the guest's last lines:"
    assert notices == [model.Notice("Cove's engine failed to start",
                                    "the guest agent did not answer in time; the guest's "
                                    "last lines:", "critical")]
    assert dict(_keys(st))["start"] is True


def test_history_moves_the_state_but_does_not_notify() -> None:
    st, notices = _fold({"event": "starting", "step": "vm"}, {"event": "error", "reason": "x"},
                        {"event": "port_failed", "host_port": 80, "proto": "tcp",
                         "reason": "privileged"}, live=False)
    assert st.state == "error"
    assert notices == []


def test_port_failed_notifies_and_shows_in_tooltip_until_forwarded() -> None:
    st, _ = _fold({"event": "running", "engine_version": "26.1.5"})
    ev = {"event": "port_failed", "host_port": 8080, "proto": "tcp", "container": "web",
          "reason": "port 8080 is already in use on the host by another program"}
    notices = apply_event(st, ev)
    assert notices == [model.Notice("Port 8080/tcp could not be published",
                                    "port 8080 is already in use on the host by another "
                                    "program", "warning")]
    assert apply_event(st, ev) == []  # the retry fails again: told once
    assert "port 8080/tcp: port 8080 is already in use" in model.tooltip(st)
    apply_event(st, {"event": "port_forwarded", "host_port": 8080, "proto": "tcp"})
    assert "8080" not in model.tooltip(st)


def test_icons_per_state() -> None:
    names = {}
    for kind in ("stopped", "starting", "running", "degraded", "stopping", "error",
                 "resting"):
        st, _ = _fold({"event": kind, "reason": "r"})
        names[kind] = model.icon_name(st)
    assert names == {"stopped": "stopped", "starting": "starting", "running": "running",
                     "degraded": "starting", "stopping": "starting", "error": "error",
                     "resting": "running"}


def test_a_resting_vm_is_up_says_so_and_can_be_stopped() -> None:
    st, notices = _fold({"event": "running", "engine_version": "26.1.5"},
                        {"event": "resting", "idle_minutes": 5})
    assert notices == [] and st.is_up
    assert model.status_line(st).startswith("Cove is resting")
    assert "wakes it" in model.tooltip(st)
    entries = {e.key: e.enabled for e in model.menu_entries(st, "linux") if e.key}
    assert entries["stop"] and entries["restart"] and not entries["start"]


def test_restart_needed_adds_a_menu_entry_until_stopped() -> None:
    st, _ = _fold({"event": "running"})
    st.restart_needed = True  # what the controller's note_restart_needed sets
    assert model.menu_entries(st, "linux")[1] == model.Entry("restart",
                                                             "Restart to apply settings")
    assert "restart is needed" in model.tooltip(st)
    apply_event(st, {"event": "stopped"})
    assert not st.restart_needed


def test_tooltip_names_engine_version() -> None:
    st, _ = _fold({"event": "running", "engine_version": "26.1.5"})
    st.containers = 2
    assert model.tooltip(st) == "Cove is running — 2 containers\nDocker engine 26.1.5"


def test_emitting_signals_keeps_true_alive() -> None:
    import sys

    from PySide6.QtCore import QObject, Signal

    from desktop.tray.qtcompat import emit

    class Source(QObject):
        ping = Signal(object)

    s = Source()
    got: list[object] = []
    s.ping.connect(got.append)
    before = sys.getrefcount(True)
    for i in range(500):
        emit(s.ping, i)
    assert got == list(range(500))
    assert abs(sys.getrefcount(True) - before) < 50  # not 500 fewer


def test_switch_entry_follows_the_engine_mode() -> None:
    st = TrayState()
    assert dict(_keys(st, "win32"))["switch_windows"] is True
    st.engine_mode = "windows"
    keys = dict(_keys(st, "win32"))
    assert "switch_windows" not in keys and keys["switch_linux"] is True
    texts = [e.text for e in model.menu_entries(st, "win32")]
    assert "Switch to Linux containers…" in texts
    assert "Switch to Windows containers…" not in texts
    assert "switch_linux" not in dict(_keys(st, "linux"))  # only on Windows hosts
    assert "Windows containers" in model.tooltip(st)


def test_switch_entry_while_switching_and_busy() -> None:
    st = TrayState(switching_to="windows")
    entry = model.switch_entry(st)
    assert entry == model.Entry("switch_windows", "Switching to Windows containers…", False)
    st = TrayState(state="starting")
    assert model.switch_entry(st).enabled is False


def test_switch_notices() -> None:
    n = model.switch_failed_notice("windows", "Windows containers need a Windows host")
    assert n == model.Notice("Cove could not switch to Windows containers",
                             "Windows containers need a Windows host", "warning")
    assert model.switch_notice("linux").title == "Cove uses Linux containers"


def test_a_full_data_disk_is_a_notice_and_a_tooltip_line_until_it_has_room() -> None:
    msg = model.data_disk_message("full", 8 * 2**30, 10 * 2**20, 8)
    st, notices = _fold({"event": "running"},
                        {"event": "data_disk", "level": "full", "size": 8 * 2**30,
                         "free": 10 * 2**20, "message": msg})
    assert [(n.title, n.level) for n in notices] == [("Cove's data disk is full", "critical")]
    assert "cove start --disk 16G" in notices[0].message and "10 MiB free" in msg
    assert msg in model.tooltip(st)
    _, replayed = _fold({"event": "data_disk", "level": "full", "message": msg}, live=False)
    assert replayed == []  # history: no notice again
    apply_event(st, {"event": "data_disk", "level": "ok", "message": ""})
    assert "data disk" not in model.tooltip(st)
    fresh = TrayState()
    model.apply_status(fresh, {"state": "running", "disk": 8 * 2**30, "data_disk": {
        "size": 8 * 2**30, "free": 10 * 2**20, "level": "full"}})
    assert fresh.disk_note == msg


def test_the_status_bar_names_engine_accelerator_context_and_saver() -> None:
    st = TrayState()
    model.apply_status(st, {"state": "running", "engine_version": "26.1.5", "accel": "tcg",
                            "accel_notes": ["/dev/kvm cannot run this guest: software "
                                            "emulation (slower)\nsecond line"],
                            "context": "cove", "resource_saver": {"minutes": 5.0}})
    text, tip = model.status_bar(st)
    assert text == ("Docker 26.1.5 · tcg (/dev/kvm cannot run this guest: software emulation "
                    "(slower)) · context cove · Resource Saver: rests after 5 idle min")
    assert tip == ("accelerator tcg\n/dev/kvm cannot run this guest: software emulation "
                   "(slower)\nsecond line")
    apply_event(st, {"event": "resting"})
    assert model.status_bar(st)[0].endswith("Resource Saver: resting")
    assert model.status_bar(st)[0].startswith("Docker 26.1.5 · ")  # still up
    model.apply_status(st, {"state": "running", "engine_version": "26.1.5", "accel": "kvm",
                            "context": "cove", "resource_saver": {"minutes": 0}})
    assert model.status_bar(st) == ("Docker 26.1.5 · kvm · context cove · Resource Saver: off",
                                     "accelerator kvm")
    model.apply_status(st, {"state": "stopped"})  # an older backend, or stopped: no fields
    assert model.status_bar(st) == ("", "")


def test_tooltip_says_what_the_vm_was_given_and_when_it_rests() -> None:
    st = model.TrayState()
    model.apply_status(st, {"state": "running", "engine_version": "26.1.5", "cpus": 2,
                            "memory": 2 * 2**30, "disk": 64 * 2**30})
    st.containers = 0
    assert model.tooltip(st).splitlines()[2] == "VM: 2 CPUs, 2 GiB of memory, a 64 GiB disk"
    st.state, st.memory_bytes, st.cpus = "resting", 1536 * 2**20, 1
    assert "VM: 1 CPU, 1536 MiB of memory, a 64 GiB disk (resting: paused until used)" \
        in model.tooltip(st)
    st.state = "stopped"
    assert "VM:" not in model.tooltip(st)  # nothing is given while nothing runs


def test_the_host_line_gives_qemus_cpu_and_memory_in_a_unit_people_read() -> None:
    assert model.host_line((4.94, 1288 * 2**20)) == \
        "Now: 4.9 % of a core, 1.3 GiB held on this computer"
    assert model.host_line((None, 700 * 2**20)) == "Now: 700 MiB held on this computer"
    st = model.TrayState()
    model.apply_status(st, {"state": "running", "engine_version": "26.1.5"})
    st.containers, st.host_now = 0, (0.2, 2**30)
    assert model.tooltip(st).splitlines()[-1] == \
        "Now: 0.2 % of a core, 1.0 GiB held on this computer"
    st.state = "stopped"
    assert "Now:" not in model.tooltip(st)
