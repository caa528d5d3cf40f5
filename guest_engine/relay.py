"""Byte-for-byte relays between two sockets, used on both ends of the guest link.

A relay copies each direction on its own thread and passes half-close through: when one
side stops sending (EOF), the other side's write half is shut down, and the relay ends
when both directions have ended. HTTP upgrades (attach, exec, BuildKit sessions) and
``docker logs -f`` therefore pass untouched: the relay never looks at the bytes.

Either end may also be a socket-like stream that is not a socket (a Windows named pipe
connection on the host: recv_into, sendall, shutdown, gettimeout); such a direction is
copied through a Python buffer, since splice(2) needs two kernel sockets.
"""

from __future__ import annotations

import os
import socket
import threading
from contextlib import AbstractContextManager, nullcontext

BUFSIZE = 256 * 1024
SPLICE = hasattr(os, "splice")  # Linux: bytes move in the kernel, never through Python

TYPE_CHECKING = False  # type checkers read the block below; importing typing costs boot time
if TYPE_CHECKING:
    from typing import Any, Protocol

    class Stream(Protocol):
        def recv_into(self, buffer: Any, nbytes: int = ..., /) -> int: ...
        def sendall(self, data: Any, /) -> None: ...
        def shutdown(self, how: int, /) -> None: ...
        def close(self) -> None: ...
        def gettimeout(self) -> float | None: ...


def _spliceable(s: Stream) -> bool:
    """A blocking kernel socket, whose bytes splice(2) can move."""
    return isinstance(s, socket.socket) and s.gettimeout() is None


def _splice_loop(src: socket.socket, dst: socket.socket,
                 lock: AbstractContextManager) -> None:
    """Copy until EOF through a pipe with splice(2): no copy into user space, which
    matters most in the guest, where every copied byte costs emulated instructions."""
    r, w = os.pipe()
    try:
        sfd, dfd = src.fileno(), dst.fileno()
        while True:
            n = os.splice(sfd, w, BUFSIZE)
            if n == 0:
                return
            with lock:
                while n:
                    n -= os.splice(r, dfd, n)
    finally:
        os.close(r)
        os.close(w)


def copy(src: Stream, dst: Stream, initial: bytes = b"",
         lock: threading.Lock | None = None) -> None:
    """Copy `src` to `dst` until EOF, then shut down `dst`'s write half; a reset on
    either side shuts down both. `lock`, if given, is held around each write to `dst`
    (for a writer that shares `dst` with another thread)."""
    guard: AbstractContextManager = lock if lock is not None else nullcontext()
    buf = bytearray(BUFSIZE)
    view = memoryview(buf)
    try:
        if initial:
            with guard:
                dst.sendall(initial)
        if SPLICE and _spliceable(src) and _spliceable(dst):
            assert isinstance(src, socket.socket) and isinstance(dst, socket.socket)
            _splice_loop(src, dst, guard)
        else:
            while True:
                n = src.recv_into(buf)
                if n == 0:
                    break
                with guard:
                    dst.sendall(view[:n])
    except OSError:
        # A reset on either side ends both directions.
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return
    with guard:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def pipe(a: Stream, b: Stream, a_to_b_initial: bytes = b"") -> None:
    """Relay between `a` and `b` until both directions end, then close both.

    `a_to_b_initial` is sent to `b` first (bytes already read from `a`). Blocks the
    calling thread; the other direction runs on a helper thread.
    """
    t = threading.Thread(target=copy, args=(b, a), daemon=True, name="relay")
    t.start()
    try:
        copy(a, b, a_to_b_initial)
        t.join()
    finally:
        a.close()
        b.close()

