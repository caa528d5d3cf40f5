"""The use cases both front ends call: make sure the image is there, launch the backend,
wait until it runs, stop it, reset or delete an instance, read its status.

`cove start` and the tray's Start are the same calls here; the CLI prints what these
return and the tray shows it. Nothing here prints: progress reaches the caller as the
backend's own events (`wait_running`'s `on_event`).

Errors a user can meet are `LifecycleError`, whose message names the problem and the fix.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import vm_image
from desktop import context, drivers, home, pidfile
from desktop.control import ControlClient, ControlError
from desktop.instance import Instance
from desktop.platform import defaultsocket, endpoints, processes, sockets
from desktop.settings import GIB, MIB, SettingsError
from desktop.status import Event, State, Status
from guest_engine import dockerapi
from vm_image import builder


class LifecycleError(Exception):
    """A start, stop or reset could not be done; the message says why and what to do."""


class StartFailed(LifecycleError):
    """The backend reported an error; `detail` is the rest of its reason (the guest's
    last lines, say), for the caller to show before the message."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


def client(inst: Instance) -> ControlClient:
    return ControlClient(inst.control_socket)


def backend_pid(inst: Instance) -> int | None:
    """The pid of the instance's running backend; None when none runs. This is what "is
    the backend up" means everywhere."""
    return pidfile.read_live(inst.pid_file)


def is_running(inst: Instance) -> bool:
    return backend_pid(inst) is not None


# -- start -------------------------------------------------------------------------------


def ensure_image(arch: str, progress: Callable[[str], None] = lambda _: None) -> None:
    """Make sure the guest image for `arch` is there: built from source here by root, or
    shipped with a packaged Cove (which never builds one)."""
    if vm_image.find_image(arch) is not None:
        return
    if builder.is_packaged() or getattr(os, "geteuid", lambda: -1)() != 0:
        raise LifecycleError(builder.missing_image_message(arch))
    progress(f"building the {arch} guest image (once; a few minutes)")
    try:
        vm_image.build(arch, progress=lambda m: progress(f"  image: {m}"))
    except vm_image.BuildError as e:
        raise LifecycleError(f"the guest image could not be built: {e}") from e


def check_socket_paths(inst: Instance) -> None:
    """LifecycleError naming the path, its length, the limit and the fix when one of the
    instance's sockets would be too long to bind (a long user name or COVE_HOME; macOS
    allows 103 bytes, Linux 107). Before anything starts; nothing to check on Windows."""
    try:
        shares = len(inst.load_settings().shares)
    except SettingsError:
        shares = 0  # the backend names the settings' problem itself
    try:
        sockets.check_socket_paths(home.socket_paths(inst.folder, shares))
    except sockets.SocketPathTooLong as e:
        raise LifecycleError(str(e)) from None


def spawn_backend(inst: Instance) -> subprocess.Popen:
    """Launch `cove backend` for `inst`, detached (it outlives the caller); a socket path
    too long to bind is refused first (`check_socket_paths`)."""
    check_socket_paths(inst)
    inst.ensure_folder()
    with inst.backend_out.open("ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "desktop", "backend", "--instance", inst.name],
            stdin=subprocess.DEVNULL, stdout=f, stderr=f, close_fds=True,
            **processes.detached(),
        )


def _follow(inst: Instance, proc: subprocess.Popen | None,
            timeout: float) -> Any:
    """The backend's event stream (past events first), once it answers."""
    since = time.time() - 1
    deadline = time.monotonic() + timeout
    # A stale control.sock from a killed backend may still be there: connecting is what
    # tells the new backend is up.
    while True:
        try:
            events = client(inst).events(history=True)
            first = next(events)
            return itertools.chain([first], events)
        except (ControlError, StopIteration):
            if proc is not None and proc.poll() is not None:
                raise LifecycleError(logged_error(inst, since) or _backend_died(inst)) \
                    from None
            if time.monotonic() > deadline:
                raise LifecycleError("the backend did not start; see "
                                     + str(inst.backend_log)) from None
            time.sleep(0.05)


def wait_running(inst: Instance, proc: subprocess.Popen | None,
                 on_event: Callable[[Event], None] = lambda _: None,
                 timeout: float = 600) -> Status:
    """Follow the backend's events until it runs (returns its status) or fails
    (LifecycleError: the reason's first line; `error_detail` holds the rest)."""
    since = time.time() - 1
    events = _follow(inst, proc, timeout)
    error = ""
    try:
        for ev in events:
            on_event(ev)
            kind = ev.get("event")
            if kind == State.RUNNING:
                return client(inst).status()
            if kind == State.ERROR:
                error = ev.get("reason", "unknown error")
            elif kind == State.STOPPED:
                break
    except ControlError:
        pass
    # The backend may have ended before we could follow it: its events log still says why.
    error = error or logged_error(inst, since)
    if error:
        first, _, rest = error.partition("\n")
        raise StartFailed(first, rest)
    raise LifecycleError(_backend_died(inst))


def logged_error(inst: Instance, since: float) -> str:
    """The reason of the last error event written to events.log after `since`."""
    try:
        lines = inst.events_log.read_text().splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("time", 0) < since:
            break
        if ev.get("event") == State.ERROR:
            return str(ev.get("reason", "unknown error"))
    return ""


