"""The 9P2000.L file server (desktop.services.ninep) driven by an independent test client.

Each test runs a ShareServer on one end of a socketpair, in a thread, with a share root in
tmp_path ("share"); a sibling directory ("outside") stands for the rest of the host, which
the guest must never reach. Error numbers are Linux's, as 9P2000.L carries them.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from desktop.services.ninep import ShareServer
from tests.helpers.ninep_client import (
    AT_REMOVEDIR,
    GETATTR_ALL,
    NOFID,
    O_CREAT,
    O_DIRECTORY,
    O_EXCL,
    O_RDONLY,
    O_RDWR,
    O_TRUNC,
    O_WRONLY,
    QTDIR,
    QTSYMLINK,
    RLERROR,
    RREAD_OVERHEAD,
    SETATTR_ATIME,
    SETATTR_ATIME_SET,
    SETATTR_MODE,
    SETATTR_MTIME,
    SETATTR_MTIME_SET,
    SETATTR_SIZE,
    TATTACH,
    TLCREATE,
    TWALK,
    TWRITE_OVERHEAD,
    Client,
    NinepError,
    frame,
    s,
)

MSIZE = 65536
TIMEOUT = 10.0
SECRET = b"host secret, not for the guest\n"

EPERM = 1
ENOENT = 2
EEXIST = 17
ENOTDIR = 20
EISDIR = 21
EINVAL = 22
ELOOP = 40
EROFS = 30
ENOTEMPTY = 39
ENODATA = 61
EOPNOTSUPP = 95

DT_DIR = 4
DT_REG = 8
DT_LNK = 10

posix_only = pytest.mark.skipif(
    os.name != "posix",
    reason="POSIX semantics: symlinks, FIFOs, modes, owners, unlinking open files")

Connect = Callable[..., tuple[Client, threading.Thread]]


# -- fixtures and helpers --


@pytest.fixture
def share(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    root.mkdir()
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.txt").write_bytes(SECRET)
    (out / "secret.txt").chmod(0o644)
    return out


@pytest.fixture
def connect(share: Path) -> Iterator[Connect]:
    """Starts a server on a socketpair; versions and attaches fid 0 unless attach=False.
    On teardown it closes the client end and checks that serve() returned."""
    opened: list[tuple[Client, threading.Thread]] = []

    def make(
        root: Path = share, read_only: bool = False, attach: bool = True
    ) -> tuple[Client, threading.Thread]:
        mine, theirs = socket.socketpair()
        srv = ShareServer(root, read_only=read_only)
        t = threading.Thread(target=srv.serve, args=(theirs,), daemon=True)
        t.start()
        mine.settimeout(TIMEOUT)
        c = Client(mine)
        opened.append((c, t))
        if attach:
            c.version(MSIZE)
            c.attach(0)
        return c, t

    yield make
    for c, t in opened:
        c.sock.close()
        t.join(TIMEOUT)
        assert not t.is_alive(), "serve() did not return after the peer closed"


@pytest.fixture
def client(connect: Connect) -> Client:
    return connect()[0]


@pytest.fixture
def ro_client(connect: Connect, share: Path) -> Client:
    (share / "f").write_bytes(b"read only data")
    (share / "d").mkdir()
    (share / "d" / "inner").write_bytes(b"x")
    return connect(read_only=True)[0]


def err(fn: Callable[..., object], *args: object) -> int:
    """The errno of the Rlerror fn(*args) must produce."""
    with pytest.raises(NinepError) as info:
        fn(*args)
    return info.value.errno


def create(c: Client, fid: int, name: str, data: bytes = b"", dfid: int = 0) -> None:
    c.walk(dfid, fid, [])
    c.lcreate(fid, name, O_RDWR | O_CREAT, 0o644)
    if data:
        assert c.write(fid, 0, data) == len(data)


def read_all(c: Client, fid: int) -> bytes:
    out = b""
    while chunk := c.read(fid, len(out), 8192):
        out += chunk
    return out


def readdir_all(c: Client, fid: int, count: int = 8192) -> list[tuple[int, int, str]]:
    """(qid.path, type, name) of every entry, following the entry offsets."""
    entries: list[tuple[int, int, str]] = []
    offset = 0
    for _ in range(1000):
        batch = c.readdir(fid, offset, count)
        if not batch:
            return entries
        entries += [(q.path, t, name) for q, _off, t, name in batch]
        offset = batch[-1][1]
    raise AssertionError("readdir never reached the end")


def names_of(entries: list[tuple[int, int, str]]) -> list[str]:
    return [name for _p, _t, name in entries if name not in (".", "..")]


def tree(top: Path) -> dict[str, bytes | str | None]:
    """Everything under top: files' content, symlinks' targets, directories as None."""
    out: dict[str, bytes | str | None] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(top))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = None
            elif p.is_file():
                out[rel] = p.read_bytes()
            else:
                out[rel] = "special"
    return out


def reply_or_close(c: Client) -> tuple[int, int, bytes] | None:
    """The server's next message, or None if it closed the connection. A timeout fails."""
    try:
        return c.recv_msg()
    except (EOFError, ConnectionResetError):
        return None


# -- version, attach --


def test_version_negotiates(connect: Connect) -> None:
    c, _ = connect(attach=False)
    msize, version = c.version(MSIZE)
    assert version == "9P2000.L"
    assert 4096 <= msize <= MSIZE


def test_version_unknown_string(connect: Connect) -> None:
    c, _ = connect(attach=False)
    _msize, version = c.version(MSIZE, "XYZ")
    assert version == "unknown"


def test_small_msize_bounds_replies(connect: Connect, share: Path) -> None:
    (share / "big").write_bytes(os.urandom(20000))
    c, _ = connect(attach=False)
    msize, _ = c.version(8192)
    assert msize <= 8192
    c.attach(0)
    c.walk(0, 1, ["big"])
    _qid, iounit = c.lopen(1, O_RDONLY)
    assert iounit == 0 or iounit <= msize - TWRITE_OVERHEAD
    data = c.read(1, 0, 1 << 20)  # the client rejects a reply larger than msize
    assert 0 < len(data) <= msize - RREAD_OVERHEAD
    assert data == (share / "big").read_bytes()[: len(data)]


def test_version_again_clunks_fids(client: Client) -> None:
    client.walk(0, 1, [])
    _msize, version = client.version(MSIZE)
    assert version == "9P2000.L"
    assert isinstance(err(client.getattr, 1), int)
    client.attach(0)  # fid 0 is free again
    assert client.getattr(0)["qid"].type & QTDIR


def test_version_msize_never_above_request(connect: Connect) -> None:
    c, _ = connect(attach=False)
    try:
        msize, version = c.version(2048)
    except NinepError:
        return
    assert version == "unknown" or msize <= 2048


def test_connections_are_independent(connect: Connect, share: Path) -> None:
    (share / "f").write_bytes(b"one")
    a, _ = connect()
    b, _ = connect()
    a.walk(0, 1, ["f"])
    b.walk(0, 1, [])  # the same fid number on another connection
    assert stat.S_ISREG(a.getattr(1)["mode"])
    assert stat.S_ISDIR(b.getattr(1)["mode"])


@pytest.mark.parametrize("sent", [b"\x20\x00", struct.pack("<IBH", 40, TWALK, 1) + b"\0" * 5])
def test_peer_closing_mid_message_ends_serve(connect: Connect, sent: bytes) -> None:
    c, t = connect()
    c.send_raw(sent)
    c.sock.shutdown(socket.SHUT_WR)
    t.join(TIMEOUT)
    assert not t.is_alive()


