"""The agent's side of host-served ("link") shares: the ``fs <n>`` stream the host opens
and the ``mount_share`` op that hands it to the kernel (`boot.shares.mount_link_share`, faked)."""

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
    monkeypatch.setattr(boot.shares, "mount_link_share", mounts)
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
    monkeypatch.setattr(boot.shares, "mount_link_share", mounts)
    ours, host = _stream()
    threading.Timer(0.3, ag.share_stream, args=(0, ours)).start()
    assert ag.handle({"op": "mount_share", "index": 0, "wait": 5})["ok"]
    assert len(mounts.calls) == 1
    host.close()


def test_mount_share_without_a_stream_fails_in_time(
        ag: agent.Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boot.shares, "mount_link_share", Mounts())
    reply = ag.handle({"op": "mount_share", "index": 0, "wait": 0.2})
    assert reply == {"ok": False, "error": "no fs 0 stream came from the host"}


@pytest.mark.parametrize("index", [1, 2, -1, "0", None])
def test_mount_share_refuses_what_is_not_a_link_share(
        ag: agent.Agent, monkeypatch: pytest.MonkeyPatch, index: Any) -> None:
    mounts = Mounts()
    monkeypatch.setattr(boot.shares, "mount_link_share", mounts)
    reply = ag.handle({"op": "mount_share", "index": index, "wait": 0})
    assert reply == {"ok": False, "error": f"no share {index!r} is served by the host"}
    assert mounts.calls == []


def test_a_failed_mount_is_reported_and_recorded(
        ag: agent.Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boot.shares, "mount_link_share",
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


def test_a_share_mounted_already_is_left_as_it_is(
        ag: agent.Agent, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """A second mount_share (the host asking again) keeps the mount that serves it."""
    mounts = Mounts()
    monkeypatch.setattr(boot.shares, "mount_link_share", mounts)
    monkeypatch.setattr(boot.shares, "is_mounted", lambda p: p == "/mnt/host/c/Users/me")
    monkeypatch.setattr(boot.shares, "mount_answers", lambda p: True)
    monkeypatch.setattr(boot.shares, "detach", lambda p: pytest.fail("a live mount kept"))
    for _ in range(2):
        ours, host = _stream()
        ag.share_stream(0, ours)
        assert ag.handle({"op": "mount_share", "index": 0})["ok"]
        assert ours.fileno() == -1
        host.close()
    assert len(mounts.calls) == 1
    assert ag.info.shares[0]["error"] == ""


def test_a_mount_whose_stream_ended_is_replaced_on_the_new_stream(
        ag: agent.Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's stream ended (the mount answers only EIO): the next mount_share detaches
    the dead mount and mounts the share on the new stream."""
    mounts = Mounts()
    detached: list[str] = []
    monkeypatch.setattr(boot.shares, "mount_link_share", mounts)
    monkeypatch.setattr(boot.shares, "is_mounted", lambda p: p == "/mnt/host/c/Users/me")
    alive = [True]
    monkeypatch.setattr(boot.shares, "mount_answers", lambda p: alive[0])
    monkeypatch.setattr(boot.shares, "detach", detached.append)
    ours, host = _stream()
    ag.share_stream(0, ours)
    assert ag.handle({"op": "mount_share", "index": 0})["ok"]
    host.close()
    alive[0] = False  # the stream ended
    ours, host = _stream()
    ag.share_stream(0, ours)
    assert ag.handle({"op": "mount_share", "index": 0})["ok"]
    assert detached == ["/mnt/host/c/Users/me"] and len(mounts.calls) == 2
    assert ag.info.shares[0]["error"] == ""
    host.close()


def test_a_mount_is_found_in_the_kernels_table_not_by_a_stat(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 9p mount whose stream ended answers a stat with EIO, so `os.path.ismount` says
    False: the mount table says what is mounted."""
    table = tmp_path / "mountinfo"
    table.write_text(
        "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
        "97 22 0:52 / /mnt/host/c/Users/me rw - 9p cove0 rw,trans=fd\n"
        "98 22 0:53 / /srv/with\\040space rw - 9p cove1 rw\n")
    monkeypatch.setattr(boot.shares, "MOUNTINFO", str(table))
    monkeypatch.setattr(boot.shares.os.path, "ismount", lambda p: pytest.fail("a stat"))
    assert boot.shares.is_mounted("/mnt/host/c/Users/me")
    assert boot.shares.is_mounted("/srv/with space")
    assert not boot.shares.is_mounted("/mnt/host/c/Users")
    assert not boot.shares.is_mounted("/srv/with\\040space")


def test_mount_answers_tells_a_live_folder_from_a_dead_one(tmp_path: Any) -> None:
    assert boot.shares.mount_answers(str(tmp_path))
    assert not boot.shares.mount_answers(str(tmp_path / "gone"))


def test_dockerd_waits_until_no_share_is_pending(ag: agent.Agent,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Containers the engine restarts at boot must find the host's folders mounted: the
    agent holds dockerd back until every link share is mounted or has failed."""
    assert not ag.shares_ready.is_set()
    monkeypatch.setattr(boot.shares, "mount_link_share", Mounts("mount: bad option"))
    ag.handle({"op": "mount_share", "index": 0, "wait": 0})  # no stream: fails
    assert ag.shares_ready.is_set()
    assert ag.info.shares[0]["error"] == "no fs 0 stream came from the host"
    info = boot.BootInfo()
    info.shares = [{"path": "/srv/vfs", "tag": "cove0", "transport": "virtiofs", "error": ""}]
    assert agent.Agent(info).shares_ready.is_set()  # nothing to wait for


class FakeService:
    def __init__(self, name: str, started: list[str]) -> None:
        self.name, self.started, self.up, self.restarts = name, started, False, 0

    def start(self) -> None:
        self.started.append(self.name)
        self.up = True

    def running(self) -> bool:
        return self.up


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Any:
    from guest_engine import engine

    started: list[str] = []
    e = engine.Engine(lambda ev: None)
    e.containerd = FakeService("containerd", started)  # type: ignore[assignment]
    e.dockerd = FakeService("dockerd", started)  # type: ignore[assignment]
    sock = tmp_path / "containerd.sock"
    sock.write_text("")
    monkeypatch.setattr(engine, "CONTAINERD_SOCK", str(sock))
    monkeypatch.setattr(engine.dockerapi, "ping", lambda: True)
    monkeypatch.setattr(engine.dockerapi, "get_json", lambda path: {"Version": "26.1.5"})
    return e, started, engine


def test_the_engine_starts_dockerd_when_the_gate_opens(fake_engine: Any) -> None:
    e, started, _ = fake_engine
    gate = threading.Event()
    e.gate = gate
    t = threading.Thread(target=e._launch)
    t.start()
    t.join(0.5)
    assert started == ["containerd"] and t.is_alive()
    gate.set()
    t.join(5)
    assert started == ["containerd", "dockerd"] and e.state == "running"
    assert e.gate is None  # only the first start waits


def test_the_engine_does_not_wait_for_ever(fake_engine: Any,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    e, started, engine = fake_engine
    monkeypatch.setattr(engine, "GATE_TIMEOUT", 0.2)
    e.gate = threading.Event()
    assert e._launch()
    assert started == ["containerd", "dockerd"]
