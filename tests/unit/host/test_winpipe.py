"""Windows named pipes (desktop.platform.winpipe, _win32, _windows) on Linux: the pure
decisions, and the servers and connections over a fake Win32 API that simulates the
kernel's pipes (names, instances, message queues) and records every call."""

from __future__ import annotations

import ctypes
import hashlib
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from desktop.instance import Instance
from desktop.platform import _win32, _windows, endpoints, winpipe
from desktop.platform._win32 import Win32Error
from guest_engine import relay
from tests.helpers.windows_fakes import RecordingDll
from tests.helpers.winkernel import SID, FakeKernel

SDDL = f"D:P(A;;GA;;;SY)(A;;GA;;;{SID})"
TAG = winpipe.user_tag(SID)
ENGINE = f"\\\\.\\pipe\\cove-{TAG}-default-engine"
CONTROL = f"\\\\.\\pipe\\cove-{TAG}-default-control"
FIRST = 0x00000003 | 0x40000000 | 0x00080000  # duplex, overlapped, first instance
NEXT = 0x00000003 | 0x40000000
PIPE_MODE = 0x4 | 0x2 | 0x8  # message type, message read mode, reject remote clients


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel()


# -- pure decisions ------------------------------------------------------------------------


def test_sddl_grants_system_and_the_user_only_with_a_protected_dacl() -> None:
    assert winpipe.sddl_for(SID) == SDDL
    assert winpipe.sddl_for("S-1-5-18") == "D:P(A;;GA;;;SY)(A;;GA;;;S-1-5-18)"


@pytest.mark.parametrize("bad", ["", "WD", "S-1", "S-1-5-21)(A;;GA;;;WD", "s-1-5-18"])
def test_sddl_refuses_what_is_not_a_sid(bad: str) -> None:
    with pytest.raises(ValueError, match="not a SID"):
        winpipe.sddl_for(bad)


def test_pipe_names_and_docker_host() -> None:
    assert hashlib.sha256(SID.encode()).hexdigest()[:10] == TAG
    assert winpipe.engine_pipe("default", TAG) == ENGINE
    assert winpipe.engine_pipe("dev", TAG) == f"\\\\.\\pipe\\cove-{TAG}-dev-engine"
    assert winpipe.control_pipe("default", TAG) == CONTROL
    assert winpipe.docker_host(ENGINE) == f"npipe:////./pipe/cove-{TAG}-default-engine"
    assert winpipe.docker_host(winpipe.DOCKER_ENGINE) == "npipe:////./pipe/docker_engine"


def test_two_users_never_share_a_pipe_name() -> None:
    """Pipe names are global to the machine: alice's and bob's "default" differ, and
    docker_engine (one well-known name) is left as it is."""
    bob = winpipe.user_tag("S-1-5-21-1004336348-1177238915-682003330-1002")
    for role in ("engine", "control", "qmp", "com1"):
        mine, theirs = (winpipe.instance_pipe(u, "default", role) for u in (TAG, bob))
        assert mine != theirs and mine.startswith("\\\\.\\pipe\\cove-") and \
            mine.endswith(f"-default-{role}")
    assert winpipe.DOCKER_ENGINE == "\\\\.\\pipe\\docker_engine"
    # Without a SID: DOMAIN\user, as Windows compares it (without regard to case).
    assert winpipe.user_tag("PC\\Alice") == winpipe.user_tag("pc\\alice") != \
        winpipe.user_tag("PC\\bob")
    assert winpipe.user_tag(SID) != winpipe.user_tag(SID.lower())  # SIDs are taken as given


def test_the_user_tag_comes_from_the_sid(kernel: FakeKernel,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_win32, "load", lambda: kernel)
    monkeypatch.setattr(_windows, "_state", None)
    monkeypatch.setattr(_windows, "_tag", None)
    assert _windows.user_tag() == TAG
    assert _windows.pipe_name("dev", "qmp") == f"\\\\.\\pipe\\cove-{TAG}-dev-qmp"
    assert endpoints.windows_pipe("dev", "qmp") == _windows.pipe_name("dev", "qmp")