def test_attach_root_is_directory(connect: Connect) -> None:
    c, _ = connect(attach=False)
    c.version(MSIZE)
    qid = c.attach(5, NOFID, "root", "", 0)
    assert qid.type & QTDIR
    attr = c.getattr(5)
    assert stat.S_ISDIR(attr["mode"])
    assert attr["qid"] == qid
    assert attr["valid"] & 0x7FF == 0x7FF  # the basic fields were filled


def test_attach_fid_in_use(client: Client) -> None:
    assert isinstance(err(client.attach, 0), int)
    assert client.getattr(0)["qid"].type & QTDIR


def test_serve_returns_when_peer_closes(connect: Connect) -> None:
    c, t = connect()
    c.sock.close()
    t.join(TIMEOUT)
    assert not t.is_alive()


# -- walk --


def test_walk_existing_file(client: Client, share: Path) -> None:
    (share / "f").write_bytes(b"12345")
    qids = client.walk(0, 1, ["f"])
    assert len(qids) == 1
    assert not qids[0].type & QTDIR
    attr = client.getattr(1)
    assert attr["qid"] == qids[0]
    assert attr["size"] == 5
    assert stat.S_ISREG(attr["mode"])


def test_walk_nested(client: Client, share: Path) -> None:
    (share / "a" / "b").mkdir(parents=True)
    (share / "a" / "b" / "c").write_bytes(b"deep")
    qids = client.walk(0, 1, ["a", "b", "c"])
    assert len(qids) == 3
    assert qids[0].type & QTDIR and qids[1].type & QTDIR and not qids[2].type & QTDIR
    client.lopen(1, O_RDONLY)
    assert client.read(1, 0, 100) == b"deep"


def test_walk_zero_names_clones(client: Client) -> None:
    root = client.getattr(0)["qid"]
    assert client.walk(0, 1, []) == []
    assert client.getattr(1)["qid"] == root
    client.clunk(1)
    assert client.getattr(0)["qid"] == root  # the original fid is untouched


def test_walk_missing_first_name(client: Client) -> None:
    assert err(client.walk, 0, 1, ["missing"]) == ENOENT
    assert isinstance(err(client.getattr, 1), int)  # newfid was not created


def test_partial_walk_returns_fewer_qids(client: Client, share: Path) -> None:
    (share / "d").mkdir()
    qids = client.walk(0, 1, ["d", "missing", "more"])
    assert len(qids) == 1
    assert qids[0].type & QTDIR
    assert isinstance(err(client.getattr, 1), int)  # newfid was not created
    assert client.walk(0, 1, []) == []  # and is free


def test_walk_from_file_is_enotdir(client: Client, share: Path) -> None:
    (share / "f").write_bytes(b"")
    client.walk(0, 1, ["f"])
    assert err(client.walk, 1, 2, ["x"]) == ENOTDIR


def test_walk_dotdot_from_file_stops(client: Client, share: Path) -> None:
    (share / "f").write_bytes(b"")
    try:
        qids = client.walk(0, 1, ["f", ".."])
    except NinepError:
        return
    assert len(qids) == 1  # ".." of a file is not a walk step


def test_walk_more_than_maxwelem(client: Client) -> None:
    assert isinstance(err(client.walk, 0, 1, [".."] * 17), int)  # MAXWELEM is 16
    assert len(client.walk(0, 1, [".."] * 16)) == 16


def test_walk_newfid_same_as_fid(client: Client, share: Path) -> None:
    (share / "d").mkdir()
    client.walk(0, 1, [])
    qids = client.walk(1, 1, ["d"])
    assert client.getattr(1)["qid"] == qids[0]


def test_walk_newfid_in_use(client: Client, share: Path) -> None:
    (share / "d").mkdir()
    client.walk(0, 1, [])
    assert isinstance(err(client.walk, 0, 1, ["d"]), int)


def test_fids_and_open_files_are_capped_with_emfile(client: Client, share: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A guest holding ever more files open gets EMFILE (24), as from a kernel at its
    limit; the backend keeps its own descriptors. Clunking makes room again."""
    from desktop.services.ninep import server as ninep

    monkeypatch.setattr(ninep, "MAX_FIDS", 6)
    monkeypatch.setattr(ninep, "MAX_OPEN", 3)
    for i in range(5):
        (share / f"f{i}").write_bytes(b"x")
    for fid in (1, 2, 3):  # the attach holds fid 0: 4 fids
        client.walk(0, fid, [f"f{fid}"])
        client.lopen(fid, 0)
    client.walk(0, 4, ["f4"])
    assert err(client.lopen, 4, 0) == 24  # a fourth open file
    client.walk(0, 5, [])
    assert err(client.walk, 0, 6, ["f0"]) == 24  # a seventh fid
    client.clunk(1)
    client.lopen(4, 0)  # room again
    client.walk(0, 6, ["f0"])


def test_qids_stable_and_distinct(client: Client, share: Path) -> None:
    (share / "f").write_bytes(b"")
    (share / "g").write_bytes(b"")
    (q1,) = client.walk(0, 1, ["f"])
    (q2,) = client.walk(0, 2, ["f"])
    (q3,) = client.walk(0, 3, ["g"])
    assert q1.path == q2.path
    assert q1.path != q3.path


# -- files --


def test_create_write_read(client: Client, share: Path) -> None:
    client.walk(0, 1, [])
    qid, iounit = client.lcreate(1, "new", O_RDWR | O_CREAT, 0o640)
    assert not qid.type & QTDIR
    assert iounit == 0 or iounit <= client.msize - TWRITE_OVERHEAD
    assert client.write(1, 0, b"hello world") == 11
    assert client.read(1, 0, 100) == b"hello world"
    assert client.read(1, 6, 100) == b"world"
    assert client.read(1, 11, 100) == b""
    assert (share / "new").read_bytes() == b"hello world"
    assert stat.S_IMODE(os.stat(share / "new").st_mode) == 0o640
    attr = client.getattr(1)
    assert attr["qid"].path == qid.path
    assert attr["size"] == 11


@posix_only
def test_create_mode_is_exact(client: Client, share: Path) -> None:
    """The guest's kernel has applied its umask already: the mode asked for is the mode."""
    old = os.umask(0o022)
    try:
        client.walk(0, 1, [])
        client.lcreate(1, "f", O_RDWR | O_CREAT, 0o666)
        client.mkdir(0, "d", 0o777)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(share / "f").st_mode) == 0o666
    assert stat.S_IMODE(os.stat(share / "d").st_mode) == 0o777


@posix_only
def test_open_file_outlives_unlink(client: Client, share: Path) -> None:
    create(client, 1, "tmp", b"scratch data")
    client.unlinkat(0, "tmp", 0)
    assert not (share / "tmp").exists()
    assert client.read(1, 0, 100) == b"scratch data"
    assert client.write(1, 0, b"S") == 1
    assert client.getattr(1)["size"] == 12
    client.fsync(1)
    client.setattr(1, SETATTR_SIZE, size=4)  # ftruncate of an open, unlinked file
    assert client.getattr(1)["size"] == 4
    assert client.read(1, 0, 100) == b"Scra"


@posix_only
def test_names_round_trip(client: Client, share: Path) -> None:
    client.walk(0, 1, [])
    client.lcreate(1, "héllo wörld ☃", O_RDWR | O_CREAT, 0o644)
    assert (share / "héllo wörld ☃").exists()
    os.close(os.open(os.fsencode(share) + b"/raw\xff.bin", os.O_CREAT | os.O_WRONLY, 0o644))
    client.walk(0, 2, [])
    client.lopen(2, O_RDONLY)
    names = names_of(readdir_all(client, 2))
    assert sorted(names) == sorted(["héllo wörld ☃", "raw\udcff.bin"])
    assert len(client.walk(0, 3, ["raw\udcff.bin"])) == 1
    assert len(client.walk(0, 4, ["héllo wörld ☃"])) == 1


