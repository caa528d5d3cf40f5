"""The backend: one long-lived process per instance that owns the VM.

`cove start` launches it detached (`cove backend --instance NAME`). It boots the VM
through a driver, keeps the guest link's control channel (reconnecting when it drops),
serves the engine socket and the control API, pushes the host's clock, and records every
state change as an event (JSON lines in ``events.log``, and live to control clients):

    starting -> running <-> degraded -> stopping -> stopped
                       \\-> error (with a reason) -> stopped

`Backend.run` returns when the VM is gone and everything it opened is closed again
(sockets, pid file), whichever way it ended.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import vm_image
from desktop import apiguard, context, drivers, engines, filewatch, ninep, pidfile, ssh
from desktop.control import ControlError
from desktop.drivers import Driver, DriverError, SharedFolder, VMSpec
from desktop.drivers.qemu import free_port
from desktop.instance import (
    Instance,
    Settings,
    SettingsError,
    default_shares,
    parse_shares,
    remove_socket,
)
from desktop.link import AgentError, ControlChannel, Link, LinkError
from desktop.platform import endpoints, winpipe
from desktop.platform.endpoints import Listener, Stream
from desktop.portfwd import PortForwarder
from guest_engine import relay

log = logging.getLogger(__name__)

AGENT_TIMEOUT = 120.0  # power-on to the agent's hello (TCG first boot: ~10 s here)
ENGINE_TIMEOUT = 180.0  # hello to the engine answering
TIME_PUSH_INTERVAL = 10.0
STOP_AGENT_TIMEOUT = 90.0  # the agent stops containers with their own timeouts
STOP_ACPI_TIMEOUT = 20.0


class StartError(Exception):
    """The VM or the engine did not come up; the message says why."""


def kernel_crashed(serial: str) -> bool:
    """Whether the guest's console shows a kernel crash (not a failure of Cove's own)."""
    return any(s in serial for s in ("Kernel panic", "Oops:", "BUG:", "general protection"))


class _Subscriber:
    """One events client, fed by its own thread from a bounded queue, so a client that
    stops reading is dropped instead of stalling the backend."""

    MAX_QUEUED = 1000

    def __init__(self, sock: Stream, on_gone: Any) -> None:
        self.sock = sock
        self.queue: queue.Queue[bytes | None] = queue.Queue(self.MAX_QUEUED)
        self.on_gone = on_gone
        threading.Thread(target=self._write, daemon=True, name="events-writer").start()

    def put(self, data: bytes) -> None:
        try:
            self.queue.put_nowait(data)
        except queue.Full:
            log.warning("an events client stopped reading; dropping it")
            self._shutdown()

    def close(self) -> None:
        """End the stream once what is queued has been sent."""
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            self._shutdown()

    def _shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _write(self) -> None:
        while (data := self.queue.get()) is not None:
            try:
                self.sock.sendall(data)
            except OSError:
                break
        self._shutdown()
        self.on_gone(self)


class EventLog:
    """Appends events to events.log and hands them to live subscribers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.history: list[dict[str, Any]] = []
        self._subs: list[_Subscriber] = []
        self._lock = threading.Lock()

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        ev = {"time": round(time.time(), 3), "event": kind, **fields}
        line = json.dumps(ev)
        with self._lock:
            self.history.append(ev)
            del self.history[:-500]
            with self.path.open("a") as f:
                f.write(line + "\n")
            for sub in self._subs:
                sub.put(line.encode() + b"\n")
        log.info("event %s", line)
        return ev

    def subscribe(self, s: Stream, history: bool) -> _Subscriber:
        with self._lock:
            sub = _Subscriber(s, self._drop)
            if history:
                for ev in self.history:
                    sub.put(json.dumps(ev).encode() + b"\n")
            self._subs.append(sub)
        return sub

    def _drop(self, sub: _Subscriber) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def close(self) -> None:
        with self._lock:
            subs, self._subs = self._subs, []
        for sub in subs:
            sub.close()