def test_the_user_tag_falls_back_to_the_account_name(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_api() -> Any:
        raise OSError("no Win32 API here")

    monkeypatch.setattr(_win32, "load", no_api)
    monkeypatch.setattr(_windows, "_state", None)
    monkeypatch.setattr(_windows, "_tag", None)
    monkeypatch.setenv("USERDOMAIN", "PC")
    monkeypatch.setenv("USERNAME", "alice")
    assert _windows.user_tag() == winpipe.user_tag("PC\\alice")


def test_engine_plan_adds_docker_engine_only_when_allowed() -> None:
    assert winpipe.engine_plan(ENGINE, False) == [
        winpipe.PipePlan(ENGINE, True)]
    assert winpipe.engine_plan(ENGINE, True) == [
        winpipe.PipePlan(ENGINE, True),
        winpipe.PipePlan("\\\\.\\pipe\\docker_engine", False)]


# -- servers -------------------------------------------------------------------------------


def test_first_instance_arguments(kernel: FakeKernel) -> None:
    sa = kernel.security_attributes(SDDL)
    server = winpipe.PipeServer(kernel, ENGINE, sa)
    assert kernel.created() == [("create_named_pipe", ENGINE, FIRST,
                                 PIPE_MODE, 255, 65536, ("SA", SDDL))]
    server.close()


def test_each_client_gets_an_instance_and_the_name_never_lapses(kernel: FakeKernel) -> None:
    name = CONTROL
    server = winpipe.PipeServer(kernel, name, "sa")
    got: list[winpipe.PipeConnection] = []
    t = threading.Thread(target=lambda: [got.append(server.accept()[0]) for _ in range(2)])
    t.start()
    clients = [winpipe.connect(kernel, name, 5) for _ in range(2)]
    t.join(5)
    assert len(got) == 2
    modes = [c[2] for c in kernel.created()]
    assert modes == [FIRST, NEXT, NEXT]  # one pending instance ahead of the clients
    for c in clients + got:
        c.close()
    assert kernel.lapsed == []  # the pending instance still holds the name
    server.close()
    assert kernel.lapsed == [name]


def test_close_wakes_accept(kernel: FakeKernel) -> None:
    server = winpipe.PipeServer(kernel, ENGINE, "sa")
    errors: list[BaseException] = []

    def accept() -> None:
        try:
            server.accept()
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=accept)
    t.start()
    server.close()
    t.join(5)
    assert not t.is_alive() and "closed" in str(errors[0])


def test_a_squatted_cove_pipe_stops_the_start_with_the_reason() -> None:
    kernel = FakeKernel(taken=(ENGINE,))
    with pytest.raises(winpipe.PipeTakenError) as e:
        winpipe.open_pipes(kernel, winpipe.engine_plan(ENGINE, True), "sa")
    msg = str(e.value)
    assert f"{ENGINE} already exists" in msg and "cove stop" in msg
    assert kernel.created()[0][2] == FIRST  # detected by the first-instance flag
    assert len(kernel.created()) == 1  # docker_engine is not tried once Cove's own fails


def test_docker_engine_is_served_when_free_and_allowed(kernel: FakeKernel) -> None:
    servers = winpipe.open_pipes(kernel, winpipe.engine_plan(ENGINE, True), "sa")
    assert [s.name for s in servers] == [ENGINE,
                                         "\\\\.\\pipe\\docker_engine"]
    assert all(c[2] == FIRST for c in kernel.created())
    for s in servers:
        s.close()


def test_docker_engine_is_left_to_the_program_that_holds_it() -> None:
    kernel = FakeKernel(taken=("\\\\.\\pipe\\docker_engine",))
    notes: list[str] = []
    servers = winpipe.open_pipes(kernel, winpipe.engine_plan(ENGINE, True), "sa",
                                 notes.append)
    assert [s.name for s in servers] == [ENGINE]
    assert "Docker Desktop" in notes[0] and "docker_engine" in notes[0]
    assert kernel.instances["\\\\.\\pipe\\docker_engine"] == 1  # untouched
    servers[0].close()


def test_docker_engine_is_not_touched_when_not_allowed(kernel: FakeKernel) -> None:
    servers = winpipe.open_pipes(kernel, winpipe.engine_plan(ENGINE, False), "sa")
    assert [c[1] for c in kernel.created()] == [ENGINE]
    servers[0].close()


def test_other_create_errors_are_not_mistaken_for_a_squatter() -> None:
    class Failing(FakeKernel):
        def create_named_pipe(self, *args: Any) -> int:
            raise Win32Error("CreateNamedPipeW", 87)  # ERROR_INVALID_PARAMETER

    with pytest.raises(Win32Error) as e:
        winpipe.PipeServer(Failing(), "\\\\.\\pipe\\x", "sa")
    assert not isinstance(e.value, winpipe.PipeTakenError) and e.value.code == 87


# -- connections ---------------------------------------------------------------------------


