"""The control channel (desktop.link.channel) against a guest that misbehaves."""

from __future__ import annotations

import gc
import socket
import threading
import warnings
from typing import Any

import pytest

from desktop.link import channel
from desktop.link.channel import ControlChannel
from guest_engine import protocol


class _PairLink:
    """A Link whose streams are socket pairs; the test plays the agent on `guest`."""

    def __init__(self) -> None:
        self.guest: socket.socket | None = None

    def open(self, op: str, arg: int | None = None, timeout: float = 5.0) -> socket.socket:
        host, self.guest = socket.socketpair()
        return host


def test_an_endless_line_drops_the_stream_instead_of_filling_memory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channel, "MAX_LINE", 4096)
    link = _PairLink()
    states: list[bool] = []
    down = threading.Event()

    def on_state(up: bool) -> None:
        states.append(up)
        if not up:
            down.set()

    events: list[dict[str, Any]] = []
    ch = ControlChannel(link, events.append, on_state)
    hello = protocol.encode_message({"event": "hello", "agent_version": "t"})
    # The agent says hello as soon as the stream is open.
    orig_open = link.open

    def open_with_hello(op: str, arg: int | None = None, timeout: float = 5.0) -> socket.socket:
        s = orig_open(op, arg, timeout)
        assert link.guest is not None
        link.guest.sendall(hello)
        return s

    link.open = open_with_hello  # type: ignore[method-assign]
    assert ch.connect(timeout=2)
    assert link.guest is not None
    guest = link.guest
    sent = 0

    def flood() -> None:
        nonlocal sent
        try:
            while not down.is_set() and sent < 64 * 4096:
                guest.sendall(b"x" * 4096)
                sent += 4096
        except OSError:
            pass

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    assert down.wait(5), "the channel kept reading an endless line"
    assert states == [True, False] and not ch.connected.is_set()
    assert [e["event"] for e in events] == ["hello"]
    ch.close()
    guest.close()
    t.join(5)


def _hello_link() -> _PairLink:
    link = _PairLink()
    orig_open = link.open

    def open_with_hello(op: str, arg: int | None = None, timeout: float = 5.0) -> socket.socket:
        s = orig_open(op, arg, timeout)
        assert link.guest is not None
        link.guest.sendall(protocol.encode_message({"event": "hello", "agent_version": "t"}))
        return s

    link.open = open_with_hello  # type: ignore[method-assign]
    return link


def test_replies_with_ids_that_are_not_ours_are_dropped() -> None:
    """Found by fuzzing: {"id": [1]} ended the reader (a list is no dict key), and
    {"id": true} answered request 1."""
    link = _hello_link()
    ch = ControlChannel(link, lambda ev: None)
    assert ch.connect(timeout=2)
    guest = link.guest
    assert guest is not None
    result: list[Any] = []
    asker = threading.Thread(target=lambda: result.append(ch.request("ping", timeout=5)))
    asker.start()
    try:
        guest.settimeout(5)
        assert b'"id":1' in guest.recv(4096)
        for bad in ({"id": [1]}, {"id": {}}, {"id": True, "ok": True, "result": "no"},
                    {"id": 1.0, "ok": True, "result": "no"}):
            guest.sendall(protocol.encode_message(bad))
        guest.sendall(protocol.encode_message({"id": 1, "ok": True, "result": "pong"}))
        asker.join(5)
        assert result == ["pong"] and ch.connected.is_set()
    finally:
        ch.close()
        guest.close()


def test_the_reader_closes_its_file_with_its_socket() -> None:
    """No socket left for the garbage collector to warn about (found by fuzzing, as a
    ResourceWarning a later test tripped over)."""
    link = _hello_link()
    down = threading.Event()
    ch = ControlChannel(link, lambda ev: None, lambda up: None if up else down.set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        assert ch.connect(timeout=2)
        assert link.guest is not None
        link.guest.close()
        assert down.wait(5)
        ch.close()
        link.guest = None
        del ch
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
