"""A DNS server for tests: on a UDP port of the host's loopback, it answers every A query
with `address` (which a test changes while it runs) and anything else with an empty
answer. Enough for a resolver in the VM to follow the host's DNS as it changes."""

from __future__ import annotations

import socket
import struct
import threading


def _question_end(packet: bytes) -> int:
    i = 12
    while packet[i]:
        i += 1 + packet[i]
    return i + 5  # the root label, then QTYPE and QCLASS


def answer(query: bytes, address: str) -> bytes:
    """The reply to `query`: one A record with `address` for an A query (TTL 0: no
    resolver may keep it), none otherwise."""
    qid, _flags, qdcount = struct.unpack("!HHH", query[:6])
    end = _question_end(query)
    qtype = struct.unpack("!H", query[end - 4:end - 2])[0]
    question = query[12:end]
    header = struct.pack("!HHHHHH", qid, 0x8180, qdcount, 1 if qtype == 1 else 0, 0, 0)
    if qtype != 1:
        return header + question
    record = struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(address)
    return header + question + record


class DnsServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 53,
                 address: str = "192.0.2.1") -> None:
        self.address = address
        self.queries: list[bytes] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                query, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            self.queries.append(query)
            try:
                self.sock.sendto(answer(query, self.address), peer)
            except (OSError, IndexError, struct.error):
                pass

    def close(self) -> None:
        self.sock.close()
