"""Windows named pipes for the engine API and the control API, restricted to the user.

Pipe names are global to the machine, so each name Cove makes carries the user's tag
(`user_tag`: a short hash of the user's SID) and the instance:
``\\\\.\\pipe\\cove-<user>-<instance>-engine`` serves the engine,
``...-control`` the control API, ``...-qmp`` QEMU's monitor (QEMU serves it), and
``...-com1`` is a Hyper-V VM's serial port. When the ``docker_engine_pipe`` setting
allows it and no other program (Docker Desktop) holds it, the engine is served on
``\\\\.\\pipe\\docker_engine`` too, the well-known pipe the docker CLI uses when no
context says otherwise (one per machine: the first user's Cove to take it keeps it).

Safety, by construction:

* Each pipe's DACL is protected (no inherited entries) and grants GENERIC_ALL to SYSTEM
  and the current user only (`sddl_for`); remote clients are rejected.
* The first instance is created with FILE_FLAG_FIRST_PIPE_INSTANCE, which fails when
  the name exists already: a program that created the name first (to read what docker
  clients send, registry passwords included) is detected and Cove refuses to start
  (`PipeTakenError`) instead of serving alongside it. The next instance of a pipe is
  created *before* a connected one is handed over, so the name never lapses while Cove
  serves it and cannot be taken over in between.
* Pipes are message pipes read in message mode, as the engine's own pipe is: a
  zero-length message is how a docker client ends its half of a stream (the equivalent
  of a socket's shutdown(SHUT_WR)), and `PipeConnection` does the same.

The decisions (`pipe_names`, `sddl_for`, which pipes to serve) are pure functions; all
calls into Windows go through a `Win32Api`-shaped object, faked in the unit tests.
"""

from __future__ import annotations

import hashlib
import io
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from desktop.platform._win32 import (
    ERROR_ACCESS_DENIED,
    ERROR_BROKEN_PIPE,
    ERROR_FILE_NOT_FOUND,
    ERROR_NO_DATA,
    ERROR_OPERATION_ABORTED,
    ERROR_PIPE_BUSY,
    ERROR_PIPE_NOT_CONNECTED,
    FILE_FLAG_FIRST_PIPE_INSTANCE,
    FILE_FLAG_OVERLAPPED,
    PIPE_ACCESS_DUPLEX,
    PIPE_READMODE_MESSAGE,
    PIPE_REJECT_REMOTE_CLIENTS,
    PIPE_TYPE_MESSAGE,
    PIPE_UNLIMITED_INSTANCES,
    PIPE_WAIT,
    SID_PATTERN,
    Win32Error,
)

log = logging.getLogger(__name__)

PIPE_PREFIX = "\\\\.\\pipe\\"
DOCKER_ENGINE = PIPE_PREFIX + "docker_engine"
BUFFER_SIZE = 64 * 1024
OPEN_MODE = PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED
PIPE_MODE = PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS
# A connection ends (EOF) on these, as a socket's recv returns b"" when the peer closes.
_GONE = (ERROR_BROKEN_PIPE, ERROR_PIPE_NOT_CONNECTED, ERROR_NO_DATA, ERROR_OPERATION_ABORTED)
_SID = SID_PATTERN


class PipeTakenError(OSError):
    """The pipe's name is held by another program, so Cove cannot serve it safely."""


# -- pure decisions ------------------------------------------------------------------------


def sddl_for(user_sid: str) -> str:
    """The security descriptor of every Cove pipe: a protected DACL (nothing inherited)
    granting full access to SYSTEM and `user_sid` only."""
    if not _SID.fullmatch(user_sid):
        raise ValueError(f"{user_sid!r} is not a SID in string form (S-1-...)")
    return f"D:P(A;;GA;;;SY)(A;;GA;;;{user_sid})"


def user_tag(identity: str) -> str:
    """A short tag for the user Cove runs as, from `identity`: the SID in string form, or
    where no SID can be had, "DOMAIN\\user" (compared without regard to case, as Windows
    compares account names). Pipe names are global to the machine: the tag keeps two
    users' instances of one name apart."""
    key = identity if _SID.fullmatch(identity) else identity.casefold()
    return hashlib.sha256(key.encode()).hexdigest()[:10]


def instance_pipe(user: str, instance: str, role: str) -> str:
    """The pipe of `role` for one user's instance: ``\\\\.\\pipe\\cove-<user>-<instance>-<role>``
    (roles: engine, control, qmp, com1)."""
    return PIPE_PREFIX + f"cove-{user}-{instance}-{role}"