def test_write_at_offset_extends(client: Client, share: Path) -> None:
    create(client, 1, "f", b"ab")
    assert client.write(1, 10, b"cd") == 2
    assert (share / "f").read_bytes() == b"ab" + b"\0" * 8 + b"cd"


def test_lcreate_existing_excl(client: Client, share: Path) -> None:
    (share / "f").write_bytes(b"keep")
    client.walk(0, 1, [])
    assert err(client.lcreate, 1, "f", O_RDWR | O_CREAT | O_EXCL, 0o644) == EEXIST
    assert (share / "f").read_bytes() == b"keep"


def test_lopen_trunc(client: Client, share: Path) -> None:
    (share / "f").write_bytes(b"old content")
    client.walk(0, 1, ["f"])
    client.lopen(1, O_WRONLY | O_TRUNC)
    assert (share / "f").read_bytes() == b""


def test_lopen_directory(client: Client, share: Path) -> None:
    (share / "d").mkdir()
    (qid,) = client.walk(0, 1, ["d"])
    oqid, _iounit = client.lopen(1, O_RDONLY | O_DIRECTORY)
    assert oqid == qid


def test_getattr_matches_host(client: Client, share: Path) -> None:
    (share / "f").write_bytes(b"x" * 1234)
    os.utime(share / "f", ns=(1_500_000_000_111_111_111, 1_600_000_000_222_222_222))
    client.walk(0, 1, ["f"])
    attr = client.getattr(1)
    st = os.stat(share / "f")
    assert attr["mode"] == st.st_mode
    assert attr["size"] == 1234
    assert attr["nlink"] == st.st_nlink
    assert attr["mtime_sec"] == 1_600_000_000
    assert attr["mtime_nsec"] == 222_222_222
    assert attr["atime_sec"] == 1_500_000_000
    assert attr["blksize"] > 0


def test_setattr_truncate(client: Client, share: Path) -> None:
    (share / "f").write_bytes(b"0123456789" * 10)
    client.walk(0, 1, ["f"])
    client.setattr(1, SETATTR_SIZE, size=10)
    assert os.stat(share / "f").st_size == 10
    assert client.getattr(1)["size"] == 10
    client.setattr(1, SETATTR_SIZE, size=50)
    assert (share / "f").read_bytes() == b"0123456789" + b"\0" * 40


def test_setattr_times(client: Client, share: Path) -> None:
    (share / "f").write_bytes(b"")
    client.walk(0, 1, ["f"])
    client.setattr(
        1,
        SETATTR_MTIME | SETATTR_MTIME_SET | SETATTR_ATIME | SETATTR_ATIME_SET,
        atime_sec=1_100_000_000,
        atime_nsec=5,
        mtime_sec=1_000_000_000,
        mtime_nsec=123_456_789,
    )
    st = os.stat(share / "f")
    assert st.st_mtime_ns == 1_000_000_000_123_456_789
    assert st.st_atime_ns == 1_100_000_000_000_000_005
    attr = client.getattr(1)
    assert (attr["mtime_sec"], attr["mtime_nsec"]) == (1_000_000_000, 123_456_789)


def test_setattr_mtime_now(client: Client, share: Path) -> None:
    (share / "f").write_bytes(b"")
    os.utime(share / "f", (1_000_000_000, 1_000_000_000))
    client.walk(0, 1, ["f"])
    client.setattr(1, SETATTR_MTIME, mtime_sec=1, mtime_nsec=0)  # no _SET: "now"
    assert abs(os.stat(share / "f").st_mtime - time.time()) < 60


@pytest.mark.parametrize("with_type_bits", [False, True])
@posix_only
def test_setattr_mode(client: Client, share: Path, with_type_bits: bool) -> None:
    (share / "f").write_bytes(b"")
    (share / "f").chmod(0o644)
    client.walk(0, 1, ["f"])
    mode = (stat.S_IFREG if with_type_bits else 0) | 0o600  # Linux sends the S_IFMT bits too
    client.setattr(1, SETATTR_MODE, mode=mode)
    assert stat.S_IMODE(os.stat(share / "f").st_mode) == 0o600
    assert stat.S_ISREG(client.getattr(1)["mode"])


def test_offsets_and_sizes_past_2_63_are_einval(client: Client, share: Path) -> None:
    """The kernel's loff_t is signed (found by fuzzing: an OverflowError, answered EIO)."""
    create(client, 1, "f", b"data")
    assert err(client.read, 1, 2**63, 10) == EINVAL
    assert err(client.write, 1, 2**64 - 1, b"x") == EINVAL
    assert err(lambda: client.setattr(1, SETATTR_SIZE, size=2**63)) == EINVAL
    assert (share / "f").read_bytes() == b"data"


@posix_only
def test_times_before_1970_both_ways(client: Client, share: Path) -> None:
    """A time's seconds are signed on the wire: a file from before 1970 is stat-ed (it
    was EIO: struct.error) and such a time is set (found while fuzzing times)."""
    (share / "old").write_bytes(b"")
    os.utime(share / "old", ns=(-100 * 10**9 + 5, -100 * 10**9 + 5))
    client.walk(0, 1, ["old"])
    attr = client.getattr(1)
    assert (attr["mtime_sec"], attr["mtime_nsec"]) == (2**64 - 100, 5)
    client.setattr(1, SETATTR_MTIME | SETATTR_MTIME_SET, mtime_sec=2**64 - 7, mtime_nsec=9)
    assert os.stat(share / "old").st_mtime_ns == -7 * 10**9 + 9


def test_times_out_of_range_are_einval_not_eio(client: Client, share: Path) -> None:
    """Found by fuzzing: 2^63 - 1 s and 2^31 ns overflowed time_t (EIO from the catch-all)."""
    create(client, 1, "f")
    before = os.stat(share / "f").st_mtime_ns
    assert err(lambda: client.setattr(1, SETATTR_MTIME | SETATTR_MTIME_SET,
                                      mtime_sec=2**63 - 1, mtime_nsec=2**31)) == EINVAL
    assert os.stat(share / "f").st_mtime_ns == before


def test_fsync(client: Client, share: Path) -> None:
    create(client, 1, "f", b"data")
    client.fsync(1)
    client.fsync(1, 1)
    assert (share / "f").read_bytes() == b"data"


def test_remove_file_clunks_fid(client: Client, share: Path) -> None:
    (share / "f").write_bytes(b"")
    client.walk(0, 1, ["f"])
    client.remove(1)
    assert not (share / "f").exists()
    assert isinstance(err(client.getattr, 1), int)
    assert client.walk(0, 1, []) == []


def test_clunk_and_unknown_fids(client: Client) -> None:
    client.walk(0, 1, [])
    client.clunk(1)
    assert isinstance(err(client.clunk, 1), int)
    assert isinstance(err(client.getattr, 77), int)
    assert isinstance(err(client.read, 77, 0, 10), int)
    assert isinstance(err(client.walk, 77, 78, []), int)
    assert client.getattr(0)["qid"].type & QTDIR  # the connection still works


def test_read_and_write_need_open(client: Client, share: Path) -> None:
    (share / "f").write_bytes(b"abc")
    client.walk(0, 1, ["f"])
    client.lopen(1, O_RDONLY)
    assert isinstance(err(client.write, 1, 0, b"zzz"), int)
    assert (share / "f").read_bytes() == b"abc"


