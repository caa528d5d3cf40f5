"""The guest link over TCP: QEMU user networking forwards a localhost port to the agent.

Each stream is its own TCP connection (docs/protocol.md, "Transports"), so half-close
maps onto TCP's own and there is no multiplexing layer.
"""

from __future__ import annotations

import socket

from desktop.link import LinkError
from guest_engine import protocol


class TcpLink:
    """Opens streams to the agent at `host`:`port` (QEMU's hostfwd), a `Link`."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host = host
        self.port = port
        self.token = token

    def open(self, op: str, arg: int | None = None, timeout: float = 5.0) -> socket.socket:
        try:
            s = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as e:
            raise LinkError(f"cannot reach the guest agent at {self.host}:{self.port}: {e}") \
                from e
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(None)
        s.sendall(protocol.encode_header(self.token, op, arg))
        return s
