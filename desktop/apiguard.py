"""A relay for Cove's docker.sock that refuses bind mounts the VM cannot see.

Host folders are shared into the VM at the same path (the *shares*). A bind mount of a
host path outside every share would silently mount an empty folder of the VM, so
container creations that ask for one are answered here, on the host, with a 400 whose
message names the path and the fix; the docker CLI prints it as "Error response from
daemon: ...". Everything else passes unchanged.

`guarded_pipe` replaces `guest_engine.relay.pipe` between a client of Cove's docker.sock
and a stream to the engine. The engine->client direction is copied raw, as the relay
does. The client->engine direction follows HTTP/1.1 request framing (head, then a
Content-Length or chunked body) only far enough to find ``POST /containers/create`` and
hand its JSON body to a `check`; each request is forwarded as soon as its framing is
known, byte for byte. Upgrades (attach, exec, BuildKit sessions) and anything this
module does not understand switch that direction to a raw copy for the rest of the
connection: Cove never breaks a connection because of the guard.

On Windows, shared folders appear in the VM under /mnt/host (`desktop.platform.paths`),
so a creation whose binds name Windows paths (``C:\\Users\\me\\src:/src``,
``c:/Users/me/src:/src``, ``//c/Users/me/src:/src``, or a bind mount's Source) is
rewritten to the VM's paths before the engine sees it (the request's Content-Length
follows), and one that names a path outside every share is refused as above. Which
rules apply is decided by the path style passed to `make_check`, not by the platform.

The policy is a set of pure functions (`bind_sources`, `outside_shares`, `refusal`,
`windows_binds`) that `make_check` puts together.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from desktop.instance import VM_RESERVED
from desktop.platform.endpoints import Stream
from desktop.platform.paths import HOST_PATHS, HostPaths, WindowsPaths
from guest_engine import relay

log = logging.getLogger(__name__)

# A check returns None to pass a request, a message (str) to refuse it, or a new body
# (bytes) to send to the engine instead.
Check = Callable[[str, str, bytes], str | bytes | None]

# The engine's own socket, mounted for docker-in-docker: it exists in the VM and is the
# engine Cove runs, which is what such a container wants.
VM_PATHS = ("/var/run/docker.sock", "/run/docker.sock")

HEAD_CAP = 64 * 1024  # a longer request head is not Docker's: copy it raw
LINE_CAP = 64 * 1024  # a chunk-size or trailer line
CHECK_CAP = 32 * 1024 * 1024  # a larger create body is forwarded unchecked

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_REQUEST_LINE = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/1\.([01])")
_METHOD = re.compile(rb"[A-Za-z-]*")  # Docker's clients send letters only
_HEX = re.compile(rb"[0-9A-Fa-f]+")
_CREATE = re.compile(r"(?:/v[0-9]+(?:\.[0-9]+)?)?/containers/create/?")
_ABSOLUTE_FORM = re.compile(r"https?://[^/?#]*", re.IGNORECASE)

# -- policy --------------------------------------------------------------------------------


def _norm(path: str) -> str:
    # normpath keeps a leading "//"; Linux and macOS read it as "/".
    return "/" + posixpath.normpath(path).lstrip("/")


def _under(path: str, root: str) -> bool:
    """`path` is `root` or inside it (both normalized); "/home/meadow" is not in "/home/me"."""
    return root == "/" or path == root or path.startswith(root + "/")


def bind_sources(create_body: dict) -> list[str]:
    """The host paths a container creation bind-mounts, in order, without duplicates.

    From ``HostConfig.Binds`` ("src:dst[:opts]"; a src not starting with "/" is a named
    volume) and ``HostConfig.Mounts`` entries of Type "bind". Malformed entries are
    skipped: the engine reports them better than Cove could.
    """
    hc = create_body.get("HostConfig") if isinstance(create_body, dict) else None
    if not isinstance(hc, dict):
        return []
    found: list[str] = []
    binds = hc.get("Binds")
    if isinstance(binds, list):
        for b in binds:
            if isinstance(b, str) and b.startswith("/"):
                found.append(b.split(":", 1)[0])
    for m in _bind_mounts(hc):
        src = m.get("Source")
        if isinstance(src, str) and src.startswith("/"):
            found.append(src)
    return list(dict.fromkeys(found))


def _bind_mounts(hc: dict) -> list[dict]:
    """The ``HostConfig.Mounts`` entries of Type "bind" (the dicts themselves)."""
    mounts = hc.get("Mounts")
    if not isinstance(mounts, list):
        return []
    return [m for m in mounts
            if isinstance(m, dict) and str(m.get("Type", "")).lower() == "bind"]


def outside_shares(sources: list[str], shares: list[str],
                   allowed: tuple[str, ...] = VM_PATHS) -> list[str]:
    """The normalized `sources` that are neither in a share nor one of `allowed`."""
    roots = [_norm(s) for s in shares if isinstance(s, str) and s.startswith("/")]
    exempt = {_norm(a) for a in allowed}
    out: list[str] = []
    for src in sources:
        if not isinstance(src, str) or not src.startswith("/"):
            continue  # not a host path of Linux or macOS; not Cove's to judge
        p = _norm(src)
        if p in exempt or any(_under(p, r) for r in roots) or p in out:
            continue
        out.append(p)
    return out


def _host_folders(sources: list[str]) -> list[str]:
    """`sources` normalized, without duplicates and without the VM's own paths."""
    exempt = {_norm(a) for a in VM_PATHS}
    return [p for p in dict.fromkeys(_norm(s) for s in sources) if p not in exempt]


