"""A fake Windows kernel for named pipes: the `Win32Api` surface `desktop.platform.winpipe`
uses (and QEMU's pipe chardev would), simulated on any host. Names hold instances; a
server instance waits in connect_named_pipe until a client opens the name; messages keep
their boundaries (a zero-length one included), as in a message-mode pipe; every call is
recorded. Used by the pipe tests (test_winpipe.py) and the simulated Windows host
(`tests.helpers.hostwalk`)."""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import Any

from desktop.platform import _win32
from desktop.platform._win32 import Win32Error

SID = "S-1-5-21-1004336348-1177238915-682003330-1001"  # the user Cove runs as


class _End:
    """One handle of a connected pair: reads from `inbox`, writes to the peer's."""

    def __init__(self, kernel: FakeKernel, name: str, server: bool) -> None:
        self.kernel, self.name, self.server = kernel, name, server
        self.inbox: deque[bytes] = deque()
        self.peer: _End | None = None
        self.pid = 0  # the process that created a server end (GetNamedPipeServerProcessId)
        self.broken = False  # the peer closed or disconnected
        self.cancelled = False
        self.closed = False


class FakeKernel:
    """The Win32Api surface winpipe uses. Pipe names hold instances; a server instance
    waits in connect_named_pipe until a client opens the name; messages keep their
    boundaries (a zero-length one included), as in a message-mode pipe."""

    def __init__(self, taken: tuple[str, ...] = (), pid: int = 0) -> None:
        self.pid = pid or os.getpid()  # the process making the calls (Cove's)
        self.calls: list[tuple[Any, ...]] = []
        self.cond = threading.Condition()
        self.handles: dict[int, _End] = {}
        self.listening: dict[str, deque[int]] = {}  # name -> instances waiting for a client
        self.instances: dict[str, int] = {name: 1 for name in taken}  # live per name
        self.max_instances: dict[str, int] = {}  # the first instance's nMaxInstances
        self.lapsed: list[str] = []  # names whose last instance went while served
        self._next = 100

    def _handle(self, end: _End) -> int:
        self._next += 4
        self.handles[self._next] = end
        return self._next

    # identity and security
    def current_user_sid(self) -> str:
        self.calls.append(("current_user_sid",))
        return SID

    def security_attributes(self, sddl: str) -> Any:
        self.calls.append(("security_attributes", sddl))
        return ("SA", sddl)

    def set_protected_dacl(self, path: str, sddl: str) -> None:
        """SetNamedSecurityInfoW with a protected DACL (`desktop.platform.acl`)."""
        self.calls.append(("set_protected_dacl", path, sddl))

    # pipes
    def create_named_pipe(self, name: str, open_mode: int, pipe_mode: int, max_instances: int,
                          buffer_size: int, security: Any) -> int:
        self.calls.append(("create_named_pipe", name, open_mode, pipe_mode, max_instances,
                           buffer_size, security))
        return self.create_pipe_as(self.pid, name, open_mode, max_instances)

    def create_pipe_as(self, pid: int, name: str, open_mode: int,
                       max_instances: int = _win32.PIPE_UNLIMITED_INSTANCES) -> int:
        """CreateNamedPipeW as process `pid` (another program: QEMU, a squatter). An
        instance past the first's nMaxInstances fails with ERROR_PIPE_BUSY."""
        with self.cond:
            live = self.instances.get(name, 0)
            if open_mode & _win32.FILE_FLAG_FIRST_PIPE_INSTANCE and live:
                raise Win32Error("CreateNamedPipeW", _win32.ERROR_ACCESS_DENIED)
            if live and live >= self.max_instances.get(name, _win32.PIPE_UNLIMITED_INSTANCES):
                raise Win32Error("CreateNamedPipeW", _win32.ERROR_PIPE_BUSY)
            if not live:
                self.max_instances[name] = max_instances
            self.instances[name] = live + 1
            end = _End(self, name, server=True)
            end.pid = pid
            h = self._handle(end)
            self.listening.setdefault(name, deque()).append(h)
            self.cond.notify_all()
            return h

    def connect_named_pipe(self, handle: int) -> None:
        self.calls.append(("connect_named_pipe", handle))
        end = self.handles[handle]
        with self.cond:
            self.cond.wait_for(lambda: end.peer is not None or end.cancelled or end.closed)
            if end.peer is None:
                raise Win32Error("ConnectNamedPipe", _win32.ERROR_OPERATION_ABORTED)

    def open_pipe(self, name: str) -> int:
        self.calls.append(("open_pipe", name))
        with self.cond:
            waiting = self.listening.get(name)
            if not self.instances.get(name):
                raise Win32Error("CreateFileW", _win32.ERROR_FILE_NOT_FOUND)
            if not waiting:
                raise Win32Error("CreateFileW", _win32.ERROR_PIPE_BUSY)
            server = self.handles[waiting.popleft()]
            client = _End(self, name, server=False)
            server.peer, client.peer = client, server
            self.cond.notify_all()
            return self._handle(client)

    def wait_named_pipe(self, name: str, timeout_ms: int) -> bool:
        self.calls.append(("wait_named_pipe", name, timeout_ms))
        with self.cond:
            return self.cond.wait_for(lambda: bool(self.listening.get(name)), timeout_ms / 1000)

    def read(self, handle: int, size: int, timeout_ms: int | None = None) -> bytes:
        end = self.handles[handle]
        with self.cond:
            ok = self.cond.wait_for(lambda: end.inbox or end.broken or end.cancelled,
                                    None if timeout_ms is None else timeout_ms / 1000)
            if not ok:
                raise TimeoutError("ReadFile timed out")
            if end.inbox:
                msg = end.inbox.popleft()
                if len(msg) > size:  # ERROR_MORE_DATA: the rest stays for the next read
                    end.inbox.appendleft(msg[size:])
                    msg = msg[:size]
                return msg
            if end.cancelled:
                end.cancelled = False
                raise Win32Error("ReadFile", _win32.ERROR_OPERATION_ABORTED)
            raise Win32Error("ReadFile", _win32.ERROR_BROKEN_PIPE)

    def write(self, handle: int, data: bytes, timeout_ms: int | None = None) -> int:
        self.calls.append(("write", handle, bytes(data)))
        end = self.handles[handle]
        with self.cond:
            if end.broken or end.peer is None:
                raise Win32Error("WriteFile", _win32.ERROR_NO_DATA)
            end.peer.inbox.append(bytes(data))
            self.cond.notify_all()
            return len(data)

    def cancel_io(self, handle: int) -> None:
        self.calls.append(("cancel_io", handle))
        with self.cond:
            self.handles[handle].cancelled = True
            self.cond.notify_all()

    def _break(self, end: _End) -> None:
        if end.peer is not None:
            end.peer.broken = True
        self.cond.notify_all()

    def disconnect(self, handle: int) -> None:
        self.calls.append(("disconnect", handle))
        with self.cond:
            self._break(self.handles[handle])

    def close(self, handle: int) -> None:
        self.calls.append(("close", handle))
        with self.cond:
            end = self.handles[handle]
            assert not end.closed, f"handle {handle} closed twice"
            end.closed = True
            self._break(end)
            if end.server:
                q = self.listening.get(end.name)
                if q is not None and handle in q:
                    q.remove(handle)
                self.instances[end.name] -= 1
                if self.instances[end.name] == 0:
                    self.lapsed.append(end.name)

    def server_process_id(self, handle: int) -> int:
        """GetNamedPipeServerProcessId on a client handle."""
        self.calls.append(("server_process_id", handle))
        peer = self.handles[handle].peer
        if peer is None:
            raise Win32Error("GetNamedPipeServerProcessId", _win32.ERROR_PIPE_NOT_CONNECTED)
        return peer.pid

    def created(self) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == "create_named_pipe"]
