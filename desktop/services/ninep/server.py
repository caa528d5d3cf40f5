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
".." never climbs above the root; and no request goes through a symbolic link (the
guest's kernel resolves links itself, in the VM's namespace). On POSIX hosts each
request opens the folders of its path one by one from the share's root, none through a
link (O_NOFOLLOW), and acts on the last name relative to the last folder (the *at
calls), so a link made at any time, by the guest or on the host, leads nowhere: a fid
walked before its folder became a link finds the link (ELOOP or ENOTDIR), not what it
points to. Windows has no *at calls: there the real path of the folder is checked to lie
in the share before each request. Modes never carry set-uid or set-gid bits to the host
(`host_mode`). A read-only share refuses every change with EROFS.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from desktop.services.ninep.wire import (
    AT_REMOVEDIR,
    F_UNLCK,
    GETATTR_BASIC,
    IOHDRSZ,
    L_ACCMODE,
    L_APPEND,
    L_CREAT,
    L_DIRECTORY,
    L_DSYNC,
    L_EXCL,
    L_RDWR,
    L_SYNC,
    L_TRUNC,
    L_WRONLY,
    LOCK_SUCCESS,
    MAX_MSIZE,
    MIN_MSIZE,
    NOFID,
    QT_DIR,
    QT_FILE,
    QT_SYMLINK,
    READDIR_HDR,
    RLERROR,
    SET_ATIME,
    SET_ATIME_SET,
    SET_GID,
    SET_MODE,
    SET_MTIME,
    SET_MTIME_SET,
    SET_SIZE,
    SET_UID,
    TATTACH,
    TAUTH,
    TCLUNK,
    TFLUSH,
    TFSYNC,
    TGETATTR,
    TGETLOCK,
    TLCREATE,
    TLINK,
    TLOCK,
    TLOPEN,
    TMKDIR,
    TMKNOD,
    TREAD,
    TREADDIR,
    TREADLINK,
    TREMOVE,
    TRENAME,
    TRENAMEAT,
    TSETATTR,
    TSTATFS,
    TSYMLINK,
    TUNLINKAT,
    TVERSION,
    TWALK,
    TWRITE,
    TXATTRCREATE,
    TXATTRWALK,
    V9FS_MAGIC,
    VERSION,
    WINDOWS_BAD,
    WINDOWS_DEVICES,
    E,
    Malformed,
    NinepError,
    Reader,
    linux_errno,
    p_str,
)

log = logging.getLogger(__name__)

WINDOWS = sys.platform == "win32"
# Per share (one connection each): a guest that holds more fids or open files gets
# EMFILE, as from a kernel at its limit, instead of taking the backend's descriptors.
MAX_FIDS = 16384
MAX_OPEN = 1024
# A folder on the way to a name: opened without following a link, without reading it
# (O_PATH where the host has it: no read permission needed, as for a path lookup).
_FOLDER = (getattr(os, "O_PATH", 0) or os.O_RDONLY) | os.O_DIRECTORY | \
    getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _offset(value: int) -> int:
    """A file offset or size off the wire (u64) as the host takes it: Linux's loff_t is
    signed, so past 2^63 - 1 is EINVAL, as the guest's own kernel would answer."""
    if value > 2**63 - 1:
        raise NinepError(E.EINVAL)
    return value


def _time_ns(sec: int, nsec: int) -> int:
    """A time off the wire in nanoseconds: its seconds are a signed 64-bit number (a
    time before 1970 is negative), its nanoseconds below 10^9 (else EINVAL, as
    utimensat says)."""
    if nsec >= 10**9:
        raise NinepError(E.EINVAL)
    return (sec - 2**64 if sec >= 2**63 else sec) * 10**9 + nsec


def _wire_time(ns: int) -> tuple[int, int]:
    """(seconds as u64, nanoseconds) of a host time, before 1970 too."""
    sec, nsec = divmod(ns, 10**9)
    return sec & 0xFFFFFFFFFFFFFFFF, nsec


