"""Linux and macOS endpoints: unix sockets in the instance folder, born 0600."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from desktop.platform.sockets import remove_socket


class _Instance(Protocol):
    """What the endpoints need of an instance (`desktop.instance.Instance`)."""

    @property
    def docker_socket(self) -> Path: ...
    @property
    def control_socket(self) -> Path: ...


class UnixListener:
    def __init__(self, path: Path) -> None:
        remove_socket(path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is born 0600: no window where others could connect
        try:
            s.bind(str(path))
        except OSError:
            s.close()
            raise
        finally:
            os.umask(old)
        s.listen(64)
        self.path = path
        self.sock = s

    def accept(self) -> tuple[socket.socket, object]:
        return self.sock.accept()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self.sock.close()


def listen_engine(inst: _Instance, docker_engine_pipe: bool = False,
                  on_note: Callable[[str], None] | None = None) -> list[UnixListener]:
    # docker_engine_pipe is a Windows setting; clients here find the socket by the context.
    return [UnixListener(inst.docker_socket)]


def listen_control(inst: _Instance) -> UnixListener:
    return UnixListener(inst.control_socket)


def connect_control(path: Path, timeout: float | None) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except OSError:
        s.close()
        raise
    return s


def docker_host(inst: _Instance) -> str:
    return f"unix://{inst.docker_socket}"


def connect_url(url: str, timeout: float | None) -> socket.socket:
    """A client connection to a docker host URL (unix:///path)."""
    if not url.startswith("unix://"):
        raise OSError(f"{url}: only unix:// engine addresses exist on this host")
    return connect_control(Path(url.removeprefix("unix://")), timeout)


def local_server_name(socket_path: Path, key: str) -> str:
    """A full path: Qt listens there, in the user's own folder, not in the shared /tmp."""
    return str(socket_path)
