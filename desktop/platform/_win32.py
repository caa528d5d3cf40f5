"""The few kernel32 and advapi32 calls Cove's named pipes need, through ctypes.

`Win32Api` takes the two DLL objects it calls, so tests hand it fakes that record the
calls and their arguments; `load()` gives the real ones, and only on Windows. Every
failure is a `Win32Error` carrying the Win32 error code, which `desktop.platform.winpipe`
turns into stream semantics (EOF, timeouts, "the pipe is taken").

All I/O is overlapped: on a handle opened for synchronous I/O, Windows serializes every
call, so a thread waiting in ReadFile would keep the relay's other thread from writing.
Each call waits for its own completion (with a timeout, after which it cancels and waits
for the cancellation, so no buffer is freed while the kernel may still write into it).
"""

from __future__ import annotations

import ctypes
import re
import sys
from ctypes import wintypes
from typing import Any

# Values from the Windows SDK headers.
GENERIC_READ = 0x80000000
GENERIC_WRITE = 0x40000000
GENERIC_ALL = 0x10000000
OPEN_EXISTING = 3
PIPE_ACCESS_DUPLEX = 0x00000003
FILE_FLAG_OVERLAPPED = 0x40000000
FILE_FLAG_FIRST_PIPE_INSTANCE = 0x00080000
PIPE_TYPE_MESSAGE = 0x00000004
PIPE_READMODE_MESSAGE = 0x00000002
PIPE_WAIT = 0x00000000
PIPE_REJECT_REMOTE_CLIENTS = 0x00000008
PIPE_UNLIMITED_INSTANCES = 255
SECURITY_SQOS_PRESENT = 0x00100000
SECURITY_IDENTIFICATION = 0x00010000
TOKEN_QUERY = 0x0008
TOKEN_USER_CLASS = 1  # TOKEN_INFORMATION_CLASS.TokenUser
SDDL_REVISION_1 = 1
SE_FILE_OBJECT = 1  # SE_OBJECT_TYPE
DACL_SECURITY_INFORMATION = 0x00000004
PROTECTED_DACL_SECURITY_INFORMATION = 0x80000000
INFINITE = 0xFFFFFFFF
WAIT_OBJECT_0 = 0
WAIT_TIMEOUT = 258

ERROR_FILE_NOT_FOUND = 2
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_HANDLE = 6
ERROR_BROKEN_PIPE = 109
ERROR_INSUFFICIENT_BUFFER = 122
ERROR_SEM_TIMEOUT = 121
ERROR_PIPE_BUSY = 231
ERROR_NO_DATA = 232
ERROR_PIPE_NOT_CONNECTED = 233
ERROR_MORE_DATA = 234
ERROR_PIPE_CONNECTED = 535
ERROR_OPERATION_ABORTED = 995
ERROR_IO_PENDING = 997

SID_PATTERN = re.compile(r"S-1-[0-9]+(?:-[0-9]+)+")  # a SID in string form (fullmatch)
INVALID_HANDLE_VALUE = ctypes.c_void_p(-1).value
# Windows' DWORD and BOOL are 32 bits; ctypes.wintypes spells them c_ulong and c_long,
# which are 64 bits on Linux and macOS, so the layouts would be tested wrong there.
DWORD = ctypes.c_uint32
BOOL = ctypes.c_int32


class Win32Error(OSError):
    """A Win32 call failed; `code` is its GetLastError value, `function` its name."""

    def __init__(self, function: str, code: int, detail: str = "") -> None:
        super().__init__(f"{function} failed with Windows error {code}"
                         + (f" ({detail})" if detail else ""))
        self.function = function
        self.code = code


class OVERLAPPED(ctypes.Structure):
    _fields_ = [("Internal", ctypes.c_void_p), ("InternalHigh", ctypes.c_void_p),
                ("Offset", DWORD), ("OffsetHigh", DWORD),
                ("hEvent", wintypes.HANDLE)]


class SECURITY_ATTRIBUTES(ctypes.Structure):
    _fields_ = [("nLength", DWORD), ("lpSecurityDescriptor", ctypes.c_void_p),
                ("bInheritHandle", BOOL)]


class SID_AND_ATTRIBUTES(ctypes.Structure):
    _fields_ = [("Sid", ctypes.c_void_p), ("Attributes", DWORD)]


