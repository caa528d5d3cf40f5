"""One HTTP GET to an engine over a byte stream: a Windows named pipe opened as a file
(the unix socket's engines are reached with `guest_engine.dockerapi`)."""

from __future__ import annotations

from typing import Protocol


class ByteStream(Protocol):
    def write(self, data: bytes, /) -> int | None: ...

    def flush(self) -> None: ...

    def read(self, size: int = -1, /) -> bytes | None: ...


def http_get(stream: ByteStream, path: str) -> tuple[int, bytes]:
    """GET `path` over an open byte stream to an engine (a unix socket's file, or a
    named pipe opened as a file on Windows); returns (status, body).

    HTTP/1.0 and `Connection: close`: the engine ends the stream after its answer, so
    the body is everything up to the end, with no chunked framing to undo."""
    stream.write(f"GET {path} HTTP/1.0\r\nHost: docker\r\nConnection: close\r\n\r\n"
                 .encode())
    stream.flush()
    data = b""
    while True:
        try:
            chunk = stream.read(65536)
        except BrokenPipeError:  # a named pipe's end of stream
            break
        if not chunk:
            break
        data += chunk
    head, sep, body = data.partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].split()
    if not sep or len(parts) < 2 or not parts[1].isdigit():
        raise OSError(f"the engine's answer to {path} is not HTTP")
    return int(parts[1]), body
