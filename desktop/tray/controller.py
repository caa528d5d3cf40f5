"""The tray's model of one Cove instance: its backend's state, and what the user asks of it.

`TrayController` follows the backend's `events` stream (see docs/protocol.md) on a
thread and folds each event into a `TrayState` (model.py), so what the tray shows is
what the backend said. When no backend runs, the state is "stopped" and the controller
waits for one to appear (the tray's Start, or `cove start` in a terminal). While the
engine runs, it also follows Docker's own events to count the running containers and to
tell the dashboard when to refresh.

It is a QObject with signals and no widgets, so it runs (and is tested) without a
display. Actions (start, stop, restart, engine_config) run on the worker pool and never
block the caller.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal

from desktop import lifecycle, windows_engine
from desktop.control import ControlClient, ControlError
from desktop.instance import Instance
from desktop.platform import endpoints
from desktop.tray import model
from desktop.tray.docker_service import DockerError, DockerService
from desktop.tray.qtcompat import emit
from desktop.tray.worker import Worker

log = logging.getLogger(__name__)

RECONNECT_INTERVAL = 1.0  # how often to look for a backend while none runs
STOP_TIMEOUT = 180.0


class TrayController(QObject):
    """`spawn` starts a backend for the instance (default: `cove backend`, detached);
    `docker` is the engine client (default: the SDK on the instance's docker.sock)."""

    changed = Signal(object)  # TrayState
    notify = Signal(object)  # model.Notice
    docker_changed = Signal()  # the engine's containers, images or volumes changed
    action_failed = Signal(str)

    # (object, not bool: queued bool arguments from a Python thread upset PySide6 6.12's
    # reference counts of True and False.)
    _event_in = Signal(object, object)  # event, live (from the follower thread)
    _count_in = Signal(object)  # running containers (from the docker thread)

    def __init__(self, instance: Instance, *,
                 spawn: Callable[[Instance], Any] | None = None,
                 docker: DockerService | None = None,
                 worker: Worker | None = None, parent: QObject | None = None,
                 switcher: Callable[[], windows_engine.Switcher] | None = None,
                 orphan: Callable[[Instance], int | None] = lifecycle.orphan_pid) -> None:
        super().__init__(parent)
        self.inst = instance
        self.client = ControlClient(instance.control_socket)
        self.state = model.TrayState()
        self._switcher = switcher or (lambda: windows_engine.switcher_for(instance, self._start_vm))
        self.refresh_engine_mode()
        self.docker = docker or DockerService(instance.docker_socket,
                                              base_url=endpoints.docker_host(instance))
        self.worker = worker or Worker(self)
        self._spawn = spawn or lifecycle.spawn_backend
        self._orphan = orphan
        self._proc: subprocess.Popen | None = None
        self._closing = threading.Event()
        self._sock: Any = None
        self._sock_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._docker_thread: threading.Thread | None = None
        self._docker_stream: Any = None
        self.connected = threading.Event()  # following a live backend's events
        self._event_in.connect(self._on_event)
        self._count_in.connect(self._on_count)

    # -- lifecycle -------------------------------------------------------------------

    def start_following(self) -> None:
        """Begin following the backend (connecting whenever one runs)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._follow, daemon=True,
                                            name="tray-events")
            self._thread.start()

    def close(self) -> None:
        """Stop following (the backend keeps running: closing the tray is not quitting)."""
        self._closing.set()
        with self._sock_lock:
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._stop_docker_watch()
        if self._thread is not None:
            self._thread.join(5)
        self.worker.close(10000)
        self.docker.close()
        self._reap()

    def backend_running(self) -> bool:
        return lifecycle.is_running(self.inst)

    # -- following the backend ---------------------------------------------------------

    def _follow(self) -> None:
        was_connected = True  # so that "no backend" is published once at the start
        while not self._closing.is_set():
            s = self._connect()
            status = self._status() if s is not None else None
            if s is None or status is None:
                if s is not None:
                    self._drop(s)
                if was_connected:
                    was_connected = False
                    # A VM whose backend died still runs: say so (Start takes it back).
                    orphan = None if self._launching() else self._orphan(self.inst)
                    emit(self._event_in, {"event": "_absent", "orphan_pid": orphan}, False)
                self._closing.wait(RECONNECT_INTERVAL)
                self._reap()
                continue
            # Subscribed first, then asked for the status: nothing falls between the two,
            # and everything on the stream from here on is news.
            was_connected = True
            self.connected.set()
            emit(self._event_in, {**status, "event": "_status"}, False)
            try:
                for line in s.makefile("rb"):
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(ev, dict):
                        emit(self._event_in, ev, True)
            except OSError:
                pass
            finally:
                self.connected.clear()
                self._drop(s)
            self._reap()

    def _status(self) -> dict[str, Any] | None:
        try:
            st = self.client.request("status", timeout=5)
        except (ControlError, ValueError):
            return None
        return st if isinstance(st, dict) else None

    def _drop(self, s: Any) -> None:
        with self._sock_lock:
            self._sock = None
        s.close()

    def _connect(self) -> Any:
        """The backend's event stream (its control API: a unix socket, or on Windows a
        named pipe), or None while no backend serves it."""
        try:
            s = endpoints.connect_control(self.inst.control_socket, 5)
        except OSError:
            return None
        try:
            s.sendall(json.dumps({"op": "events", "history": False}).encode() + b"\n")
            s.settimeout(None)
        except OSError:
            s.close()
            return None
        with self._sock_lock:
            if self._closing.is_set():
                s.close()
                return None
            self._sock = s
        return s

    def _on_event(self, ev: dict[str, Any], live: bool) -> None:
        if ev.get("event") == "_absent":
            # No backend answers: it is stopped (or ended with the error it last logged).
            orphan = ev.get("orphan_pid")
            changed = self.state.state not in ("stopped", "error") or \
                orphan != self.state.orphan_pid
            if changed and not self._launching():
                self.state.state = "stopped"
                self.state.containers = None
                self.state.orphan_pid = orphan
                emit(self.changed, self.state)
            return
        self.state.orphan_pid = None
        before = self.state.state
        if ev.get("event") == "_status":
            model.apply_status(self.state, ev)
        for notice in model.apply_event(self.state, ev, live):
            emit(self.notify, notice)
        if self.state.is_up and self._docker_thread is None:
            self._start_docker_watch()
        elif not self.state.is_up and before != self.state.state:
            self._stop_docker_watch()
        emit(self.changed, self.state)

    def _launching(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None

    # -- Docker's events: the container count and the dashboard's refreshes -------------

    def _start_docker_watch(self) -> None:
        self._docker_thread = threading.Thread(target=self._watch_docker, daemon=True,
                                               name="tray-docker-events")
        self._docker_thread.start()

    def _stop_docker_watch(self) -> None:
        t, self._docker_thread = self._docker_thread, None
        stream, self._docker_stream = self._docker_stream, None
        if stream is not None:
            _close_quietly(stream)
        if t is not None and t is not threading.current_thread():
            t.join(2)

    def _watch_docker(self) -> None:
        me = threading.current_thread()
        while self._docker_thread is me and not self._closing.is_set():
            stream = None
            try:
                stream = self.docker.events()
                self._docker_stream = stream
                emit(self._count_in, self.docker.running_count())
                for ev in stream:
                    if self._docker_thread is not me:
                        break
                    if ev.get("Type") in ("container", "image", "volume"):
                        if ev.get("Type") == "container":
                            emit(self._count_in, self.docker.running_count())
                        else:
                            emit(self._count_in, None)
            except DockerError as e:
                log.debug("docker events: %s", e)
            except Exception as e:  # a closed stream ends here too
                log.debug("docker events ended: %s", e)
            finally:
                # A stream that ended with an error still holds its connection: close
                # it now rather than leave the socket to the garbage collector.
                if stream is not None:
                    if self._docker_stream is stream:
                        self._docker_stream = None
                    _close_quietly(stream)
            self._closing.wait(1.0)

    def _on_count(self, n: int | None) -> None:
        if n is not None and self.state.is_up:
            self.state.containers = n
            emit(self.changed, self.state)
        emit(self.docker_changed)

    # -- actions -----------------------------------------------------------------------

    def ensure_started(self) -> None:
        """Start the backend unless one runs (the tray's launch)."""
        if not self.backend_running():
            self.start()

    def start(self) -> None:
        if self.backend_running() or self._launching():
            return
        self.state.state, self.state.step, self.state.reason = "starting", "launch", ""
        emit(self.changed, self.state)
        try:
            self._proc = self._spawn(self.inst)
        except OSError as e:
            self.state.state, self.state.reason = "error", f"could not launch the backend: {e}"
            emit(self.changed, self.state)
            emit(self.notify, model.Notice("Cove's engine failed to start", self.state.reason,
                                          "critical"))

    def stop(self, on_done: Callable[[Any], Any] | None = None) -> None:
        self.worker.submit(self._stop_blocking, on_done, self._action_failed)

    def restart(self) -> None:
        self.worker.submit(self._stop_blocking, lambda _: self.start(),
                           self._action_failed)

    def _stop_blocking(self) -> bool:
        try:
            return lifecycle.stop_backend(self.inst, timeout=STOP_TIMEOUT, save=True)
        except lifecycle.LifecycleError as e:
            raise ControlError(str(e)) from e

    def request(self, op: str, on_done: Callable[[Any], Any] | None = None,
                on_error: Callable[[str], Any] | None = None, timeout: float = 30,
                **params: Any) -> None:
        """A control request on the worker pool."""
        self.worker.submit(lambda: self.client.request(op, timeout=timeout, **params),
                           on_done, on_error or self._action_failed)

    def apply_engine_config(self, config: dict[str, Any], on_done: Callable[[Any], Any],
                            on_error: Callable[[str], Any]) -> None:
        """Hand daemon.json to the running engine (it restarts with it, or refuses it and
        keeps the old one; the message is the engine's own)."""
        self.request("engine_config", on_done, on_error, timeout=200, config=config)

    def _action_failed(self, message: str) -> None:
        emit(self.action_failed, message)

    def _count(self, n: int | None) -> None:
        emit(self._count_in, n)

    def note_restart_needed(self, why: str = "") -> None:
        self.state.restart_needed = True
        emit(self.changed, self.state)
        emit(self.notify, model.restart_notice(why))

    # -- the engine switch (Windows) ---------------------------------------------------

    def refresh_engine_mode(self) -> None:
        """Read the active engine mode (engine.json); an unreadable file reads as the
        default, and the switch itself then reports why."""
        try:
            self.state.engine_mode = windows_engine.load_mode(self.inst.home)
        except windows_engine.EngineError as e:
            log.warning("%s", e)
            self.state.engine_mode = windows_engine.DEFAULT_MODE

    def switch_engine(self, mode: str) -> None:
        """Switch the `cove` context to `mode`'s engine on the worker pool; the result is
        a notice (the refusal's reason when it cannot switch)."""
        if self.state.switching_to:
            return
        self.state.switching_to = mode
        emit(self.changed, self.state)

        def done(result: windows_engine.SwitchResult) -> None:
            self.state.switching_to = ""
            self.state.engine_mode = result.mode
            emit(self.changed, self.state)
            emit(self.notify, model.switch_notice(result.mode))

        def failed(message: str) -> None:
            self.state.switching_to = ""
            self.refresh_engine_mode()
            emit(self.changed, self.state)
            emit(self.notify, model.switch_failed_notice(mode, message))

        self.worker.submit(lambda: self._switcher().switch(mode), done, failed)

    def _start_vm(self) -> None:
        """Start the backend unless it runs and wait until it is up (on the worker)."""
        proc = None if self.backend_running() else self._spawn(self.inst)
        if proc is not None:
            self._proc = proc
        try:
            lifecycle.wait_running(self.inst, proc)
        except lifecycle.LifecycleError as e:
            raise windows_engine.EngineError(str(e)) from e

    def refresh_count(self) -> None:
        if self.state.is_up:
            self.worker.submit(self.docker.running_count, self._count,
                               lambda e: None)


def _close_quietly(stream: Any) -> None:
    try:
        stream.close()
    except Exception:  # the stream may be gone already
        pass