@pytest.fixture
def pair(kernel: FakeKernel) -> Any:
    server = winpipe.PipeServer(kernel, "\\\\.\\pipe\\t", "sa")
    got: list[winpipe.PipeConnection] = []
    t = threading.Thread(target=lambda: got.append(server.accept()[0]))
    t.start()
    client = winpipe.connect(kernel, "\\\\.\\pipe\\t", 5)
    t.join(5)
    yield got[0], client
    server.close()


def test_bytes_and_the_end_of_stream_message(pair: Any, kernel: FakeKernel) -> None:
    srv, cli = pair
    cli.sendall(b"hello")
    assert srv.recv(100) == b"hello"
    cli.shutdown(socket.SHUT_WR)
    assert ("write", cli._handle, b"") in kernel.calls  # the zero-length message
    assert srv.recv(100) == b"" and srv.recv(100) == b""  # and EOF stays
    with pytest.raises(BrokenPipeError):
        cli.sendall(b"more")
    srv.sendall(b"still answering")  # half-close: the other direction goes on
    buf = bytearray(8)
    assert cli.recv_into(buf) == 8 and bytes(buf) == b"still an"
    assert cli.recv(100) == b"swering"


def test_large_writes_are_split_into_messages(pair: Any, kernel: FakeKernel) -> None:
    srv, cli = pair
    data = os.urandom(3 * winpipe.BUFFER_SIZE + 5)
    srv.sendall(data)
    writes = [c for c in kernel.calls if c[0] == "write" and c[1] == srv._handle]
    assert [len(w[2]) for w in writes] == [65536, 65536, 65536, 5]
    got = b""
    while len(got) < len(data):
        got += cli.recv(50000)
    assert got == data


def test_a_broken_pipe_is_eof_and_close_leaves_unread_data(pair: Any, kernel: FakeKernel) -> None:
    srv, cli = pair
    srv.sendall(b'{"ok": true}\n')
    srv.close()
    srv.close()  # once only (the fake asserts it)
    assert ("disconnect", srv._handle) not in kernel.calls  # would discard the reply
    assert cli.makefile("rb").readline() == b'{"ok": true}\n'
    assert cli.recv(10) == b""


def test_shutdown_rdwr_wakes_a_reader_and_disconnects(pair: Any, kernel: FakeKernel) -> None:
    srv, cli = pair
    got: list[bytes] = []
    t = threading.Thread(target=lambda: got.append(srv.recv(10)))
    t.start()
    srv.shutdown(socket.SHUT_RDWR)
    t.join(5)
    assert got == [b""]
    assert ("disconnect", srv._handle) in kernel.calls
    assert cli.recv(10) == b""  # the client sees the pipe broken


def test_timeouts_and_other_errors_are_raised(pair: Any) -> None:
    srv, cli = pair
    cli.settimeout(0.05)
    assert cli.gettimeout() == 0.05
    with pytest.raises(TimeoutError):
        cli.recv(10)

    class Boom:
        def read(self, *a: Any) -> bytes:
            raise Win32Error("ReadFile", _win32.ERROR_ACCESS_DENIED)

    with pytest.raises(Win32Error):
        winpipe.PipeConnection(Boom(), 1, server=True).recv(10)


def test_connect_waits_for_a_busy_pipe_and_names_a_missing_one(kernel: FakeKernel) -> None:
    with pytest.raises(FileNotFoundError, match=f"cove-{TAG}-x-control does not exist"):
        winpipe.connect(kernel, winpipe.control_pipe("x", TAG), 1)
    server = winpipe.PipeServer(kernel, "\\\\.\\pipe\\b", "sa")
    kernel.listening["\\\\.\\pipe\\b"].clear()  # every instance busy
    with pytest.raises(Win32Error) as e:
        winpipe.connect(kernel, "\\\\.\\pipe\\b", 0.05)
    assert e.value.code == _win32.ERROR_PIPE_BUSY
    assert ("wait_named_pipe", "\\\\.\\pipe\\b", 50) in kernel.calls
    server.close()