_H, _D, _B, _P = wintypes.HANDLE, DWORD, BOOL, ctypes.c_void_p
# name -> (restype, argtypes); set on the DLL's functions so ctypes converts and checks.
PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "CreateNamedPipeW": (_H, [wintypes.LPCWSTR, _D, _D, _D, _D, _D, _D, _P]),
    "ConnectNamedPipe": (_B, [_H, _P]),
    "DisconnectNamedPipe": (_B, [_H]),
    "CreateFileW": (_H, [wintypes.LPCWSTR, _D, _D, _P, _D, _D, _H]),
    "WaitNamedPipeW": (_B, [wintypes.LPCWSTR, _D]),
    "ReadFile": (_B, [_H, _P, _D, _P, _P]),
    "WriteFile": (_B, [_H, _P, _D, _P, _P]),
    "GetOverlappedResult": (_B, [_H, _P, _P, _B]),
    "CancelIoEx": (_B, [_H, _P]),
    "CreateEventW": (_H, [_P, _B, _B, wintypes.LPCWSTR]),
    "WaitForSingleObject": (_D, [_H, _D]),
    "FlushFileBuffers": (_B, [_H]),
    "CloseHandle": (_B, [_H]),
    "LocalFree": (_P, [_P]),
    "GetCurrentProcess": (_H, []),
    "GetNamedPipeServerProcessId": (_B, [_H, _P]),
    # advapi32
    "OpenProcessToken": (_B, [_H, _D, _P]),
    "GetTokenInformation": (_B, [_H, ctypes.c_int, _P, _D, _P]),
    "ConvertSidToStringSidW": (_B, [_P, _P]),
    "ConvertStringSecurityDescriptorToSecurityDescriptorW": (_B, [wintypes.LPCWSTR, _D, _P,
                                                                  _P]),
    "GetSecurityDescriptorDacl": (_B, [_P, _P, _P, _P]),
    # Returns its error code (ERROR_SUCCESS: 0) instead of setting the last error.
    "SetNamedSecurityInfoW": (_D, [wintypes.LPCWSTR, ctypes.c_int, _D, _P, _P, _P, _P]),
}


class SecurityAttributes:
    """A SECURITY_ATTRIBUTES whose descriptor came from an SDDL string; `free()` it once
    no pipe instance is going to be created with it any more."""

    def __init__(self, api: Win32Api, descriptor: int | None) -> None:
        self._api = api
        self.descriptor = descriptor
        self.struct = SECURITY_ATTRIBUTES(ctypes.sizeof(SECURITY_ATTRIBUTES), descriptor, False)

    def free(self) -> None:
        if self.descriptor:
            self._api.kernel32.LocalFree(self.descriptor)
            self.descriptor = None


