"""A minimal 9P2000.L client for the tests: one request at a time over a stream socket.

Written from the protocol description (little-endian, size[4] type[1] tag[2] body), not
from the server, so that the tests cross-check the server's framing and field layout.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, NamedTuple

NOTAG = 0xFFFF
NOFID = 0xFFFFFFFF
TAG = 1
HEADER = 7  # size[4] type[1] tag[2]

RLERROR = 7
TSTATFS = 8
TLOPEN = 12
TLCREATE = 14
TSYMLINK = 16
TMKNOD = 18
TRENAME = 20
TREADLINK = 22
TGETATTR = 24
TSETATTR = 26
TXATTRWALK = 30
TREADDIR = 40
TFSYNC = 50
TLINK = 70
TMKDIR = 72
TRENAMEAT = 74
TUNLINKAT = 76
TVERSION = 100
TATTACH = 104
TFLUSH = 108
TWALK = 110
TREAD = 116
TWRITE = 118
TCLUNK = 120
TREMOVE = 122

QTDIR = 0x80
QTSYMLINK = 0x02

GETATTR_ALL = 0x3FFF

SETATTR_MODE = 0x1
SETATTR_UID = 0x2
SETATTR_GID = 0x4
SETATTR_SIZE = 0x8
SETATTR_ATIME = 0x10
SETATTR_MTIME = 0x20
SETATTR_CTIME = 0x40
SETATTR_ATIME_SET = 0x80
SETATTR_MTIME_SET = 0x100

AT_REMOVEDIR = 0x200

O_RDONLY = 0
O_WRONLY = 1
O_RDWR = 2
O_CREAT = 0o100
O_EXCL = 0o200
O_TRUNC = 0o1000
O_DIRECTORY = 0o200000

# Rread / Rreaddir: size[4] type[1] tag[2] count[4]; Twrite adds fid[4] offset[8].
RREAD_OVERHEAD = HEADER + 4
TWRITE_OVERHEAD = HEADER + 4 + 8 + 4

GETATTR_FIELDS = (
    "mode", "uid", "gid", "nlink", "rdev", "size", "blksize", "blocks",
    "atime_sec", "atime_nsec", "mtime_sec", "mtime_nsec", "ctime_sec", "ctime_nsec",
    "btime_sec", "btime_nsec", "gen", "data_version",
)  # fmt: skip
GETATTR_FORMAT = "<IIIQQQQQQQQQQQQQQQ"

STATFS_FIELDS = ("type", "bsize", "blocks", "bfree", "bavail", "files", "ffree", "fsid", "namelen")
STATFS_FORMAT = "<IIQQQQQQI"


class Qid(NamedTuple):
    type: int
    version: int
    path: int


class NinepError(Exception):
    """The server replied Rlerror."""

    def __init__(self, errno: int) -> None:
        super().__init__(errno)
        self.errno = errno


class ProtocolError(Exception):
    """The reply broke the framing rules (wrong type, tag, size or layout)."""


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError(f"short body: need {n} at {self.pos} of {len(self.data)}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def u8(self) -> int:
        return int(self.unpack("<B")[0])

    def u16(self) -> int:
        return int(self.unpack("<H")[0])

    def u32(self) -> int:
        return int(self.unpack("<I")[0])

    def u64(self) -> int:
        return int(self.unpack("<Q")[0])

    def string(self) -> str:
        return self.take(self.u16()).decode("utf-8", "surrogateescape")

    def qid(self) -> Qid:
        return Qid(*self.unpack("<BIQ"))

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"{len(self.data) - self.pos} trailing bytes in reply")


def s(text: str) -> bytes:
    """A 9P string; names that are not UTF-8 travel as their bytes (surrogateescape)."""
    raw = text.encode("utf-8", "surrogateescape")
    return struct.pack("<H", len(raw)) + raw


def frame(mtype: int, tag: int, body: bytes) -> bytes:
    return struct.pack("<IBH", HEADER + len(body), mtype, tag) + body


class Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.msize = 1 << 20  # until Rversion says otherwise
        self.last_size = 0

    # -- raw framing --

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def recv_msg(self) -> tuple[int, int, bytes]:
        """One message: (type, tag, body)."""
        (size,) = struct.unpack("<I", self._exact(4))
        if size < HEADER:
            raise ProtocolError(f"reply size {size} < {HEADER}")
        if size > self.msize:
            raise ProtocolError(f"reply size {size} > msize {self.msize}")
        mtype, tag = struct.unpack("<BH", self._exact(3))
        self.last_size = size
        return mtype, tag, self._exact(size - HEADER)

    def rpc(self, mtype: int, body: bytes, tag: int = TAG) -> Reader:
        self.send_raw(frame(mtype, tag, body))
        rtype, rtag, rbody = self.recv_msg()
        if rtag != tag:
            raise ProtocolError(f"reply tag {rtag:#x}, sent {tag:#x}")
        r = Reader(rbody)
        if rtype == RLERROR:
            ecode = r.u32()
            r.end()
            raise NinepError(ecode)
        if rtype != mtype + 1:
            raise ProtocolError(f"reply type {rtype} to T-message {mtype}")
        return r

    def _empty(self, mtype: int, body: bytes) -> None:
        self.rpc(mtype, body).end()

    def _qid(self, mtype: int, body: bytes) -> Qid:
        r = self.rpc(mtype, body)
        q = r.qid()
        r.end()
        return q

    # -- messages --

    def version(self, msize: int, version: str = "9P2000.L") -> tuple[int, str]:
        r = self.rpc(TVERSION, struct.pack("<I", msize) + s(version), tag=NOTAG)
        rmsize = r.u32()
        rversion = r.string()
        r.end()
        if rversion != "unknown":
            self.msize = rmsize
        return rmsize, rversion

    def attach(
        self, fid: int, afid: int = NOFID, uname: str = "root", aname: str = "", n_uname: int = 0
    ) -> Qid:
        body = struct.pack("<II", fid, afid) + s(uname) + s(aname) + struct.pack("<I", n_uname)
        return self._qid(TATTACH, body)

    def walk(self, fid: int, newfid: int, names: list[str]) -> list[Qid]:
        body = struct.pack("<IIH", fid, newfid, len(names)) + b"".join(s(n) for n in names)
        r = self.rpc(TWALK, body)
        qids = [r.qid() for _ in range(r.u16())]
        r.end()
        if len(qids) > len(names):
            raise ProtocolError(f"{len(qids)} qids for {len(names)} names")
        return qids

    def lopen(self, fid: int, flags: int) -> tuple[Qid, int]:
        r = self.rpc(TLOPEN, struct.pack("<II", fid, flags))
        q, iounit = r.qid(), r.u32()
        r.end()
        return q, iounit

    def lcreate(self, fid: int, name: str, flags: int, mode: int, gid: int = 0) -> tuple[Qid, int]:
        body = struct.pack("<I", fid) + s(name) + struct.pack("<III", flags, mode, gid)
        r = self.rpc(TLCREATE, body)
        q, iounit = r.qid(), r.u32()
        r.end()
        return q, iounit

    def read(self, fid: int, offset: int, count: int) -> bytes:
        r = self.rpc(TREAD, struct.pack("<IQI", fid, offset, count))
        data = r.take(r.u32())
        r.end()
        if len(data) > count:
            raise ProtocolError(f"read returned {len(data)} bytes for count {count}")
        return data

    def write(self, fid: int, offset: int, data: bytes) -> int:
        r = self.rpc(TWRITE, struct.pack("<IQI", fid, offset, len(data)) + data)
        n = r.u32()
        r.end()
        return n

    def clunk(self, fid: int) -> None:
        self._empty(TCLUNK, struct.pack("<I", fid))

    def remove(self, fid: int) -> None:
        self._empty(TREMOVE, struct.pack("<I", fid))

    def getattr(self, fid: int, mask: int = GETATTR_ALL) -> dict[str, Any]:
        r = self.rpc(TGETATTR, struct.pack("<IQ", fid, mask))
        out: dict[str, Any] = {"valid": r.u64(), "qid": r.qid()}
        out.update(zip(GETATTR_FIELDS, r.unpack(GETATTR_FORMAT), strict=True))
        r.end()
        return out

    def setattr(
        self,
        fid: int,
        valid: int,
        mode: int = 0,
        uid: int = 0,
        gid: int = 0,
        size: int = 0,
        atime_sec: int = 0,
        atime_nsec: int = 0,
        mtime_sec: int = 0,
        mtime_nsec: int = 0,
    ) -> None:
        body = struct.pack(
            "<IIIIIQQQQQ",
            fid, valid, mode, uid, gid, size, atime_sec, atime_nsec, mtime_sec, mtime_nsec,
        )  # fmt: skip
        self._empty(TSETATTR, body)

    def readdir(self, fid: int, offset: int, count: int) -> list[tuple[Qid, int, int, str]]:
        r = self.rpc(TREADDIR, struct.pack("<IQI", fid, offset, count))
        n = r.u32()
        if n > count:
            raise ProtocolError(f"readdir returned {n} bytes for count {count}")
        d = Reader(r.take(n))
        r.end()
        entries = []
        while d.pos < len(d.data):
            q = d.qid()
            off, dtype = d.unpack("<QB")
            entries.append((q, int(off), int(dtype), d.string()))
        return entries

    def mkdir(self, dfid: int, name: str, mode: int, gid: int = 0) -> Qid:
        return self._qid(TMKDIR, struct.pack("<I", dfid) + s(name) + struct.pack("<II", mode, gid))

    def unlinkat(self, dfid: int, name: str, flags: int = 0) -> None:
        self._empty(TUNLINKAT, struct.pack("<I", dfid) + s(name) + struct.pack("<I", flags))

    def renameat(self, olddirfid: int, oldname: str, newdirfid: int, newname: str) -> None:
        body = struct.pack("<I", olddirfid) + s(oldname) + struct.pack("<I", newdirfid) + s(newname)
        self._empty(TRENAMEAT, body)

    def rename(self, fid: int, dfid: int, name: str) -> None:
        self._empty(TRENAME, struct.pack("<II", fid, dfid) + s(name))

    def symlink(self, fid: int, name: str, target: str, gid: int = 0) -> Qid:
        return self._qid(
            TSYMLINK, struct.pack("<I", fid) + s(name) + s(target) + struct.pack("<I", gid)
        )

    def readlink(self, fid: int) -> str:
        r = self.rpc(TREADLINK, struct.pack("<I", fid))
        target = r.string()
        r.end()
        return target

    def link(self, dfid: int, fid: int, name: str) -> None:
        self._empty(TLINK, struct.pack("<II", dfid, fid) + s(name))

    def statfs(self, fid: int) -> dict[str, int]:
        r = self.rpc(TSTATFS, struct.pack("<I", fid))
        out = dict(zip(STATFS_FIELDS, r.unpack(STATFS_FORMAT), strict=True))
        r.end()
        return out

    def fsync(self, fid: int, datasync: int = 0) -> None:
        self._empty(TFSYNC, struct.pack("<II", fid, datasync))

    def xattrwalk(self, fid: int, newfid: int, name: str) -> int:
        r = self.rpc(TXATTRWALK, struct.pack("<II", fid, newfid) + s(name))
        size = r.u64()
        r.end()
        return size

    def flush(self, oldtag: int) -> None:
        self._empty(TFLUSH, struct.pack("<H", oldtag))

    def mknod(self, dfid: int, name: str, mode: int, major: int, minor: int, gid: int = 0) -> Qid:
        body = struct.pack("<I", dfid) + s(name) + struct.pack("<IIII", mode, major, minor, gid)
        return self._qid(TMKNOD, body)
