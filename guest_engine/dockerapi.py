"""A minimal client for the engine's HTTP API on its unix socket.

Written on plain sockets rather than `http.client`, whose imports (email, ssl) cost the
agent more than a second of boot under software emulation. It speaks just what the
agent needs: HTTP/1.1 requests with ``Connection: close``, bodies framed by
Content-Length, chunked encoding or the end of the stream.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not imported at run time: boot time under emulation
    from typing import Any

DOCKER_SOCK = "/var/run/docker.sock"


def quote(text: str) -> str:
    """Percent-encode for a query string (urllib.parse's import costs boot time)."""
    safe = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    return "".join(chr(b) if b in safe else f"%{b:02X}" for b in text.encode())


class HTTPError(OSError):
    """The engine answered with an unexpected status or malformed response."""


def _connect(path: str, timeout: float | None) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except OSError:
        s.close()
        raise
    return s


def _send(s: socket.socket, method: str, url: str, body: bytes | None) -> None:
    head = f"{method} {url} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    s.sendall(head.encode() + b"\r\n" + (body or b""))


def _read_head(f: Any) -> tuple[int, dict[str, str]]:
    status_line = f.readline()
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise HTTPError(f"malformed HTTP status line {status_line[:80]!r}")
    headers = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(parts[1]), headers


def _chunks(f: Any) -> Iterator[bytes]:
    while True:
        size_line = f.readline()
        if not size_line:
            return
        try:
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
        except ValueError:
            raise HTTPError(f"malformed chunk size {size_line[:40]!r}") from None
        if size == 0:
            return
        data = f.read(size)
        f.readline()  # the CRLF after each chunk
        if len(data) < size:
            return
        yield data


def _body(f: Any, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return b"".join(_chunks(f))
    if "content-length" in headers:
        return bytes(f.read(int(headers["content-length"])))
    return bytes(f.read())


def request(method: str, url: str, body: Any = None, path: str = DOCKER_SOCK,
            timeout: float = 10,
            connect: Callable[[float], Any] | None = None) -> tuple[int, bytes]:
    """One request; `connect(timeout)` gives the connection (any stream with sendall,
    makefile("rb") and close: the host's named pipe on Windows), else the unix socket
    at `path`."""
    s = connect(timeout) if connect is not None else _connect(path, timeout)
    try:
        _send(s, method, url, json.dumps(body).encode() if body is not None else None)
        f = s.makefile("rb")
        status, headers = _read_head(f)
        return status, _body(f, headers)
    finally:
        s.close()


def get_json(url: str, path: str = DOCKER_SOCK, timeout: float = 10,
             connect: Callable[[float], Any] | None = None) -> Any:
    status, data = request("GET", url, path=path, timeout=timeout, connect=connect)
    if status != 200:
        raise HTTPError(f"GET {url}: HTTP {status}: {data[:200]!r}")
    return json.loads(data)


def ping(path: str = DOCKER_SOCK, timeout: float = 2) -> bool:
    try:
        status, data = request("GET", "/_ping", path=path, timeout=timeout)
    except (OSError, ValueError):
        return False
    return status == 200 and data == b"OK"


def events(filters: dict[str, list[str]], path: str = DOCKER_SOCK) -> Iterator[dict]:
    """Stream engine events (blocks; ends when the engine closes the stream)."""
    s = _connect(path, None)
    try:
        _send(s, "GET", "/events?filters=" + quote(json.dumps(filters)), None)
        f = s.makefile("rb")
        status, headers = _read_head(f)
        if status != 200:
            raise HTTPError(f"GET /events: HTTP {status}")
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        source = _chunks(f) if chunked else iter(lambda: f.read1(65536), b"")
        decoder = json.JSONDecoder()
        buf = ""
        for chunk in source:
            buf += chunk.decode()
            while True:
                buf = buf.lstrip()
                if not buf:
                    break
                try:
                    obj, end = decoder.raw_decode(buf)
                except ValueError:
                    break
                buf = buf[end:]
                yield obj
    finally:
        s.close()