def _backend_died(inst: Instance) -> str:
    try:
        tail = inst.backend_out.read_text().strip().splitlines()[-3:]
    except OSError:
        tail = []
    return "the backend stopped before the engine was up" + (
        ": " + " / ".join(tail) if tail else f"; see {inst.backend_log}")


def set_activation(inst: Instance, activate: bool) -> None:
    """Whether the backend makes the instance's docker context current when it starts."""
    inst.ensure_folder()
    if activate:
        inst.no_activate_marker.unlink(missing_ok=True)
    else:
        inst.no_activate_marker.touch()


def activates(inst: Instance) -> bool:
    return not inst.no_activate_marker.exists()


def engine_info(inst: Instance) -> dict[str, Any]:
    """The engine's /info, through the instance's engine endpoint: docker.sock, or on
    Windows Cove's named pipe (there is no socket file there, nor AF_UNIX in Python)."""
    url = endpoints.docker_host(inst)
    info: dict[str, Any] = dockerapi.get_json(
        "/info", timeout=30, connect=lambda timeout: endpoints.connect_url(url, timeout))
    return info


# -- stop / status -----------------------------------------------------------------------


# Only QEMU's VMs outlive their backend as orphans (a Hyper-V VM belongs to the Virtual
# Machine Management service, and its next start finds it by name). Asked by name, so
# that `cove status` and the tray never wait for Hyper-V's PowerShell probe.
ORPHAN_DRIVER = "qemu"


def _driver(inst: Instance) -> drivers.Driver | None:
    try:
        return drivers.pick(ORPHAN_DRIVER, arch=inst.load_settings().arch,
                            accel_cache=inst.accel_cache)
    except (drivers.DriverError, SettingsError):
        return None


def orphan_pid(inst: Instance) -> int | None:
    """A VM of the instance that still runs though its backend died (kill -9, a crash)."""
    d = _driver(inst) if inst.exists() else None
    return d.find_orphan(inst.folder) if d is not None else None


def stop_backend(inst: Instance, timeout: float = 180, save: bool = False) -> bool:
    """Ask the backend to stop (SIGTERM if it does not answer) and wait until it has; a
    VM whose backend died is stopped as politely. False when nothing was running.
    `save`: the VM's state is saved for the next start, where the driver can save it."""
    pid = backend_pid(inst)
    if pid is None:
        d = _driver(inst) if inst.exists() else None
        return d is not None and d.stop_orphan(inst.folder) is not None
    try:
        client(inst).stop(save=save)
    except ControlError:
        pidfile.terminate(inst.pid_file)
    deadline = time.monotonic() + timeout
    while pidfile.read_live(inst.pid_file) == pid and time.monotonic() < deadline:
        time.sleep(0.1)
    if pidfile.read_live(inst.pid_file) == pid:
        raise LifecycleError(f"the backend (pid {pid}) did not stop in {timeout:.0f} s")
    return True


def has_saved_state(inst: Instance) -> bool:
    """Whether `cove stop` left a saved VM state for the next start to restore."""
    return all(inst.path(n).exists() for n in (home.SAVED_STATE, home.SAVED_MANIFEST))


def status_of(inst: Instance) -> Status:
    """The running backend's status, or what a stopped instance is made of."""
    if backend_pid(inst) is not None:
        try:
            return client(inst).status(timeout=5)
        except ControlError:
            pass
    s = inst.load_settings()
    st: Status = {"state": State.STOPPED.value, "instance": inst.name,
                  "docker_host": endpoints.docker_host(inst), "context": inst.context_name,
                  "engine_version": "", "cpus": s.cpus, "memory": s.memory_mib * MIB,
                  "disk": s.disk_gib * GIB, "arch": s.arch, "accel": "", "uptime": 0}
    st["saved_state"] = has_saved_state(inst)
    orphan = orphan_pid(inst)
    if orphan is not None:
        st["orphan_pid"] = orphan
        st["reason"] = (f"the VM (pid {orphan}) still runs, but its backend is gone; "
                        "`cove start` stops it cleanly and starts Cove again, `cove stop` "
                        "stops it")
    return st


# -- delete / reset ----------------------------------------------------------------------


def delete_instance(inst: Instance, release_default_socket: bool = True) -> list[str]:
    """Stop the instance and delete its folder (data disk, settings, logs), its docker
    context and /var/run/docker.sock when it points at it (`release_default_socket`);
    returns notes on what was left as it was (an unreadable config.json, a default socket
    only root may remove)."""
    stop_backend(inst)
    notes = []
    try:
        context.remove(inst.context_name, inst.previous_context)
    except context.ContextError as e:
        notes.append(f"the docker context {inst.context_name!r} was not removed: {e}")
    if release_default_socket and os.name == "posix":  # set by `cove setup default-socket`
        try:
            defaultsocket.release(inst.docker_socket)
        except defaultsocket.DefaultSocketError as e:
            notes.append(str(e))
    if inst.exists():
        shutil.rmtree(inst.folder)
    return notes


def reset_instance(inst: Instance) -> list[str]:
    """`delete_instance`, then an empty folder for a fresh start. Shared by `cove reset`
    and the tray's Troubleshoot window."""
    notes = delete_instance(inst, release_default_socket=False)  # the same path after
    inst.ensure_folder()
    return notes

