"""Windows endpoints: named pipes restricted to the user (see `winpipe`).

Python has no unix sockets on Windows, so the control API is a pipe too, named after
the user and the instance (``\\\\.\\pipe\\cove-<user>-<instance>-control``); clients know
the instance by its folder, whose name it is. The Win32 API, the pipes' security
attributes and the user's tag are made once per process, on first use.
"""

from __future__ import annotations

import getpass
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from desktop.platform import _win32, winpipe


class _Instance(Protocol):
    """What the endpoints need of an instance (`desktop.instance.Instance`)."""

    @property
    def name(self) -> str: ...


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


_tag: str | None = None


def user_tag() -> str:
    """This user's tag in pipe names (`winpipe.user_tag`): from the SID; where the Win32
    API cannot give one (not Windows), from DOMAIN\\user."""
    global _tag
    if _tag is None:
        try:
            identity = _api_and_security()[0].current_user_sid()
        except OSError:
            user = os.environ.get("USERNAME") or getpass.getuser()
            identity = f"{os.environ.get('USERDOMAIN', '')}\\{user}"
        _tag = winpipe.user_tag(identity)
    return _tag


def pipe_name(instance: str, role: str) -> str:
    """The pipe of `role` (engine, control, qmp, com1) for this user's
    `instance`."""
    return winpipe.instance_pipe(user_tag(), instance, role)


def connect_pipe(name: str, timeout: float | None,
                 server_pid: int | None = None) -> winpipe.PipeConnection:
    """A client connection to `name`; with `server_pid`, only if that process serves it
    (a program that created the name first would otherwise get what Cove sends)."""
    api, _ = _api_and_security()
    conn = winpipe.connect(api, name, timeout)
    if server_pid is not None:
        try:
            actual = conn.server_pid()
        except OSError:
            conn.close()
            raise
        if actual != server_pid:
            conn.close()
            raise winpipe.PipeTakenError(
                f"{name} is served by process {actual}, not by the expected {server_pid}; "
                "Cove will not talk to it. End that program and start Cove again")
    return conn


def listen_engine(inst: _Instance, docker_engine_pipe: bool = False,
                  on_note: Callable[[str], None] | None = None) -> list[winpipe.PipeServer]:
    api, security = _api_and_security()
    plan = winpipe.engine_plan(pipe_name(inst.name, "engine"), docker_engine_pipe)
    return winpipe.open_pipes(api, plan, security, on_note)


def listen_control(inst: _Instance) -> winpipe.PipeServer:
    api, security = _api_and_security()
    return winpipe.PipeServer(api, pipe_name(inst.name, "control"), security)


def connect_control(path: Path, timeout: float | None) -> winpipe.PipeConnection:
    api, _ = _api_and_security()
    return winpipe.connect(api, pipe_name(path.parent.name, "control"), timeout)


def docker_host(inst: _Instance) -> str:
    return winpipe.docker_host(pipe_name(inst.name, "engine"))


def connect_url(url: str, timeout: float | None) -> winpipe.PipeConnection:
    """A client connection to a docker host URL (npipe:////./pipe/NAME)."""
    api, _ = _api_and_security()
    return winpipe.connect(api, winpipe.pipe_from_host(url), timeout)


def local_server_name(socket_path: Path, key: str) -> str:
    """A pipe name of the user's (``cove-tray-<SID>-<key>``): pipe names are global, so the
    SID keeps two users' trays apart; who may connect is the pipe's ACL (Qt's
    UserAccessOption grants the user only). A name another user took first cannot make a
    tray exit: the tray's lock file, in the user's profile, decides who is first."""
    api, _ = _api_and_security()
    return "cove-tray-" + re.sub(r"[^A-Za-z0-9_.-]", "_", f"{api.current_user_sid()}-{key}")
