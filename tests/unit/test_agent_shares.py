"""The agent's side of host-served ("link") shares: the ``fs <n>`` stream the host opens
and the ``mount_share`` op that hands it to the kernel (`boot.mount_link_share`, faked)."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from guest_engine import agent, boot


class Mounts:
    def __init__(self, error: str = "") -> None:
        self.calls: list[tuple[str, int]] = []
        self.error = error

    def __call__(self, entry: dict, fd: int) -> None:
        # The descriptor is the stream's, and still open while the kernel takes it.
        socket.socket(fileno=fd).detach()
        self.calls.append((entry["path"], fd))
        if self.error:
            raise RuntimeError(self.error)


@pytest.fixture
def ag() -> agent.Agent:
    info = boot.BootInfo()
    info.shares = [
        {"path": "/mnt/host/c/Users/me", "tag": "cove0", "transport": "link",
         "error": "waiting for the host's file server", "pending": True},
        {"path": "/srv/vfs", "tag": "cove1", "transport": "virtiofs", "error": ""},
    ]
    return agent.Agent(info)


def _stream() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair()


def test_mount_share_mounts_the_stream_and_clears_the_error(
        ag: agent.Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    mounts = Mounts()
    monkeypatch.setattr(boot, "mount_link_share", mounts)
    ours, host = _stream()
    ag.share_stream(0, ours)
    fd = ours.fileno()
    reply = ag.handle({"op": "mount_share", "index": 0})
    assert reply["ok"], reply
    assert mounts.calls == [("/mnt/host/c/Users/me", fd)]
    assert ag.info.shares[0]["error"] == "" and "pending" not in ag.info.shares[0]
    assert ours.fileno() == -1  # the agent's copy is closed: the mount holds its own
    host.close()


def test_mount_share_waits_for_a_stream_that_comes_later(
        ag: agent.Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    mounts = Mounts()
    monkeypatch.setattr(boot, "mount_link_share", mounts)
    ours, host = _stream()
    threading.Timer(0.3, ag.share_stream, args=(0, ours)).start()
    assert ag.handle({"op": "mount_share", "index": 0, "wait": 5})["ok"]
    assert len(mounts.calls) == 1
    host.close()


def test_mount_share_without_a_stream_fails_in_time(
        ag: agent.Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boot, "mount_link_share", Mounts())
    reply = ag.handle({"op": "mount_share", "index": 0, "wait": 0.2})
    assert reply == {"ok": False, "error": "no fs 0 stream came from the host"}


@pytest.mark.parametrize("index", [1, 2, -1, "0", None])
def test_mount_share_refuses_what_is_not_a_link_share(
        ag: agent.Agent, monkeypatch: pytest.MonkeyPatch, index: Any) -> None:
    mounts = Mounts()
    monkeypatch.setattr(boot, "mount_link_share", mounts)
    reply = ag.handle({"op": "mount_share", "index": index, "wait": 0})
    assert reply == {"ok": False, "error": f"no share {index!r} is served by the host"}
    assert mounts.calls == []


def test_a_failed_mount_is_reported_and_recorded(
        ag: agent.Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boot, "mount_link_share",
                        Mounts("mount -t 9p ... exited 32: bad option"))
    ours, host = _stream()
    ag.share_stream(0, ours)
    reply = ag.handle({"op": "mount_share", "index": 0})
    assert reply == {"ok": False, "error": "mount -t 9p ... exited 32: bad option"}
    assert ag.info.shares[0]["error"] == reply["error"]
    assert ours.fileno() == -1
    host.close()


def test_a_newer_stream_replaces_an_unused_one(ag: agent.Agent) -> None:
    old, old_host = _stream()
    new, new_host = _stream()
    ag.share_stream(0, old)
    ag.share_stream(0, new)
    assert old.fileno() == -1 and new.fileno() != -1
    new.close()
    old_host.close()
    new_host.close()


def test_touch_skips_a_share_still_waiting(ag: agent.Agent) -> None:
    # A pending share's folder is an empty mount point: nothing there is the host's.
    assert ag.touch([["/mnt/host/c/Users/me/x", 0o644]]) == 0
