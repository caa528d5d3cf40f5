"""Fuzzing Cove's 9P server (desktop.services.ninep): its message decoder and dispatch.

Each example serves one connection of random and mutated messages (well-formed requests
of every type with random fields and names, the same with bytes flipped or cut, and raw
bytes) on a share holding files, a folder and links out of it, beside an "outside"
folder that stands for the rest of the host. The server must answer with replies of the
request's type or Rlerror, or close the connection (what does not parse), and never:
let an exception reach its catch-all (logged as "request type N failed"), hang, change
anything outside the share, or hand out anything of it (its bytes, its inode numbers).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import struct
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from desktop.services.ninep import server as ninep
from desktop.services.ninep import wire
from desktop.services.ninep.wire import p_str

SECRET = b"outside the share: the host's own\n"
SERVE_TIMEOUT = 10.0

# -- messages ------------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
small = st.integers(0, 8)
u32 = st.one_of(small, st.sampled_from([0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]),
                st.integers(0, 0xFFFFFFFF))
u64 = st.one_of(small, st.sampled_from([2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1]),
                st.integers(0, 2**64 - 1))
# Mostly the fids a session has (attach makes 0, walks make more), some it has not.
fid = st.one_of(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3), st.just(wire.NOFID),
                u32)
mode = st.one_of(st.sampled_from([0o644, 0o755, 0o4755, 0o2775, 0o6777, 0o1777, 0o7777, 0,
                                  stat.S_IFIFO | 0o644, stat.S_IFSOCK | 0o600,
                                  stat.S_IFREG | 0o600, stat.S_IFCHR | 0o666,
                                  stat.S_IFBLK | 0o600, stat.S_IFDIR | 0o755]), u32)
flags = st.one_of(st.sampled_from([0, wire.L_WRONLY, wire.L_RDWR, wire.L_RDWR | wire.L_CREAT,
                                   wire.L_WRONLY | wire.L_TRUNC, wire.L_DIRECTORY,
                                   wire.L_RDWR | wire.L_APPEND | wire.L_SYNC, 3]), u32)
NAMES = ["f", "d", "g", "out", "leak", "sub", "new", "p", "secret.txt", "..", ".", "",
         "a/b", "x\0y", "d/../..", "CON", "a:b", "é", "\udcff", "x" * 256]
name = st.one_of(st.sampled_from(NAMES), st.text(max_size=6))
valid = st.one_of(st.sampled_from([wire.SET_MODE, wire.SET_SIZE, wire.SET_UID | wire.SET_GID,
                                   wire.SET_ATIME | wire.SET_MTIME,
                                   wire.SET_ATIME | wire.SET_ATIME_SET | wire.SET_MTIME
                                   | wire.SET_MTIME_SET, 0x1FF]), u32)


def s(text: str) -> bytes:
    return p_str(text)


def _targets(outside: str) -> st.SearchStrategy[str]:
    return st.sampled_from([outside, outside + "/secret.txt", "/etc", "..", "../..", "d",
                            "out", "", "/"])


def request(outside: str) -> st.SearchStrategy[tuple[int, bytes]]:
    """(type, body) of a request of any type the server knows (and some it does not)."""
    t = _targets(outside)
    n = name
    walk = st.builds(lambda a, b, names: struct.pack("<IIH", a, b, len(names))
                     + b"".join(s(x) for x in names), fid, fid, st.lists(n, max_size=18))
    write = st.builds(lambda f, off, data: struct.pack("<IQI", f, off, len(data)) + data,
                      fid, u64, st.binary(max_size=64))
    p = struct.pack
    bodies: dict[int, st.SearchStrategy[bytes]] = {
        wire.TVERSION: st.builds(lambda m, v: p("<I", m) + s(v),
                                 st.one_of(st.integers(0, 2**20 + 8192), u32),
                                 st.sampled_from(["9P2000.L", "9P2000", "", "9P2000.u"])),
        wire.TAUTH: st.builds(lambda a, b, c: p("<I", a) + s(b) + s(c) + p("<I", 0), fid, n, n),
        wire.TATTACH: st.builds(lambda a, b: p("<II", a, b) + s("root") + s("") + p("<I", 0),
                                fid, fid),
        wire.TFLUSH: st.builds(lambda tag: p("<H", tag), u16),
        wire.TWALK: walk,
        wire.TCLUNK: st.builds(lambda a: p("<I", a), fid),
        wire.TREMOVE: st.builds(lambda a: p("<I", a), fid),
        wire.TLOPEN: st.builds(lambda a, fl: p("<II", a, fl), fid, flags),
        wire.TLCREATE: st.builds(lambda a, x, fl, m: p("<I", a) + s(x) + p("<III", fl, m, 0),
                                 fid, n, flags, mode),
        wire.TREAD: st.builds(lambda a, off, c: p("<IQI", a, off, c), fid, u64, u32),
        wire.TWRITE: write,
        wire.TGETATTR: st.builds(lambda a, m: p("<IQ", a, m), fid, u64),
        wire.TSETATTR: st.builds(
            lambda a, v, m, uid, gid, size, t1, t2, t3, t4: p("<IIIII", a, v, m, uid, gid)
            + p("<QQQQQ", size, t1, t2, t3, t4), fid, valid, mode, u32, u32, u64, u64, u64,
            u64, u64),
        wire.TREADDIR: st.builds(lambda a, off, c: p("<IQI", a, off, c), fid, u64, u32),
        wire.TMKDIR: st.builds(lambda a, x, m: p("<I", a) + s(x) + p("<II", m, 0), fid, n, mode),
        wire.TUNLINKAT: st.builds(lambda a, x, fl: p("<I", a) + s(x) + p("<I", fl), fid, n,
                                  st.sampled_from([0, wire.AT_REMOVEDIR, 0xFFFFFFFF])),
        wire.TRENAMEAT: st.builds(lambda a, x, b, y: p("<I", a) + s(x) + p("<I", b) + s(y),
                                  fid, n, fid, n),
        wire.TRENAME: st.builds(lambda a, b, x: p("<II", a, b) + s(x), fid, fid, n),
        wire.TSYMLINK: st.builds(lambda a, x, y: p("<I", a) + s(x) + s(y) + p("<I", 0),
                                 fid, n, st.one_of(t, n)),
        wire.TREADLINK: st.builds(lambda a: p("<I", a), fid),
        wire.TLINK: st.builds(lambda a, b, x: p("<II", a, b) + s(x), fid, fid, n),
        wire.TMKNOD: st.builds(lambda a, x, m, ma, mi: p("<I", a) + s(x) + p("<IIII", m, ma,
                                                                         mi, 0),
                               fid, n, mode, u32, u32),
        wire.TSTATFS: st.builds(lambda a: p("<I", a), fid),
        wire.TFSYNC: st.builds(lambda a, d: p("<II", a, d), fid, u32),
        wire.TXATTRWALK: st.builds(lambda a, b, x: p("<II", a, b) + s(x), fid, fid,
                                   st.sampled_from(["", "user.x", "security.capability"])),
        wire.TXATTRCREATE: st.builds(lambda a, x, size: p("<I", a) + s(x) + p("<QI", size, 0),
                                     fid, n, u64),
        wire.TLOCK: st.builds(lambda a, ty, start, ln: p("<IBIQQI", a, ty, 0, start, ln, 1)
                              + s("guest"), fid, u8, u64, u64),
        wire.TGETLOCK: st.builds(lambda a, ty, start, ln: p("<IBQQI", a, ty, start, ln, 1)
                                 + s("guest"), fid, u8, u64, u64),
    }
    known = st.sampled_from(sorted(bodies)).flatmap(
        lambda mtype: st.tuples(st.just(mtype), bodies[mtype]))
    unknown = st.tuples(st.sampled_from([0, 6, 7, 9, 101, 111, 255]), st.binary(max_size=16))
    return st.one_of(known, known, known, unknown)


def frame(mtype: int, tag: int, body: bytes) -> bytes:
    return struct.pack("<IBH", 7 + len(body), mtype, tag) + body


@st.composite
def mutated(draw: st.DrawFn, msg: bytes) -> bytes:
    """`msg` with a few bytes changed, cut short, or its size field lying."""
    data = bytearray(msg)
    how = draw(st.sampled_from(["flip", "cut", "size", "none", "none"]))
    if how == "flip" and data:
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(u8)
    elif how == "cut":
        del data[draw(st.integers(0, len(data))):]
    elif how == "size" and len(data) >= 4:
        data[:4] = struct.pack("<I", draw(st.one_of(st.integers(0, len(data) + 8), u32)))
    return bytes(data)


@st.composite
def session(draw: st.DrawFn, outside: str) -> bytes:
    """A connection's bytes: usually version and attach first, then requests."""
    out = b""
    if draw(st.booleans()) or draw(st.booleans()):
        out += frame(wire.TVERSION, 0xFFFF, struct.pack("<I", 65536) + s("9P2000.L"))
        out += frame(wire.TATTACH, 1, struct.pack("<II", 0, wire.NOFID) + s("root") + s("")
                     + struct.pack("<I", 0))
    for tag, (mtype, body) in enumerate(draw(st.lists(request(outside), max_size=24)), 2):
        msg = frame(mtype, tag & 0xFFFF, body)
        out += draw(mutated(msg)) if draw(st.integers(0, 5)) == 0 else msg
    if draw(st.integers(0, 7)) == 0:
        out += draw(st.binary(max_size=64))
    return out