def test_large_roundtrip(client: Client, share: Path) -> None:
    payload = os.urandom(1 << 20)
    client.walk(0, 1, [])
    _qid, iounit = client.lcreate(1, "big", O_RDWR | O_CREAT, 0o644)
    chunk = iounit or client.msize - 24
    assert chunk <= client.msize - TWRITE_OVERHEAD
    offset = 0
    while offset < len(payload):
        n = client.write(1, offset, payload[offset : offset + chunk])
        assert 0 < n <= chunk
        offset += n
    client.clunk(1)
    assert (share / "big").read_bytes() == payload
    client.walk(0, 2, ["big"])
    _qid, iounit = client.lopen(2, O_RDONLY)
    chunk = iounit or client.msize - 24
    got = bytearray()
    while data := client.read(2, len(got), chunk):
        got += data
    assert bytes(got) == payload


# -- directories --


def test_mkdir(client: Client, share: Path) -> None:
    qid = client.mkdir(0, "d", 0o750)
    assert qid.type & QTDIR
    assert (share / "d").is_dir()
    assert stat.S_IMODE(os.stat(share / "d").st_mode) == 0o750
    assert err(client.mkdir, 0, "d", 0o755) == EEXIST
    assert client.walk(0, 1, ["d"]) == [qid]


@posix_only
def test_readdir_lists_entries(client: Client, share: Path) -> None:
    (share / "a").write_bytes(b"")
    (share / "b").write_bytes(b"")
    (share / "d").mkdir()
    os.symlink("a", share / "l")
    client.walk(0, 1, [])
    client.lopen(1, O_RDONLY | O_DIRECTORY)
    entries = readdir_all(client, 1)
    assert sorted(names_of(entries)) == ["a", "b", "d", "l"]
    by_name = {name: (path, dtype) for path, dtype, name in entries}
    assert by_name["a"][1] == DT_REG
    assert by_name["d"][1] == DT_DIR
    assert by_name["l"][1] == DT_LNK
    (qa,) = client.walk(0, 2, ["a"])
    assert by_name["a"][0] == qa.path


def test_readdir_resumes_with_small_count(client: Client, share: Path) -> None:
    expected = {f"file_{i:02d}" for i in range(30)}
    for name in expected:
        (share / name).write_bytes(b"")
    client.walk(0, 1, [])
    client.lopen(1, O_RDONLY)
    seen: list[str] = []
    offset = 0
    calls = 0
    while True:
        calls += 1
        assert calls < 200, "readdir does not make progress"
        batch = client.readdir(1, offset, 100)
        assert client.last_size <= 100 + RREAD_OVERHEAD
        if not batch:
            break
        seen += [name for _q, _o, _t, name in batch if name not in (".", "..")]
        offset = batch[-1][1]
    assert sorted(seen) == sorted(expected)  # each exactly once
    assert calls > 3
    # offset 0 starts over
    again = client.readdir(1, 0, 8192)
    assert expected <= {name for _q, _o, _t, name in again}


def test_readdir_in_subdir(client: Client, share: Path) -> None:
    (share / "d").mkdir()
    (share / "d" / "x").write_bytes(b"")
    client.walk(0, 1, ["d"])
    client.lopen(1, O_RDONLY)
    assert names_of(readdir_all(client, 1)) == ["x"]


def test_unlinkat(client: Client, share: Path) -> None:
    (share / "f").write_bytes(b"")
    (share / "d").mkdir()
    client.unlinkat(0, "f", 0)
    assert not (share / "f").exists()
    client.unlinkat(0, "d", AT_REMOVEDIR)
    assert not (share / "d").exists()
    assert err(client.unlinkat, 0, "f", 0) == ENOENT


def test_unlinkat_nonempty_dir(client: Client, share: Path) -> None:
    (share / "d").mkdir()
    (share / "d" / "x").write_bytes(b"")
    assert err(client.unlinkat, 0, "d", AT_REMOVEDIR) == ENOTEMPTY
    assert (share / "d" / "x").exists()


def test_unlinkat_kind_mismatch(client: Client, share: Path) -> None:
    (share / "f").write_bytes(b"")
    (share / "d").mkdir()
    assert err(client.unlinkat, 0, "f", AT_REMOVEDIR) == ENOTDIR
    assert isinstance(err(client.unlinkat, 0, "d", 0), int)  # EISDIR on Linux
    assert (share / "f").exists() and (share / "d").is_dir()


def test_renameat(client: Client, share: Path) -> None:
    (share / "f").write_bytes(b"content")
    (share / "d").mkdir()
    client.walk(0, 1, ["d"])
    client.renameat(0, "f", 0, "g")
    assert not (share / "f").exists()
    assert (share / "g").read_bytes() == b"content"
    client.renameat(0, "g", 1, "h")
    assert (share / "d" / "h").read_bytes() == b"content"
    assert err(client.renameat, 0, "missing", 0, "x") == ENOENT


def test_rename(client: Client, share: Path) -> None:
    (share / "f").write_bytes(b"content")
    (share / "d").mkdir()
    client.walk(0, 1, ["f"])
    client.walk(0, 2, ["d"])
    client.rename(1, 2, "moved")
    assert not (share / "f").exists()
    assert (share / "d" / "moved").read_bytes() == b"content"
    assert client.getattr(1)["size"] == 7  # fid 1 follows the file


def test_fid_follows_renameat(client: Client, share: Path) -> None:
    (share / "f").write_bytes(b"content")
    (share / "d").mkdir()
    (share / "d" / "child").write_bytes(b"kid")
    client.walk(0, 1, ["f"])
    client.walk(0, 2, ["d"])
    client.renameat(0, "f", 0, "g")
    client.renameat(0, "d", 0, "e")
    assert client.getattr(1)["size"] == 7
    client.lopen(1, O_RDONLY)
    assert client.read(1, 0, 100) == b"content"
    assert len(client.walk(2, 3, ["child"])) == 1
    client.lopen(3, O_RDONLY)
    assert client.read(3, 0, 100) == b"kid"


@posix_only
def test_symlink_readlink(client: Client, share: Path) -> None:
    qid = client.symlink(0, "l", "target/x")
    assert qid.type & QTSYMLINK
    assert os.readlink(share / "l") == "target/x"
    (wq,) = client.walk(0, 1, ["l"])
    assert wq.path == qid.path
    assert client.readlink(1) == "target/x"
    assert stat.S_ISLNK(client.getattr(1)["mode"])
    (share / "f").write_bytes(b"")
    client.walk(0, 2, ["f"])
    assert isinstance(err(client.readlink, 2), int)  # not a symlink


@posix_only
def test_link(client: Client, share: Path) -> None:
    (share / "f").write_bytes(b"content")
    client.walk(0, 1, ["f"])
    client.link(0, 1, "hl")
    assert os.stat(share / "f").st_nlink == 2
    assert os.path.samefile(share / "f", share / "hl")
    assert client.getattr(1)["nlink"] == 2


def test_statfs(client: Client) -> None:
    info = client.statfs(0)
    assert info["bsize"] > 0
    assert info["namelen"] > 0
    assert info["bfree"] <= info["blocks"]


@posix_only
def test_mknod_fifo(client: Client, share: Path) -> None:
    client.mknod(0, "p", stat.S_IFIFO | 0o644, 0, 0)
    assert stat.S_ISFIFO(os.lstat(share / "p").st_mode)


@posix_only
def test_lopen_fifo_does_not_block(client: Client, share: Path) -> None:
    os.mkfifo(share / "p")
    client.walk(0, 1, ["p"])
    try:
        client.lopen(1, O_RDONLY)  # an error is fine; hanging the connection is not
    except NinepError:
        pass
    except TimeoutError:
        os.close(os.open(share / "p", os.O_WRONLY | os.O_NONBLOCK))  # release the server
        raise
    assert client.getattr(0)["qid"].type & QTDIR


