"""9P2000.L on the wire: message types, sizes and flags, Linux's errno numbers, the
field reader, and the name rules of a Windows host. Pure: no files, no sockets."""

from __future__ import annotations

import errno
import struct

VERSION = "9P2000.L"
MAX_MSIZE = 1024 * 1024 + 4096  # the kernel's fd transport carries at most 1 MiB
MIN_MSIZE = 512
NOFID = 0xFFFFFFFF
NOTAG = 0xFFFF
IOHDRSZ = 24  # header bytes of Tread/Twrite beyond the data
READDIR_HDR = 11  # size[4] type[1] tag[2] count[4]

# Message types (T; the R reply is T + 1).
TLERROR, RLERROR = 6, 7
TSTATFS, TLOPEN, TLCREATE, TSYMLINK, TMKNOD, TRENAME, TREADLINK = 8, 12, 14, 16, 18, 20, 22
TGETATTR, TSETATTR, TXATTRWALK, TXATTRCREATE, TREADDIR, TFSYNC = 24, 26, 30, 32, 40, 50
TLOCK, TGETLOCK, TLINK, TMKDIR, TRENAMEAT, TUNLINKAT = 52, 54, 70, 72, 74, 76
TVERSION, TAUTH, TATTACH, TFLUSH, TWALK, TREAD, TWRITE, TCLUNK, TREMOVE = \
    100, 102, 104, 108, 110, 116, 118, 120, 122

# Linux open flags as 9P2000.L carries them.
L_ACCMODE, L_WRONLY, L_RDWR = 0o3, 0o1, 0o2
L_CREAT, L_EXCL, L_TRUNC, L_APPEND = 0o100, 0o200, 0o1000, 0o2000
L_DSYNC, L_DIRECTORY, L_NOFOLLOW, L_SYNC = 0o10000, 0o200000, 0o400000, 0o4010000
AT_REMOVEDIR = 0x200

# Tsetattr's valid bits.
SET_MODE, SET_UID, SET_GID, SET_SIZE = 0x1, 0x2, 0x4, 0x8
SET_ATIME, SET_MTIME, SET_ATIME_SET, SET_MTIME_SET = 0x10, 0x20, 0x80, 0x100
GETATTR_BASIC = 0x7FF
QT_DIR, QT_SYMLINK, QT_FILE = 0x80, 0x02, 0x00
V9FS_MAGIC = 0x01021997
LOCK_SUCCESS, F_UNLCK = 0, 2

# Linux's numbers for the errors a host may report (Windows numbers most above 34
# differently); anything else is EIO.
LINUX_ERRNO = {
    "EPERM": 1, "ENOENT": 2, "EIO": 5, "ENXIO": 6, "E2BIG": 7, "EBADF": 9, "EAGAIN": 11,
    "EWOULDBLOCK": 11, "ENOMEM": 12, "EACCES": 13, "EFAULT": 14, "EBUSY": 16,
    "EEXIST": 17, "EXDEV": 18, "ENODEV": 19, "ENOTDIR": 20, "EISDIR": 21, "EINVAL": 22,
    "ENFILE": 23, "EMFILE": 24, "ENOTTY": 25, "ETXTBSY": 26, "EFBIG": 27, "ENOSPC": 28,
    "ESPIPE": 29, "EROFS": 30, "EMLINK": 31, "EPIPE": 32, "ERANGE": 34, "EDEADLK": 35,
    "ENAMETOOLONG": 36, "ENOLCK": 37, "ENOSYS": 38, "ENOTEMPTY": 39, "ELOOP": 40,
    "ENODATA": 61, "EOVERFLOW": 75, "EILSEQ": 84, "ENOTSUP": 95, "EOPNOTSUPP": 95,
    "ETIMEDOUT": 110, "ESTALE": 116, "EDQUOT": 122, "ECANCELED": 125,
}


class E:
    """Linux errno numbers (the host's `errno` module has its own: Windows' and macOS's
    differ above 34)."""

    EPERM, ENOENT, EIO, EBADF, EACCES, EBUSY, EEXIST = 1, 2, 5, 9, 13, 16, 17
    ENOTDIR, EISDIR, EINVAL, EROFS = 20, 21, 22, 30
    ENAMETOOLONG, ELOOP, ENODATA, EOPNOTSUPP = 36, 40, 61, 95
    EMFILE = 24


# Characters a Windows file name cannot hold: ":" would name an alternate data stream.
WINDOWS_BAD = set('<>:"|?*\\') | {chr(c) for c in range(32)}
# Names Windows takes for a device in any folder, with any extension ("nul.txt" too).
WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{d}{n}" for d in ("COM", "LPT") for n in (*"123456789", "¹", "²", "³")}


def linux_errno(e: OSError) -> int:
    """The Linux errno for a host OSError (EIO when it has none we know)."""
    name = errno.errorcode.get(e.errno or 0, "")
    return LINUX_ERRNO.get(name, LINUX_ERRNO["EIO"])


class NinepError(Exception):
    """A request that gets an Rlerror; `code` is a Linux errno."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Malformed(Exception):
    """A message that does not parse: the connection is closed."""


class Reader:
    """Little-endian fields out of one message body."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def _take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise Malformed("message shorter than its fields")
        v = self.buf[self.pos:self.pos + n]
        self.pos += n
        return v

    def u8(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self._take(2), "little")

    def u32(self) -> int:
        return int.from_bytes(self._take(4), "little")

    def u64(self) -> int:
        return int.from_bytes(self._take(8), "little")

    def string(self) -> str:
        raw = bytes(self._take(self.u16()))
        try:
            return raw.decode("utf-8", "surrogateescape")
        except UnicodeDecodeError:  # not reached: surrogateescape takes any bytes
            return "\0"

    def data(self, n: int) -> memoryview:
        return self._take(n)


def p_str(s: str) -> bytes:
    b = s.encode("utf-8", "surrogateescape")
    return struct.pack("<H", len(b)) + b
