"""What the tray shows, derived from the backend's events and nothing else.

`TrayState` is folded from the backend's event stream (`apply_event`); the icon, the
tooltip, the status line and the menu's entries are pure functions of it, so the menu
rebuilt each time it opens (`menu_entries`) can never drift from what the backend said.
No Qt here: the controller feeds it, the tray renders it, the tests read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from desktop.status import (
    BUSY,
    EventKind,
    PortState,
    State,
    data_disk_message,
    is_up,
    step_text,
)

_STATES = frozenset(State)

@dataclass(frozen=True)
class Notice:
    """A desktop notification to show: title, message and how serious it is."""

    title: str
    message: str
    level: str = "information"  # information | warning | critical


@dataclass
class TrayState:
    state: str = "stopped"
    step: str = ""
    reason: str = ""
    engine_version: str = ""
    containers: int | None = None  # running containers; None until Docker answered
    failed_ports: dict[str, str] = field(default_factory=dict)  # "8080/tcp" -> reason
    restart_needed: bool = False
    failed: bool = False  # this run ended in an error: shown until the next start
    # The engine the `cove` context points at (`desktop.windows_engine`), and the one a switch
    # in progress is heading for ("" when none is).
    engine_mode: str = "linux"
    switching_to: str = ""
    orphan_pid: int | None = None  # stopped, but its VM runs on without a backend
    disk_note: str = ""  # the data disk is (nearly) full: what to do ("" while it has room)
    # From the backend's status when the tray connects: the accelerator and why it is not
    # the host's fast one, the docker context, Resource Saver's idle minutes (0: off).
    accel: str = ""
    accel_notes: list[str] = field(default_factory=list)
    context: str = ""
    saver_minutes: float | None = None
    shares: list[str] = field(default_factory=list)  # host folders the VM mounts now
    disk_bytes: int = 0  # the data disk's size (the setting), 0 until known
    cpus: int = 0  # what the VM was given (0 until known)
    memory_bytes: int = 0
    qemu_pid: int | None = None  # the VM's process (None under Hyper-V, or not running)
    # What QEMU costs this computer now, as the tray last looked (every HOST_LOOK_S):
    # (CPU as % of one core since the look before, None at the first; resident bytes).
    host_now: tuple[float | None, int] | None = None

    @property
    def is_up(self) -> bool:
        """The engine answers (or answered a moment ago and is coming back)."""
        return is_up(self.state)

    @property
    def busy(self) -> bool:
        return self.state in BUSY


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def apply_event(st: TrayState, ev: dict[str, Any], live: bool = True) -> list[Notice]:
    """Fold one backend event into `st`; return the notifications it calls for.

    `live` is False for the backend's replayed history: the state follows it, but a
    failure that was already over when the tray connected is not announced again.
    """
    kind = str(ev.get("event", ""))
    if kind in _STATES:
        return _apply_state(st, State(kind), ev, live)
    notices: list[Notice] = []
    if kind == EventKind.PORT_FAILED:
        key = f"{ev.get('host_port')}/{ev.get('proto', 'tcp')}"
        new = key not in st.failed_ports
        st.failed_ports[key] = str(ev.get("reason", ""))
        if live and new:
            who = ev.get("container") or "a host-network container"
            notices.append(Notice(f"Port {key} could not be published",
                                  str(ev.get("reason") or f"for {who}"), "warning"))
    elif kind == EventKind.PORT_STALLED:
        key = f"{ev.get('host_port')}/{ev.get('proto', 'tcp')}"
        st.failed_ports[key] = f"{ev.get('state', 'stalled')}: {ev.get('reason', '')}"
    elif kind in (EventKind.PORT_FORWARDED, EventKind.PORT_REMOVED):
        st.failed_ports.pop(f"{ev.get('host_port')}/{ev.get('proto', 'tcp')}", None)
    elif kind == EventKind.DATA_DISK:
        st.disk_note = str(ev.get("message", ""))
        if live and st.disk_note:
            full = ev.get("level") == "full"
            notices.append(Notice(f"Cove's data disk is {'full' if full else 'nearly full'}",
                                  st.disk_note, "critical" if full else "warning"))
    return notices


def _apply_state(st: TrayState, kind: State, ev: dict[str, Any], live: bool) -> list[Notice]:
    previous = st.state
    st.state = kind
    if kind == State.STARTING:
        st.step = str(ev.get("step", ""))
        st.reason = ""
        st.failed = False
        if previous in (State.STOPPED, State.ERROR):
            st.failed_ports.clear()
    elif kind == State.RUNNING:
        st.step = ""
        st.reason = ""
        st.engine_version = str(ev.get("engine_version", st.engine_version))
    elif kind == State.DEGRADED:
        st.reason = str(ev.get("reason", ""))
    elif kind == State.STOPPING:
        st.step = ""
        if st.failed:
            st.state = State.ERROR  # stopping because it failed: still the failure
    elif kind == State.ERROR:
        st.reason = str(ev.get("reason", "unknown error"))
        st.failed = True
        if live:
            title = ("Cove's engine failed to start" if previous == State.STARTING
                     else "Cove stopped with an error")
            return [Notice(title, _first_line(st.reason), "critical")]
    elif kind == State.STOPPED:
        st.step = ""
        st.containers = None
        st.failed_ports.clear()
        st.restart_needed = False
        st.disk_note = ""
        if st.failed:
            st.state = State.ERROR  # keep showing why it ended until the next start
    return []


def apply_status(st: TrayState, status: dict[str, Any]) -> None:
    """Start from the backend's `status` reply (the tray has just connected)."""
    state = str(status.get("state", State.STOPPED))
    st.state = state if state in _STATES else State.STOPPED
    st.step = str(status.get("step", ""))
    st.reason = str(status.get("reason", ""))
    st.failed = st.state == "error"
    st.engine_version = str(status.get("engine_version", ""))
    st.failed_ports = {f"{p.get('host_port')}/{p.get('proto', 'tcp')}": str(p.get("reason", ""))
                       for p in status.get("ports") or [] if p.get("state") in PortState.TROUBLE}
    if status.get("shares_pending"):
        st.restart_needed = True
    st.accel = str(status.get("accel") or "")
    st.accel_notes = [str(n) for n in status.get("accel_notes") or []]
    st.context = str(status.get("context") or "")
    st.disk_bytes = int(status.get("disk") or 0)
    st.cpus = int(status.get("cpus") or 0)
    st.memory_bytes = int(status.get("memory") or 0)
    st.qemu_pid = int(status["qemu_pid"]) if status.get("qemu_pid") else None
    st.shares = [str(sh.get("path", "")) for sh in status.get("shares") or []
                 if isinstance(sh, dict) and sh.get("path") and not sh.get("error")]
    saver = status.get("resource_saver")
    st.saver_minutes = float(saver.get("minutes", 0)) if isinstance(saver, dict) else None
    disk = status.get("data_disk") or {}
    st.disk_note = data_disk_message(str(disk.get("level", "")), int(disk.get("size", 0)),
                                     int(disk.get("free", 0)),
                                     int(status.get("disk", 0)) // 2**30)


def restart_notice(why: str = "") -> Notice:
    msg = "Restart Cove to apply the new settings"
    return Notice("Cove needs a restart", f"{msg}: {why}" if why else msg, "information")


def icon_name(st: TrayState) -> str:
    """One of the four tray icons: stopped, starting, running, error."""
    if st.state in ("running", "resting"):
        return "running"
    if st.state in ("starting", "stopping", "degraded"):
        return "starting"
    if st.state == "error":
        return "error"
    return "stopped"


def _containers_text(n: int | None) -> str:
    if n is None:
        return ""
    return f" — {n} container{'s' if n != 1 else ''}" if n else " — no containers running"


def status_line(st: TrayState) -> str:
    if st.state == "running":
        return f"Cove is running{_containers_text(st.containers)}"
    if st.state == "resting":
        return "Cove is resting (idle; the VM is paused): the next docker command wakes it"
    if st.state == "starting":
        step = step_text(st.step)
        return f"Cove is starting ({step})…" if step else "Cove is starting…"
    if st.state == "degraded":
        return f"Cove is degraded: {_first_line(st.reason)}" if st.reason else \
            "Cove is degraded"
    if st.state == "stopping":
        return "Cove is stopping…"
    if st.state == "error":
        return f"Cove failed: {_first_line(st.reason)}"
    if st.orphan_pid:
        return (f"Cove is stopped, but its VM (pid {st.orphan_pid}) still runs without a "
                "backend; Start stops it cleanly and starts Cove again")
    return "Cove is stopped"


def status_bar(st: TrayState) -> tuple[str, str]:
    """The Dashboard's status bar: (its text, a tooltip with the whole reasons): the
    engine's version, the accelerator (with the reason for a fallback), the docker
    context and Resource Saver's state."""
    parts: list[str] = []
    tip: list[str] = []
    if st.engine_version and (st.is_up or st.state == "resting"):
        parts.append(f"Docker {st.engine_version}")
    if st.accel:
        why = _first_line(st.accel_notes[0]) if st.accel_notes else ""
        parts.append(f"{st.accel} ({why})" if why else st.accel)
        tip += [f"accelerator {st.accel}", *st.accel_notes]
    if st.context:
        parts.append(f"context {st.context}")
    if st.saver_minutes is not None:
        saver = ("off" if not st.saver_minutes else "resting" if st.state == "resting"
                 else f"rests after {st.saver_minutes:g} idle min")
        parts.append(f"Resource Saver: {saver}")
    return " · ".join(parts), "\n".join(tip)


def tooltip(st: TrayState) -> str:
    lines = [status_line(st)]
    if st.engine_version and st.is_up:
        lines.append(f"Docker engine {st.engine_version}")
    if (st.is_up or st.state == "resting") and st.cpus and st.memory_bytes:
        lines.append(resources_line(st))
    if (st.is_up or st.state == "resting") and st.host_now is not None:
        lines.append(host_line(st.host_now))
    for key, reason in sorted(st.failed_ports.items()):
        lines.append(f"port {key}: {reason}" if reason else f"port {key} is not published")
    if st.disk_note:
        lines.append(st.disk_note)
    if st.restart_needed:
        lines.append("A restart is needed to apply the settings")
    if st.engine_mode == "windows":
        lines.append("docker uses Windows containers (native dockerd.exe)")
    return "\n".join(lines)


def resources_line(st: TrayState) -> str:
    """What the VM was given, as the tooltip's one line: "2 CPUs, 2 GiB of memory, a
    64 GiB disk"; resting said when Resource Saver has paused it."""
    gib = st.memory_bytes / 2**30
    memory = f"{gib:.0f} GiB" if gib >= 1 and gib == int(gib) else \
        f"{st.memory_bytes // 2**20} MiB"
    cpus = f"{st.cpus} CPU" + ("s" if st.cpus != 1 else "")
    disk = f", a {st.disk_bytes // 2**30} GiB disk" if st.disk_bytes else ""
    rest = " (resting: paused until used)" if st.state == "resting" else ""
    return f"VM: {cpus}, {memory} of memory{disk}{rest}"


def host_line(now: tuple[float | None, int]) -> str:
    """What QEMU costs this computer now, as the tooltip's line: "Now: 4.9 % of a core,
    1.2 GiB held on this computer" (the CPU left out at the first look)."""
    cpu, rss = now
    held = f"{rss / 2**30:.1f} GiB" if rss >= 2**30 else f"{rss // 2**20} MiB"
    return "Now: " + ("" if cpu is None else f"{cpu:.1f} % of a core, ") + \
        f"{held} held on this computer"


@dataclass(frozen=True)
class Entry:
    """One menu entry: `key` names the action (None for the status line), "-" is a
    separator."""

    key: str | None
    text: str = ""
    enabled: bool = True


SEPARATOR = Entry("-")


SWITCH_TEXT = {"windows": "Switch to Windows containers…",
               "linux": "Switch to Linux containers…"}


def switch_entry(st: TrayState) -> Entry:
    """The engine switch (Windows hosts only): to the mode that is not active, disabled
    while a switch runs."""
    if st.switching_to:
        name = "Windows" if st.switching_to == "windows" else "Linux"
        return Entry(f"switch_{st.switching_to}", f"Switching to {name} containers…", False)
    target = "linux" if st.engine_mode == "windows" else "windows"
    return Entry(f"switch_{target}", SWITCH_TEXT[target], not st.busy)


def switch_notice(mode: str) -> Notice:
    name = "Windows" if mode == "windows" else "Linux"
    engine = "native dockerd.exe" if mode == "windows" else "the Cove VM"
    return Notice(f"Cove uses {name} containers",
                  f"docker now talks to {engine}; the other engine keeps running",
                  "information")


def switch_failed_notice(mode: str, reason: str) -> Notice:
    name = "Windows" if mode == "windows" else "Linux"
    return Notice(f"Cove could not switch to {name} containers", reason, "warning")


def menu_entries(st: TrayState, platform: str) -> list[Entry]:
    """The tray menu for this state, in order."""
    can_start = st.state in ("stopped", "error")
    can_stop = st.state in ("starting", "running", "degraded", "resting")
    entries = [Entry(None, status_line(st), False)]
    if st.restart_needed:
        entries.append(Entry("restart", "Restart to apply settings"))
    entries += [
        SEPARATOR,
        Entry("dashboard", "Dashboard"),
        Entry("settings", "Settings…"),
        SEPARATOR,
        Entry("start", "Start", can_start),
        Entry("stop", "Stop", can_stop),
        Entry("restart", "Restart", st.state in ("running", "degraded", "resting", "error")),
    ]
    if platform == "win32":
        entries.append(switch_entry(st))
    entries += [
        SEPARATOR,
        Entry("troubleshoot", "Troubleshoot…"),
        Entry("about", "About Cove"),
        Entry("quit", "Quit Cove"),
    ]
    return entries