def test_xattrwalk(client: Client, share: Path) -> None:
    (share / "f").write_bytes(b"")
    client.walk(0, 1, ["f"])
    try:
        assert client.xattrwalk(1, 2, "user.nothing") == 0
    except NinepError as e:
        assert e.errno in (ENODATA, EOPNOTSUPP)
    assert client.getattr(1)["size"] == 0


def test_flush(client: Client) -> None:
    client.flush(42)
    assert client.getattr(0)["qid"].type & QTDIR


# -- confinement --


def test_walk_dotdot_stays_at_root(client: Client, share: Path) -> None:
    (share / "d").mkdir()
    root = client.getattr(0)["qid"]
    qids = client.walk(0, 1, [".."])
    assert [q.path for q in qids] == [root.path]
    assert client.getattr(1)["qid"].path == root.path
    qids = client.walk(0, 2, ["d", "..", "..", ".."])
    assert len(qids) == 4 and qids[-1].path == root.path
    client.lopen(2, O_RDONLY)
    assert names_of(readdir_all(client, 2)) == ["d"]


def on_fid1(names: list[str], op: Callable[[Client], object]) -> Callable[[Client], object]:
    """op, after walking fid 1 from the root to names."""

    def run(c: Client) -> object:
        c.walk(0, 1, names)
        return op(c)

    return run


SLASH_OPS: dict[str, Callable[[Client], object]] = {
    "walk-d/f": lambda c: c.walk(0, 1, ["d/f"]),
    "walk-slash": lambda c: c.walk(0, 1, ["/"]),
    "lcreate-d/new": on_fid1([], lambda c: c.lcreate(1, "d/new", O_RDWR | O_CREAT, 0o644)),
    "lcreate-../new": on_fid1([], lambda c: c.lcreate(1, "../new", O_RDWR | O_CREAT, 0o644)),
    "mkdir-d/new": lambda c: c.mkdir(0, "d/new", 0o755),
    "mkdir-../new": lambda c: c.mkdir(0, "../new", 0o755),
    "symlink-d/new": lambda c: c.symlink(0, "d/new", "x"),
    "symlink-../new": lambda c: c.symlink(0, "../new", "x"),
    "mknod-../new": lambda c: c.mknod(0, "../new", stat.S_IFIFO | 0o644, 0, 0),
    "renameat-to-d/new": lambda c: c.renameat(0, "f", 0, "d/new"),
    "renameat-to-../new": lambda c: c.renameat(0, "f", 0, "../new"),
    "renameat-from-d/f": lambda c: c.renameat(0, "d/f", 0, "new"),
    "rename-to-../new": on_fid1(["f"], lambda c: c.rename(1, 0, "../new")),
    "link-to-../new": on_fid1(["f"], lambda c: c.link(0, 1, "../new")),
    "unlinkat-d/f": lambda c: c.unlinkat(0, "d/f", 0),
    "unlinkat-../outside": lambda c: c.unlinkat(0, "../outside", AT_REMOVEDIR),
}


@pytest.mark.parametrize("op", SLASH_OPS)
def test_names_with_slash_refused(
    client: Client, share: Path, outside: Path, tmp_path: Path, op: str
) -> None:
    (share / "d").mkdir()
    (share / "d" / "f").write_bytes(b"inner")
    (share / "f").write_bytes(b"top")
    before = tree(tmp_path)
    assert isinstance(err(SLASH_OPS[op], client), int)
    assert tree(tmp_path) == before
    assert client.getattr(0)["qid"].type & QTDIR


@pytest.mark.parametrize("name", [".", "..", ""])
def test_dot_names_refused_for_create(client: Client, share: Path, name: str) -> None:
    client.walk(0, 1, [])
    assert isinstance(err(client.lcreate, 1, name, O_RDWR | O_CREAT, 0o644), int)
    assert isinstance(err(client.mkdir, 0, name, 0o755), int)
    assert list(share.iterdir()) == []


def _walk_ok(c: Client, fid: int, newfid: int, names: list[str]) -> bool:
    """Whether the walk fully succeeded (newfid created)."""
    try:
        return len(c.walk(fid, newfid, names)) == len(names)
    except NinepError:
        return False


@posix_only
@pytest.mark.parametrize("made_by", ["host", "guest"])
def test_symlink_out_is_not_followed_by_walk(
    client: Client, share: Path, outside: Path, made_by: str
) -> None:
    if made_by == "host":
        os.symlink("/etc", share / "etc")
        os.symlink(outside, share / "out")
    else:
        client.symlink(0, "etc", "/etc")
        client.symlink(0, "out", str(outside))
    assert not _walk_ok(client, 0, 1, ["etc", "passwd"])
    assert not _walk_ok(client, 0, 1, ["out", "secret.txt"])
    (q,) = client.walk(0, 1, ["out"])  # the link itself can be walked to
    assert q.type & QTSYMLINK and not q.type & QTDIR
    assert not _walk_ok(client, 1, 2, ["secret.txt"])
    assert stat.S_ISLNK(client.getattr(1)["mode"])


@posix_only
def test_relative_symlink_escape(client: Client, share: Path, outside: Path) -> None:
    (share / "d").mkdir()
    os.symlink("../..", share / "d" / "up")
    assert not _walk_ok(client, 0, 1, ["d", "up", "outside", "secret.txt"])
    assert not _walk_ok(client, 0, 1, ["d", "up", "outside"])


@posix_only
def test_lopen_symlink_does_not_read_outside(client: Client, share: Path, outside: Path) -> None:
    os.symlink(outside / "secret.txt", share / "leak")
    os.symlink(outside, share / "outdir")
    client.walk(0, 1, ["leak"])
    attr = client.getattr(1)
    assert stat.S_ISLNK(attr["mode"])
    assert attr["size"] == len(str(outside / "secret.txt"))
    try:
        client.lopen(1, O_RDONLY)
    except NinepError:
        pass
    else:
        try:
            data = client.read(1, 0, 4096)
        except NinepError:
            data = b""
        assert SECRET not in data
    client.walk(0, 2, ["outdir"])
    try:
        client.lopen(2, O_RDONLY)
    except NinepError:
        return
    try:
        listing = [name for _q, _o, _t, name in client.readdir(2, 0, 8192)]
    except NinepError:
        listing = []
    assert "secret.txt" not in listing


@posix_only
def test_readdir_of_dir_swapped_for_symlink(client: Client, share: Path, outside: Path) -> None:
    """The guest alone: open folder "d", remove it, rename a link to outside in its place."""
    client.mkdir(0, "d", 0o755)
    client.walk(0, 1, ["d"])
    client.lopen(1, O_RDONLY)
    client.symlink(0, "s", str(outside))
    client.unlinkat(0, "d", AT_REMOVEDIR)
    client.renameat(0, "s", 0, "d")
    try:
        listing = [name for _q, _o, _t, name in client.readdir(1, 0, 8192)]
    except NinepError:
        listing = []
    assert "secret.txt" not in listing


def _swap_folder_for_link(client: Client, share: Path, outside: Path, made_by: str) -> None:
    """Folder "d" (holding "sub") becomes a link to `outside` (which holds a "sub" too)."""
    if made_by == "host":
        os.rename(share / "d", share / "d.old")
        os.symlink(outside, share / "d")
        return
    client.walk(0, 9, ["d"])
    client.unlinkat(9, "sub", AT_REMOVEDIR)
    client.clunk(9)
    client.unlinkat(0, "d", AT_REMOVEDIR)
    client.symlink(0, "d", str(outside))