def engine_pipe(instance: str, user: str) -> str:
    return instance_pipe(user, instance, "engine")


def control_pipe(instance: str, user: str) -> str:
    return instance_pipe(user, instance, "control")


def docker_host(pipe: str) -> str:
    """The DOCKER_HOST form of a pipe name: ``\\\\.\\pipe\\x`` -> ``npipe:////./pipe/x``."""
    return "npipe://" + pipe.replace("\\", "/")


def pipe_from_host(url: str) -> str:
    """The pipe name of a DOCKER_HOST ``npipe://`` URL (both ``npipe:////./pipe/x`` and
    ``npipe://./pipe/x`` are in use); OSError for anything else."""
    rest = url.removeprefix("npipe://").lstrip("/")
    if not url.startswith("npipe://") or not rest.startswith("./pipe/") or \
            len(rest) == len("./pipe/"):
        raise OSError(f"{url!r} is not a named pipe address (npipe:////./pipe/NAME)")
    return PIPE_PREFIX + rest.removeprefix("./pipe/").replace("/", "\\")


@dataclass(frozen=True)
class PipePlan:
    name: str
    required: bool  # False: serve it only when no other program holds it


def engine_plan(own: str, docker_engine_allowed: bool) -> list[PipePlan]:
    """The pipes that serve the engine: Cove's own (`own`, the instance's engine pipe)
    always, docker_engine when allowed (whether it is free is known only by trying to
    create it: `open_pipes`)."""
    plan = [PipePlan(own, True)]
    if docker_engine_allowed:
        plan.append(PipePlan(DOCKER_ENGINE, False))
    return plan


def taken_message(name: str) -> str:
    if name == DOCKER_ENGINE:
        return (f"{name} is served by another program (Docker Desktop, or another Cove "
                "instance); Cove serves its own pipe only. Quit that program and restart "
                "Cove to have plain `docker` reach Cove, or use the cove context")
    return (f"{name} already exists: another Cove backend or another program serves it, "
            "and Cove will not share the name with a program it does not know. Stop it "
            "(`cove stop`, or end the program holding the pipe) and start Cove again")


def taken(err: Win32Error) -> bool:
    """Whether creating a first instance failed because the name exists already."""
    return err.code in (ERROR_ACCESS_DENIED, ERROR_PIPE_BUSY)


# -- connections ---------------------------------------------------------------------------


class PipeConnection:
    """One connected pipe instance, used as the relay and the control API use a socket:
    recv / recv_into / sendall / shutdown / close / settimeout / makefile("rb").

    recv returns b"" at the peer's end: a zero-length message, or the pipe broken. There
    is no fileno: the relay copies through Python for these (it splices sockets only).
    """

    def __init__(self, api: Any, handle: int, server: bool) -> None:
        self._api = api
        self._handle = handle
        self._server = server
        self._timeout: float | None = None
        self._read_eof = False
        self._write_closed = False
        self._closed = False
        self._write_lock = threading.Lock()

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def server_pid(self) -> int:
        """The process that serves this pipe (GetNamedPipeServerProcessId)."""
        return int(self._api.server_process_id(self._handle))

    def gettimeout(self) -> float | None:
        return self._timeout

    def _ms(self) -> int | None:
        return None if self._timeout is None else int(self._timeout * 1000)

    def recv(self, size: int) -> bytes:
        if self._read_eof or self._closed:
            return b""
        try:
            data = self._api.read(self._handle, size, self._ms())
        except Win32Error as e:
            if e.code in _GONE:
                self._read_eof = True
                return b""
            raise
        if not data:
            self._read_eof = True  # the peer's end of writing; later reads stay at EOF
        return bytes(data)

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        data = self.recv(nbytes or len(view))
        view[:len(data)] = data
        return len(data)

    def sendall(self, data: Any) -> None:
        data = bytes(data)
        with self._write_lock:
            if self._write_closed or self._closed:
                raise BrokenPipeError("the pipe's sending side is shut down")
            while data:
                # A zero-length write would be read as the end of the stream.
                n = self._api.write(self._handle, data[:BUFFER_SIZE], self._ms())
                data = data[n:]

    def shutdown(self, how: int) -> None:
        """SHUT_WR sends the end-of-stream message; SHUT_RD makes later reads return b"";
        SHUT_RDWR also cancels what other threads wait for and disconnects, as a reset."""
        if self._closed:
            raise OSError("the pipe connection is closed")
        if how in (socket.SHUT_WR, socket.SHUT_RDWR) and not self._write_closed:
            with self._write_lock:
                self._write_closed = True
                if how == socket.SHUT_WR:
                    self._api.write(self._handle, b"", self._ms())
        if how in (socket.SHUT_RD, socket.SHUT_RDWR):
            self._read_eof = True
        if how == socket.SHUT_RDWR:
            # Wakes every thread waiting on this pipe, and the peer sees the pipe broken.
            self._api.cancel_io(self._handle)
            if self._server:
                self._api.disconnect(self._handle)

    def close(self) -> None:
        """Close the handle. Not DisconnectNamedPipe: that would discard what the peer has
        not read yet (a reply just sent); after a close, the peer reads it, then EOF."""
        if self._closed:
            return
        self._closed = True
        self._api.close(self._handle)

    def makefile(self, mode: str = "rb") -> io.BufferedReader:
        if mode != "rb":
            raise ValueError("a pipe connection's file is for reading bytes ('rb')")
        return io.BufferedReader(_Reader(self))

    def __enter__(self) -> PipeConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Reader(io.RawIOBase):
    def __init__(self, conn: PipeConnection) -> None:
        self._conn = conn

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        return self._conn.recv_into(b)