def _reserved(path: str) -> str | None:
    """The VM folder that `path` would overlap as a share (shares must not), if any."""
    for r in VM_RESERVED:
        if _under(path, r) or _under(r, path):
            return r
    return None


def suggested_share(path: str, is_file: Callable[[str], bool] = os.path.isfile) -> str | None:
    """The folder to share so that `path` is visible in the VM, or None if none can be.

    Its top two levels ("/opt/data/x" -> "/opt/data"; "/opt/data" itself): wide enough to
    cover its neighbours, narrow enough not to share a whole system folder. Deeper where
    that would overlap the VM's own folders ("/var/lib/app/x" -> "/var/lib/app"); a file
    gives its folder.
    """
    parts = [p for p in path.split("/") if p]
    for depth in range(min(2, len(parts)), len(parts) + 1):
        folder = "/" + "/".join(parts[:depth])
        if _reserved(folder):
            continue
        if depth == len(parts) and is_file(folder):
            folder = "/" + "/".join(parts[:depth - 1])
            if folder == "/" or _reserved(folder):
                return None
        return folder
    return None


def windows_binds(create_body: dict, shares: list[str],
                  paths: WindowsPaths) -> tuple[list[str], list[str]]:
    """Rewrite, in `create_body`, the Windows sources of its bind mounts to their paths in
    the VM; return (the host folders it binds, those of them outside every share), both
    normalized, in order, without duplicates. Sources outside the shares stay as they
    were (the creation is to be refused); other binds (named volumes, paths of the VM
    such as /var/run/docker.sock) are left alone.
    """
    hc = create_body.get("HostConfig") if isinstance(create_body, dict) else None
    if not isinstance(hc, dict):
        return [], []
    roots = []
    for sh in shares:
        try:
            roots.append(paths.normalize(sh))
        except ValueError:
            continue
    found: list[str] = []
    outside: list[str] = []

    def vm(source: str) -> str | None:
        try:
            host = paths.normalize(source)
        except ValueError:
            return None  # not a Windows path Cove can place: the engine answers it
        found.append(host)
        target = paths.translate(host, roots)
        if target is None:
            outside.append(host)
        return target

    binds = hc.get("Binds")
    if isinstance(binds, list):
        for i, b in enumerate(binds):
            split = paths.split_bind(b) if isinstance(b, str) else None
            if split is not None and (target := vm(split[0])) is not None:
                binds[i] = target + split[1]
    for m in _bind_mounts(hc):
        src = m.get("Source")
        if isinstance(src, str) and not src.startswith("/") and (target := vm(src)) is not None:
            m["Source"] = target
    return list(dict.fromkeys(found)), list(dict.fromkeys(outside))