@posix_only
@pytest.mark.parametrize("made_by", ["host", "guest"])
def test_a_stale_fid_does_not_reach_through_a_folder_swapped_for_a_link(
        client: Client, share: Path, outside: Path, made_by: str) -> None:
    """Fid 1 is d/sub; then d becomes a link out of the share. Nothing through fid 1
    (walk, getattr, lopen, readdir, setattr, create) may see or touch outside/sub."""
    (outside / "sub").mkdir()
    (outside / "sub" / "secret.txt").write_bytes(SECRET)
    (share / "d" / "sub").mkdir(parents=True)
    client.walk(0, 1, ["d", "sub"])
    _swap_folder_for_link(client, share, outside, made_by)
    before = tree(outside)
    inode = os.stat(outside / "sub").st_ino
    assert not _walk_ok(client, 1, 2, ["secret.txt"])
    with pytest.raises(NinepError):
        client.getattr(1)
    with pytest.raises(NinepError):
        client.lopen(1, O_RDONLY)
    for op in (lambda: client.setattr(1, SETATTR_MODE, mode=0o777),
               lambda: client.mkdir(1, "pwned", 0o755),
               lambda: client.lcreate(1, "pwned", O_RDWR | O_CREAT, 0o644)):
        with pytest.raises(NinepError):
            op()
    assert tree(outside) == before
    assert stat.S_IMODE(os.stat(outside / "sub").st_mode) != 0o777
    client.walk(0, 3, ["d"])  # the link itself, seen as a link
    assert stat.S_ISLNK(client.getattr(3)["mode"])
    assert client.getattr(3)["qid"].path != inode


@posix_only
def test_a_stale_fid_of_an_open_folder_lists_it_but_not_its_new_namesake(
        client: Client, share: Path, outside: Path) -> None:
    """An open folder is listed through its descriptor; its ".." is looked up without
    following a link either."""
    (outside / "sub").mkdir()
    (outside / "sub" / "secret.txt").write_bytes(SECRET)
    (share / "d" / "sub").mkdir(parents=True)
    client.walk(0, 1, ["d", "sub"])
    client.lopen(1, O_RDONLY)
    os.rename(share / "d", share / "d.old")
    os.symlink(outside, share / "d")
    listing = [name for _q, _o, _t, name in client.readdir(1, 0, 8192)]
    assert listing == [".", ".."]


@posix_only
def test_every_folder_on_the_way_is_opened_without_following_a_link(
        client: Client, share: Path, outside: Path) -> None:
    """A link in the middle of a fid's path ends the operation (ELOOP or ENOTDIR), at
    whatever depth, for each kind of request."""
    (share / "a" / "b" / "c").mkdir(parents=True)
    (share / "a" / "b" / "c" / "f").write_bytes(b"in the share")
    client.walk(0, 1, ["a", "b", "c"])
    client.walk(0, 2, ["a", "b", "c", "f"])
    (outside / "c").mkdir()
    (outside / "c" / "f").write_bytes(SECRET)
    os.rename(share / "a" / "b", share / "a" / "b.old")
    os.symlink(outside, share / "a" / "b")
    before = tree(outside)
    for op in (lambda: client.getattr(2), lambda: client.lopen(2, O_RDONLY),
               lambda: client.readlink(2), lambda: client.unlinkat(1, "f", 0),
               lambda: client.renameat(1, "f", 0, "stolen"),
               lambda: client.symlink(1, "l", "x"),
               lambda: client.mknod(1, "p", stat.S_IFIFO | 0o644, 0, 0),
               lambda: client.link(1, 2, "hl"), lambda: client.remove(2)):
        with pytest.raises(NinepError) as e:
            op()
        assert e.value.errno in (ENOTDIR, ELOOP), e.value.errno
    assert tree(outside) == before
    assert not (share / "stolen").exists()


# -- set-uid and set-gid bits stay in the VM ------------------------------------------


@posix_only
def test_lcreate_drops_setuid_and_setgid(client: Client, share: Path) -> None:
    client.walk(0, 1, [])
    client.lcreate(1, "f", O_RDWR | O_CREAT, 0o6755)
    assert stat.S_IMODE(os.stat(share / "f").st_mode) == 0o755


@posix_only
def test_mkdir_drops_setuid_and_setgid_and_keeps_sticky(client: Client, share: Path) -> None:
    client.mkdir(0, "d", 0o6775)
    client.mkdir(0, "t", 0o1777)
    assert stat.S_IMODE(os.stat(share / "d").st_mode) == 0o775
    assert stat.S_IMODE(os.stat(share / "t").st_mode) == 0o1777


@posix_only
def test_mknod_drops_setuid_and_setgid(client: Client, share: Path) -> None:
    old = os.umask(0)
    try:
        client.mknod(0, "p", stat.S_IFIFO | 0o6666, 0, 0)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.lstat(share / "p").st_mode) == 0o666


@posix_only
@pytest.mark.parametrize("opened", [False, True])
def test_chmod_drops_setuid_and_setgid(client: Client, share: Path, opened: bool) -> None:
    (share / "f").write_bytes(b"#!/bin/sh\n")
    client.walk(0, 1, ["f"])
    if opened:
        client.lopen(1, O_RDONLY)
    client.setattr(1, SETATTR_MODE, mode=stat.S_IFREG | 0o6755)
    assert stat.S_IMODE(os.stat(share / "f").st_mode) == 0o755
    client.setattr(1, SETATTR_MODE, mode=0o1755)
    assert stat.S_IMODE(os.stat(share / "f").st_mode) == 0o1755


# Fid 1 is the symlink "outdir" -> outside; fid 2 is the share file "f".
LINKED_DIR_OPS: dict[str, Callable[[Client], object]] = {
    "lcreate": lambda c: c.lcreate(1, "pwned", O_RDWR | O_CREAT, 0o644),
    "mkdir": lambda c: c.mkdir(1, "pwned", 0o755),
    "symlink": lambda c: c.symlink(1, "pwned", "x"),
    "mknod": lambda c: c.mknod(1, "pwned", stat.S_IFIFO | 0o644, 0, 0),
    "renameat-in": lambda c: c.renameat(0, "f", 1, "pwned"),
    "renameat-out": lambda c: c.renameat(1, "secret.txt", 0, "stolen"),
    "rename-in": lambda c: c.rename(2, 1, "pwned"),
    "link-in": lambda c: c.link(1, 2, "pwned"),
    "unlinkat": lambda c: c.unlinkat(1, "secret.txt", 0),
    "walk": lambda c: c.walk(1, 3, ["secret.txt"]),
    "setattr-mode": lambda c: c.setattr(1, SETATTR_MODE, mode=0o700),
    "xattrwalk": lambda c: c.xattrwalk(1, 3, "user.x"),
}


@posix_only
@pytest.mark.parametrize("op", LINKED_DIR_OPS)
def test_nothing_happens_through_symlinked_dir(
    client: Client, share: Path, outside: Path, op: str
) -> None:
    os.symlink(outside, share / "outdir")
    (share / "f").write_bytes(b"share file")
    outside.chmod(0o755)
    before = tree(outside)
    mode_before = os.stat(outside).st_mode
    if _walk_ok(client, 0, 1, ["outdir"]):
        client.walk(0, 2, ["f"])
        try:
            LINKED_DIR_OPS[op](client)
        except NinepError:
            pass
    assert tree(outside) == before
    assert os.stat(outside).st_mode == mode_before
    assert not (share / "stolen").exists()
    assert client.getattr(0)["qid"].type & QTDIR