class Backend:
    """`driver` and `image` are for tests (a fake hypervisor); by default the QEMU driver
    and the image built for this version of Cove."""

    def __init__(self, instance: Instance, driver: Driver | None = None,
                 image: vm_image.Image | None = None) -> None:
        self.inst = instance
        self.image = image
        self.settings: Settings = instance.load_settings()
        self.events = EventLog(instance.events_log)
        self.state = "stopped"
        self.reason = ""
        self.started_at: float | None = None
        self.running_at: float | None = None
        self.driver: Driver | None = driver
        self.spec: VMSpec | None = None
        self.link: Link | None = None
        self.channel: ControlChannel | None = None
        self.agent_hello: dict[str, Any] = {}
        self.engine_version = ""
        self.engine_ready_at: float | None = None
        self.guest_ports: list[dict[str, Any]] = []
        self.forwarder: PortForwarder | None = None
        # The docker_engine pipe (Windows, when Cove serves it): "" forwards to the VM,
        # else the DOCKER_HOST URL of the engine it forwards to (Windows containers).
        self.docker_engine_served = False
        self.docker_engine_target = ""
        self._engine_up = threading.Event()
        self._stop = threading.Event()
        self._stop_reason = ""
        self._failed = False
        self._listeners: list[Listener] = []
        self._last_time_push = 0.0
        self._clock_offset_ns = 0  # a simulated jump of the host's clock (tests)
        self.shares: list[SharedFolder] = []  # what this boot shares (settings may differ)
        self.share_errors: dict[str, str] = {}  # host path -> why it is not mounted
        self.share_servers: dict[str, ninep.ShareServer] = {}  # "link" shares, by host path
        self._bind_check = apiguard.make_check(self.mounted_shares, self._watch_binds)
        self._watcher: filewatch.Watcher | None = None
        self._watch_lock = threading.Lock()
        self.touches = 0  # paths the agent was asked to touch (change notifications)

    # -- state -----------------------------------------------------------------------

    def set_state(self, state: str, **fields: Any) -> None:
        self.state = state
        if state == "error":
            self.reason = str(fields.get("reason", ""))
        self.events.emit(state, **fields)

    def status(self) -> dict[str, Any]:
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
            "link_port": self.spec.link_port if self.spec else 0,
            "ssh_port": self.spec.ssh_port if self.spec else 0,
            "ssh_config": str(self.inst.folder / "ssh_config"),
            "agent_start": self.agent_hello.get("agent_start"),
            "engine_ready_at": self.agent_hello.get("engine_ready_at") or self.engine_ready_at,
            "reason": self.reason,
            "engine_error": self.agent_hello.get("engine_error", ""),
            "ports": self.forwarder.snapshot() if self.forwarder else [],
            "shares": [{"path": sh.path, "transport": sh.transport, "vm_path": sh.guest_path,
                        **({"error": self.share_errors[sh.path]}
                           if sh.path in self.share_errors else {}),
                        **({"served": dict(self.share_servers[sh.path].stats)}
                           if sh.path in self.share_servers else {})}
                       for sh in self.shares],
            "shares_pending": self.shares_pending(),
            "docker_engine": self._docker_engine_status(),
        }

    def mounted_shares(self) -> list[str]:
        """The host folders this boot shares, less any the VM could not mount (a bind of
        one would mount an empty folder: the guard refuses it with the fix instead)."""
        return [sh.path for sh in self.shares if sh.path not in self.share_errors]

    def vm_path_of(self, host: str) -> str | None:
        """Where host path `host` is in the VM (None: in no mounted share)."""
        for sh in self.shares:
            if sh.path not in self.share_errors:
                vm = sh.vm_path_of(host)
                if vm is not None:
                    return vm
        return None

    def shares_pending(self) -> bool:
        """True when the saved settings share other folders than this boot does (the VM
        must restart to apply them)."""
        if self.spec is None:
            return False
        try:
            saved = parse_shares(self.inst.load_settings().shares)
        except SettingsError:
            return False
        booted = [(sh.path, sh.transport) for sh in self.shares]
        return [p for p, _ in saved] != [p for p, _ in booted] or any(
            t not in ("auto", bt) for (_, t), (_, bt) in zip(saved, booted, strict=False))

    # -- lifecycle -------------------------------------------------------------------

    def run(self) -> int:
        """Boot, serve until asked to stop or the VM ends, clean up. Returns an exit code."""
        inst = self.inst
        inst.ensure_folder()
        live = pidfile.read_live(inst.pid_file)
        if live is not None and live != os.getpid():
            msg = f"a backend for {inst.name} already runs (pid {live})"
            log.error("%s", msg)
            print(msg, file=sys.stderr)
            return 3
        pidfile.write(inst.pid_file)
        code = 0
        try:
            self._serve(endpoints.listen_control(inst), self._handle_control, "control")
            for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)):
                if sig is not None:  # Windows has no SIGHUP
                    signal.signal(sig, lambda *_: self.request_stop("signal"))
            self.started_at = time.time()
            try:
                self._boot()
            except (StartError, DriverError, SettingsError, vm_image.BuildError) as e:
                self.set_state("error", reason=str(e))
                code = 1
                self._stop.set()
            if not self._stop.is_set():
                self._serve_until_stopped()
        finally:
            self._shutdown()
            self.set_state("stopped")
            self.events.close()
            for listener in self._listeners:
                listener.close()  # wakes the thread blocked in accept()
            for p in (inst.control_socket, inst.docker_socket):
                try:
                    remove_socket(p)
                except SettingsError:
                    pass
            pidfile.remove_if_ours(inst.pid_file)
        return 1 if self._failed else code

    def _boot(self) -> None:
        inst, s = self.inst, self.settings
        self.set_state("starting", step="image")
        # Before anything boots: a stale socket goes, anything else there stays (and stops
        # the start with a message naming it).
        remove_socket(inst.docker_socket)
        image = self.image or vm_image.find_image(s.arch)
        if image is None:
            raise StartError(vm_image.builder.missing_image_message(s.arch))
        if self.driver is None:
            self.driver = drivers.pick(arch=s.arch, accel_cache=inst.home / "accel.json")
        try:
            shares, notes = self.driver.resolve_shares(parse_shares(s.shares))
        except DriverError as e:
            if s.shares != default_shares():
                raise  # folders the user chose: the start fails, naming why
            # The default share where this host's hypervisor cannot share yet (Windows):
            # the VM starts without it and says so, rather than not starting at all.
            log.warning("the default shared folders are not shared: %s", e)
            self.events.emit("shares_unavailable", message=str(e))
            shares, notes = [], []
        self.shares = shares
        for note in notes:
            log.info("%s", note)
        token = secrets.token_hex(32)
        boot_config = {"token": token, "network": "user", "engine_config": s.engine_config,
                       "ssh_authorized_key": ssh.ensure_key(inst.folder),
                       "shares": [sh.boot_entry() for sh in shares]}
        old = os.umask(0o177)
        try:
            inst.boot_config.unlink(missing_ok=True)
            inst.boot_config.write_text(json.dumps(boot_config))
        finally:
            os.umask(old)
        self.spec = VMSpec(
            name=inst.name, folder=inst.folder, kernel=image.kernel,
            initramfs=image.initramfs, root_image=image.root, data_disk=inst.data_disk,
            boot_config=inst.boot_config, cpus=s.cpus, memory_mib=s.memory_mib,
            disk_gib=s.disk_gib, arch=s.arch, link_port=free_port(), ssh_port=free_port(),
            extra_hostfwd=os.environ.get("COVE_QEMU_HOSTFWD", "").split(), shares=shares,
        )
        ssh.write_config(inst.folder, inst.context_name, self.spec.ssh_port)
        self.set_state("starting", step="disk")
        self.driver.create(self.spec)
        for attempt in (1, 2):
            self.set_state("starting", step="vm", image=image.key, attempt=attempt)
            self.driver.start(self.spec)
            self.link = self.driver.make_link(token)
            self.channel = ControlChannel(self.link, self._on_agent_event,
                                          self._on_link_state)
            self.set_state("starting", step="agent", accel=self.driver.accel,
                           accel_notes=self.driver.accel_notes)
            if self.channel.wait_connect(
                    AGENT_TIMEOUT, alive=lambda: self._vm_alive() and not self._stop.is_set()):
                break
            if self._stop.is_set():
                return
            if attempt == 1 and not self._vm_alive() and kernel_crashed(self.serial_tail(400)):
                # Software emulation on SMP guests occasionally trips the kernel's live
                # code patching early in boot ("Oops: int3"); a second boot gets past it.
                log.warning("the guest kernel crashed while booting; booting it again")
                shutil.copyfile(self.inst.serial_log, self.inst.folder / "serial.crash.log")
                continue
            raise StartError("the guest agent did not answer " + self._why_not_up())
        threading.Thread(target=self._watch_vm, daemon=True, name="vm-watch").start()
        self._serve_link_shares()
        self.set_state("starting", step="engine",
                       agent_version=self.agent_hello.get("agent_version"))
        deadline = time.monotonic() + ENGINE_TIMEOUT
        while not self._engine_up.wait(0.2):
            if self._stop.is_set():
                return  # asked to stop while booting: not an error
            if not self._vm_alive() or time.monotonic() > deadline:
                raise StartError("the engine did not start " + self._why_not_up())
        self._push_time()
        def skipped(note: str) -> None:  # docker_engine held by Docker Desktop, say
            self.events.emit("endpoint_skipped", message=note)

        try:
            engine_listeners = endpoints.listen_engine(inst, s.docker_engine_pipe, skipped)
        except OSError as e:
            raise StartError(f"cannot serve the engine API: {e}") from e
        for listener in engine_listeners:
            if getattr(listener, "name", None) == winpipe.DOCKER_ENGINE:
                self.docker_engine_served = True
                self._serve(listener, self._forward_docker_engine, "docker_engine")
            else:
                self._serve(listener, self._forward_docker, "docker")
        link = self.link
        assert link is not None
        self.forwarder = PortForwarder(lambda op, port: link.open(op, port), self.events.emit,
                                       expose_all=s.expose_ports_on_all_interfaces)
        self.forwarder.reset(self.guest_ports)
        self._activate_context()
        self.running_at = time.time()
        self.set_state("running", engine_version=self.engine_version,
                       seconds=round(self.running_at - (self.started_at or 0), 1))

    def _serve_link_shares(self) -> None:
        """Serve each "link" share (`desktop.ninep`) on its own ``fs <n>`` stream and have
        the agent mount it. A share that fails is reported (event ``share_failed``, the
        status' shares) and the start goes on, as for a device share the guest could not
        mount."""
        link, channel = self.link, self.channel
        assert link is not None and channel is not None
        self.share_servers = {}
        self.share_errors = {}
        served = [(i, sh) for i, sh in enumerate(self.shares) if sh.transport == "link"]
        if served:
            self.set_state("starting", step="shares")
        for i, sh in served:
            server = ninep.ShareServer(sh.path)
            try:
                ninep.serve_in_thread(server, link.open("fs", i), f"share-{i}")
                channel.request("mount_share", index=i, timeout=40)
            except LinkError as e:
                self.share_errors[sh.path] = str(e)
                log.error("share %s (in the VM at %s): %s", sh.path, sh.guest_path, e)
                self.events.emit("share_failed", path=sh.path, message=str(e))
                continue
            self.share_servers[sh.path] = server
            log.info("share %s served over the guest link at %s", sh.path, sh.guest_path)

    def _why_not_up(self) -> str:
        if not self._vm_alive():
            return "(the VM stopped); the guest's last lines:\n" + self.serial_tail()
        return "in time; the guest's last lines:\n" + self.serial_tail()

    def serial_tail(self, lines: int = 15) -> str:
        try:
            text = self.inst.serial_log.read_text(errors="replace")
        except OSError:
            return "(no serial log)"
        keep = [ln for ln in text.replace("\r", "").splitlines() if ln.strip()]
        return "\n".join(keep[-lines:])

    def _vm_alive(self) -> bool:
        return self.driver is not None and self.driver.status() == "running"

    def _watch_vm(self) -> None:
        assert self.driver is not None
        self.driver.wait(None)
        if not self._stop.is_set():
            self._failed = True
            self.set_state("error", reason="the VM stopped unexpectedly; the guest's last "
                           "lines:\n" + self.serial_tail())
            self.request_stop("the VM stopped")

    def _serve_until_stopped(self) -> None:
        while not self._stop.wait(1.0):
            self._maybe_push_time()

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    def _shutdown(self) -> None:
        """Agent shutdown, then ACPI powerdown, quit, kill: each with a timeout."""
        self._close_forwarder()
        with self._watch_lock:
            if self._watcher is not None:
                self._watcher.close()
                self._watcher = None
        d = self.driver
        if d is None or d.status() == "stopped":
            return
        self.set_state("stopping", reason=self._stop_reason)
        if self.channel is not None and self.channel.connected.is_set():
            try:
                self.channel.request("shutdown", timeout=10)
            except LinkError as e:
                log.warning("agent shutdown request failed: %s", e)
            if d.wait(STOP_AGENT_TIMEOUT):
                self._close_channel()
                return
            log.warning("the guest did not power off in %.0f s", STOP_AGENT_TIMEOUT)
        self._close_channel()
        d.stop(STOP_ACPI_TIMEOUT)

    def _close_forwarder(self) -> None:
        if self.forwarder is not None:
            self.forwarder.close()

    def _close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()

    # -- agent events ----------------------------------------------------------------

    def _on_agent_event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        if kind == "hello":
            self.agent_hello = ev
            if ev.get("engine_state") == "running":
                self.engine_version = ev.get("engine_version", "")
        elif kind == "engine":
            st = ev.get("state")
            if st == "running":
                self.engine_version = ev.get("version", self.engine_version)
                self.engine_ready_at = ev.get("ready_at", self.engine_ready_at)
                self._engine_up.set()
                if self.state == "degraded":
                    self.set_state("running", engine_version=self.engine_version)
            elif st == "restarting" and self.state == "running":
                self.set_state("degraded", reason=ev.get("reason", "the engine restarts"))
        elif kind == "ports":
            if ev.get("snapshot"):
                self.guest_ports = []
            removed = {json.dumps(p, sort_keys=True) for p in ev.get("removed", [])}
            self.guest_ports = [p for p in self.guest_ports
                                if json.dumps(p, sort_keys=True) not in removed]
            self.guest_ports += ev.get("added", [])
            if self.forwarder is not None:
                if ev.get("snapshot"):
                    self.forwarder.reset(self.guest_ports)
                else:
                    self.forwarder.update(ev.get("added", []), ev.get("removed", []))
            # Said once the forwarder knows: a client acting on the event sees the ports.
            self.events.emit("ports", added=ev.get("added", []),
                             removed=ev.get("removed", []))

    def _on_link_state(self, up: bool) -> None:
        if up or self._stop.is_set():
            return
        if self.state == "running":
            self.set_state("degraded", reason="the guest link dropped; reconnecting")
        threading.Thread(target=self._reconnect, daemon=True, name="reconnect").start()

    def _reconnect(self) -> None:
        assert self.channel is not None
        up = self.channel.wait_connect(
            3600, alive=lambda: self._vm_alive() and not self._stop.is_set())
        if up and self.state == "degraded" and self._engine_up.is_set():
            self.set_state("running", engine_version=self.engine_version)

    # -- time ------------------------------------------------------------------------

    def host_time_ns(self) -> int:
        """The host's clock as the guest should follow it."""
        return time.time_ns() + self._clock_offset_ns

    def simulate_clock_jump(self, seconds: float) -> dict[str, Any]:
        """From now on, behave as if the host's clock were `seconds` off the real one.

        The jump is seen by the same check that sees a real one (the wall clock moved
        unlike the monotonic one), so tests exercise the real path. 0 ends the simulation.
        """
        if not -10 * 365 * 86400 < seconds < 10 * 365 * 86400:
            raise ControlError("clock_offset: seconds must be within ten years")
        self._clock_offset_ns = int(seconds * 1e9)
        log.info("host clock offset for the guest set to %+.3f s", seconds)
        return {"offset_seconds": seconds, "host_time_ns": self.host_time_ns()}

    def _push_time(self) -> None:
        if self.channel is None or not self.channel.connected.is_set():
            return
        try:
            self.channel.request("set_time", ns=self.host_time_ns(), timeout=5)
        except LinkError as e:
            log.debug("time push failed: %s", e)
        self._last_time_push = time.monotonic()
        self._last_wall = self.host_time_ns() / 1e9

    def _maybe_push_time(self) -> None:
        """Every 10 s, and at once when the wall clock jumped (or the host slept)."""
        now_m, now_w = time.monotonic(), self.host_time_ns() / 1e9
        expected = getattr(self, "_last_wall", now_w) + (now_m - self._last_time_push)
        jumped = abs(now_w - expected) > 1.0
        if jumped or now_m - self._last_time_push >= TIME_PUSH_INTERVAL:
            self._push_time()

    # -- sockets ---------------------------------------------------------------------

    def _serve(self, listener: Listener, handler: Any, name: str) -> None:
        """Accept on `listener` (a socket, or a named pipe on Windows) on a thread of its
        own, each connection handled on a new thread; run() closes it."""
        self._listeners.append(listener)

        def loop() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                threading.Thread(target=handler, args=(conn,), daemon=True).start()

        threading.Thread(target=loop, daemon=True, name=f"{name}-accept").start()

    def _forward_docker(self, conn: Stream) -> None:
        assert self.link is not None
        try:
            up = self.link.open("docker")
        except LinkError as e:
            log.warning("engine connection failed: %s", e)
            conn.close()
            return
        apiguard.guarded_pipe(conn, up, self._bind_check)

    def _forward_docker_engine(self, conn: Stream) -> None:
        """The docker_engine pipe: to the VM, or while Windows containers are active to
        their engine (unguarded: that engine reads Windows paths itself)."""
        target = self.docker_engine_target
        if not target:
            self._forward_docker(conn)
            return
        try:
            up = endpoints.connect_url(target, 10)
        except OSError as e:
            log.warning("docker_engine: cannot reach %s: %s", target, e)
            conn.close()
            return
        relay.pipe(conn, up)

    def set_docker_engine_target(self, endpoint: str) -> dict[str, Any]:
        """Where docker_engine forwards new connections ("" or this instance's own
        address: the VM); open connections finish where they are."""
        if endpoint == endpoints.docker_host(self.inst):
            endpoint = ""
        if endpoint and not endpoint.startswith(("npipe://", "unix://")):
            raise ControlError(f"docker_engine_target: {endpoint!r} is not an engine "
                               "address (npipe:////./pipe/NAME or unix:///path)")
        self.docker_engine_target = endpoint
        log.info("docker_engine now forwards to %s", endpoint or "the VM")
        return self._docker_engine_status()

    def _docker_engine_status(self) -> dict[str, Any]:
        return {"served": self.docker_engine_served,
                "target": self.docker_engine_target or endpoints.docker_host(self.inst)}

    # -- change notifications ------------------------------------------------------------

    def _watch_binds(self, sources: list[str]) -> None:
        """Watch the shared folders containers bind-mount, for the guest's watchers (on a
        thread of its own: walking a large tree must not delay the container's create)."""
        threading.Thread(target=self._watch_now, args=(sources,), daemon=True,
                         name="watch-binds").start()

    def _watch_now(self, sources: list[str]) -> None:
        with self._watch_lock:
            if self._stop.is_set():
                return
            if self._watcher is None:
                self._watcher = filewatch.make_watcher(self._send_changes)
            for src in sources:
                root = src if os.path.isdir(src) else os.path.dirname(src)
                try:
                    self._watcher.watch(root)
                except (OSError, RuntimeError) as e:
                    log.info("not watching %s: %s", root, e)

    def _send_changes(self, changes: list[filewatch.Change]) -> None:
        if self.channel is None or not self.channel.connected.is_set():
            return
        # The VM's paths: on Windows C:\\Users\\me\\x is /mnt/host/c/Users/me/x there.
        moved = [[vm, c.mode] for c in changes if (vm := self.vm_path_of(c.path)) is not None]
        if not moved:
            return
        try:
            done = self.channel.request("touch", changes=moved, timeout=10)
            self.touches += int(done or 0)
        except (LinkError, AgentError) as e:
            log.debug("change notification failed: %s", e)

    def _activate_context(self) -> None:
        inst = self.inst
        try:
            mode = engines.load_mode(inst.home)
        except engines.EngineStateError as e:
            log.warning("%s; the Linux engine is assumed", e)
            mode = "linux"
        if mode == "windows":
            # Switched to Windows containers: the context stays on that engine (the VM
            # still runs, for `cove engine use linux` to switch back at once).
            log.info("Windows containers are active: the %s context is left on them",
                     inst.context_name)
            return
        context.create(inst.context_name, endpoints.docker_host(inst), f"Cove ({inst.name})")
        if not (inst.folder / "no-activate").exists():
            context.use(inst.context_name, remember=inst.folder / "previous-context")

    def _handle_control(self, conn: Any) -> None:
        rfile = conn.makefile("rb")
        try:
            line = rfile.readline()
            if not line:
                return
            try:
                req = json.loads(line)
                op = req["op"]
            except (ValueError, KeyError, TypeError):
                conn.sendall(b'{"ok": false, "error": "a request is a JSON object with op"}\n')
                return
            if op == "events":
                sub = self.events.subscribe(conn, bool(req.get("history", True)))
                # Keep the connection until the client or the backend closes it.
                while rfile.readline():
                    pass
                sub.close()
                return
            try:
                reply = {"ok": True, "result": self._control_op(op, req)}
            except (ControlError, LinkError, SettingsError, ValueError) as e:
                reply = {"ok": False, "error": str(e)}
            except TypeError as e:
                reply = {"ok": False, "error": f"{op}: a parameter has the wrong type ({e})"}
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass
        finally:
            rfile.close()
            conn.close()

    def _control_op(self, op: str, req: dict[str, Any]) -> Any:
        if op == "ping":
            return "pong"
        if op == "status":
            return self.status()
        if op == "stop":
            self.request_stop(str(req.get("reason", "requested")))
            return "stopping"
        if op in ("logs", "engine_config", "agent_status"):
            if self.channel is None or not self.channel.connected.is_set():
                raise ControlError("the guest agent is not connected")
            if op == "logs":
                return self.channel.request("logs", name=req.get("name", "dockerd"),
                                            lines=int(req.get("lines", 200)))
            if op == "agent_status":
                return self.channel.request("status")
            try:
                result = self.channel.request("engine_config", config=req.get("config"),
                                              timeout=180)
            except AgentError as e:
                raise ControlError(f"the engine refused the config: {e}") from e
            self.settings.engine_config = req.get("config") or {}
            self.inst.save_settings(self.settings)
            return result
        if op == "ports":
            return self.forwarder.snapshot() if self.forwarder else []
        if op == "clock_offset":
            return self.simulate_clock_jump(float(req.get("seconds", 0)))
        if op == "docker_engine_target":
            return self.set_docker_engine_target(str(req.get("endpoint") or ""))
        raise ControlError(f"unknown op {op!r}")


def main(instance: str) -> int:
    inst = Instance(instance)
    inst.ensure_folder()
    handler = logging.FileHandler(inst.backend_log)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        return Backend(inst).run()
    except SettingsError as e:
        log.error("%s", e)
        return 2


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": round(record.created, 3), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)
