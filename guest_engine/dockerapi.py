"""A minimal client for the engine's HTTP API on its unix socket (standard library only)."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any

DOCKER_SOCK = "/var/run/docker.sock"


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None = 10) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def request(method: str, url: str, body: Any = None, path: str = DOCKER_SOCK,
            timeout: float = 10) -> tuple[int, bytes]:
    conn = UnixHTTPConnection(path, timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, url, json.dumps(body) if body is not None else None, headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def get_json(url: str, path: str = DOCKER_SOCK, timeout: float = 10) -> Any:
    status, data = request("GET", url, path=path, timeout=timeout)
    if status != 200:
        raise OSError(f"GET {url}: HTTP {status}: {data[:200]!r}")
    return json.loads(data)


def ping(path: str = DOCKER_SOCK, timeout: float = 2) -> bool:
    try:
        status, data = request("GET", "/_ping", path=path, timeout=timeout)
    except OSError:
        return False
    return status == 200 and data == b"OK"


def events(filters: dict[str, list[str]], path: str = DOCKER_SOCK) -> Iterator[dict]:
    """Stream engine events (blocks; ends when the engine closes the stream)."""
    from urllib.parse import quote

    conn = UnixHTTPConnection(path, timeout=None)
    try:
        conn.request("GET", "/events?filters=" + quote(json.dumps(filters)))
        resp = conn.getresponse()
        if resp.status != 200:
            raise OSError(f"GET /events: HTTP {resp.status}")
        decoder = json.JSONDecoder()
        buf = ""
        while True:
            chunk = resp.read1(65536)
            if not chunk:
                return
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
        conn.close()