@posix_only
def test_create_over_symlink_does_not_write_outside(
    client: Client, share: Path, outside: Path
) -> None:
    os.symlink(outside / "secret.txt", share / "leak")
    client.walk(0, 1, [])
    try:
        client.lcreate(1, "leak", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        client.write(1, 0, b"overwritten")
    except NinepError:
        pass
    client.walk(0, 2, ["leak"])
    try:
        client.lopen(2, O_WRONLY | O_TRUNC)
        client.write(2, 0, b"overwritten")
    except NinepError:
        pass
    assert (outside / "secret.txt").read_bytes() == SECRET


@posix_only
@pytest.mark.parametrize(
    "valid",
    [SETATTR_SIZE, SETATTR_MODE, SETATTR_MTIME | SETATTR_MTIME_SET],
    ids=["size", "mode", "mtime"],
)
def test_setattr_on_symlink_leaves_target(
    client: Client, share: Path, outside: Path, valid: int
) -> None:
    secret = outside / "secret.txt"
    os.symlink(secret, share / "leak")
    before = os.stat(secret)
    client.walk(0, 1, ["leak"])
    try:
        client.setattr(1, valid, mode=0o600, size=0, mtime_sec=1_000_000_000)
    except NinepError:
        pass
    after = os.stat(secret)
    assert secret.read_bytes() == SECRET
    assert after.st_mode == before.st_mode
    assert after.st_mtime_ns == before.st_mtime_ns


@posix_only
def test_link_to_symlink_does_not_import_target(client: Client, share: Path, outside: Path) -> None:
    os.symlink(outside / "secret.txt", share / "leak")
    client.walk(0, 1, ["leak"])
    try:
        client.link(0, 1, "hl")
    except NinepError:
        pass
    assert os.stat(outside / "secret.txt").st_nlink == 1
    assert not (share / "hl").exists() or (share / "hl").is_symlink()


@posix_only
def test_device_node_not_opened(client: Client, share: Path) -> None:
    """A character device made by the guest (here /dev/zero's numbers) must not give the
    guest the host's device."""
    try:
        client.mknod(0, "zero", stat.S_IFCHR | 0o666, 1, 5)
    except NinepError:
        return
    client.walk(0, 1, ["zero"])
    try:
        client.lopen(1, O_RDONLY)
        data = client.read(1, 0, 16)
    except NinepError:
        return
    assert data != b"\0" * 16


# -- read-only shares --


def test_read_only_reads(ro_client: Client, share: Path) -> None:
    c = ro_client
    c.walk(0, 1, ["f"])
    c.lopen(1, O_RDONLY)
    assert c.read(1, 0, 100) == b"read only data"
    assert c.getattr(1)["size"] == 14
    c.walk(0, 2, [])
    c.lopen(2, O_RDONLY)
    assert sorted(names_of(readdir_all(c, 2))) == ["d", "f"]
    assert c.statfs(0)["bsize"] > 0


RO_OPS: dict[str, Callable[[Client], object]] = {
    "lcreate": on_fid1([], lambda c: c.lcreate(1, "new", O_RDWR | O_CREAT, 0o644)),
    "lopen-wronly": on_fid1(["f"], lambda c: c.lopen(1, O_WRONLY)),
    "lopen-rdwr": on_fid1(["f"], lambda c: c.lopen(1, O_RDWR)),
    "lopen-trunc": on_fid1(["f"], lambda c: c.lopen(1, O_RDONLY | O_TRUNC)),
    "mkdir": lambda c: c.mkdir(0, "new", 0o755),
    "unlinkat": lambda c: c.unlinkat(0, "f", 0),
    "unlinkat-dir": lambda c: c.unlinkat(0, "d", AT_REMOVEDIR),
    "setattr-size": on_fid1(["f"], lambda c: c.setattr(1, SETATTR_SIZE, size=0)),
    "setattr-mode": on_fid1(["f"], lambda c: c.setattr(1, SETATTR_MODE, mode=0o600)),
    "setattr-mtime": on_fid1(["f"], lambda c: c.setattr(1, SETATTR_MTIME | SETATTR_MTIME_SET)),
    "renameat": lambda c: c.renameat(0, "f", 0, "g"),
    "rename": on_fid1(["f"], lambda c: c.rename(1, 0, "g")),
    "symlink": lambda c: c.symlink(0, "new", "f"),
    "link": on_fid1(["f"], lambda c: c.link(0, 1, "new")),
    "mknod": lambda c: c.mknod(0, "new", stat.S_IFIFO | 0o644, 0, 0),
    "remove": on_fid1(["f"], lambda c: c.remove(1)),
}


@pytest.mark.parametrize("op", RO_OPS)
def test_read_only_refuses_changes(ro_client: Client, share: Path, op: str) -> None:
    before = tree(share)
    modes = {p: os.lstat(p).st_mode for p in share.rglob("*")}
    mtime = os.stat(share / "f").st_mtime_ns
    if op == "lopen-trunc":  # O_RDONLY|O_TRUNC: refused, or opened without truncating
        try:
            RO_OPS[op](ro_client)
        except NinepError as e:
            assert e.errno in (EROFS, EPERM, EINVAL)
    else:
        assert err(RO_OPS[op], ro_client) == EROFS
    assert tree(share) == before
    assert {p: os.lstat(p).st_mode for p in share.rglob("*")} == modes
    assert os.stat(share / "f").st_mtime_ns == mtime
    assert ro_client.getattr(0)["qid"].type & QTDIR


def test_read_only_write_on_read_fid(ro_client: Client, share: Path) -> None:
    ro_client.walk(0, 1, ["f"])
    ro_client.lopen(1, O_RDONLY)
    assert isinstance(err(ro_client.write, 1, 0, b"zzz"), int)
    assert (share / "f").read_bytes() == b"read only data"


# -- malformed input --


@pytest.mark.parametrize("size", [0, 4, 6])
def test_size_below_header(connect: Connect, size: int) -> None:
    c, t = connect()
    c.send_raw(struct.pack("<IBH", size, TWALK, 3))
    reply = reply_or_close(c)
    if reply is None:
        t.join(TIMEOUT)
        assert not t.is_alive()
    else:
        assert reply[0] == RLERROR


@pytest.mark.parametrize("mtype", [200, 6, 101, 7, 0])
def test_unknown_type(connect: Connect, mtype: int) -> None:
    c, t = connect()
    c.send_raw(frame(mtype, 9, b"\0" * 8))
    reply = reply_or_close(c)
    if reply is None:
        t.join(TIMEOUT)
        assert not t.is_alive()
        return
    assert reply[:2] == (RLERROR, 9)
    assert c.getattr(0)["qid"].type & QTDIR


@pytest.mark.parametrize(
    "msg",
    [
        frame(TWALK, 4, struct.pack("<IIH", 0, 1, 2) + s("a")),  # one name short
        frame(TWALK, 4, struct.pack("<IIH", 0, 1, 1) + struct.pack("<H", 500) + b"ab"),
        frame(TLCREATE, 4, struct.pack("<I", 0) + s("x")),  # no flags/mode/gid
        frame(TATTACH, 4, b"\1"),
        frame(TWALK, 4, struct.pack("<IIH", 0, 1, 1) + struct.pack("<H", 3) + b"\xed\xb3\xbf"),
        frame(TWALK, 4, struct.pack("<IIH", 0, 1, 1) + struct.pack("<H", 2) + b"\xff\xfe"),
    ],
    ids=[
        "missing-name",
        "string-overrun",
        "short-lcreate",
        "short-attach",
        "surrogate",
        "bad-utf8",
    ],
)
def test_malformed_body(connect: Connect, share: Path, msg: bytes) -> None:
    c, t = connect()
    c.send_raw(msg)
    reply = reply_or_close(c)
    if reply is None:
        t.join(TIMEOUT)
        assert not t.is_alive()
        return
    assert reply[1] == 4
    assert c.getattr(0)["qid"].type & QTDIR
    assert list(share.iterdir()) == []


def test_size_beyond_msize(connect: Connect) -> None:
    c, t = connect()
    c.send_raw(struct.pack("<IBH", 0x7FFFFFFF, TWALK, 3))
    reply = reply_or_close(c)  # without the rest: a server waiting for 2 GiB times out
    if reply is None:
        t.join(TIMEOUT)
        assert not t.is_alive()
    else:
        assert reply[0] == RLERROR


def test_getattr_mask_is_accepted(client: Client) -> None:
    attr = client.getattr(0, 0x1)
    assert attr["valid"] & 0x1
    assert stat.S_ISDIR(attr["mode"])
    assert client.getattr(0, GETATTR_ALL)["qid"].type & QTDIR


# -- owners, host errno numbers, Windows names --


@posix_only
def test_chown_of_an_open_file_and_of_a_path(client: Client, share: Path) -> None:
    """Run as root (as CI runs) chown takes effect; as a user it succeeds without one."""
    from tests.helpers.ninep_client import SETATTR_GID, SETATTR_UID

    client.walk(0, 1, [])
    client.lcreate(1, "owned", O_RDWR, 0o644)
    (share / "plain").write_bytes(b"x")
    client.walk(0, 2, ["plain"])
    client.setattr(1, SETATTR_UID | SETATTR_GID, uid=1234, gid=4321)
    client.setattr(2, SETATTR_UID, uid=1234)
    want = (1234, 4321) if os.geteuid() == 0 else (os.geteuid(), os.getegid())
    st = (share / "owned").stat()
    assert (st.st_uid, st.st_gid) == want
    assert (share / "plain").stat().st_uid == want[0]


@pytest.mark.parametrize(("name", "linux"), [
    ("ENOTEMPTY", 39), ("ELOOP", 40), ("ENAMETOOLONG", 36), ("ENOENT", 2),
    ("EOPNOTSUPP", 95), ("EDQUOT", 122)])
def test_host_errors_are_sent_with_linux_numbers(monkeypatch: pytest.MonkeyPatch,
                                                 name: str, linux: int) -> None:
    """Windows and macOS number these differently (Windows' ENOTEMPTY is 41, macOS's 66):
    the name decides, so a host's own numbering never reaches the guest."""
    import errno as errno_mod

    from desktop.services.ninep import server as ninep

    host_number = 4000 + linux  # a numbering unlike Linux's
    monkeypatch.setitem(errno_mod.errorcode, host_number, name)
    assert ninep.linux_errno(OSError(host_number, "x")) == linux
    assert ninep.linux_errno(OSError(3999, "unknown")) == 5  # EIO
    assert ninep.linux_errno(OSError("no errno")) == 5


@pytest.mark.parametrize("name", ["a:b", "stream::$DATA", "x\\y", "what?", "star*",
                                  'q"', "pipe|", "lt<", "gt>", "tab\tname", "dot.",
                                  "space ", "CON", "nul", "nul.txt", "com1", "LPT9.log",
                                  "aux .c", "COM\u00b9"])
def test_windows_refuses_names_it_would_read_otherwise(monkeypatch: pytest.MonkeyPatch,
                                                      client: Client, share: Path,
                                                      name: str) -> None:
    """On Windows a ":" names an alternate data stream and a trailing dot or space is
    dropped (another file's name): such names are refused, looked up as absent."""
    from desktop.services.ninep import server as ninep

    monkeypatch.setattr(ninep, "WINDOWS", True)
    (share / "dot").mkdir()
    client.walk(0, 1, [])
    assert err(client.walk, 0, 2, [name]) == ENOENT
    assert err(client.lcreate, 1, name, O_RDWR, 0o644) == EINVAL
    assert err(client.mkdir, 0, name, 0o755) == EINVAL
    assert sorted(os.listdir(share)) == ["dot"]


def test_windows_names_that_are_fine(monkeypatch: pytest.MonkeyPatch, client: Client,
                                     share: Path) -> None:
    from desktop.services.ninep import server as ninep

    monkeypatch.setattr(ninep, "WINDOWS", True)
    client.mkdir(0, "café déjà", 0o755)
    client.mkdir(0, ".hidden", 0o755)
    client.mkdir(0, "console", 0o755)
    client.mkdir(0, "com10", 0o755)
    assert sorted(os.listdir(share)) == [".hidden", "café déjà", "com10", "console"]


@posix_only
def test_windows_paths_through_the_server(monkeypatch: pytest.MonkeyPatch, client: Client,
                                          share: Path, outside: Path) -> None:
    """The code Windows runs (no pread/pwrite, no fchmod, folders listed by path, owners
    shown as 0), exercised here; and a folder swapped for a link is still not listed."""
    from desktop.services.ninep import server as ninep

    monkeypatch.setattr(ninep, "WINDOWS", True)
    monkeypatch.delattr(os, "pread")
    monkeypatch.delattr(os, "pwrite")
    client.walk(0, 1, [])
    client.lcreate(1, "f.txt", O_RDWR, 0o644)
    assert client.write(1, 0, b"hello world") == 11
    assert client.write(1, 6, b"WORLD") == 5
    assert client.read(1, 0, 100) == b"hello WORLD"
    client.setattr(1, SETATTR_SIZE | SETATTR_MTIME | SETATTR_MTIME_SET, size=5,
                   mtime_sec=1_600_000_000)
    st = (share / "f.txt").stat()
    assert (st.st_size, int(st.st_mtime)) == (5, 1_600_000_000)
    attrs = client.getattr(1)
    assert (attrs["uid"], attrs["gid"], attrs["size"]) == (0, 0, 5)
    (share / "d").mkdir()
    (share / "d" / "x").write_bytes(b"")
    client.walk(0, 2, ["d"])
    client.lopen(2, O_RDONLY | O_DIRECTORY)
    assert {e[3] for e in client.readdir(2, 0, 4096)} == {".", "..", "x"}
    (share / "d" / "x").unlink()
    (share / "d").rmdir()
    (share / "d").symlink_to(outside, target_is_directory=True)
    with pytest.raises(NinepError):
        client.readdir(2, 0, 4096)


@posix_only
def test_windows_files_show_rwx_unless_read_only(monkeypatch: pytest.MonkeyPatch,
                                                 client: Client, share: Path) -> None:
    from desktop.services.ninep import server as ninep

    (share / "run.sh").write_bytes(b"#!/bin/sh\n")
    (share / "run.sh").chmod(0o644)  # what Windows reports for a writable file, less x
    (share / "locked.txt").write_bytes(b"x")
    (share / "locked.txt").chmod(0o444)
    (share / "dir").mkdir()
    (share / "dir").chmod(0o755)
    monkeypatch.setattr(ninep, "WINDOWS", True)
    modes = {}
    for i, name in enumerate(["run.sh", "locked.txt", "dir"], start=1):
        client.walk(0, i, [name])
        modes[name] = client.getattr(i)["mode"]
    assert modes == {"run.sh": stat.S_IFREG | 0o777, "locked.txt": stat.S_IFREG | 0o555,
                     "dir": stat.S_IFDIR | 0o777}
    monkeypatch.setattr(ninep, "WINDOWS", False)
    client.walk(0, 9, ["run.sh"])
    assert client.getattr(9)["mode"] == stat.S_IFREG | 0o644  # elsewhere: the host's own
