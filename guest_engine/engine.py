"""Supervise containerd and dockerd: start in order, restart on crash, apply config.

States (reported to the host as ``engine`` events): ``starting`` -> ``running`` (dockerd
answers /_ping) -> ``stopping`` -> ``stopped``; ``restarting`` after a crash, with
backoff; ``failed`` when the data disk is missing (nothing to run on).

Logs go to the data disk (``/mnt/data/log/{containerd,dockerd}.log``), where the host
fetches them with the control channel's ``logs`` request.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from guest_engine import dockerapi
from guest_engine.boot import paths

log = logging.getLogger(__name__)

CONTAINERD_SOCK = "/run/containerd/containerd.sock"
# The engine's two large programs (dockerd 94 MB, containerd 54 MB). Read cold from the
# compressed root they cost seconds of the start under emulation (measured in the guest:
# 4.9 s and 2.8 s), so the agent reads them on a thread while it does the boot's first
# steps (`page_in`), and they run from the page cache.
PROGRAMS = ("/usr/bin/containerd", "/usr/sbin/dockerd")
DAEMON_JSON = Path("/etc/docker/daemon.json")
LOG_LIMIT = 8 * 2**20  # a log past this size is rotated to <name>.log.1 at (re)start
BACKOFF = (1, 2, 4, 8, 15, 30)
GATE_TIMEOUT = 60.0  # at most this long dockerd waits for the host's shares


def _open_log(name: str) -> int:
    paths.LOG_DIR.mkdir(parents=True, exist_ok=True)
    path = paths.LOG_DIR / f"{name}.log"
    try:
        if path.stat().st_size > LOG_LIMIT:
            path.replace(path.with_suffix(".log.1"))
    except FileNotFoundError:
        pass
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)


def page_in(paths: tuple[str, ...] = PROGRAMS) -> threading.Thread:
    """Read `paths` into the page cache on a thread (reads release the GIL); a missing
    one is skipped."""
    def read() -> None:
        for path in paths:
            try:
                with open(path, "rb", buffering=0) as f:
                    while f.read(1 << 20):
                        pass
            except OSError:
                pass

    t = threading.Thread(target=read, daemon=True, name="page-in")
    t.start()
    return t


def _wait_then_set(proc: subprocess.Popen, exited: threading.Event) -> None:
    # Popen.wait sets returncode before it returns, so whoever the event wakes finds the
    # process ended (poll() meanwhile says "running": it cannot take the wait's lock).
    proc.wait()
    exited.set()


class Service:
    """One supervised daemon. `exited` (when given) is set when a process it started
    ends: a thread waits on each, so the supervisor sleeps until then rather than
    looking every half second (two wakes a second of an idle VM)."""

    def __init__(self, name: str, argv: list[str],
                 exited: threading.Event | None = None) -> None:
        self.name = name
        self.argv = argv
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.exited = exited

    def start(self) -> None:
        fd = _open_log(self.name)
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=fd,
                                         stderr=fd, start_new_session=True)
        finally:
            os.close(fd)
        log.info("%s started (pid %d)", self.name, self.proc.pid)
        if self.exited is not None:
            threading.Thread(target=_wait_then_set, args=(self.proc, self.exited),
                             daemon=True, name=f"{self.name}-exit").start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float) -> None:
        if not self.running():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing it", self.name, timeout)
            self.proc.kill()
            self.proc.wait()


class Engine:
    """containerd + dockerd under supervision. Thread-safe; events go to `notify`."""

    def __init__(self, notify: Callable[[dict], None]) -> None:
        self.notify = notify
        self.state = "stopped"
        self.version = ""
        self.ready_at: float | None = None  # seconds since kernel start
        self.error = ""
        self._lock = threading.RLock()
        self._stopping = False
        self._changed = threading.Event()  # a daemon exited, or stop() was called
        # Set when dockerd may start (the host's shares are mounted); None: no wait.
        self.gate: threading.Event | None = None
        self.containerd = Service("containerd", ["containerd"], self._changed)
        self.dockerd = Service("dockerd", [
            "dockerd", "--containerd", CONTAINERD_SOCK, "--host", "unix://" +
            dockerapi.DOCKER_SOCK, "--config-file", str(DAEMON_JSON),
        ], self._changed)

    def _set(self, state: str, **extra: object) -> None:
        self.state = state
        log.info("engine %s %s", state, extra or "")
        self.notify({"event": "engine", "state": state, **extra})

    def start(self, config: object = None) -> None:
        """Start both daemons and the watcher thread; returns at once.

        `config` is the engine config the host's settings hold (daemon.json as an
        object); it replaces the one on the data disk when it differs and dockerd accepts
        it. A refused one is logged and reported; the one in force stays.
        """
        if not DAEMON_JSON.exists():
            DAEMON_JSON.parent.mkdir(parents=True, exist_ok=True)
            DAEMON_JSON.write_text("{}\n")
        if isinstance(config, dict):
            try:
                current = json.loads(DAEMON_JSON.read_text())
            except ValueError:
                current = None
            if current != config:
                ok, message = self._install_config(config)
                if not ok:
                    self.error = f"the engine config from the settings was refused: {message}"
                    log.error("%s", self.error)
        threading.Thread(target=self._supervise, daemon=True, name="engine").start()

    def _launch(self) -> bool:
        with self._lock:
            self._set("starting")
            if not self.containerd.running():
                self.containerd.start()
                deadline = time.monotonic() + 30
                while not os.path.exists(CONTAINERD_SOCK) and time.monotonic() < deadline:
                    if not self.containerd.running():
                        break
                    time.sleep(0.05)
        gate, self.gate = self.gate, None
        if gate is not None and not gate.is_set():
            # Containers that start with the engine (restart policies) must find the
            # host's folders mounted, not the empty folders beneath them.
            log.info("dockerd waits for the host's shares")
            if not gate.wait(GATE_TIMEOUT):
                log.warning("the host's shares are not mounted after %.0f s; starting "
                            "dockerd without them", GATE_TIMEOUT)
        with self._lock:
            if not self.dockerd.running():
                self.dockerd.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not self._stopping:
            if dockerapi.ping():
                break
            if not self.dockerd.running():
                return False
            time.sleep(0.05)
        else:
            return False
        try:
            self.version = dockerapi.get_json("/version").get("Version", "")
        except (OSError, ValueError):
            self.version = ""
        if self.ready_at is None:
            self.ready_at = uptime()
        self._set("running", version=self.version, ready_at=self.ready_at)
        return True

    def _supervise(self) -> None:
        attempt = 0
        while not self._stopping:
            ok = self._launch()
            if ok:
                attempt = 0
                while not self._stopping and self.dockerd.running():
                    if not self.containerd.running():
                        # dockerd reconnects to a restarted containerd by itself.
                        log.warning("containerd exited; restarting it")
                        self.containerd.restarts += 1
                        self.containerd.start()
                    # Until a daemon exits or stop() is called; cleared before the
                    # checks above run again, so an exit meanwhile is never missed.
                    self._changed.wait()
                    self._changed.clear()
            if self._stopping:
                return
            code = self.dockerd.proc.returncode if self.dockerd.proc else None
            delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]
            attempt += 1
            self.dockerd.restarts += 1
            self.error = f"dockerd exited with status {code}; see `cove logs`"
            self._set("restarting", reason=self.error, retry_in=delay)
            time.sleep(delay)

    def stop(self, timeout: float = 60) -> None:
        """Stop dockerd (which stops containers with their own timeouts), then containerd."""
        self._stopping = True
        self._changed.set()
        with self._lock:
            self._set("stopping")
            self.dockerd.stop(timeout)
            self.containerd.stop(15)
            self._set("stopped")

    def restart_dockerd(self) -> bool:
        with self._lock:
            self.dockerd.stop(60)
        # The supervisor notices the exit and relaunches; wait for it to answer again.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if self.state == "running" and dockerapi.ping():
                return True
        return False

    def apply_config(self, config: object) -> tuple[bool, str]:
        """Validate `config` with dockerd itself, install it and restart dockerd.

        Returns (ok, message). When dockerd refuses the config, the message is dockerd's
        own and the previous daemon.json stays in force.
        """
        if not isinstance(config, dict):
            return False, "the engine config must be a JSON object"
        previous = DAEMON_JSON.read_text() if DAEMON_JSON.exists() else "{}\n"
        ok, message = self._install_config(config)
        if not ok:
            return False, message
        if self.restart_dockerd():
            return True, "applied; the engine restarted"
        DAEMON_JSON.write_text(previous)
        self.restart_dockerd()
        return False, ("dockerd did not start with the new config; the previous config is "
                       "back in force. dockerd said: " + tail_log("dockerd", 5))

    @staticmethod
    def _install_config(config: dict) -> tuple[bool, str]:
        """Validate `config` with dockerd itself and, if accepted, write daemon.json."""
        candidate = DAEMON_JSON.with_suffix(".json.new")
        candidate.write_text(json.dumps(config, indent=2) + "\n")
        proc = subprocess.run(["dockerd", "--validate", "--config-file", str(candidate)],
                              capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            candidate.unlink()
            msg = (proc.stderr or proc.stdout).strip()
            return False, msg or f"dockerd --validate exited {proc.returncode}"
        candidate.replace(DAEMON_JSON)
        return True, "installed"


def tail_log(name: str, lines: int = 100) -> str:
    path = paths.LOG_DIR / f"{name}.log"
    if name == "agent":
        path = paths.RUN_DIR / "agent.log"
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def uptime() -> float:
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