@pytest.mark.parametrize("splice", [True, False])
def test_the_relay_copies_between_a_pipe_and_a_socket(pair: Any, splice: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay splices socket pairs only; a pipe connection is copied in Python, with
    the half-close passed through both ways."""
    monkeypatch.setattr(relay, "SPLICE", splice)
    srv, cli = pair
    engine, far = socket.socketpair()
    far.settimeout(10)
    t = threading.Thread(target=relay.pipe, args=(srv, engine))
    t.start()
    up = os.urandom(300_000)
    cli.sendall(up)
    cli.shutdown(socket.SHUT_WR)
    got = b""
    while chunk := far.recv(65536):
        got += chunk
    assert hashlib.sha256(got).digest() == hashlib.sha256(up).digest()  # EOF came through
    far.sendall(b"reply")
    far.shutdown(socket.SHUT_WR)
    back = b""
    while chunk := cli.recv(100):
        back += chunk
    assert back == b"reply"
    t.join(5)
    assert not t.is_alive()
    far.close()


# -- the Windows endpoints -------------------------------------------------------------------


def test_windows_endpoints_use_the_user_sddl(kernel: FakeKernel, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_win32, "load", lambda: kernel)
    monkeypatch.setattr(_windows, "_state", None)
    monkeypatch.setattr(_windows, "_tag", None)
    inst = Instance("default", home=tmp_path)
    servers = _windows.listen_engine(inst, True)
    control = _windows.listen_control(inst)
    assert ("security_attributes", SDDL) in kernel.calls
    assert {c[1] for c in kernel.created()} == {ENGINE,
                                                "\\\\.\\pipe\\docker_engine",
                                                CONTROL}
    assert all(c[6] == ("SA", SDDL) for c in kernel.created())
    assert _windows.docker_host(inst) == winpipe.docker_host(ENGINE)  # the context's URL
    t = threading.Thread(target=lambda: control.accept()[0].sendall(b"x"))
    t.start()
    conn = _windows.connect_control(inst.control_socket, 5)  # found by the folder's name
    assert conn.recv(1) == b"x"
    t.join(5)
    for s in [*servers, control]:
        s.close()


class ServedBy(FakeKernel):
    """A kernel whose pipes are served by process `pid`."""

    def __init__(self, pid: int) -> None:
        super().__init__()
        self.pid = pid

    def server_process_id(self, handle: int) -> int:
        self.calls.append(("server_process_id", handle))
        return self.pid


@pytest.mark.parametrize(("server", "ok"), [(4321, True), (666, False)])
def test_a_pipe_another_program_serves_is_checked_by_its_server(
        server: int, ok: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU's monitor pipe: connected to only if QEMU's own pid serves it; a program that
    created the name first gets nothing (its connection is closed at once)."""
    kernel = ServedBy(server)
    monkeypatch.setattr(_win32, "load", lambda: kernel)
    monkeypatch.setattr(_windows, "_state", None)
    name = f"\\\\.\\pipe\\cove-{TAG}-default-qmp"
    listener = winpipe.PipeServer(kernel, name, "sa")
    t = threading.Thread(target=listener.accept, daemon=True)
    t.start()
    try:
        if ok:
            conn = endpoints.connect_windows_pipe(name, 5, server_pid=4321)
            conn.close()
        else:
            with pytest.raises(winpipe.PipeTakenError, match="served by process 666"):
                endpoints.connect_windows_pipe(name, 5, server_pid=4321)
            closed = [c for c in kernel.calls if c[0] == "close"]
            assert closed, "the squatter's connection is closed"
        with pytest.raises(FileNotFoundError):  # not made yet: the driver tries again
            endpoints.connect_windows_pipe(name + "-absent", 5, server_pid=4321)
    finally:
        t.join(5)
        listener.close()


def test_this_hosts_docker_host_is_the_socket(tmp_path: Path) -> None:
    inst = Instance("default", home=tmp_path)
    assert endpoints.docker_host(inst) == f"unix://{tmp_path / 'default' / 'docker.sock'}"


# -- the ctypes layer, with fake DLLs ------------------------------------------------------


def test_structures_have_the_windows_layout() -> None:
    if ctypes.sizeof(ctypes.c_void_p) == 8:  # 64-bit Windows' sizes
        assert ctypes.sizeof(_win32.OVERLAPPED) == 32
        assert ctypes.sizeof(_win32.SECURITY_ATTRIBUTES) == 24
        assert ctypes.sizeof(_win32.SID_AND_ATTRIBUTES) == 16


class FakeDll(RecordingDll):
    """Stands for kernel32 and advapi32: each call is recorded with its arguments."""

    def _CreateNamedPipeW(self, *args: Any) -> int:
        return 0x40

    def _ConvertStringSecurityDescriptorToSecurityDescriptorW(self, sddl: str, rev: int,
                                                              out: Any, size: Any) -> int:
        out._obj.value = 0x5D00
        return 1

    def _OpenProcessToken(self, process: Any, access: int, out: Any) -> int:
        out._obj.value = 0x70
        return 1

    def _GetTokenInformation(self, token: Any, cls: int, buf: Any, size: int,
                             needed: Any) -> int:
        if buf is None:
            needed._obj.value = 64
            self.last_error = _win32.ERROR_INSUFFICIENT_BUFFER
            return 0
        user = _win32.SID_AND_ATTRIBUTES(Sid=0x51D)
        ctypes.memmove(buf, ctypes.addressof(user), ctypes.sizeof(user))
        return 1

    def _ConvertSidToStringSidW(self, sid: int, out: Any) -> int:
        assert sid == 0x51D
        out._obj.value = SID
        return 1

    def _ReadFile(self, handle: int, buf: Any, size: int, n: Any, ov: Any) -> int:
        self.last_error = _win32.ERROR_IO_PENDING
        return 0

    def _WaitForSingleObject(self, event: int, ms: int) -> int:
        return _win32.WAIT_TIMEOUT

    def _CreateEventW(self, *args: Any) -> int:
        return 0xE0

    def _GetNamedPipeServerProcessId(self, handle: int, out: Any) -> int:
        out._obj.value = 4321
        return 1


def test_the_ctypes_calls_and_their_arguments() -> None:
    dll = FakeDll()
    api = _win32.Win32Api(dll, dll, lambda: dll.last_error)
    assert api.current_user_sid() == SID
    sa = api.security_attributes(SDDL)
    assert dll.calls[-1][:3] == \
        ("ConvertStringSecurityDescriptorToSecurityDescriptorW", SDDL, 1)
    assert sa.struct.lpSecurityDescriptor == 0x5D00 and sa.struct.nLength == 24 or \
        ctypes.sizeof(ctypes.c_void_p) != 8
    assert api.create_named_pipe(ENGINE, FIRST, PIPE_MODE, 255, 65536,
                                 sa) == 0x40
    name, *args = dll.calls[-1]
    assert name == "CreateNamedPipeW"
    assert args[:7] == [ENGINE, FIRST, PIPE_MODE, 255, 65536, 65536, 0]
    assert args[7]._obj is sa.struct  # the security attributes, by reference
    sa.free()
    sa.free()
    assert [c for c in dll.calls if c[0] == "LocalFree" and c[1] == 0x5D00] == \
        [("LocalFree", 0x5D00)]
    closed = [getattr(c[1], "value", c[1]) for c in dll.calls if c[0] == "CloseHandle"]
    assert closed == [0x70]  # the token


def test_the_server_process_of_a_pipe() -> None:
    dll = FakeDll()
    api = _win32.Win32Api(dll, dll, lambda: dll.last_error)
    assert api.server_process_id(0x44) == 4321
    assert dll.calls[-1][:2] == ("GetNamedPipeServerProcessId", 0x44)


def test_a_timed_out_read_is_cancelled_and_waited_for() -> None:
    dll = FakeDll()
    api = _win32.Win32Api(dll, dll, lambda: dll.last_error)
    with pytest.raises(TimeoutError):
        api.read(0x40, 16, timeout_ms=10)
    names = [c[0] for c in dll.calls]
    assert names[names.index("WaitForSingleObject"):] == [
        "WaitForSingleObject", "CancelIoEx", "GetOverlappedResult", "CloseHandle"]
    assert dll.calls[names.index("WaitForSingleObject")][1:] == (0xE0, 10)


def test_load_is_windows_only() -> None:
    with pytest.raises(OSError, match="Windows"):
        _win32.load()


@pytest.mark.parametrize(("url", "pipe"), [
    (f"npipe:////./pipe/cove-{TAG}-default-engine", ENGINE),
    ("npipe://./pipe/docker_engine", "\\\\.\\pipe\\docker_engine"),
    ("npipe:////./pipe/cove_windows_engine", "\\\\.\\pipe\\cove_windows_engine"),
])
def test_pipe_from_host_is_docker_host_reversed(url: str, pipe: str) -> None:
    assert winpipe.pipe_from_host(url) == pipe
    assert winpipe.pipe_from_host(winpipe.docker_host(pipe)) == pipe


@pytest.mark.parametrize("url", ["unix:///run/docker.sock", "npipe://", "npipe:////./pipe/",
                                 "tcp://127.0.0.1:2375", "npipe:////server/pipe/x"])
def test_pipe_from_host_refuses_other_addresses(url: str) -> None:
    with pytest.raises(OSError, match="not a named pipe address"):
        winpipe.pipe_from_host(url)
