"""Cove's own file server: host folders to the VM over 9P2000.L on any byte stream.

Hosts whose hypervisor has no file-sharing device (Hyper-V; QEMU on Windows, whose 9p
has no Windows backend) share folders this way: the backend opens an ``fs <n>`` stream
on the guest link (TCP through QEMU's user networking, or a Hyper-V socket), serves
share n on it with `ShareServer`, and the agent mounts the stream's socket with the
kernel's own 9p client (``mount -t 9p -o trans=fd``). The guest needs no helper process
and the host needs no driver, so the same server runs on Windows, macOS and Linux (where
the tests run it against the real kernel client). The design and its figures:
docs/architecture.md, "Shared folders".

One connection is served by one thread, request after request: the kernel pipelines
requests, and answering them in order is always allowed (a Tflush then finds its
request already answered). Replies carry Linux errno numbers whatever the host's are.

Confinement: every fid is a path of names below the share's root, each name checked
(no "/", NUL, "." or, on Windows, characters that would name a stream or a device);
".." never climbs above the root; a walk never goes through a symbolic link (the
guest's kernel resolves links itself, in the VM's namespace), and before an operation
touches the host the real path of its parent folder is checked to be inside the share,
so a link or junction made meanwhile cannot lead it out. A read-only share refuses
every change with EROFS.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

WINDOWS = sys.platform == "win32"
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


@dataclass
class Fid:
    parts: tuple[str, ...]  # names below the share's root
    fd: int | None = None
    is_dir: bool = False
    opened: bool = False
    dir_entries: list[bytes] | None = None  # readdir's entries, listed at offset 0
    xattr: bytes | None = None  # an xattr fid's value
    lock: threading.Lock = field(default_factory=threading.Lock)


class ShareServer:
    """Serves one host folder over 9P2000.L; `serve(sock)` runs one connection."""

    def __init__(self, root: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.real_root = os.path.realpath(self.root)
        self.read_only = read_only
        try:
            self.root_dev = os.stat(self.root).st_dev
        except OSError:
            self.root_dev = 0
        self._other_ids: dict[tuple[int, int], int] = {}
        self.stats = {"requests": 0, "errors": 0, "bytes_read": 0, "bytes_written": 0}

    # -- connection ------------------------------------------------------------------

    def serve(self, sock: socket.socket) -> None:
        """Answer requests until the peer closes or sends what does not parse."""
        conn = _Conn(self, sock)
        try:
            conn.run()
        except (OSError, Malformed) as e:
            log.debug("9p connection ended: %s", e)
        finally:
            conn.close_all()
            try:
                sock.close()
            except OSError:
                pass

    # -- paths -----------------------------------------------------------------------

    def host_path(self, parts: tuple[str, ...]) -> str:
        return os.path.join(self.root, *parts) if parts else self.root

    def check_name(self, name: str) -> None:
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise NinepError(E.EINVAL if name else E.ENOENT)
        if len(name.encode("utf-8", "surrogateescape")) > 255:
            raise NinepError(E.ENAMETOOLONG)
        if WINDOWS and (set(name) & WINDOWS_BAD or name[-1] in ". " or
                        name.split(".")[0].rstrip(" ").upper() in WINDOWS_DEVICES):
            raise NinepError(E.EINVAL)

    def confined(self, parts: tuple[str, ...], follow: bool = False) -> str:
        """The host path of `parts` once its parent folder (with `follow`, the path
        itself) proves to lie in the share (raises EACCES otherwise): what a link or
        junction made since the walk would otherwise lead out of it."""
        path = self.host_path(parts)
        parent = os.path.realpath(os.path.dirname(path) if parts and not follow else path)
        if parent != self.real_root and not parent.startswith(
                self.real_root.rstrip(os.sep) + os.sep):
            log.warning("9p: refused %s: its folder resolves outside the share", path)
            raise NinepError(E.EACCES)
        return path

    def qid(self, st: os.stat_result) -> bytes:
        if stat.S_ISDIR(st.st_mode):
            qtype = QT_DIR
        elif stat.S_ISLNK(st.st_mode):
            qtype = QT_SYMLINK
        else:
            qtype = QT_FILE
        if st.st_dev == self.root_dev or not st.st_ino:
            path = st.st_ino & 0x7FFFFFFFFFFFFFFF
        else:  # another file system mounted in the share: its own numbers, remapped
            key = (st.st_dev, st.st_ino)
            known = self._other_ids.get(key)
            if known is None:
                known = (1 << 63) | len(self._other_ids)
                self._other_ids[key] = known
            path = known
        version = (st.st_mtime_ns ^ st.st_size) & 0xFFFFFFFF
        return struct.pack("<BIQ", qtype, version, path)


def _uid(st: os.stat_result) -> tuple[int, int]:
    return (st.st_uid, st.st_gid) if not WINDOWS else (0, 0)


def _mode(st: os.stat_result) -> int:
    """The mode the guest sees. Windows keeps only a read-only flag (and Python marks
    only .exe/.bat/.cmd/.com executable): files show rwx for all unless read-only, as
    Windows folders do in other Linux VMs, so scripts checked out there still run."""
    if not WINDOWS or stat.S_ISLNK(st.st_mode):
        return st.st_mode
    perms = 0o777 if st.st_mode & stat.S_IWRITE else 0o555
    return stat.S_IFMT(st.st_mode) | perms


class _Conn:
    """One client's session: its fids and the message loop."""

    def __init__(self, server: ShareServer, sock: socket.socket) -> None:
        self.srv = server
        self.sock = sock
        self.msize = 8192
        self.fids: dict[int, Fid] = {}
        self.buf = bytearray(MAX_MSIZE)
        self.handlers: dict[int, Callable[[Reader], Any]] = {
            TVERSION: self.version, TAUTH: self.auth, TATTACH: self.attach,
            TFLUSH: self.flush, TWALK: self.walk, TCLUNK: self.clunk, TREMOVE: self.remove,
            TLOPEN: self.lopen, TLCREATE: self.lcreate, TREAD: self.read,
            TWRITE: self.write, TGETATTR: self.getattr, TSETATTR: self.setattr,
            TREADDIR: self.readdir, TMKDIR: self.mkdir, TUNLINKAT: self.unlinkat,
            TRENAMEAT: self.renameat, TRENAME: self.rename, TSYMLINK: self.symlink,
            TREADLINK: self.readlink, TLINK: self.link, TMKNOD: self.mknod,
            TSTATFS: self.statfs, TFSYNC: self.fsync, TXATTRWALK: self.xattrwalk,
            TXATTRCREATE: self.xattrcreate, TLOCK: self.lock, TGETLOCK: self.getlock,
        }

    # -- framing ---------------------------------------------------------------------

    def _recv_exact(self, view: memoryview) -> bool:
        got = 0
        while got < len(view):
            n = self.sock.recv_into(view[got:])
            if n == 0:
                if got:
                    raise Malformed("connection closed inside a message")
                return False
            got += n
        return True

    def run(self) -> None:
        mv = memoryview(self.buf)
        while True:
            if not self._recv_exact(mv[:4]):
                return
            size = int.from_bytes(mv[:4], "little")
            limit = max(self.msize, 8192)
            if size < 7 or size > limit:
                raise Malformed(f"message size {size} outside 7..{limit}")
            if not self._recv_exact(mv[4:size]):
                raise Malformed("connection closed inside a message")
            mtype = mv[4]
            tag = int.from_bytes(mv[5:7], "little")
            self.srv.stats["requests"] += 1
            handler = self.handlers.get(mtype)
            try:
                if handler is None:
                    raise NinepError(E.EOPNOTSUPP)
                body = handler(Reader(mv[7:size]))
            except NinepError as e:
                self.srv.stats["errors"] += 1
                self._send(RLERROR, tag, struct.pack("<I", e.code))
                continue
            except Malformed:
                raise
            except OSError as e:
                self.srv.stats["errors"] += 1
                self._send(RLERROR, tag, struct.pack("<I", linux_errno(e)))
                continue
            except Exception:  # noqa: BLE001 - a bug answers EIO, the session goes on
                log.exception("9p: request type %d failed", mtype)
                self.srv.stats["errors"] += 1
                self._send(RLERROR, tag, struct.pack("<I", E.EIO))
                continue
            self._send(mtype + 1, tag, body)

    def _send(self, rtype: int, tag: int, body: bytes | bytearray | list[Any]) -> None:
        parts = body if isinstance(body, list) else [body]
        size = 7 + sum(len(p) for p in parts)
        self.sock.sendall(b"".join([struct.pack("<IBH", size, rtype, tag), *parts]))

    def close_all(self) -> None:
        for fid in self.fids.values():
            _close_fd(fid)
        self.fids.clear()

    # -- helpers ---------------------------------------------------------------------

    def get(self, fid: int) -> Fid:
        f = self.fids.get(fid)
        if f is None:
            raise NinepError(E.EBADF)
        return f

    def writable(self) -> None:
        if self.srv.read_only:
            raise NinepError(E.EROFS)

    def lstat(self, parts: tuple[str, ...]) -> os.stat_result:
        return os.lstat(self.srv.host_path(parts))

    def iounit(self) -> int:
        return self.msize - IOHDRSZ

    def new_fid(self, fid: int, f: Fid) -> None:
        if fid == NOFID or fid in self.fids:
            raise NinepError(E.EBADF)
        self.fids[fid] = f

    def child(self, dfid: int, name: str) -> tuple[str, ...]:
        d = self.get(dfid)
        self.srv.check_name(name)
        return (*d.parts, name)

    def moved(self, old: tuple[str, ...], new: tuple[str, ...]) -> None:
        """Fids at or below `old` follow a rename to `new`."""
        n = len(old)
        for f in self.fids.values():
            if f.parts[:n] == old:
                f.parts = new + f.parts[n:]

    # -- session ---------------------------------------------------------------------

    def version(self, r: Reader) -> bytes:
        msize, version = r.u32(), r.string()
        self.close_all()
        if msize < MIN_MSIZE:  # too small for a directory entry or a useful read
            raise NinepError(E.EINVAL)
        self.msize = min(msize, MAX_MSIZE)
        if version != VERSION:
            return struct.pack("<I", self.msize) + p_str("unknown")
        return struct.pack("<I", self.msize) + p_str(VERSION)

    def auth(self, r: Reader) -> bytes:
        raise NinepError(E.EOPNOTSUPP)  # the link is authenticated already

    def attach(self, r: Reader) -> bytes:
        fid, _afid, _uname, _aname, _n_uname = r.u32(), r.u32(), r.string(), r.string(), \
            r.u32()
        st = os.lstat(self.srv.root)
        self.new_fid(fid, Fid((), is_dir=True))
        return self.srv.qid(st)

    def flush(self, r: Reader) -> bytes:
        r.u16()  # requests are answered in order: the flushed one is answered already
        return b""

    def walk(self, r: Reader) -> list[Any]:
        fid, newfid, n = r.u32(), r.u32(), r.u16()
        names = [r.string() for _ in range(n)]
        if n > 16:
            raise NinepError(E.EINVAL)
        f = self.get(fid)
        if newfid != fid and (newfid == NOFID or newfid in self.fids):
            raise NinepError(E.EBADF)
        parts = f.parts
        qids: list[bytes] = []
        st = None
        for i, name in enumerate(names):
            try:
                if st is None:
                    st = self.lstat(parts)
                if not stat.S_ISDIR(st.st_mode):
                    raise NinepError(E.ENOTDIR)
                if name == "..":
                    new = parts[:-1]
                else:
                    try:
                        self.srv.check_name(name)
                    except NinepError:
                        raise NinepError(E.ENOENT) from None
                    new = (*parts, name)
                st = self.lstat(new)
            except (NinepError, OSError) as e:
                if i == 0:
                    raise
                log.debug("9p: walk stopped at %r: %s", name, e)
                return [struct.pack("<H", len(qids)), *qids]
            parts = new
            qids.append(self.srv.qid(st))
        if newfid == fid:
            f.parts = parts
            if st is not None:
                f.is_dir = stat.S_ISDIR(st.st_mode)
        else:
            is_dir = f.is_dir if st is None else stat.S_ISDIR(st.st_mode)
            self.fids[newfid] = Fid(parts, is_dir=is_dir)
        return [struct.pack("<H", len(qids)), *qids]

    def clunk(self, r: Reader) -> bytes:
        fid = r.u32()
        f = self.get(fid)
        del self.fids[fid]
        _close_fd(f)
        return b""

    def remove(self, r: Reader) -> bytes:
        fid = r.u32()
        f = self.get(fid)
        del self.fids[fid]  # clunked even when the removal fails
        _close_fd(f)
        self.writable()
        if not f.parts:
            raise NinepError(E.EBUSY)
        path = self.srv.confined(f.parts)
        if stat.S_ISDIR(os.lstat(path).st_mode):
            os.rmdir(path)
        else:
            os.unlink(path)
        return b""

    # -- files -----------------------------------------------------------------------

    def _open(self, parts: tuple[str, ...], flags: int, mode: int = 0o644) -> int:
        path = self.srv.confined(parts, follow=WINDOWS)
        acc = flags & L_ACCMODE
        host = {0: os.O_RDONLY, L_WRONLY: os.O_WRONLY, L_RDWR: os.O_RDWR}.get(acc)
        if host is None:
            raise NinepError(E.EINVAL)
        for lflag, name in ((L_CREAT, "O_CREAT"), (L_EXCL, "O_EXCL"), (L_TRUNC, "O_TRUNC"),
                            (L_APPEND, "O_APPEND"), (L_DSYNC, "O_DSYNC")):
            if flags & lflag:
                host |= getattr(os, name, 0)
        if flags & L_SYNC == L_SYNC:
            host |= getattr(os, "O_SYNC", 0)
        host |= getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0)
        host |= getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
        if WINDOWS and os.path.islink(path):
            raise NinepError(E.ELOOP)  # a link is resolved by the guest, not followed here
        return os.open(path, host, mode & 0o7777)

    def lopen(self, r: Reader) -> bytes:
        fid, flags = r.u32(), r.u32()
        f = self.get(fid)
        if f.opened:
            raise NinepError(E.EBADF)
        if flags & L_ACCMODE or flags & L_TRUNC:
            self.writable()
        st = self.lstat(f.parts)
        if stat.S_ISDIR(st.st_mode):
            if flags & L_ACCMODE:
                raise NinepError(E.EISDIR)
            f.is_dir = True
            if not WINDOWS:
                # Listed through this descriptor: a folder swapped for a link after the
                # open is not followed.
                f.fd = os.open(self.srv.confined(f.parts), os.O_RDONLY | os.O_DIRECTORY |
                               os.O_NOFOLLOW | os.O_CLOEXEC)
        elif flags & L_DIRECTORY:
            raise NinepError(E.ENOTDIR)
        elif stat.S_ISLNK(st.st_mode):
            raise NinepError(E.ELOOP)
        elif not stat.S_ISREG(st.st_mode):
            raise NinepError(E.EPERM)  # a fifo or device of the host is not the VM's
        else:
            f.fd = self._open(f.parts, flags & ~(L_CREAT | L_EXCL))
        f.opened = True
        return self.srv.qid(st) + struct.pack("<I", self.iounit())

    def lcreate(self, r: Reader) -> bytes:
        fid, name, flags, mode, _gid = r.u32(), r.string(), r.u32(), r.u32(), r.u32()
        f = self.get(fid)
        self.writable()
        if f.opened:
            raise NinepError(E.EBADF)
        parts = self.child(fid, name)
        fd = self._open(parts, flags | L_CREAT, mode)
        f.parts, f.fd, f.is_dir, f.opened = parts, fd, False, True
        # The guest applied its umask already: the host's must not take more bits away.
        if WINDOWS:
            os.chmod(self.srv.host_path(parts), mode & 0o7777)
        else:
            os.chmod(fd, mode & 0o7777)
        return self.srv.qid(os.fstat(fd)) + struct.pack("<I", self.iounit())

    def read(self, r: Reader) -> list[Any]:
        fid, offset, count = r.u32(), r.u64(), r.u32()
        f = self.get(fid)
        count = min(count, self.iounit())
        if f.xattr is not None:
            data = f.xattr[offset:offset + count]
        elif f.fd is None:
            raise NinepError(E.EISDIR if f.is_dir else E.EBADF)
        else:
            data = _pread(f, count, offset)
        self.srv.stats["bytes_read"] += len(data)
        return [struct.pack("<I", len(data)), data]

    def write(self, r: Reader) -> bytes:
        fid, offset, count = r.u32(), r.u64(), r.u32()
        data = r.data(count)
        f = self.get(fid)
        self.writable()
        if f.fd is None:
            raise NinepError(E.EISDIR if f.is_dir else E.EBADF)
        n = _pwrite(f, data, offset)
        self.srv.stats["bytes_written"] += n
        return struct.pack("<I", n)

    def fsync(self, r: Reader) -> bytes:
        f = self.get(r.u32())
        if f.fd is not None:
            os.fsync(f.fd)
        return b""

    # -- attributes ------------------------------------------------------------------

    def getattr(self, r: Reader) -> bytes:
        f = self.get(r.u32())
        r.u64()  # the request mask: the basic set is always sent
        st = os.fstat(f.fd) if f.fd is not None else self.lstat(f.parts)
        uid, gid = _uid(st)
        blksize = getattr(st, "st_blksize", 4096) or 4096
        blocks = getattr(st, "st_blocks", (st.st_size + 511) // 512)
        a, m, c = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
        return (struct.pack("<Q", GETATTR_BASIC) + self.srv.qid(st)
                + struct.pack("<IIIQQQQQ", _mode(st), uid, gid, st.st_nlink,
                              getattr(st, "st_rdev", 0), st.st_size, blksize, blocks)
                + struct.pack("<QQQQQQQQQQ", a // 10**9, a % 10**9, m // 10**9, m % 10**9,
                              c // 10**9, c % 10**9, 0, 0, 0, 0))

    def setattr(self, r: Reader) -> bytes:
        fid, valid, mode, uid, gid = r.u32(), r.u32(), r.u32(), r.u32(), r.u32()
        size, asec, ansec, msec, mnsec = r.u64(), r.u64(), r.u64(), r.u64(), r.u64()
        f = self.get(fid)
        self.writable()
        # An open fid changes what it has open (which may have lost its name meanwhile);
        # Windows has no fchmod or futimens, so there it goes by the path.
        target: int | str
        if f.fd is not None and not WINDOWS:
            target, is_link = f.fd, False
            st = os.fstat(f.fd)
        else:
            target = self.srv.confined(f.parts)
            st = os.lstat(target)
            is_link = stat.S_ISLNK(st.st_mode)
        if valid & SET_MODE and not is_link:
            os.chmod(target, mode & 0o7777)
        if valid & (SET_UID | SET_GID) and hasattr(os, "lchown"):
            try:  # works for root; a user's server keeps the files its own (as QEMU's)
                owner = (uid if valid & SET_UID else -1, gid if valid & SET_GID else -1)
                if isinstance(target, int):
                    os.fchown(target, *owner)
                else:
                    os.lchown(target, *owner)
            except PermissionError:
                pass
        if valid & SET_SIZE:
            if is_link or stat.S_ISDIR(st.st_mode):
                raise NinepError(E.EISDIR if not is_link else E.EINVAL)
            if f.fd is not None:
                os.ftruncate(f.fd, size)
            else:
                os.truncate(target, size)
        if valid & (SET_ATIME | SET_MTIME) and not is_link:
            now = time.time_ns()
            at, mt = st.st_atime_ns, st.st_mtime_ns
            if valid & SET_ATIME:
                at = asec * 10**9 + ansec if valid & SET_ATIME_SET else now
            if valid & SET_MTIME:
                mt = msec * 10**9 + mnsec if valid & SET_MTIME_SET else now
            os.utime(target, ns=(at, mt))
        return b""

    def xattrwalk(self, r: Reader) -> bytes:
        fid, newfid, name = r.u32(), r.u32(), r.string()
        f = self.get(fid)
        if name:
            raise NinepError(E.ENODATA)  # the share keeps no extended attributes
        self.new_fid(newfid, Fid(f.parts, xattr=b""))
        return struct.pack("<Q", 0)

    def xattrcreate(self, r: Reader) -> bytes:
        raise NinepError(E.EOPNOTSUPP)

    def statfs(self, r: Reader) -> bytes:
        self.get(r.u32())
        if hasattr(os, "statvfs"):
            v = os.statvfs(self.srv.root)
            bsize, blocks, bfree, bavail = v.f_bsize, v.f_blocks, v.f_bfree, v.f_bavail
            files, ffree, namelen = v.f_files, v.f_ffree, v.f_namemax
            if v.f_frsize and v.f_frsize != bsize:
                blocks, bfree, bavail = (x * v.f_frsize // bsize for x in (blocks, bfree,
                                                                            bavail))
        else:
            import shutil

            du = shutil.disk_usage(self.srv.root)
            bsize, files, ffree, namelen = 4096, 0, 0, 255
            blocks, bfree, bavail = du.total // bsize, du.free // bsize, du.free // bsize
        return struct.pack("<IIQQQQQQI", V9FS_MAGIC, bsize, blocks, bfree, bavail, files,
                           ffree, self.srv.root_dev & 0xFFFFFFFFFFFFFFFF, namelen)

    # -- folders ---------------------------------------------------------------------

    def readdir(self, r: Reader) -> list[Any]:
        fid, offset, count = r.u32(), r.u64(), r.u32()
        f = self.get(fid)
        if not f.opened or not f.is_dir:
            raise NinepError(E.EBADF if not f.opened else E.ENOTDIR)
        if offset == 0 or f.dir_entries is None:
            f.dir_entries = self._list(f)
        count = min(count, self.msize - READDIR_HDR)
        out: list[bytes] = []
        used = 0
        for entry in f.dir_entries[offset:]:
            if used + len(entry) > count:
                break
            out.append(entry)
            used += len(entry)
        return [struct.pack("<I", used), *out]

    def _list(self, f: Fid) -> list[bytes]:
        """Every entry of a folder as readdir encodes it; an entry's offset is its index
        plus one (the offset to resume after it). POSIX hosts list the descriptor opened
        at lopen; Windows, the path once it proves to resolve inside the share."""
        parts = f.parts
        where: int | str
        if f.fd is not None:
            where = f.fd
            me = os.fstat(f.fd)
        else:
            where = self.srv.confined(parts, follow=True)
            me = os.lstat(where)
        try:
            up = os.lstat(self.srv.host_path(parts[:-1])) if parts else me
        except OSError:
            up = me
        items: list[tuple[bytes, int, str]] = [(self.srv.qid(me), 4, "."),
                                               (self.srv.qid(up), 4, "..")]
        with os.scandir(where) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue  # gone since listed
                items.append((self.srv.qid(st), _dtype(st.st_mode), e.name))
        return [qid + struct.pack("<QB", i + 1, dtype) + p_str(name)
                for i, (qid, dtype, name) in enumerate(items)]

    def mkdir(self, r: Reader) -> bytes:
        dfid, name, mode, _gid = r.u32(), r.string(), r.u32(), r.u32()
        self.writable()
        parts = self.child(dfid, name)
        path = self.srv.confined(parts)
        os.mkdir(path, mode & 0o7777)
        os.chmod(path, mode & 0o7777)  # the guest applied its umask already
        return self.srv.qid(os.lstat(path))

    def unlinkat(self, r: Reader) -> bytes:
        dfid, name, flags = r.u32(), r.string(), r.u32()
        self.writable()
        path = self.srv.confined(self.child(dfid, name))
        if flags & AT_REMOVEDIR:
            os.rmdir(path)
        else:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                raise NinepError(E.EISDIR)
            os.unlink(path)
        return b""

    def _rename(self, old: tuple[str, ...], new: tuple[str, ...]) -> None:
        self.writable()
        src, dst = self.srv.confined(old), self.srv.confined(new)
        if new[:len(old)] == old and len(new) > len(old):
            raise NinepError(E.EINVAL)  # a folder into itself
        os.replace(src, dst)
        self.moved(old, new)

    def renameat(self, r: Reader) -> bytes:
        odfid, oname, ndfid, nname = r.u32(), r.string(), r.u32(), r.string()
        self._rename(self.child(odfid, oname), self.child(ndfid, nname))
        return b""

    def rename(self, r: Reader) -> bytes:
        fid, dfid, name = r.u32(), r.u32(), r.string()
        f = self.get(fid)
        if not f.parts:
            raise NinepError(E.EBUSY)
        self._rename(f.parts, self.child(dfid, name))
        return b""

    def symlink(self, r: Reader) -> bytes:
        dfid, name, target, _gid = r.u32(), r.string(), r.string(), r.u32()
        self.writable()
        if "\0" in target:
            raise NinepError(E.EINVAL)
        path = self.srv.confined(self.child(dfid, name))
        os.symlink(target, path)
        return self.srv.qid(os.lstat(path))

    def readlink(self, r: Reader) -> bytes:
        f = self.get(r.u32())
        return p_str(os.readlink(self.srv.confined(f.parts)))

    def link(self, r: Reader) -> bytes:
        dfid, fid, name = r.u32(), r.u32(), r.string()
        self.writable()
        src = self.srv.confined(self.get(fid).parts)
        dst = self.srv.confined(self.child(dfid, name))
        if WINDOWS:
            os.link(src, dst)
        else:
            os.link(src, dst, follow_symlinks=False)
        return b""

    def mknod(self, r: Reader) -> bytes:
        dfid, name, mode, _major, _minor, _gid = (r.u32(), r.string(), r.u32(), r.u32(),
                                                  r.u32(), r.u32())
        self.writable()
        path = self.srv.confined(self.child(dfid, name))
        kind = stat.S_IFMT(mode)
        # Fifos and sockets (a unix socket bound in a share) are the host's own kinds of
        # file; device nodes would hand the VM the host's devices.
        if kind not in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFREG) or not hasattr(os, "mknod"):
            raise NinepError(E.EPERM)
        os.mknod(path, kind | (mode & 0o7777))
        return self.srv.qid(os.lstat(path))

    def lock(self, r: Reader) -> bytes:
        self.get(r.u32())
        return bytes([LOCK_SUCCESS])  # locks hold within the VM; the host does not see them

    def getlock(self, r: Reader) -> bytes:
        self.get(r.u32())
        _type, start, length, proc_id = r.u8(), r.u64(), r.u64(), r.u32()
        client = r.string()
        return struct.pack("<BQQI", F_UNLCK, start, length, proc_id) + p_str(client)


def _dtype(mode: int) -> int:
    if stat.S_ISDIR(mode):
        return 4
    if stat.S_ISLNK(mode):
        return 10
    if stat.S_ISREG(mode):
        return 8
    return 0


def _close_fd(f: Fid) -> None:
    if f.fd is not None:
        try:
            os.close(f.fd)
        except OSError:
            pass
        f.fd = None


def _pread(f: Fid, count: int, offset: int) -> bytes:
    assert f.fd is not None
    if hasattr(os, "pread"):
        return os.pread(f.fd, count, offset)
    with f.lock:  # Windows: no pread
        os.lseek(f.fd, offset, os.SEEK_SET)
        return os.read(f.fd, count)


def _pwrite(f: Fid, data: memoryview, offset: int) -> int:
    assert f.fd is not None
    if hasattr(os, "pwrite"):
        return os.pwrite(f.fd, data, offset)
    with f.lock:
        os.lseek(f.fd, offset, os.SEEK_SET)
        return os.write(f.fd, data)


def serve_in_thread(server: ShareServer, sock: socket.socket, name: str) -> threading.Thread:
    t = threading.Thread(target=server.serve, args=(sock,), daemon=True, name=name)
    t.start()
    return t