# -- server --------------------------------------------------------------------------------


class PipeServer:
    """Listens on one pipe name: `accept()` returns the next client's `PipeConnection`.

    Created with the first instance already made (so a taken name fails here, with
    `PipeTakenError`); `close()` wakes a thread blocked in accept(), which then raises
    OSError, as a closed listening socket does.
    """

    def __init__(self, api: Any, name: str, security: Any) -> None:
        self._api = api
        self.name = name
        self._security = security
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._pending: int | None = self._create(first=True)
        except Win32Error as e:
            if taken(e):
                raise PipeTakenError(taken_message(name)) from e
            raise

    def _create(self, first: bool) -> int:
        mode = OPEN_MODE | (FILE_FLAG_FIRST_PIPE_INSTANCE if first else 0)
        return int(self._api.create_named_pipe(self.name, mode, PIPE_MODE,
                                               PIPE_UNLIMITED_INSTANCES, BUFFER_SIZE,
                                               self._security))

    def accept(self) -> tuple[PipeConnection, str]:
        while True:
            with self._lock:
                handle = self._pending
            if self._closed or handle is None:
                raise OSError(f"{self.name}: the pipe server is closed")
            try:
                self._api.connect_named_pipe(handle)
            except Win32Error as e:
                if self._closed:
                    raise OSError(f"{self.name}: the pipe server is closed") from e
                if e.code in (ERROR_NO_DATA, ERROR_BROKEN_PIPE):
                    # A client came and went before we saw it: reuse the instance.
                    self._api.disconnect(handle)
                    continue
                raise
            with self._lock:
                if self._closed:
                    raise OSError(f"{self.name}: the pipe server is closed")
                # The next instance exists before this one is handed over: the name
                # never lapses, so no other program can create it in between.
                self._pending = self._create(first=False)
            return PipeConnection(self._api, handle, server=True), self.name

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            handle, self._pending = self._pending, None
        if handle is not None:
            self._api.cancel_io(handle)
            self._api.close(handle)


def open_pipes(api: Any, plan: list[PipePlan], security: Any,
               on_skipped: Callable[[str], None] | None = None) -> list[PipeServer]:
    """A server for each planned pipe. A required pipe that is taken raises
    `PipeTakenError` (closing what was opened); an optional one is skipped, and its
    message goes to `on_skipped` (and the log)."""
    servers: list[PipeServer] = []
    try:
        for p in plan:
            try:
                servers.append(PipeServer(api, p.name, security))
            except PipeTakenError as e:
                if p.required:
                    raise
                log.info("%s", e)
                if on_skipped is not None:
                    on_skipped(str(e))
    except BaseException:
        for s in servers:
            s.close()
        raise
    return servers


# -- client --------------------------------------------------------------------------------


def connect(api: Any, name: str, timeout: float | None) -> PipeConnection:
    """A client connection to pipe `name`, waiting up to `timeout` while every instance is
    busy. OSError when nothing serves the name."""
    wait_ms = 5000 if timeout is None else max(1, int(timeout * 1000))
    for _ in range(2):
        try:
            handle = api.open_pipe(name)
        except Win32Error as e:
            if e.code == ERROR_PIPE_BUSY and api.wait_named_pipe(name, wait_ms):
                continue
            if e.code == ERROR_FILE_NOT_FOUND:
                raise FileNotFoundError(f"{name} does not exist") from e
            raise
        conn = PipeConnection(api, handle, server=False)
        conn.settimeout(timeout)
        return conn
    raise TimeoutError(f"every instance of {name} stayed busy")