def host_mode(mode: int) -> int:
    """The permission bits of a mode the guest asks for, as the host gets them: no
    set-uid or set-gid bit (a program the VM marks so must not run with the host user's
    or group's rights), the sticky bit kept."""
    return mode & 0o1777


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
        junction made since the walk would otherwise lead out of it. Windows' way (`at`)."""
        path = self.host_path(parts)
        parent = os.path.realpath(os.path.dirname(path) if parts and not follow else path)
        if parent != self.real_root and not parent.startswith(
                self.real_root.rstrip(os.sep) + os.sep):
            log.warning("9p: refused %s: its folder resolves outside the share", path)
            raise NinepError(E.EACCES)
        return path

    @contextlib.contextmanager
    def at(self, parts: tuple[str, ...], follow: bool = False) -> Iterator[tuple[int | None, str]]:
        """Where `parts` is, for an os call's ``dir_fd`` and name: (a descriptor of its
        folder, its last name). Each folder from the share's root is opened in turn
        relative to the one before, never through a link (ELOOP or ENOTDIR where one
        stands), so the name is the share's whatever links were made since the walk; the
        root itself is ".". Windows has no *at calls: (None, the path), once `confined`."""
        if WINDOWS:
            yield None, self.confined(parts, follow=follow)
            return
        fd = os.open(self.root, _FOLDER & ~_NOFOLLOW)  # the root may be a link the user chose
        try:
            for name in parts[:-1]:
                inner = os.open(name, _FOLDER, dir_fd=fd)
                os.close(fd)
                fd = inner
            yield fd, parts[-1] if parts else "."
        finally:
            os.close(fd)

    def lstat(self, parts: tuple[str, ...]) -> os.stat_result:
        with self.at(parts) as (d, name):
            return os.stat(name, dir_fd=d, follow_symlinks=False)

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
        return self.srv.lstat(parts)

    def iounit(self) -> int:
        return self.msize - IOHDRSZ

    def new_fid(self, fid: int, f: Fid) -> None:
        if fid == NOFID or fid in self.fids:
            raise NinepError(E.EBADF)
        self.room_for_fid()
        self.fids[fid] = f

    def free_fid(self, fid: int) -> None:
        """EBADF unless `fid` is free for a new fid; EMFILE when there are too many."""
        if fid == NOFID or fid in self.fids:
            raise NinepError(E.EBADF)
        self.room_for_fid()

    def room_for_fid(self) -> None:
        if len(self.fids) >= MAX_FIDS:
            raise NinepError(E.EMFILE)

    def room_for_open(self) -> None:
        if sum(1 for f in self.fids.values() if f.fd is not None) >= MAX_OPEN:
            raise NinepError(E.EMFILE)

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
        if newfid != fid:
            self.free_fid(newfid)
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
        with self.srv.at(f.parts) as (d, name):
            if stat.S_ISDIR(os.stat(name, dir_fd=d, follow_symlinks=False).st_mode):
                os.rmdir(name, dir_fd=d)
            else:
                os.unlink(name, dir_fd=d)
        return b""

    # -- files -----------------------------------------------------------------------

    def _open(self, parts: tuple[str, ...], flags: int, mode: int = 0o644) -> int:
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
        host |= getattr(os, "O_CLOEXEC", 0) | _NOFOLLOW
        with self.srv.at(parts, follow=WINDOWS) as (d, name):
            if WINDOWS and os.path.islink(name):
                raise NinepError(E.ELOOP)  # a link is resolved by the guest, not followed here
            self.room_for_open()
            return os.open(name, host, host_mode(mode), dir_fd=d)

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
                self.room_for_open()
                with self.srv.at(f.parts) as (d, name):
                    f.fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW |
                                   os.O_CLOEXEC, dir_fd=d)
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
            os.chmod(self.srv.confined(parts), host_mode(mode))
        else:
            os.chmod(fd, host_mode(mode))
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
            data = _pread(f, count, _offset(offset))
        self.srv.stats["bytes_read"] += len(data)
        return [struct.pack("<I", len(data)), data]

    def write(self, r: Reader) -> bytes:
        fid, offset, count = r.u32(), r.u64(), r.u32()
        data = r.data(count)
        f = self.get(fid)
        self.writable()
        if f.fd is None:
            raise NinepError(E.EISDIR if f.is_dir else E.EBADF)
        n = _pwrite(f, data, _offset(offset))
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
        times = [x for ns in (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)
                 for x in _wire_time(ns)]
        return (struct.pack("<Q", GETATTR_BASIC) + self.srv.qid(st)
                + struct.pack("<IIIQQQQQ", _mode(st), uid, gid, st.st_nlink,
                              getattr(st, "st_rdev", 0), st.st_size, blksize, blocks)
                + struct.pack("<QQQQQQQQQQ", *times, 0, 0, 0, 0))

    def setattr(self, r: Reader) -> bytes:
        fid, valid, mode, uid, gid = r.u32(), r.u32(), r.u32(), r.u32(), r.u32()
        size, asec, ansec, msec, mnsec = r.u64(), r.u64(), r.u64(), r.u64(), r.u64()
        f = self.get(fid)
        self.writable()
        # An open fid changes what it has open (which may have lost its name meanwhile);
        # Windows has no fchmod or futimens, so there it goes by the path.
        with contextlib.ExitStack() as stack:
            target: _Target
            if f.fd is not None and not WINDOWS:
                target = f.fd
                st = os.fstat(f.fd)
            else:
                target = stack.enter_context(self.srv.at(f.parts))
                st = os.stat(target[1], dir_fd=target[0], follow_symlinks=False)
            is_link = stat.S_ISLNK(st.st_mode)
            if valid & SET_MODE and not is_link:
                _chmod(target, host_mode(mode))
            if valid & (SET_UID | SET_GID) and hasattr(os, "lchown"):
                try:  # works for root; a user's server keeps the files its own (as QEMU's)
                    _chown(target, uid if valid & SET_UID else -1,
                           gid if valid & SET_GID else -1)
                except PermissionError:
                    pass
            if valid & SET_SIZE:
                if is_link or stat.S_ISDIR(st.st_mode):
                    raise NinepError(E.EISDIR if not is_link else E.EINVAL)
                _truncate(f.fd if f.fd is not None else target, _offset(size))
            if valid & (SET_ATIME | SET_MTIME) and not is_link:
                now = time.time_ns()
                at, mt = st.st_atime_ns, st.st_mtime_ns
                if valid & SET_ATIME:
                    at = _time_ns(asec, ansec) if valid & SET_ATIME_SET else now
                if valid & SET_MTIME:
                    mt = _time_ns(msec, mnsec) if valid & SET_MTIME_SET else now
                _utime(target, at, mt)
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
            up = self.lstat(parts[:-1]) if parts else me
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
        with self.srv.at(self.child(dfid, name)) as (d, n):
            os.mkdir(n, host_mode(mode), dir_fd=d)
            _chmod((d, n), host_mode(mode))  # the guest applied its umask already
            return self.srv.qid(os.stat(n, dir_fd=d, follow_symlinks=False))

    def unlinkat(self, r: Reader) -> bytes:
        dfid, name, flags = r.u32(), r.string(), r.u32()
        self.writable()
        with self.srv.at(self.child(dfid, name)) as (d, n):
            if flags & AT_REMOVEDIR:
                os.rmdir(n, dir_fd=d)
            else:
                if stat.S_ISDIR(os.stat(n, dir_fd=d, follow_symlinks=False).st_mode):
                    raise NinepError(E.EISDIR)
                os.unlink(n, dir_fd=d)
        return b""

    def _rename(self, old: tuple[str, ...], new: tuple[str, ...]) -> None:
        self.writable()
        with self.srv.at(old) as (od, on), self.srv.at(new) as (nd, nn):
            if new[:len(old)] == old and len(new) > len(old):
                raise NinepError(E.EINVAL)  # a folder into itself
            os.replace(on, nn, src_dir_fd=od, dst_dir_fd=nd)
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
        with self.srv.at(self.child(dfid, name)) as (d, n):
            os.symlink(target, n, dir_fd=d)
            return self.srv.qid(os.stat(n, dir_fd=d, follow_symlinks=False))

    def readlink(self, r: Reader) -> bytes:
        f = self.get(r.u32())
        with self.srv.at(f.parts) as (d, n):
            return p_str(os.readlink(n, dir_fd=d))

    def link(self, r: Reader) -> bytes:
        dfid, fid, name = r.u32(), r.u32(), r.string()
        self.writable()
        src, dst = self.get(fid).parts, self.child(dfid, name)
        with self.srv.at(src) as (sd, sn), self.srv.at(dst) as (dd, dn):
            if WINDOWS:
                os.link(sn, dn)
            else:
                os.link(sn, dn, src_dir_fd=sd, dst_dir_fd=dd, follow_symlinks=False)
        return b""

    def mknod(self, r: Reader) -> bytes:
        dfid, name, mode, _major, _minor, _gid = (r.u32(), r.string(), r.u32(), r.u32(),
                                                  r.u32(), r.u32())
        self.writable()
        parts = self.child(dfid, name)
        kind = stat.S_IFMT(mode)
        # Fifos and sockets (a unix socket bound in a share) are the host's own kinds of
        # file; device nodes would hand the VM the host's devices.
        if kind not in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFREG) or not hasattr(os, "mknod"):
            raise NinepError(E.EPERM)
        if os.mknod not in os.supports_dir_fd:  # macOS before 13: no mknodat
            path = self.srv.confined(parts)
            os.mknod(path, kind | host_mode(mode))
            return self.srv.qid(os.lstat(path))
        with self.srv.at(parts) as (d, n):
            os.mknod(n, kind | host_mode(mode), dir_fd=d)
            return self.srv.qid(os.stat(n, dir_fd=d, follow_symlinks=False))

    def lock(self, r: Reader) -> bytes:
        self.get(r.u32())
        return bytes([LOCK_SUCCESS])  # locks hold within the VM; the host does not see them

    def getlock(self, r: Reader) -> bytes:
        self.get(r.u32())
        _type, start, length, proc_id = r.u8(), r.u64(), r.u64(), r.u32()
        client = r.string()
        return struct.pack("<BQQI", F_UNLCK, start, length, proc_id) + p_str(client)


