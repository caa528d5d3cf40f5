"""Byte relays with half-close (guest_engine.relay), between socketpairs."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Iterator

import pytest

from guest_engine import relay


@pytest.fixture(autouse=True)
def copy_mode(copy_mode: str) -> str:
    """Every test runs with splice(2) (Linux) and with the portable user-space copy (the
    shared copy_mode, tests/conftest.py); the splice run must really splice."""
    if copy_mode == "splice":
        assert relay.SPLICE, "this Linux host's Python has os.splice"
    return copy_mode


def _recv_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


class Pair:
    """client <-> [a  relay  b] <-> server, each side a socketpair."""

    def __init__(self, initial: bytes = b"") -> None:
        self.client, self.a = socket.socketpair()
        self.b, self.server = socket.socketpair()
        for s in (self.client, self.server):
            s.settimeout(10)
        self.thread = threading.Thread(target=relay.pipe, args=(self.a, self.b, initial))
        self.thread.start()

    def close(self) -> None:
        self.client.close()
        self.server.close()
        self.thread.join(10)


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    yield p
    p.close()


def test_bytes_both_ways_byte_for_byte(pair: Pair) -> None:
    up = os.urandom(5 * 2**20)
    down = os.urandom(5 * 2**20 + 17)
    got: dict[str, bytes] = {}

    def server() -> None:
        got["server"] = _recv_all(pair.server)
        pair.server.sendall(down)
        pair.server.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=server)
    t.start()
    pair.client.sendall(up)
    pair.client.shutdown(socket.SHUT_WR)
    got["client"] = _recv_all(pair.client)
    t.join(10)
    assert hashlib.sha256(got["server"]).digest() == hashlib.sha256(up).digest()
    assert len(got["server"]) == len(up)
    assert got["client"] == down
    pair.thread.join(10)
    assert not pair.thread.is_alive()  # both directions ended: the relay returned


def test_concurrent_directions(pair: Pair) -> None:
    """Both directions stream at once (a relay that copied one way at a time would stall)."""
    up = os.urandom(3 * 2**20)
    down = os.urandom(3 * 2**20)
    got: dict[str, bytes] = {}

    def server_send() -> None:
        pair.server.sendall(down)
        pair.server.shutdown(socket.SHUT_WR)

    def server_recv() -> None:
        got["server"] = _recv_all(pair.server)

    threads = [threading.Thread(target=server_send), threading.Thread(target=server_recv)]
    for t in threads:
        t.start()
    client_recv = threading.Thread(target=lambda: got.setdefault("client",
                                                                 _recv_all(pair.client)))
    client_recv.start()
    pair.client.sendall(up)
    pair.client.shutdown(socket.SHUT_WR)
    for t in (*threads, client_recv):
        t.join(20)
    assert got["server"] == up
    assert got["client"] == down


def test_half_close_passes_through(pair: Pair) -> None:
    pair.client.sendall(b"request")
    pair.client.shutdown(socket.SHUT_WR)
    # The server sees the bytes, then EOF...
    assert _recv_all(pair.server) == b"request"
    # ...and can still answer after it, which the client receives.
    pair.server.sendall(b"reply after EOF")
    pair.server.shutdown(socket.SHUT_WR)
    assert _recv_all(pair.client) == b"reply after EOF"
    pair.thread.join(10)
    assert not pair.thread.is_alive()


def test_half_close_from_the_far_side(pair: Pair) -> None:
    pair.server.sendall(b"banner")
    pair.server.shutdown(socket.SHUT_WR)
    assert _recv_all(pair.client) == b"banner"
    pair.client.sendall(b"still talking")
    pair.client.shutdown(socket.SHUT_WR)
    assert _recv_all(pair.server) == b"still talking"


def test_initial_bytes_are_sent_first() -> None:
    p = Pair(initial=b"HEAD")
    try:
        p.client.sendall(b"-TAIL")
        p.client.shutdown(socket.SHUT_WR)
        assert _recv_all(p.server) == b"HEAD-TAIL"
    finally:
        p.close()


def test_pipe_closes_both_sockets() -> None:
    p = Pair()
    p.client.shutdown(socket.SHUT_WR)
    p.server.shutdown(socket.SHUT_WR)
    p.thread.join(10)
    assert not p.thread.is_alive()
    assert p.a.fileno() == -1 and p.b.fileno() == -1
    p.close()


def test_reset_on_one_side_ends_the_relay() -> None:
    p = Pair()
    p.client.close()  # the whole client goes away
    p.server.sendall(b"x" * 10)
    # The relay notices and ends; the server sees EOF (or a reset), never a hang.
    try:
        data = _recv_all(p.server)
    except ConnectionResetError:
        data = b""
    assert data == b""
    p.thread.join(10)
    assert not p.thread.is_alive()
    p.close()