class Win32Api:
    def __init__(self, kernel32: Any, advapi32: Any, get_last_error: Any) -> None:
        self.kernel32 = kernel32
        self.advapi32 = advapi32
        self._last_error = get_last_error
        for dll in (kernel32, advapi32):
            for name, (restype, argtypes) in PROTOTYPES.items():
                fn = getattr(dll, name, None)
                if fn is not None and hasattr(fn, "argtypes"):
                    fn.restype, fn.argtypes = restype, argtypes

    def _fail(self, function: str) -> Win32Error:
        return Win32Error(function, int(self._last_error()))

    # -- identity and security ----------------------------------------------------------

    def current_user_sid(self) -> str:
        """The SID of the user this process runs as, e.g. "S-1-5-21-...-1001"."""
        k, a = self.kernel32, self.advapi32
        token = wintypes.HANDLE()
        if not a.OpenProcessToken(k.GetCurrentProcess(), TOKEN_QUERY, ctypes.byref(token)):
            raise self._fail("OpenProcessToken")
        try:
            size = DWORD(0)
            a.GetTokenInformation(token, TOKEN_USER_CLASS, None, 0, ctypes.byref(size))
            buf = ctypes.create_string_buffer(max(size.value, ctypes.sizeof(SID_AND_ATTRIBUTES)))
            if not a.GetTokenInformation(token, TOKEN_USER_CLASS, buf, len(buf),
                                         ctypes.byref(size)):
                raise self._fail("GetTokenInformation")
            user = SID_AND_ATTRIBUTES.from_buffer(buf)
            text = ctypes.c_wchar_p()
            if not a.ConvertSidToStringSidW(user.Sid, ctypes.byref(text)):
                raise self._fail("ConvertSidToStringSidW")
            try:
                return str(text.value)
            finally:
                k.LocalFree(ctypes.cast(text, ctypes.c_void_p))
        finally:
            k.CloseHandle(token)

    def security_attributes(self, sddl: str) -> SecurityAttributes:
        sd = ctypes.c_void_p()
        if not self.advapi32.ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl, SDDL_REVISION_1, ctypes.byref(sd), None):
            raise self._fail("ConvertStringSecurityDescriptorToSecurityDescriptorW")
        return SecurityAttributes(self, sd.value)

    def set_protected_dacl(self, path: str, sddl: str) -> None:
        """Replace the DACL of file or folder `path` by the one in `sddl`, protected (no
        entry inherited from its parent); Windows passes the new inheritable entries on
        to what the folder already holds."""
        sd = ctypes.c_void_p()
        if not self.advapi32.ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl, SDDL_REVISION_1, ctypes.byref(sd), None):
            raise self._fail("ConvertStringSecurityDescriptorToSecurityDescriptorW")
        try:
            present, defaulted, dacl = BOOL(0), BOOL(0), ctypes.c_void_p()
            if not self.advapi32.GetSecurityDescriptorDacl(
                    sd, ctypes.byref(present), ctypes.byref(dacl), ctypes.byref(defaulted)):
                raise self._fail("GetSecurityDescriptorDacl")
            if not present.value or not dacl.value:
                raise Win32Error("GetSecurityDescriptorDacl", 0, f"no DACL in {sddl!r}")
            err = self.advapi32.SetNamedSecurityInfoW(
                path, SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                None, None, dacl, None)
            if err:
                raise Win32Error("SetNamedSecurityInfoW", int(err), path)
        finally:
            self.kernel32.LocalFree(sd)

    # -- pipes ----------------------------------------------------------------------------

    def create_named_pipe(self, name: str, open_mode: int, pipe_mode: int, max_instances: int,
                          buffer_size: int, security: SecurityAttributes) -> int:
        h = self.kernel32.CreateNamedPipeW(name, open_mode, pipe_mode, max_instances,
                                           buffer_size, buffer_size, 0,
                                           ctypes.byref(security.struct))
        if h is None or h == INVALID_HANDLE_VALUE:
            raise self._fail("CreateNamedPipeW")
        return int(h)

    def open_pipe(self, name: str) -> int:
        """A client handle on pipe `name` (overlapped). The server may only identify this
        process, not act as it: a program squatting the name learns nothing it could use."""
        h = self.kernel32.CreateFileW(
            name, GENERIC_READ | GENERIC_WRITE, 0, None, OPEN_EXISTING,
            FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION, None)
        if h is None or h == INVALID_HANDLE_VALUE:
            raise self._fail("CreateFileW")
        return int(h)

    def server_process_id(self, handle: int) -> int:
        """The pid of the process serving the pipe that client handle `handle` is on."""
        pid = DWORD(0)
        if not self.kernel32.GetNamedPipeServerProcessId(handle, ctypes.byref(pid)):
            raise self._fail("GetNamedPipeServerProcessId")
        return int(pid.value)

    def wait_named_pipe(self, name: str, timeout_ms: int) -> bool:
        return bool(self.kernel32.WaitNamedPipeW(name, timeout_ms))

    def _overlapped(self, function: str, start: Any, handle: int,
                    timeout_ms: int | None) -> int:
        """Run one overlapped call `start(overlapped)`; the bytes it moved."""
        k = self.kernel32
        event = k.CreateEventW(None, True, False, None)
        if not event:
            raise self._fail("CreateEventW")
        try:
            ov = OVERLAPPED(hEvent=event)
            done = DWORD(0)
            if not start(ctypes.byref(ov)):
                err = int(self._last_error())
                if err == ERROR_IO_PENDING:
                    wait = INFINITE if timeout_ms is None else max(0, int(timeout_ms))
                    if k.WaitForSingleObject(event, wait) == WAIT_TIMEOUT:
                        k.CancelIoEx(handle, ctypes.byref(ov))
                        k.GetOverlappedResult(handle, ctypes.byref(ov), ctypes.byref(done),
                                              True)
                        raise TimeoutError(f"{function} timed out after {wait} ms")
                elif err != ERROR_MORE_DATA:
                    raise Win32Error(function, err)
            if not k.GetOverlappedResult(handle, ctypes.byref(ov), ctypes.byref(done), True):
                err = int(self._last_error())
                if err != ERROR_MORE_DATA:  # a message longer than the buffer: read on
                    raise Win32Error(function, err)
            return int(done.value)
        finally:
            k.CloseHandle(event)

    def connect_named_pipe(self, handle: int) -> None:
        """Wait for a client on this instance (a client that came first is fine too)."""
        try:
            self._overlapped("ConnectNamedPipe",
                             lambda ov: self.kernel32.ConnectNamedPipe(handle, ov), handle, None)
        except Win32Error as e:
            if e.code != ERROR_PIPE_CONNECTED:
                raise

    def read(self, handle: int, size: int, timeout_ms: int | None = None) -> bytes:
        """Up to `size` bytes; b"" for a zero-length message (the peer's end of writing)."""
        buf = ctypes.create_string_buffer(size)
        n = self._overlapped("ReadFile", lambda ov: self.kernel32.ReadFile(
            handle, buf, size, None, ov), handle, timeout_ms)
        return buf.raw[:n]

    def write(self, handle: int, data: bytes, timeout_ms: int | None = None) -> int:
        buf = ctypes.create_string_buffer(bytes(data), len(data))
        return self._overlapped("WriteFile", lambda ov: self.kernel32.WriteFile(
            handle, buf, len(data), None, ov), handle, timeout_ms)

    def cancel_io(self, handle: int) -> None:
        self.kernel32.CancelIoEx(handle, None)

    def disconnect(self, handle: int) -> None:
        self.kernel32.DisconnectNamedPipe(handle)

    def flush(self, handle: int) -> None:
        self.kernel32.FlushFileBuffers(handle)

    def close(self, handle: int) -> None:
        self.kernel32.CloseHandle(handle)


def load() -> Win32Api:
    """The real API. Only Windows has it; elsewhere this raises OSError."""
    if sys.platform != "win32":
        raise OSError("named pipes are a Windows facility; this is " + sys.platform)
    return Win32Api(ctypes.WinDLL("kernel32", use_last_error=True),
                    ctypes.WinDLL("advapi32", use_last_error=True), ctypes.get_last_error)
