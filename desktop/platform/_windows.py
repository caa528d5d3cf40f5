"""Windows endpoints: named pipes restricted to the user (see `winpipe`).

Python has no unix sockets on Windows, so the control API is a pipe too, named after
the instance (``\\\\.\\pipe\\cove-<instance>-control``); clients know the instance by its
folder, whose name it is. The Win32 API and the pipes' security attributes are made
once per process, on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from desktop.instance import Instance
from desktop.platform import _win32, winpipe

_lock = threading.Lock()
_state: tuple[Any, Any] | None = None


def _api_and_security() -> tuple[Any, Any]:
    global _state
    with _lock:
        if _state is None:
            api = _win32.load()
            security = api.security_attributes(winpipe.sddl_for(api.current_user_sid()))
            _state = (api, security)  # kept for the process: each new instance needs it
        return _state


def listen_engine(inst: Instance, docker_engine_pipe: bool = False,
                  on_note: Callable[[str], None] | None = None) -> list[winpipe.PipeServer]:
    api, security = _api_and_security()
    return winpipe.open_pipes(api, winpipe.engine_plan(inst.name, docker_engine_pipe),
                              security, on_note)


def listen_control(inst: Instance) -> winpipe.PipeServer:
    api, security = _api_and_security()
    return winpipe.PipeServer(api, winpipe.control_pipe(inst.name), security)


def connect_control(path: Path, timeout: float | None) -> winpipe.PipeConnection:
    api, _ = _api_and_security()
    return winpipe.connect(api, winpipe.control_pipe(path.parent.name), timeout)


def docker_host(inst: Instance) -> str:
    return winpipe.docker_host(winpipe.engine_pipe(inst.name))


def connect_url(url: str, timeout: float | None) -> winpipe.PipeConnection:
    """A client connection to a docker host URL (npipe:////./pipe/NAME)."""
    api, _ = _api_and_security()
    return winpipe.connect(api, winpipe.pipe_from_host(url), timeout)
