"""The backend itself: one long-lived process per instance that owns the VM.

Orchestration only: `run` serves the control API, runs the start (`boot.Boot`), serves
until asked to stop or the VM ends, then shuts everything down in one cleanup path. What
the guest agent says (`on_agent_event`) and the link's ups and downs (`on_link_state`)
move the state; the rest lives beside this module: the events (`events`), the clock
(`clock`), the engine API (`engine_socket`) and the shared folders (`shares`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import vm_image
from desktop import home, pidfile
from desktop.backend import health, timeouts
from desktop.backend.boot import Boot, StartError
from desktop.backend.clock import HostClock
from desktop.backend.engine_socket import EngineSocket
from desktop.backend.events import EventLog
from desktop.backend.health import EngineHealth
from desktop.backend.rest import ResourceSaver, wait_given_back
from desktop.backend.shares import BootShares
from desktop.control import ControlError
from desktop.control.server import ControlServer, Op
from desktop.drivers import Driver, DriverError, VMSpec
from desktop.instance import Instance
from desktop.link import AgentError, Link, LinkError
from desktop.link.channel import ControlChannel
from desktop.link.tcp import TcpLink
from desktop.platform import endpoints, power, sockets
from desktop.platform.endpoints import Listener
from desktop.platform.locks import FileLock, LockHeld
from desktop.platform.processes import Meter
from desktop.platform.sockets import (
    NotASocketError,
    SocketPathTooLong,
    check_socket_paths,
    remove_socket,
)
from desktop.services import apiguard, portfwd
from desktop.services.portfwd import PortForwarder
from desktop.settings import Settings, SettingsError, check_resource_saver
from desktop.status import DISK_LEVELS, EventKind, State, Status, data_disk_message

log = logging.getLogger(__name__)

# "1": the backend serves its test-only control ops (`_test_ops`). The tests that use them
# start backends with it; a user's backend never has it.
TEST_OPS_ENV = "COVE_TEST_OPS"

AGENT_EXITED = "cove: the agent exited"  # what the guest's init prints (vm_image/files)


class Backend:
    """`driver` and `image` are for tests (a fake hypervisor); by default the QEMU driver
    and the image built for this version of Cove."""

    def __init__(self, instance: Instance, driver: Driver | None = None,
                 image: vm_image.Image | None = None) -> None:
        self.inst = instance
        self.image = image
        self.settings: Settings = instance.load_settings()
        self.events = EventLog(instance.events_log)
        self.state = State.STOPPED
        self.reason = ""
        self.started_at: float | None = None
        self.running_at: float | None = None
        self.driver: Driver | None = driver
        self.spec: VMSpec | None = None
        self.link: Link | None = None
        self.channel: ControlChannel | None = None
        self.agent_hello: dict[str, Any] = {}
        self.data_disk: dict[str, Any] = {}  # the guest's last `disk` event
        self.engine_version = ""
        self.engine_ready_at: float | None = None
        self.engine_up = threading.Event()
        self.guest_ports: list[dict[str, Any]] = []
        self.forwarder: PortForwarder | None = None
        self.clock = HostClock()
        self.power: power.PowerWatch | None = None  # the host's sleep and wake signal
        self.host_asleep_at: float | None = None  # wall clock, while the host sleeps
        self.health = EngineHealth(self._ping_engine, self._on_health)
        self.saver = ResourceSaver(self._pause_vm, self._resume_vm, self._running_containers,
                                   self._rested, self._woke,
                                   minutes=self.settings.resource_saver_minutes,
                                   prepare=self._release_guest_memory,
                                   on_request=self.health.used)
        self.saver.enable(False)  # until the engine runs
        self.health.paused = lambda: self.saver.resting
        # Why the state is degraded ("engine", "link" or "health"): each cause clears
        # only its own.
        self._degraded_by = ""
        self.boot_shares = BootShares(instance, self.events.emit)
        check = apiguard.make_check(self.boot_shares.mounted,
                                    lambda s: self.boot_shares.watch_binds(s, self._channel))
        self.engine_socket = EngineSocket(instance, lambda: self.link, check, self.saver.use)
        self._stop = threading.Event()
        self._stop_reason = ""
        self._save_at_stop = False  # a `stop` that asked to save the VM's state
        self.boot_config: dict[str, Any] = {}  # this boot's, as the guest read it
        self.restored = False  # this start loaded a saved state instead of booting
        self._failed = False
        self._listeners: list[Listener] = []
        self._released = threading.Event()  # the listeners are being closed
        # Set when the guest powered itself off because its agent died: the process that
        # runs this backend boots it again (`desktop.backend.process`).
        self.restart_requested = False

    # -- state -------------------------------------------------------------------------

    def set_state(self, state: State, **fields: Any) -> None:
        self.state = state
        if state != State.DEGRADED:
            self._degraded_by = ""
        if state in (State.ERROR, State.DEGRADED):
            self.reason = str(fields.get("reason", ""))  # status says why, while it lasts
        elif state in (State.STARTING, State.RUNNING):
            self.reason = ""
        self.events.emit(state, **fields)

    def status(self) -> Status:
        s = self.settings
        return {
            "state": self.state,
            "instance": self.inst.name,
            "docker_host": endpoints.docker_host(self.inst),
            "context": self.inst.context_name,
            "engine_version": self.engine_version,
            "agent_version": self.agent_hello.get("agent_version", ""),
            "kernel": self.agent_hello.get("kernel", ""),
            "cpus": s.cpus,
            "memory": s.memory_mib * 2**20,
            "disk": s.disk_gib * 2**30,
            "arch": s.arch,
            "accel": self.driver.accel if self.driver else "",
            "accel_notes": self.driver.accel_notes if self.driver else [],
            "uptime": round(time.time() - self.running_at, 1) if self.running_at else 0,
            "pid": os.getpid(),
            "qemu_pid": self.driver.pid() if self.driver else None,
            "link_port": self.link.port if isinstance(self.link, TcpLink) else 0,
            "ssh_port": (self.driver.ssh_address() or ("", 0))[1] if self.driver else 0,
            "ssh_config": str(self.inst.ssh_config),
            "agent_start": self.agent_hello.get("agent_start"),
            "engine_ready_at": self.agent_hello.get("engine_ready_at") or self.engine_ready_at,
            "reason": self.reason,
            "engine_error": self.agent_hello.get("engine_error", ""),
            "engine_answered_at": self.health.answered_at,
            "ports": self.forwarder.snapshot() if self.forwarder else [],
            "shares": self.boot_shares.status(),
            "shares_pending": self.shares_pending(),
            "docker_engine": self.engine_socket.status(),
            "data_disk": dict(self.data_disk),
            "resource_saver": self.saver.status(),
            "share_guard": list(self.agent_hello.get("share_guard") or []),
            "restored": self.restored,
        }

    def shares_pending(self) -> bool:
        """The saved settings share other folders than this boot does (False before a
        boot): the VM must restart to apply them."""
        return self.spec is not None and self.boot_shares.pending()

    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def vm_alive(self) -> bool:
        return self.driver is not None and self.driver.status() == "running"

    def _channel(self) -> ControlChannel | None:
        """The agent's channel for change notifications; none while the VM rests (no
        container runs then to watch the files)."""
        return None if self.saver.resting else self.channel

    # -- lifecycle ---------------------------------------------------------------------

    def run(self) -> int:
        """Boot, serve until asked to stop or the VM ends, clean up. Returns an exit code."""
        inst = self.inst
        try:  # before any socket is made: a bind would fail with a bare "path too long"
            shares = len(self.settings.shares)
            check_socket_paths(home.socket_paths(inst.folder, shares))
        except SocketPathTooLong as e:
            log.error("%s", e)
            print(e, file=sys.stderr)
            return 2
        inst.ensure_folder()
        # One backend per instance: the lock is the OS's (gone with the process, however
        # it ends); a second backend leaves every socket and file of the first alone.
        lock = FileLock(inst.path(home.BACKEND_LOCK), timeout=0)
        try:
            lock.acquire()
        except LockHeld:
            live = pidfile.read_live(inst.pid_file)
            msg = f"a backend for {inst.name} already runs" + (f" (pid {live})" if live else "")
            log.error("%s", msg)
            print(msg, file=sys.stderr)
            return 3
        try:
            return self._run_locked()
        finally:
            lock.release()

    def _run_locked(self) -> int:
        inst = self.inst
        pidfile.write(inst.pid_file)
        code = 0
        try:
            control = ControlServer(self._control_ops(), self.events.subscribe,
                                    (ControlError, LinkError, ValueError))
            try:
                listener = endpoints.listen_control(inst)
            except OSError as e:  # Windows: another program holds the control pipe
                self.set_state(State.ERROR,
                               reason=f"Cove's control endpoint could not be opened: {e}")
                return 1
            self.serve(listener, control.handle, "control")
            for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)):
                if sig is not None:  # Windows has no SIGHUP
                    signal.signal(sig, lambda *_: self.request_stop("signal"))
            self.started_at = time.time()
            self.power = power.watch(self.on_host_sleep, self.on_host_wake)
            try:
                Boot(self).run()
            except (StartError, DriverError, SettingsError, NotASocketError,
                    vm_image.BuildError) as e:
                self.set_state(State.ERROR, reason=str(e))
                code = 1
                self._stop.set()
            while not self._stop.wait(1.0):
                if self.saver.resting:
                    continue
                self.clock.maybe_push(self.channel)
                if self.state == State.RUNNING:
                    self.saver.tick()
        finally:
            self._shutdown()
            self._release()
        return 1 if self._failed else code

    def _release(self) -> None:
        """After the VM is gone: say so, close every listener, remove the sockets and
        the pid file (never anything that is not a socket, nor another backend's)."""
        self.set_state(State.STOPPED)
        self.events.close()
        self._released.set()
        for listener in self._listeners:
            listener.close()  # wakes the thread blocked in accept()
        for p in (self.inst.control_socket, self.inst.docker_socket):
            try:
                remove_socket(p)
            except NotASocketError:
                pass
        pidfile.remove_if_ours(self.inst.pid_file)

    def why_not_up(self) -> str:
        if not self.vm_alive():
            return "(the VM stopped); the guest's last lines:\n" + self.serial_tail()
        return "in time; the guest's last lines:\n" + self.serial_tail()

    def serial_tail(self, lines: int = 15) -> str:
        try:
            text = self.inst.serial_log.read_text(errors="replace")
        except OSError:
            return "(no serial log)"
        keep = [ln for ln in text.replace("\r", "").splitlines() if ln.strip()]
        return "\n".join(keep[-lines:])

    def watch_vm(self) -> None:
        """Wait for the VM to end; an end nobody asked for is an error."""
        assert self.driver is not None
        self.driver.wait(None)
        if not self._stop.is_set():
            self._failed = True
            tail = self.serial_tail()
            again = ""
            if AGENT_EXITED in self.serial_tail(400):
                # The guest stopped itself cleanly when its agent died: boot it again.
                self.restart_requested = True
                again = "; Cove starts it again"
            self.set_state(State.ERROR, reason="the VM stopped unexpectedly" + again
                           + "; the guest's last lines:\n" + tail)
            self.request_stop("the VM stopped")

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    def _shutdown(self) -> None:
        """Agent shutdown, then ACPI powerdown, quit, kill: each with a timeout."""
        self.saver.wake("stop")  # the agent stops the containers and unmounts the disk
        self.saver.enable(False)
        self.health.stop()
        if self.power is not None:
            self.power.close()
        if self.forwarder is not None:
            self.forwarder.close()
        self.boot_shares.close()
        d = self.driver
        if d is None or d.status() == "stopped":
            return
        self.set_state(State.STOPPING, reason=self._stop_reason)
        if self._save_at_stop and self._save(d):
            return
        if self.channel is not None and self.channel.connected.is_set():
            try:
                self.channel.request("shutdown", timeout=10)
            except LinkError as e:
                log.warning("agent shutdown request failed: %s", e)
            if d.wait(timeouts.STOP_AGENT_TIMEOUT):
                self.channel.close()
                return
            log.warning("the guest did not power off in %.0f s", timeouts.STOP_AGENT_TIMEOUT)
        if self.channel is not None:
            self.channel.close()
        d.stop(timeouts.STOP_ACPI_TIMEOUT)

    def _save(self, d: Driver) -> bool:
        """Save the VM's state instead of shutting it down, where the driver can (True:
        saved, the VM is gone). The guest first writes out what it holds and drops its
        page cache: the disk is then whole even if the state is later discarded, and
        the state is smaller."""
        channel = self.channel
        if channel is None or not (self.engine_up.is_set() and channel.connected.is_set()):
            why = "the engine was not running"
        else:
            try:
                channel.request("release_memory", timeout=30)
                why = d.save({"boot_config": self.boot_config})
            except (AgentError, LinkError, OSError) as e:
                why = f"the guest did not write out its data first ({e})"
        if why:
            log.info("the VM's state is not saved: %s", why)
            self.events.emit(EventKind.SAVED_STATE, action="not_saved",
                             message=f"the VM's state was not saved: {why}")
            return False
        if channel is not None:
            channel.close()
        self.events.emit(EventKind.SAVED_STATE, action="saved",
                         message="the VM's state was saved: the next start restores it")
        return True

    # -- what the agent says -----------------------------------------------------------

    def on_agent_event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        if kind == "hello":
            self.agent_hello = ev
            if ev.get("engine_state") == "running":
                self.engine_version = ev.get("engine_version", "")
        elif kind == "engine":
            self._on_engine(ev)
        elif kind == "ports":
            self._on_ports(ev)
        elif kind == "disk":
            self._on_disk(ev)

    def _on_disk(self, ev: dict[str, Any]) -> None:
        """The guest's reading of the data disk; an event (for the tray) when its level
        changed. Fields that are not what the guest should send are dropped."""
        size, free, level = ev.get("size"), ev.get("free"), ev.get("level")
        if not (isinstance(size, int) and isinstance(free, int) and level in DISK_LEVELS):
            log.warning("a disk event that is not one: %.200r", ev)
            return
        changed = level != self.data_disk.get("level")
        self.data_disk = {"size": size, "free": free, "level": level}
        if changed:
            self.events.emit(EventKind.DATA_DISK, **self.data_disk,
                             message=data_disk_message(level, size, free,
                                                       self.settings.disk_gib))

    def _on_engine(self, ev: dict[str, Any]) -> None:
        st = ev.get("state")
        if st == "running":
            self.engine_version = ev.get("version", self.engine_version)
            self.engine_ready_at = ev.get("ready_at", self.engine_ready_at)
            self.engine_up.set()
            if self.state == State.DEGRADED and self._degraded_by in ("engine", "health"):
                self.set_state(State.RUNNING, engine_version=self.engine_version)
        elif st == "restarting" and self.state == State.RUNNING:
            self._degrade("engine", ev.get("reason", "the engine restarts"))

    def _on_ports(self, ev: dict[str, Any]) -> None:
        added = portfwd.checked_ports(ev.get("added", []))
        removed_ports = portfwd.checked_ports(ev.get("removed", []))
        before = {json.dumps(p, sort_keys=True) for p in self.guest_ports}
        if ev.get("snapshot"):
            # The whole list (each new session): only the difference is news.
            now = {json.dumps(p, sort_keys=True) for p in added}
            removed_ports = [p for p in self.guest_ports
                             if json.dumps(p, sort_keys=True) not in now]
            self.guest_ports = []
        removed = {json.dumps(p, sort_keys=True) for p in removed_ports}
        self.guest_ports = [p for p in self.guest_ports
                            if json.dumps(p, sort_keys=True) not in removed]
        room = portfwd.MAX_FORWARDS - len(self.guest_ports)
        if len(added) > room:
            log.warning("the guest publishes more than %d ports; %d are not forwarded",
                        portfwd.MAX_FORWARDS, len(added) - max(room, 0))
            added = added[:max(room, 0)]
        self.guest_ports += added
        if self.forwarder is not None:
            if ev.get("snapshot"):
                self.forwarder.reset(self.guest_ports)
            else:
                self.forwarder.update(added, removed_ports)
        # Said once the forwarder knows: a client acting on the event sees the ports.
        if ev.get("snapshot"):
            added = [p for p in added if json.dumps(p, sort_keys=True) not in before]
        if added or removed_ports:
            self.events.emit(EventKind.PORTS, added=added, removed=removed_ports)

    def on_resume(self) -> None:
        """The VM runs again after a pause: its clock stood still meanwhile."""
        log.info("the VM resumed after a pause; setting its clock")
        self.clock.push(self.channel)

    def on_host_sleep(self) -> None:
        """The platform says the host goes to sleep (the VM stops with it)."""
        self.host_asleep_at = time.time()
        self.events.emit(EventKind.HOST_POWER, power="sleep")

    def on_host_wake(self) -> None:
        """The platform says the host woke: the guest's clock stood still while it slept,
        and whether the engine answers is asked now, not at the next check."""
        slept = time.time() - self.host_asleep_at if self.host_asleep_at else None
        self.host_asleep_at = None
        self.events.emit(EventKind.HOST_POWER, power="wake",
                         slept=round(slept, 1) if slept is not None else None)
        threading.Thread(target=self.clock.push, args=(self.channel,), daemon=True,
                         name="wake-clock").start()
        self.health.check_soon()

    # -- Resource Saver ----------------------------------------------------------------

    def _pause_vm(self) -> None:
        assert self.driver is not None
        self.driver.pause()

    def _release_guest_memory(self) -> None:
        """The guest's page cache back to the host before it rests (best effort: an older
        agent, or one that does not answer, rests as it is)."""
        channel = self.channel
        if channel is None or not channel.connected.is_set():
            return
        try:
            got = channel.request("release_memory", timeout=30)
            if isinstance(got, dict):
                log.info("the guest freed %d MiB before resting",
                         max(0, int(got.get("free_after", 0)) - int(got.get("free_before", 0)))
                         >> 20)
        except (AgentError, LinkError, OSError) as e:
            log.info("the guest did not release memory before resting: %s", e)
            return
        pid = self.driver.pid() if self.driver is not None else None
        if pid is None:  # Hyper-V: no process of ours holds the VM's memory
            return
        meter = Meter(pid)

        def rss() -> int | None:
            got = meter.read()
            return got[1] if got is not None else None

        fell, waited = wait_given_back(rss, self.saver.still_idle,
                                       quiet=timeouts.GIVEN_BACK_QUIET,
                                       longest=timeouts.GIVEN_BACK_LONGEST)
        log.info("QEMU gave back %d MiB of its memory in %.1f s", fell >> 20, waited)

    def _resume_vm(self) -> None:
        assert self.driver is not None
        self.driver.resume()

    def _running_containers(self) -> int | None:
        link = self.link
        return health.running_containers(link) if link is not None else None

    def _rested(self, minutes: float) -> None:
        self.set_state(State.RESTING, idle_minutes=minutes)

    def _woke(self, seconds: float, why: str) -> None:
        self.set_state(State.RUNNING, engine_version=self.engine_version, woke=why,
                       wake_seconds=round(seconds, 3))
        threading.Thread(target=self.clock.push, args=(self.channel,), daemon=True,
                         name="wake-clock").start()

    def _op_wake(self) -> dict[str, Any]:
        self.saver.wake("control")
        return self.saver.status()

    def _op_resource_saver(self, minutes: Any) -> dict[str, Any]:
        """Set the idle minutes now (0: never rest) and keep them in the settings."""
        try:
            value = check_resource_saver(minutes)
        except SettingsError as e:
            raise ControlError(str(e)) from None
        self.saver.set_minutes(value)
        self.settings.resource_saver_minutes = value
        self.inst.update_settings(lambda s: setattr(s, "resource_saver_minutes", value))
        return self.saver.status()

    def on_link_state(self, up: bool) -> None:
        if self._stop.is_set():
            return
        if self.forwarder is not None:
            self.forwarder.link_state(up)
        if up:
            return
        if self.state == State.RUNNING:
            self._degrade("link", "the guest link dropped; reconnecting")
        threading.Thread(target=self._reconnect, daemon=True, name="reconnect").start()

    def _reconnect(self) -> None:
        assert self.channel is not None
        up = self.channel.wait_connect(
            3600, alive=lambda: self.vm_alive() and not self._stop.is_set())
        if up and self.state == State.DEGRADED and self._degraded_by == "link" and \
                self.engine_up.is_set():
            self.set_state(State.RUNNING, engine_version=self.engine_version)

    def _degrade(self, cause: str, reason: str) -> None:
        self.set_state(State.DEGRADED, reason=reason)
        self._degraded_by = cause

    def _ping_engine(self) -> str | None:
        link = self.link
        return health.ping(link) if link is not None else "no guest link"

    def _on_health(self, ok: bool, why: str) -> None:
        if self._stop.is_set():
            return
        if not ok and self.state == State.RUNNING:
            self._degrade("health", f"the engine does not answer: {why}")
        elif ok and self.state == State.DEGRADED and self._degraded_by == "health":
            self.set_state(State.RUNNING, engine_version=self.engine_version)

    # -- serving -----------------------------------------------------------------------

    def serve(self, listener: Listener, handler: Callable[[Any], None], name: str) -> None:
        """Accept on `listener` (a socket, or a named pipe on Windows) on a thread of its
        own, each connection handled on a new thread; run() closes it."""
        self._listeners.append(listener)

        def loop() -> None:
            while (accepted := sockets.accept(listener, self._released.is_set)) is not None:
                threading.Thread(target=handler, args=(accepted[0],), daemon=True).start()

        threading.Thread(target=loop, daemon=True, name=f"{name}-accept").start()

    def _control_ops(self) -> dict[str, Op]:
        """The control API's op table (docs/protocol.md); `events` is the server's own."""
        return {
            "ping": lambda req: "pong",
            "status": lambda req: self.status(),
            "stop": lambda req: self._op_stop(str(req.get("reason", "requested")),
                                              req.get("save", False)),
            "logs": lambda req: self._agent().request(
                "logs", name=req.get("name", "dockerd"), lines=int(req.get("lines", 200))),
            "agent_status": lambda req: self._agent().request("status"),
            # Give the data disk's freed space back to the host's disk now (fstrim).
            "trim": lambda req: self._agent().request("trim", timeout=600),
            "engine_config": lambda req: self._op_engine_config(req.get("config")),
            "ports": lambda req: self.forwarder.snapshot() if self.forwarder else [],
            "docker_engine_target": lambda req: self.engine_socket.set_docker_engine_target(
                str(req.get("endpoint") or "")),
            "wake": lambda req: self._op_wake(),
            "resource_saver": lambda req: self._op_resource_saver(req.get("minutes")),
            **(self._test_ops() if os.environ.get(TEST_OPS_ENV) == "1" else {}),
        }

    def _test_ops(self) -> dict[str, Op]:
        """Ops that exist for the tests only, served when the backend was started with
        COVE_TEST_OPS=1; without it they are unknown ops like any other."""
        return {
            "clock_offset": lambda req: self.clock.simulate_jump(float(req.get("seconds", 0))),
            "drop_share_stream": self._op_drop_share_stream,
        }

    def _op_drop_share_stream(self, req: dict[str, Any]) -> bool:
        index = req.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            raise ControlError(f"index must be a share's number, not {index!r}")
        return self.boot_shares.drop_stream(index)

    def _op_stop(self, reason: str, save: Any = False) -> str:
        """Stop; with `save`, the VM's state is saved for the next start where the driver
        can save it (otherwise it shuts down as without)."""
        if not isinstance(save, bool):
            raise ControlError(f"stop: save must be true or false, not {save!r}")
        self._save_at_stop = self._save_at_stop or save
        self.request_stop(reason)
        return "stopping"

    def _agent(self) -> ControlChannel:
        self.saver.wake("control")
        if self.channel is None or not self.channel.connected.is_set():
            raise ControlError("the guest agent is not connected")
        return self.channel

    def _op_engine_config(self, config: Any) -> Any:
        try:
            result = self._agent().request("engine_config", config=config, timeout=180)
        except AgentError as e:
            raise ControlError(f"the engine refused the config: {e}") from e
        # Only this field: the user may have changed others (shares, cpus) meanwhile.
        self.settings.engine_config = config or {}
        self.inst.update_settings(lambda s: setattr(s, "engine_config", config or {}))
        return result
