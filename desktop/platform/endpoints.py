"""The backend's endpoints (engine API, control API) on this host, and how to reach them.

One module per platform provides the same functions; this one picks it once:

* ``listen_engine(inst, docker_engine_pipe, on_note) -> list[Listener]``: the engine API
  (the docker.sock socket; or the cove_engine pipe, plus docker_engine when allowed and
  free). `on_note` gets a sentence about an endpoint that was left out on purpose.
* ``listen_control(inst) -> Listener``: the control API.
* ``connect_control(path, timeout) -> Stream``: a client connection to the control API
  of the instance whose control socket path is `path` (on Windows, its pipe).
* ``docker_host(inst) -> str``: the DOCKER_HOST URL of the engine API (the docker context
  and `cove status` show it).
* ``connect_url(url, timeout) -> Stream``: a client connection to a DOCKER_HOST URL of
  this host's kind (unix://, or npipe:// on Windows): where docker_engine forwards when
  Windows containers are active.

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
    )
else:
    from desktop.platform._unix import (
        connect_control,
        connect_url,
        docker_host,
        listen_control,
        listen_engine,
    )

__all__ = ["Listener", "Stream", "connect_control", "connect_url", "docker_host",
           "listen_control", "listen_engine"]
