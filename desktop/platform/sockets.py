"""Sockets: removing a stale socket file without ever deleting anything else, an accept
that outlasts a full descriptor table, and how a published port's listener is bound."""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class NotASocketError(OSError):
    """Something that is not a socket sits where Cove's socket goes; the message says so
    and what to do."""


def remove_socket(path: Path) -> None:
    """Remove a stale socket; refuses (NotASocketError) to delete anything that is not one."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise NotASocketError(
            f"{path} exists and is not a socket; Cove will not delete it. Move it away"
        )
    path.unlink()


# sizeof(sockaddr_un.sun_path): a socket's path must fit with its terminating NUL (QEMU
# and virtiofsd copy it in as a C string). Windows has no socket files (named pipes).
SUN_PATH = {"darwin": 104, "linux": 108}


class SocketPathTooLong(OSError):
    """A socket Cove would create has a path the OS cannot bind; the message names the
    path, its length, the limit and the fix."""


def socket_path_limit(platform: str | None = None) -> int | None:
    """The longest socket path in bytes on `platform` (a `sys.platform` value; default
    this host's); None where Cove makes no socket files (Windows)."""
    platform = platform or sys.platform
    if platform == "win32":
        return None
    size = SUN_PATH.get("linux" if platform.startswith("linux") else platform, 104)
    return size - 1


def check_socket_paths(paths: list[Path], platform: str | None = None) -> None:
    """SocketPathTooLong for the first of `paths` that is too long to bind on `platform`,
    before anything is started: a bind would fail later with a bare "AF_UNIX path too
    long" (or QEMU's own words for it)."""
    limit = socket_path_limit(platform)
    if limit is None:
        return
    for p in paths:
        size = len(os.fsencode(p))
        if size > limit:
            raise SocketPathTooLong(
                f"the socket path {p} is {size} bytes, and this system allows at most "
                f"{limit} (its sun_path holds {limit + 1} with the final NUL). Set "
                "COVE_HOME to a shorter folder (for example ~/.cove or /tmp/cove-$USER) "
                "and start again")


# accept() errors that say "not now" (out of descriptors or buffers, a client that gave
# up before we took it), not "this listener is gone".
_TRANSIENT = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED,
              errno.EINTR, errno.EAGAIN}


def accept(listener: Any, closed: Callable[[], bool],
           sleep: Callable[[float], None] = time.sleep) -> Any:
    """`listener.accept()`, retried with a growing pause (at most 1 s) while the error is
    transient: at the descriptor limit the loop waits for descriptors to come back
    instead of ending for good. None once the listener is closed (`closed()` says so) or
    fails otherwise."""
    delay = 0.01
    while True:
        try:
            return listener.accept()
        except OSError as e:
            if closed() or e.errno not in _TRANSIENT:
                return None
            log.warning("accept on %s failed (%s); retrying in %.2f s", listener, e, delay)
            sleep(delay)
            delay = min(delay * 2, 1.0)


# Winsock's value (SO_EXCLUSIVEADDRUSE is ~SO_REUSEADDR); Python's socket has it on Windows.
SO_EXCLUSIVEADDRUSE = -5


def own_port(sock: Any, tcp: bool) -> None:
    """Set, before bind, the options under which `sock` holds its port alone.

    POSIX: SO_REUSEADDR on TCP listeners, so a port is reopened at once while an old
    connection lingers in TIME_WAIT; it never lets two live listeners share a port.
    Windows: SO_REUSEADDR means the opposite there (a second socket may bind a port in
    use, a user's own dev server's included, and take its connections), so it is never
    set; SO_EXCLUSIVEADDRUSE (TCP and UDP) makes the bind fail while another socket
    holds the port, and keeps any other program from binding over Cove's.
    """
    if sys.platform == "win32":
        option = getattr(socket, "SO_EXCLUSIVEADDRUSE", SO_EXCLUSIVEADDRUSE)
        sock.setsockopt(socket.SOL_SOCKET, option, 1)
    elif tcp:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