# -- the share and what must not change ------------------------------------------------------


@dataclass
class Tree:
    base: Path
    share: Path
    outside: Path


@contextmanager
def tree() -> Iterator[Tree]:
    base = Path(tempfile.mkdtemp(prefix="cove-fuzz-9p-"))
    share, outside = base / "share", base / "outside"
    share.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "sub").mkdir()
    (outside / "sub" / "secret.txt").write_bytes(SECRET)
    (outside / "p").mkdir()
    (share / "f").write_bytes(b"share data")
    (share / "d" / "sub").mkdir(parents=True)
    (share / "d" / "g").write_bytes(b"more share data")
    os.symlink(outside, share / "out")
    os.symlink(outside / "secret.txt", share / "leak")
    try:
        yield Tree(base, share, outside)
    finally:
        _unblock(share)
        for dirpath, dirnames, _files in os.walk(base):
            for d in dirnames:
                p = os.path.join(dirpath, d)
                if not os.path.islink(p):
                    os.chmod(p, 0o700)
        shutil.rmtree(base)


def snapshot(top: Path) -> dict[str, Any]:
    """Everything of `top` that a change would show: kind, mode, size, times, content."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for entry in [".", *dirnames, *filenames]:
            p = os.path.join(dirpath, entry)
            st_ = os.lstat(p)
            item: tuple[Any, ...] = (st_.st_mode, st_.st_uid, st_.st_gid, st_.st_size,
                                     st_.st_mtime_ns, st_.st_nlink)
            if stat.S_ISREG(st_.st_mode):
                item += (Path(p).read_bytes(),)
            out[os.path.relpath(p, top)] = item
    return out


def inodes(top: Path) -> set[int]:
    found = {os.lstat(top).st_ino}
    for dirpath, dirnames, filenames in os.walk(top):
        found |= {os.lstat(os.path.join(dirpath, e)).st_ino for e in dirnames + filenames}
    return found


def _unblock(share: Path) -> None:
    """Open every fifo in the share at both ends: a server stuck opening one goes on."""
    for dirpath, _dirs, files in os.walk(share):
        for f in files:
            p = os.path.join(dirpath, f)
            if stat.S_ISFIFO(os.lstat(p).st_mode):
                try:
                    os.close(os.open(p, os.O_RDWR | os.O_NONBLOCK))
                except OSError:
                    pass


# -- the connection --------------------------------------------------------------------------


class FakeSocket:
    """What `ShareServer.serve` uses of a socket: the bytes to read, the bytes written."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.sent = bytearray()

    def recv_into(self, view: memoryview) -> int:
        n = min(len(view), len(self.data) - self.pos)
        view[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        pass


class Failures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


REPLY_TYPES = {t + 1 for t in (
    wire.TVERSION, wire.TAUTH, wire.TATTACH, wire.TFLUSH, wire.TWALK, wire.TCLUNK,
    wire.TREMOVE, wire.TLOPEN, wire.TLCREATE, wire.TREAD, wire.TWRITE, wire.TGETATTR,
    wire.TSETATTR, wire.TREADDIR, wire.TMKDIR, wire.TUNLINKAT, wire.TRENAMEAT, wire.TRENAME,
    wire.TSYMLINK, wire.TREADLINK, wire.TLINK, wire.TMKNOD, wire.TSTATFS, wire.TFSYNC,
    wire.TXATTRWALK, wire.TXATTRCREATE, wire.TLOCK, wire.TGETLOCK)} | {wire.RLERROR}
QID_AT = {105: [0], 13: [0], 15: [0], 73: [0], 17: [0], 19: [0], 25: [8]}  # reply: offsets


def replies(data: bytes) -> list[tuple[int, int, bytes]]:
    out = []
    pos = 0
    while pos < len(data):
        assert pos + 7 <= len(data), "a reply cut short"
        size, rtype, tag = struct.unpack_from("<IBH", data, pos)
        assert 7 <= size <= len(data) - pos, f"reply size {size} does not fit"
        out.append((rtype, tag, data[pos + 7:pos + size]))
        pos += size
    return out


def qid_paths(rtype: int, body: bytes) -> list[int]:
    """The qid paths a reply hands out."""
    def at(off: int) -> int:
        return int(struct.unpack_from("<Q", body, off + 5)[0])

    if rtype in QID_AT:
        return [at(o) for o in QID_AT[rtype]]
    if rtype == wire.TWALK + 1:
        (n,) = struct.unpack_from("<H", body)
        return [at(2 + 13 * i) for i in range(n)]
    if rtype == wire.TREADDIR + 1:
        found, pos = [], 4
        while pos < len(body):
            found.append(at(pos))
            (length,) = struct.unpack_from("<H", body, pos + 13 + 8 + 1)
            pos += 13 + 8 + 1 + 2 + length
        return found
    return []


def serve(t: Tree, data: bytes) -> bytes:
    failures = Failures()
    logger = logging.getLogger(ninep.__name__)
    logger.addHandler(failures)
    sock = FakeSocket(data)
    worker = threading.Thread(target=ninep.ShareServer(t.share).serve, args=(sock,),
                              daemon=True)
    try:
        worker.start()
        worker.join(SERVE_TIMEOUT)
        if worker.is_alive():
            _unblock(t.share)
            worker.join(SERVE_TIMEOUT)
            raise AssertionError("the server hung (on a fifo?)")
    finally:
        logger.removeHandler(failures)
    assert not failures.records, [r.getMessage() for r in failures.records]
    return bytes(sock.sent)


def check(t: Tree, data: bytes) -> None:
    before, before_base, secret_inodes = snapshot(t.outside), sorted(os.listdir(t.base)), \
        inodes(t.outside)
    sent = serve(t, data)
    assert snapshot(t.outside) == before, "something outside the share changed"
    assert sorted(os.listdir(t.base)) == before_base
    assert stat.S_ISDIR(os.lstat(t.share).st_mode)
    assert not [m for m in snapshot(t.share).values() if m[0] & (stat.S_ISUID | stat.S_ISGID)], \
        "a set-uid or set-gid bit reached the host"
    assert SECRET not in sent, "bytes from outside the share were sent"
    for rtype, _tag, body in replies(sent):
        assert rtype in REPLY_TYPES, rtype
        leaked = set(qid_paths(rtype, body)) & secret_inodes
        assert not leaked, f"reply {rtype} names a file outside the share"


@given(st.data())
def test_random_sessions_get_replies_or_a_closed_connection(data: st.DataObject) -> None:
    with tree() as t:
        check(t, data.draw(session(str(t.outside)), label="session"))


# Found by `make fuzz`: a Tsetattr of the root with atime 2^63 - 1 s and 2^31 ns (an
# OverflowError in os.utime, answered EIO by the catch-all).
SETATTR_PAST_TIME_T = (
    frame(wire.TVERSION, 0xFFFF, struct.pack("<I", 2048) + s("9P2000.L"))
    + frame(wire.TATTACH, 1, struct.pack("<II", 0, wire.NOFID) + s("root") + s("")
            + struct.pack("<I", 0))
    + frame(wire.TSETATTR, 2, struct.pack("<IIIII", 0, 0xB0, 0o644, 0, 0)
            + struct.pack("<QQQQQ", 0, 2**63 - 1, 2**31, 0, 0)))


@given(st.binary(max_size=512))
@example(SETATTR_PAST_TIME_T)
@example(b"")
@example(struct.pack("<IBH", 7, wire.TVERSION, 0))
@example(struct.pack("<IBH", 0xFFFFFFFF, wire.TWALK, 0))
def test_raw_bytes_get_replies_or_a_closed_connection(raw: bytes) -> None:
    with tree() as t:
        check(t, raw)