def refusal(outside: list[str], shares: list[str], paths: HostPaths | None = None,
            is_file: Callable[[str], bool] = os.path.isfile) -> str:
    """The error the docker client shows for a creation that binds `outside` paths
    (written as `paths` writes them; Linux and macOS paths when None)."""
    first = outside[0]
    more = f" (and {len(outside) - 1} more)" if len(outside) > 1 else ""
    shared = (f"shared folders: {', '.join(shares)}" if shares
              else "no folder is shared with the VM")
    what = (f"bind mount source {first}{more} is not in a folder Cove shares with its VM, "
            f"so the container would get an empty folder from the VM instead ({shared})")
    if isinstance(paths, WindowsPaths):
        folder = paths.suggested_share(first, is_file)
        if folder is None:
            return (f"{what}. A whole drive cannot be shared: move the files into a "
                    "shared folder, or share a folder with `cove shares add PATH` (or "
                    "Settings > Shared folders in the tray) and restart Cove")
    else:
        folder = suggested_share(first, is_file)
    if folder is None:
        vm = _reserved(first)
        why = (f"{vm} is one of the VM's own folders and cannot be shared" if vm
               else "the folder that holds it cannot be shared")
        return (f"{what}. {why}: move the files into a shared folder, or share another "
                "folder with `cove shares add PATH` (or Settings > Shared folders in the "
                "tray) and restart Cove")
    it = "it" if folder == first else "its folder"
    return (f"{what}. Share {it} with `cove shares add {folder}` (or Settings > Shared "
            "folders in the tray), then restart Cove")


def make_check(shares: Callable[[], list[str]],
               on_binds: Callable[[list[str]], None] | None = None,
               paths: HostPaths = HOST_PATHS,
               is_file: Callable[[str], bool] = os.path.isfile) -> Check:
    """A `check` for `guarded_pipe`: refuses creations that bind paths outside `shares()`.

    A body that is not a JSON object passes (the engine answers it). When the creation
    passes and binds host folders, `on_binds` gets those (normalized, the VM's socket
    left out); its errors are logged, never raised into the relay. With Windows `paths`,
    a creation that binds shared Windows folders gets its body rewritten to the VM's
    paths (the check returns the new body).
    """
    def report(folders: list[str]) -> None:
        if on_binds is not None and folders:
            try:
                on_binds(folders)
            except Exception:
                log.exception("on_binds failed for %s", folders)

    def check(method: str, path: str, body: bytes) -> str | bytes | None:
        try:
            doc = json.loads(body)
        except ValueError:  # includes UnicodeDecodeError
            return None
        if not isinstance(doc, dict):
            return None
        if isinstance(paths, WindowsPaths):
            current = list(shares())
            found, outside = windows_binds(doc, current, paths)
            if outside:
                log.info("refused %s %s: binds %s outside the shares", method, path,
                         ", ".join(outside))
                return refusal(outside, current, paths, is_file)
            if not found:
                return None
            report(found)
            return json.dumps(doc).encode()
        sources = bind_sources(doc)
        if not sources:
            return None
        current = list(shares())
        outside = outside_shares(sources, current)
        if outside:
            log.info("refused %s %s: binds %s outside the shares", method, path,
                     ", ".join(outside))
            return refusal(outside, current, is_file=is_file)
        report(_host_folders(sources))
        return None

    return check


# -- the relay -----------------------------------------------------------------------------


class _Raw(Exception):
    """Not HTTP this module follows (or an upgrade): copy the rest of the stream raw."""


@dataclass
class _Request:
    method: str
    target: str
    length: int | None  # Content-Length; None with no body or a chunked one
    chunked: bool
    upgrade: bool
    close: bool  # the client ends the connection after this exchange
    expect_continue: bool

    @property
    def is_create(self) -> bool:
        path = _ABSOLUTE_FORM.sub("", self.target, count=1).split("?", 1)[0]
        return self.method == "POST" and _CREATE.fullmatch(path) is not None


def _parse_head(head: bytes) -> _Request | None:
    """The request in `head` (through its blank line), or None if it is not plain HTTP/1.x."""
    lines = head[:-4].decode("latin-1").split("\r\n")
    m = _REQUEST_LINE.fullmatch(lines[0])
    if m is None:
        return None
    fields: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name) or "\n" in value or "\r" in value:
            return None  # includes obsolete line folding
        fields.setdefault(name.lower(), []).append(value.strip(" \t"))

    def tokens(name: str) -> list[str]:
        return [t.strip().lower() for v in fields.get(name, []) for t in v.split(",")
                if t.strip()]

    connection = tokens("connection")
    codings = tokens("transfer-encoding")
    chunked = False
    length: int | None = None
    if codings:
        if codings[-1] != "chunked":
            return None  # a request body without a length we can find
        chunked = True
    elif "content-length" in fields:
        values = set(tokens("content-length"))
        if len(values) != 1 or not (v := values.pop()).isdigit():
            return None
        length = int(v)
    method = m.group(1)
    http10 = m.group(3) == "0"
    return _Request(
        method=method, target=m.group(2), length=length, chunked=chunked,
        upgrade="upgrade" in fields or "upgrade" in connection or method == "CONNECT",
        close="close" in connection or (http10 and "keep-alive" not in connection),
        expect_continue="100-continue" in tokens("expect"),
    )


