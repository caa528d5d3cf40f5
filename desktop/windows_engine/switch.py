"""Which Docker engine the `cove` context points at: the Linux VM or native Windows.

Cove has two engine modes:

* ``linux`` — the Docker engine in the Cove VM, served by the instance's backend on its
  forwarded socket (the default, and the only mode outside Windows);
* ``windows`` — a native ``dockerd.exe`` with the windowsfilter driver, run by Cove
  beside the VM (`desktop.windows_engine.engine`).

Both can run at once. Switching (`Switcher.switch`) never stops the engine it leaves: it
starts the chosen one if it is not running, waits until it answers ``/_ping``, then
re-points the `cove` docker context — and ``\\\\.\\pipe\\docker_engine`` when Cove owns
that pipe — at the chosen engine's endpoint, and only then records the new mode. A switch
that fails part-way leaves the previous mode in effect.

The active mode is kept in ``$COVE_HOME/engine.json`` (written atomically). Each mode
keeps its own settings: the VM's in the instance's settings.json, the Windows engine's in
``$COVE_HOME/windows/settings.json``.

Errors (all carry a message naming the problem and the fix)::

    EngineError                  anything a user can meet here
     +-- EngineStateError        engine.json is unreadable (it is left as it is)
     +-- SwitchRefused           the chosen engine cannot run on this computer
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from desktop import context
from desktop.control import ControlClient, ControlError
from desktop.home import ENGINE_MODE
from desktop.platform import endpoints
from desktop.platform.files import atomic_write
from desktop.windows_engine.engine import WindowsEngine, WindowsHost
from desktop.windows_engine.errors import EngineError, EngineStateError
from desktop.windows_engine.host import SystemHost
from desktop.windows_engine.http import http_get
from guest_engine import dockerapi

if TYPE_CHECKING:
    from desktop.instance import Instance

log = logging.getLogger(__name__)

MODES = ("linux", "windows")
DESCRIPTIONS = {"linux": "the Cove VM", "windows": "native dockerd.exe"}
DEFAULT_MODE = "linux"
START_TIMEOUT = 600.0  # the VM may build its data disk; dockerd.exe is much faster


# -- the active mode on disk ---------------------------------------------------------------


def engine_file(home: Path) -> Path:
    return home / ENGINE_MODE


def load_mode(home: Path) -> str:
    """The active mode; "linux" when Cove never switched. A file that cannot be read is
    an EngineStateError (never silently replaced: it may hold the user's choice)."""
    path = engine_file(home)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return DEFAULT_MODE
    except OSError as e:
        raise EngineStateError(f"{path} cannot be read ({e.strerror}); check its "
                               "permissions") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise EngineStateError(
            f"{path} is not valid JSON ({e}); fix it or delete it to go back to the Linux "
            "engine, then run `cove engine use linux|windows`") from None
    mode = data.get("mode") if isinstance(data, dict) else None
    if mode not in MODES:
        raise EngineStateError(
            f"{path}: mode {mode!r} is not one of {', '.join(MODES)}; fix it or delete the "
            "file, then run `cove engine use linux|windows`")
    return str(mode)


def save_mode(home: Path, mode: str) -> None:
    """Write engine.json atomically (a crash leaves the old file or the new one)."""
    if mode not in MODES:
        raise EngineError(f"engine {mode!r} is not one of {', '.join(MODES)}")
    home.mkdir(parents=True, exist_ok=True)
    path = engine_file(home)
    atomic_write(path, json.dumps({"mode": mode}, indent=2) + "\n", 0o644)


# -- the engines ------------------------------------------------------------------------


class Engine(Protocol):
    """One engine mode. `check()` raises SwitchRefused when it cannot run here;
    `start()` returns once the engine was asked to start (the switcher waits for its
    /_ping); `get(path)` is one HTTP GET to the engine, OSError when it does not answer."""

    mode: str
    endpoint: str  # the docker host URL: unix://…, npipe:////./pipe/…

    def check(self) -> None: ...

    def start(self) -> None: ...

    def get(self, path: str) -> tuple[int, bytes]: ...


def answers(engine: Engine) -> bool:
    """The engine answers /_ping with 200 OK."""
    try:
        status, body = engine.get("/_ping")
    except OSError:
        return False
    return status == 200 and body.strip() == b"OK"


def version(engine: Engine) -> str:
    """The engine's version, or "" when it does not answer."""
    try:
        status, body = engine.get("/version")
        data = json.loads(body) if status == 200 else {}
    except (OSError, ValueError):
        return ""
    return str(data.get("Version", "")) if isinstance(data, dict) else ""


class LinuxEngine:
    """The engine in the Cove VM, reached through the backend's forwarded socket.
    `start_vm` starts the backend and returns when it runs (the CLI's `cove start`
    path, or the tray's), raising EngineError when it cannot."""

    mode = "linux"

    def __init__(self, socket_path: Path, start_vm: Callable[[], None],
                 endpoint: str | None = None) -> None:
        self.socket_path = socket_path
        self.endpoint = endpoint or f"unix://{socket_path}"
        self._start_vm = start_vm

    def check(self) -> None:
        pass  # the VM runs on every host Cove supports

    def start(self) -> None:
        self._start_vm()

    def get(self, path: str) -> tuple[int, bytes]:
        if self.endpoint.startswith("npipe://"):  # Windows: the backend's engine pipe
            from desktop.platform import winpipe  # Windows only

            with open(winpipe.pipe_from_host(self.endpoint), "r+b", buffering=0) as f:
                return http_get(f, path)
        return dockerapi.request("GET", path, path=str(self.socket_path), timeout=5)


# -- \\.\pipe\docker_engine --------------------------------------------------------------


class DockerEnginePipe(Protocol):
    """Cove's server of ``\\\\.\\pipe\\docker_engine`` (desktop/platform on Windows).

    `owned()` is True when Cove serves that pipe (no other Docker installation does);
    `retarget(endpoint)` makes it forward new connections to `endpoint` (open ones
    finish where they are)."""

    def owned(self) -> bool: ...

    def retarget(self, endpoint: str) -> None: ...


class BackendDockerEnginePipe:
    """`DockerEnginePipe` through the instance's backend, which serves the pipe: its
    status says whether it got docker_engine, its `docker_engine_target` op re-points it."""

    def __init__(self, inst: Instance, client: Any = None) -> None:
        self.inst = inst
        self.client = client or ControlClient(inst.control_socket)

    def owned(self) -> bool:
        try:
            st = self.client.request("status", timeout=5)
        except (ControlError, OSError):
            return False  # no backend: nobody serves docker_engine for Cove
        return bool((st.get("docker_engine") or {}).get("served"))

    def retarget(self, endpoint: str) -> None:
        try:
            self.client.request("docker_engine_target", endpoint=endpoint, timeout=10)
        except (ControlError, OSError) as e:
            raise EngineError(f"could not re-point \\\\.\\pipe\\docker_engine at {endpoint}: "
                              f"{e}") from e


# -- switching ---------------------------------------------------------------------------


class ContextStore(Protocol):
    """What the switcher needs of desktop/context.py (the module itself fits)."""

    def create(self, name: str, socket_url: str, description: str) -> None: ...

    def use(self, name: str, remember: Path | None = None) -> None: ...


@dataclass
class SwitchResult:
    mode: str
    endpoint: str
    started: bool  # the engine was not running and was started
    version: str
    previous: str


class Switcher:
    """Switches the `cove` context between engines. `engines` maps each mode to its
    Engine; `pipe` is Cove's docker_engine server on Windows (None elsewhere);
    `activate` makes the context current as the backend does (False: the user chose
    `cove start --no-activate`)."""

    def __init__(self, home: Path, context_name: str, engines: dict[str, Engine],
                 contexts: ContextStore, *, instance_name: str = "default",
                 remember: Path | None = None, activate: bool = True,
                 pipe: DockerEnginePipe | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.home = home
        self.context_name = context_name
        self.engines = engines
        self.contexts = contexts
        self.instance_name = instance_name
        self.remember = remember
        self.activate = activate
        self.pipe = pipe
        self._clock = clock
        self._sleep = sleep

    def active(self) -> str:
        return load_mode(self.home)

    def status(self) -> dict[str, Any]:
        """{"mode", "description", "endpoint", "running", "version"} of the active mode;
        the other engines' state under "others" (switching leaves them running)."""
        mode = self.active()
        out = self._describe(mode)
        out["others"] = [self._describe(m) for m in MODES if m != mode and m in self.engines]
        return out

    def _describe(self, mode: str) -> dict[str, Any]:
        engine = self.engines[mode]
        up = answers(engine)
        return {"mode": mode, "description": DESCRIPTIONS[mode], "endpoint": engine.endpoint,
                "running": up, "version": version(engine) if up else ""}

    def switch(self, mode: str, timeout: float = START_TIMEOUT) -> SwitchResult:
        """Point the `cove` context at `mode`'s engine, starting it if needed; returns
        once the engine answers /_ping, or raises EngineError (SwitchRefused when it
        cannot run here). The engine being left is never stopped."""
        if mode not in self.engines:
            raise EngineError(f"engine {mode!r} is not one of {', '.join(self.engines)}; "
                              "use `cove engine use linux` or `cove engine use windows`")
        previous = self.active()  # a corrupt engine.json stops us before anything changes
        engine = self.engines[mode]
        engine.check()
        started = False
        if not answers(engine):
            log.info("starting the %s engine", mode)
            engine.start()
            started = True
            self._wait(engine, timeout)
        self.contexts.create(self.context_name, engine.endpoint,
                             f"Cove ({self.instance_name}, {mode} containers)")
        if self.activate:
            if self.remember is not None:
                self.remember.parent.mkdir(parents=True, exist_ok=True)
            self.contexts.use(self.context_name, remember=self.remember)
        if self.pipe is not None and self.pipe.owned():
            self.pipe.retarget(engine.endpoint)
        save_mode(self.home, mode)
        return SwitchResult(mode, engine.endpoint, started, version(engine), previous)

    def _wait(self, engine: Engine, timeout: float) -> None:
        deadline = self._clock() + timeout
        while not answers(engine):
            if self._clock() >= deadline:
                raise EngineError(
                    f"the {engine.mode} engine did not answer at {engine.endpoint} within "
                    f"{timeout:.0f} s; see `cove engine status` and its log "
                    f"({'cove logs' if engine.mode == 'linux' else 'the engine log'})")
            self._sleep(0.2)


def switcher_for(inst: Instance, start_vm: Callable[[], None], *,
                 host: WindowsHost | None = None, pipe: DockerEnginePipe | None = None,
                 contexts: ContextStore | None = None) -> Switcher:
    """The switcher for an instance: its VM, the Windows engine of its $COVE_HOME, its
    `cove` context (made current unless it was started with --no-activate)."""
    if pipe is None and sys.platform == "win32":
        pipe = BackendDockerEnginePipe(inst)
    return Switcher(
        inst.home, inst.context_name,
        {"linux": LinuxEngine(inst.docker_socket, start_vm,
                              endpoint=endpoints.docker_host(inst)),
         "windows": WindowsEngine(inst.home, host or SystemHost())},
        contexts or context, instance_name=inst.name,
        remember=inst.previous_context,
        activate=not inst.no_activate_marker.exists(), pipe=pipe)