# What a setattr changes: an open descriptor, or a name in a folder (`ShareServer.at`).
_Target = int | tuple[int | None, str]


def _chmod(target: _Target, mode: int) -> None:
    """chmod, never through a link (a link's own mode is left as it is)."""
    if isinstance(target, int):
        os.chmod(target, mode)
        return
    d, name = target
    if d is None:  # Windows: the checked path
        os.chmod(name, mode)
        return
    try:
        os.chmod(name, mode, dir_fd=d, follow_symlinks=False)
    except (NotImplementedError, ValueError):
        # Linux cannot change a link's own mode (and glibc before 2.32 not even a file's
        # this way): open the name itself, not following it, and change what it is
        # unless that is a link.
        fd = os.open(name, getattr(os, "O_PATH", os.O_RDONLY) | _NOFOLLOW |
                     getattr(os, "O_CLOEXEC", 0), dir_fd=d)
        try:
            if not stat.S_ISLNK(os.fstat(fd).st_mode):
                os.chmod(f"/proc/self/fd/{fd}", mode)
        finally:
            os.close(fd)


def _chown(target: _Target, uid: int, gid: int) -> None:
    if isinstance(target, int):
        os.fchown(target, uid, gid)
    else:
        os.chown(target[1], uid, gid, dir_fd=target[0], follow_symlinks=False)


def _truncate(target: _Target, size: int) -> None:
    if isinstance(target, int):
        os.ftruncate(target, size)
        return
    d, name = target
    fd = os.open(name, os.O_WRONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) |
                 getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0), dir_fd=d)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def _utime(target: _Target, atime_ns: int, mtime_ns: int) -> None:
    if isinstance(target, int):
        os.utime(target, ns=(atime_ns, mtime_ns))
    elif target[0] is None:  # Windows: the checked path
        os.utime(target[1], ns=(atime_ns, mtime_ns))
    else:
        os.utime(target[1], ns=(atime_ns, mtime_ns), dir_fd=target[0],
                 follow_symlinks=False)


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
