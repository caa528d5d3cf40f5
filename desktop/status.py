"""The backend's vocabulary: its states, its event kinds, its start steps, its status.

Every front end (the CLI, the tray, the Dashboard) and the backend itself import these
instead of spelling the strings; the wire format (JSON lines of the control API, see
docs/protocol.md) carries their values unchanged::

    stopped -> starting -> running <-> degraded -> stopping -> stopped
                      |     running <-> resting (idle: the vCPUs paused; a use wakes it)
                      \\-> error (with a reason) -> stopped
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypedDict


class State(StrEnum):
    """What the backend is doing; each is also the kind of the event that announces it."""

    STOPPED = "stopped"  # no backend, or it has let go of everything
    STARTING = "starting"  # booting; the event's `step` says which `Step`
    RUNNING = "running"  # the engine answers through the forwarded socket
    DEGRADED = "degraded"  # up, but the engine restarts or the guest link dropped
    RESTING = "resting"  # idle: the VM's vCPUs are paused until the next use wakes them
    STOPPING = "stopping"  # shutting the VM down politely
    ERROR = "error"  # the start failed or the VM died; `reason` says why


UP = frozenset({State.RUNNING, State.DEGRADED, State.RESTING})
BUSY = frozenset({State.STARTING, State.STOPPING})


def is_up(state: str) -> bool:
    """The engine answers, or answered a moment ago and is coming back."""
    return state in UP


class EventKind(StrEnum):
    """The events that are not states (those are `State` members)."""

    PORTS = "ports"  # the guest's published ports changed: added, removed
    PORT_FORWARDED = "port_forwarded"  # a host listener is open for a guest port
    PORT_FAILED = "port_failed"  # a guest port could not be opened on the host: reason
    PORT_REMOVED = "port_removed"  # a forward closed (its container went)
    PORT_STALLED = "port_stalled"  # a forward cannot reach the guest (stalled), or waits
    # for the guest's port list after the link came back (recovering): state, reason
    SHARES_UNAVAILABLE = "shares_unavailable"  # the default shares cannot be made here
    SHARE_FAILED = "share_failed"  # one share could not be mounted: path, message
    SHARES_NOTE = "shares_note"  # a choice made for the shares, or a risk: message
    ENDPOINT_SKIPPED = "endpoint_skipped"  # an endpoint left out on purpose: message
    CONTEXT_NOT_SET = "context_not_set"  # docker's config.json unreadable: message
    ORPHAN_STOPPED = "orphan_stopped"  # a VM whose backend died was stopped: pid, message
    DATA_DISK = "data_disk"  # the data disk's fill level changed: level, size, free, message
    HOST_POWER = "host_power"  # the platform said the host sleeps or woke: power, slept
    # A stop saved the VM's state, or could not; a start restored it, or booted instead:
    # action ("saved", "not_saved", "restored", "not_restored"), message
    SAVED_STATE = "saved_state"


class PortState:
    """The health of one published port's forward (`desktop.services.portfwd`)."""

    PENDING = "pending"
    FORWARDING = "forwarding"
    CONFLICT = "conflict"  # another program holds the port on the host: retried
    FAILED = "failed"  # the port cannot be opened for another reason: retried
    STALLED = "stalled"  # the guest cannot be reached for it: the next connection retries
    RECOVERING = "recovering"  # the link is back; the guest's port list comes next

    UNOPENED = (CONFLICT, FAILED)  # no host listener
    TROUBLE = (CONFLICT, FAILED, STALLED, RECOVERING)  # what status and the tray show


class Step(StrEnum):
    """The steps of a start, in order (the `step` of a `starting` event)."""

    LAUNCH = "launch"  # the tray launched the backend (the backend never says this one)
    ORPHAN = "orphan"  # stopping a VM of this instance whose backend died
    IMAGE = "image"
    DISK = "disk"
    RESTORE = "restore"  # loading the state `cove stop` saved, instead of a boot
    VM = "vm"
    AGENT = "agent"
    SHARES = "shares"
    ENGINE = "engine"


STEP_TEXT: dict[str, str] = {
    Step.LAUNCH: "launching the backend",
    Step.ORPHAN: "stopping the VM a killed backend left running",
    Step.IMAGE: "checking the guest image",
    Step.DISK: "preparing the data disk",
    Step.RESTORE: "restoring the saved VM",
    Step.VM: "booting the VM",
    Step.AGENT: "waiting for the guest agent",
    Step.SHARES: "mounting the shared folders",
    Step.ENGINE: "waiting for the Docker engine",
}


def step_text(step: str) -> str:
    return STEP_TEXT.get(step, step)


class ShareStatus(TypedDict, total=False):
    path: str
    transport: str
    vm_path: str
    error: str  # why the VM could not mount it
    served: dict[str, int]  # a link share's server figures


class Status(TypedDict, total=False):
    """The control API's `status` reply (fields absent while stopped are optional)."""

    state: str  # a State
    instance: str
    docker_host: str
    context: str
    engine_version: str
    agent_version: str
    kernel: str
    cpus: int
    memory: int  # bytes
    disk: int  # bytes
    arch: str
    accel: str
    accel_notes: list[str]
    uptime: float
    pid: int
    qemu_pid: int | None
    link_port: int
    ssh_port: int
    ssh_config: str
    agent_start: Any
    engine_ready_at: Any
    reason: str
    engine_error: str
    engine_answered_at: float | None  # wall clock of the last /_ping answered
    ports: list[dict[str, Any]]
    shares: list[ShareStatus]
    shares_pending: bool
    docker_engine: dict[str, Any]
    orphan_pid: int  # stopped: a VM of this instance still runs without its backend
    data_disk: dict[str, Any]  # the guest's last reading: size, free (bytes), level
    # minutes (0: off), resting, wakes, open_connections, idle_seconds
    resource_saver: dict[str, Any]
    # the guest's share guard programs attached: no set-uid bit reaches a 9p or virtiofs
    # share (empty: not loaded, and those shares are not mounted; see the boot errors)
    share_guard: list[str]
    restored: bool  # this start loaded the state `cove stop` saved instead of booting
    saved_state: bool  # stopped: a saved state waits for the next start


DISK_LEVELS = ("ok", "low", "full")  # the guest's words for the data disk's fill


def data_disk_message(level: str, size: int, free: int, disk_gib: int) -> str:
    """What to tell a user about the data disk ("" while it has room): how full, and the
    two ways out (free space, or a bigger disk, which keeps everything on it). `size` and
    `free` are the filesystem's bytes; `disk_gib` the setting (the disk's size)."""
    if level not in ("low", "full"):
        return ""
    gib, mib = 2**30, 2**20
    bigger = max(2 * disk_gib, 16)
    what = ("full: the engine's writes fail with \"no space left on device\""
            if level == "full" else "nearly full")
    left = f"{free / gib:.1f} GiB" if free >= gib else f"{free // mib} MiB"
    return (f"the data disk is {what} ({left} free of {size / gib:.0f} GiB). "
            f"Free space (docker system prune; docker volume prune), or grow it, which "
            f"keeps everything on it: cove start --disk {bigger}G, then cove restart")


Event = dict[str, Any]
"""One event line: {"time": ..., "event": a State or EventKind value, ...fields}."""
