"""The backend's endpoints (engine API, control API) on this host, and how to reach them.

One module per platform provides the same functions; this one picks it once:

* ``listen_engine(inst, docker_engine_pipe, on_note) -> list[Listener]``: the engine API
  (the docker.sock socket; or the cove-<user>-<instance>-engine pipe, plus docker_engine
  when allowed and free). `on_note` gets a sentence about an endpoint that was left out on purpose.
* ``listen_control(inst) -> Listener``: the control API.
* ``connect_control(path, timeout) -> Stream``: a client connection to the control API
  of the instance whose control socket path is `path` (on Windows, its pipe).
* ``docker_host(inst) -> str``: the DOCKER_HOST URL of the engine API (the docker context
  and `cove status` show it).
* ``connect_url(url, timeout) -> Stream``: a client connection to a DOCKER_HOST URL of
  this host's kind (unix://, or npipe:// on Windows): where docker_engine forwards when
  Windows containers are active.
* ``local_server_name(socket_path, key) -> str``: the name of a Qt local server (the
  tray's) that only this user reaches: on Unix `socket_path` itself, a full path in a
  folder of the user's (Qt then makes no name in the shared temporary folder); on
  Windows, where the names are pipes every user shares, one holding the user's SID and
  `key` (the pipe's ACL, Qt's UserAccessOption, keeps others from connecting).

* ``windows_pipe(instance, role) -> str``: the name of a Windows pipe Cove makes for this
  user's `instance` (roles: engine, control, qmp, com1), on any host (a
  driver builds a Windows command line in tests too).
* ``connect_windows_pipe(name, timeout, server_pid) -> Stream``: a client connection to a
  pipe another program serves (QEMU's monitor), refused (`PipeTakenError`) when the
  pipe's server is not process `server_pid`; FileNotFoundError while no one serves it.

A `Listener`'s accept() returns (connection, address) and raises OSError once close()
was called (close wakes a thread blocked in accept). Connections are sockets, or on
Windows `winpipe.PipeConnection`s, which behave alike for the relay and the control API.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol


class Stream(Protocol):
    """What the relay, the docker socket's guard and the control API use of a connection."""

    def recv(self, size: int, /) -> bytes: ...
    def recv_into(self, buffer: Any, nbytes: int = ..., /) -> int: ...
    def sendall(self, data: Any, /) -> None: ...
    def shutdown(self, how: int, /) -> None: ...
    def close(self) -> None: ...
    def settimeout(self, timeout: float | None, /) -> None: ...
    def gettimeout(self) -> float | None: ...


class Listener(Protocol):
    def accept(self) -> tuple[Any, Any]: ...
    def close(self) -> None: ...


if sys.platform == "win32":
    from desktop.platform._windows import (
        connect_control,
        connect_url,
        docker_host,
        listen_control,
        listen_engine,
        local_server_name,
    )
else:
    from desktop.platform._unix import (
        connect_control,
        connect_url,
        docker_host,
        listen_control,
        listen_engine,
        local_server_name,
    )



def windows_user_tag() -> str:
    """This user's tag in the machine-wide names Cove makes on Windows (pipes, the
    Hyper-V VM): a hash of the SID."""
    from desktop.platform import _windows

    return _windows.user_tag()


def windows_pipe(instance: str, role: str) -> str:
    from desktop.platform import _windows

    return _windows.pipe_name(instance, role)


def connect_windows_pipe(name: str, timeout: float | None,
                         server_pid: int | None = None) -> Stream:
    from desktop.platform import _windows

    return _windows.connect_pipe(name, timeout, server_pid)


__all__ = ["Listener", "Stream", "connect_control", "connect_url", "docker_host",
           "connect_windows_pipe", "listen_control", "listen_engine", "local_server_name",
           "windows_pipe"]