def _starts_like_request(start: bytearray) -> bool:
    """False once `start` cannot be the beginning of a request line (a method, a space),
    so that another protocol is copied at once rather than after 64 KiB or a timeout."""
    space = start.find(b" ", 0, 33)
    if space < 0:
        return len(start) < 33 and _METHOD.fullmatch(start) is not None
    return space > 0 and _METHOD.fullmatch(start, 0, space) is not None


def _with_length(head: bytes, length: int) -> bytes:
    """`head` (through its blank line) with its Content-Length set to `length`."""
    lines = head[:-4].split(b"\r\n")
    for i, line in enumerate(lines):
        if line.partition(b":")[0].strip().lower() == b"content-length":
            lines[i] = b"Content-Length: %d" % length
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _refusal_response(message: str, close: bool) -> bytes:
    body = json.dumps({"message": message}).encode() + b"\n"
    head = ("HTTP/1.1 400 Bad Request\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            + ("Connection: close\r\n" if close else "")
            + "\r\n")
    return head.encode("ascii") + body


class _ClientToEngine:
    """The client->engine direction: forwards request by request, checking creations.

    `buf` always holds what was read from the client and not yet forwarded, so a switch
    to the raw copy (`_Raw`, from anywhere) loses nothing.
    """

    def __init__(self, client: Stream, engine: Stream, check: Check,
                 on_binds: Callable[[list[str]], None] | None, lock: threading.Lock) -> None:
        self.client = client
        self.engine = engine
        self.check = check
        self.on_binds = on_binds
        self.lock = lock
        self.buf = bytearray()

    def run(self) -> None:
        try:
            while True:
                if not self.buf and not self._fill():
                    break  # the client ended between requests
                if not self._request():
                    break
        except _Raw:
            # relay.copy forwards the rest (and the half-close, or a reset) as pipe() does.
            relay.copy(self.client, self.engine, bytes(self.buf))
            return
        except OSError:
            for s in (self.client, self.engine):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            return
        try:
            self.engine.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    # -- reading and forwarding ----------------------------------------------------------

    def _fill(self) -> bool:
        """Read more from the client; False at its EOF."""
        data = self.client.recv(relay.BUFSIZE)
        self.buf += data
        return bool(data)

    def _find(self, delim: bytes, cap: int) -> int:
        """The end of `delim` in `buf`, reading as needed; `_Raw` beyond `cap` or at EOF."""
        while True:
            i = self.buf.find(delim, 0, cap + len(delim))
            if i >= 0:
                return i + len(delim)
            if len(self.buf) >= cap or not self._fill():
                raise _Raw

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            if not self._fill():
                raise _Raw

    def _forward(self, n: int) -> None:
        """Send the first `n` bytes of `buf` to the engine."""
        self.engine.sendall(memoryview(self.buf)[:n])
        del self.buf[:n]

    def _forward_body(self, n: int) -> None:
        """Send `n` body bytes, streaming what is not buffered yet."""
        now = min(n, len(self.buf))
        self._forward(now)
        n -= now
        chunk = bytearray(relay.BUFSIZE)
        view = memoryview(chunk)
        while n:
            got = self.client.recv_into(chunk, min(n, len(chunk)))
            if not got:
                raise _Raw  # EOF mid-body: nothing buffered, so the raw copy just ends
            self.engine.sendall(view[:got])
            n -= got

    def _forward_chunked(self) -> None:
        while True:
            end = self._find(b"\r\n", LINE_CAP)
            size = bytes(self.buf[:end - 2]).split(b";", 1)[0].strip(b" \t")
            if not _HEX.fullmatch(size):
                raise _Raw
            self._forward(end)
            n = int(size, 16)
            if n == 0:
                break
            self._forward_body(n)
            self._need(2)
            if self.buf[:2] != b"\r\n":
                raise _Raw
            self._forward(2)
        while True:  # trailer fields, then the blank line
            end = self._find(b"\r\n", LINE_CAP)
            self._forward(end)
            if end == 2:
                return

    def _read_head(self) -> int:
        """The length of the request head at the start of `buf` (through its blank line)."""
        while True:
            if not _starts_like_request(self.buf):
                raise _Raw
            i = self.buf.find(b"\r\n\r\n", 0, HEAD_CAP)
            if i >= 0:
                return i + 4
            if self.buf.find(b"\n\n", 0, HEAD_CAP) >= 0:
                raise _Raw  # bare-LF HTTP: waiting for CRLFs would stall it
            if len(self.buf) >= HEAD_CAP or not self._fill():
                raise _Raw

    # -- requests ------------------------------------------------------------------------

    def _request(self) -> bool:
        """Forward (or refuse) one request; False when the connection is to end."""
        head_len = self._read_head()
        req = _parse_head(bytes(self.buf[:head_len]))
        if req is None or req.upgrade:
            if req is not None:
                log.debug("%s %s upgrades the connection; copying raw", req.method, req.target)
            raise _Raw
        if req.chunked:
            self._forward(head_len)
            self._forward_chunked()
        elif req.length is None:
            self._forward(head_len)
        elif req.is_create and req.length <= CHECK_CAP:
            return self._checked(req, head_len)
        else:
            if req.is_create:
                log.warning("%s %s: a %d-byte body is not checked for bind mounts",
                            req.method, req.target, req.length)
            self._forward(head_len)
            self._forward_body(req.length)
        return True

    def _checked(self, req: _Request, head_len: int) -> bool:
        assert req.length is not None
        total = head_len + req.length
        if req.expect_continue and len(self.buf) < total:
            # The client waits for this before sending the body; the engine will send
            # its own later, and clients accept more than one 1xx response.
            self._to_client(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._need(total)
        body = bytes(self.buf[head_len:total])
        try:
            message = self.check(req.method, req.target, body)
        except Exception:
            log.exception("checking %s %s failed; forwarding it", req.method, req.target)
            message = None
        if isinstance(message, str):
            del self.buf[:total]  # the engine never sees it
            self._to_client(_refusal_response(message, req.close))
            return not req.close
        if isinstance(message, bytes):  # the same request with a rewritten body
            head = _with_length(bytes(self.buf[:head_len]), len(message))
            del self.buf[:total]
            self.engine.sendall(head + message)
            if self.on_binds is not None:
                self._report_binds(message)
            return True
        self._forward(total)
        if self.on_binds is not None:
            self._report_binds(body)
        return True

    def _report_binds(self, body: bytes) -> None:
        assert self.on_binds is not None
        try:
            doc = json.loads(body)
            sources = _host_folders(bind_sources(doc)) if isinstance(doc, dict) else []
            if sources:
                self.on_binds(sources)
        except Exception:
            log.exception("on_binds failed")

    def _to_client(self, data: bytes) -> None:
        with self.lock:
            self.client.sendall(data)


def guarded_pipe(client: Stream, engine: Stream, check: Check,
                 on_binds: Callable[[list[str]], None] | None = None) -> None:
    """Relay between a docker client and the engine until both directions end, then close
    both, as `guest_engine.relay.pipe` does; container creations pass `check` first.

    `check(method, target, body)` gets each ``POST /containers/create`` (any API version
    prefix, any query) whose Content-Length body is at most 32 MiB; a message it returns
    is answered to the client as a 400 with ``{"message": ...}`` and the request is never
    sent to the engine; bytes it returns are sent as the request's body instead (with
    the Content-Length changed to match). An exception in `check` lets the request
    through. `on_binds`, if given, gets the host folders each creation sent to the engine
    binds (normalized, the VM's docker.sock left out), as `make_check`'s does; pass it to
    one of them only.
    Blocks the calling thread; the engine->client direction runs on a helper thread.

    Writes to the client are serialized, so a refusal never lands inside an engine
    response. A client that pipelines requests (Docker's clients wait for each response)
    may get a refusal before the engine's answers to the requests it sent earlier.
    """
    lock = threading.Lock()
    t = threading.Thread(target=relay.copy, args=(engine, client, b"", lock), daemon=True,
                         name="apiguard")
    t.start()
    try:
        _ClientToEngine(client, engine, check, on_binds, lock).run()
        t.join()
    finally:
        client.close()
        engine.close()
