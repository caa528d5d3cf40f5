"""The agent's control ops as a table (guest_engine.agent.Agent.ops) and the link's stream
ops (guest_engine.server.LinkServer.ops): every op the host sends has a handler, and the
replies are framed in one place."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from guest_engine import agent, boot, protocol, server

# What the host asks (desktop/backend.py, desktop/link.py; docs/protocol.md).
HOST_OPS = {"hello", "status", "ping", "set_time", "engine_config", "logs", "ports", "touch",
            "mount_share", "shutdown", "trim", "release_memory"}


@pytest.fixture
def ag() -> agent.Agent:
    return agent.Agent(boot.BootInfo())


def test_the_table_names_every_op_the_host_sends(ag: agent.Agent) -> None:
    assert set(ag.ops) == HOST_OPS


def test_trim_runs_the_disk_watchers_trim_now(ag: agent.Agent,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ag.disk, "trim_now", lambda: {"trimmed": "t", "free": 7})
    assert ag.handle({"op": "trim"}) == {"ok": True, "result": {"trimmed": "t", "free": 7}}


def test_the_link_serves_every_header_op() -> None:
    class Nobody:
        def handle(self, request: dict[str, Any]) -> dict[str, Any]:
            return {}

        def hello_events(self) -> list[dict[str, Any]]:
            return []

        def share_stream(self, index: int, conn: socket.socket) -> None:
            pass

    assert set(server.LinkServer("t", Nobody()).ops) == set(protocol.OPS)


@pytest.mark.parametrize("op", [None, "nope", ["ping"], {"op": "ping"}, 1])
def test_unknown_ops_get_an_error_reply(ag: agent.Agent, op: Any) -> None:
    assert ag.handle({"op": op}) == {"ok": False, "error": f"unknown op {op!r}"}
    assert ag.handle({}) == {"ok": False, "error": "unknown op None"}


def test_results_are_framed(ag: agent.Agent) -> None:
    assert ag.handle({"op": "ping"}) == {"ok": True, "result": "pong"}
    assert ag.handle({"op": "ports"}) == {"ok": True, "result": []}
    assert ag.handle({"op": "hello"})["result"]["agent_version"] == agent.__version__


def test_refusals_become_error_replies(ag: agent.Agent) -> None:
    assert ag.handle({"op": "logs", "name": "kernel"}) == {
        "ok": False, "error": "unknown log 'kernel': dockerd, containerd, agent"}
    assert ag.handle({"op": "engine_config", "config": []}) == {
        "ok": False, "error": "the engine config must be a JSON object"}


def test_other_failures_are_left_to_the_session(ag: agent.Agent) -> None:
    # A request missing a parameter: the session reports "KeyError: 'ns'" with its id.
    with pytest.raises(KeyError):
        ag.handle({"op": "set_time"})


def test_shutdown_op_requests_the_shutdown(ag: agent.Agent) -> None:
    assert ag.handle({"op": "shutdown"}) == {"ok": True, "result": "shutting down"}
    assert ag.shutdown_requested.is_set()
    assert ag.shutdown_reason == "requested by the host"


class _Clock:
    """The guest's CLOCK_REALTIME, as set_time reads and sets it."""

    def __init__(self, now: int) -> None:
        self.now = now
        self.sets: list[int] = []

    def get(self, clock: int) -> int:
        return self.now

    def set(self, clock: int, ns: int) -> None:
        self.sets.append(ns)
        self.now = ns


def test_a_push_taken_before_one_already_applied_is_dropped(
        ag: agent.Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a pause the pushes queued meanwhile arrive together and are handled on
    threads of their own: the one taken first must not step the clock back."""
    clock = _Clock(now=1_000 * 10**9)
    monkeypatch.setattr(agent.time, "clock_gettime_ns", clock.get)
    monkeypatch.setattr(agent.time, "clock_settime_ns", clock.set)
    newer = ag.handle({"op": "set_time", "ns": 1_030 * 10**9, "mono": 20})
    assert newer["result"]["adjusted"] is True
    older = ag.handle({"op": "set_time", "ns": 1_020 * 10**9, "mono": 10})
    assert older["result"] == {"adjusted": False, "stale": True, "drift_ms": 0.0}
    assert clock.sets == [1_030 * 10**9]
    # A host that sends no `mono` (an older Cove) is obeyed as before.
    assert ag.handle({"op": "set_time", "ns": 1_040 * 10**9})["result"]["adjusted"]
    assert clock.sets[-1] == 1_040 * 10**9


def test_concurrent_pushes_never_step_the_clock_back(
        ag: agent.Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time as real_time

    clock = _Clock(now=1_000 * 10**9)
    gate = threading.Barrier(8)

    def slow_get(c: int) -> int:
        real_time.sleep(0.01)  # both threads read before either sets, unless locked
        return clock.now

    monkeypatch.setattr(agent.time, "clock_gettime_ns", slow_get)
    monkeypatch.setattr(agent.time, "clock_settime_ns", clock.set)

    def push(i: int) -> None:
        gate.wait()
        ag.handle({"op": "set_time", "ns": (1_010 + i) * 10**9, "mono": i})

    threads = [threading.Thread(target=push, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.sets == sorted(clock.sets), "the clock stepped back"


def test_release_memory_drops_the_clean_cache_and_compacts_then_waits_for_reporting(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's files, as the agent writes them: drop_caches "1" (the page cache
    alone) and compact_memory; then the reporting delay passes before it answers."""
    for name in ("drop_caches", "compact_memory"):
        (tmp_path / name).write_text("")
    free = iter([100 << 20, 900 << 20])
    monkeypatch.setattr(agent, "_meminfo", lambda: {"MemFree": next(free)})
    slept: list[float] = []
    got = agent.release_memory(str(tmp_path), settle=3.0, sleep=slept.append)
    assert (tmp_path / "drop_caches").read_text() == "1"
    assert (tmp_path / "compact_memory").read_text() == "1"
    assert slept == [3.0]
    assert got == {"free_before": 100 << 20, "free_after": 900 << 20}


def test_release_memory_without_compaction_still_drops_the_cache(tmp_path: Any) -> None:
    (tmp_path / "drop_caches").write_text("")
    (tmp_path / "compact_memory").mkdir()  # not writable as a file: CONFIG_COMPACTION off
    got = agent.release_memory(str(tmp_path), settle=0, sleep=lambda s: None)
    assert (tmp_path / "drop_caches").read_text() == "1"
    assert set(got) == {"free_before", "free_after"}


def test_the_release_memory_op_answers_with_the_figures(ag: agent.Agent,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent, "release_memory", lambda: {"free_before": 1, "free_after": 2})
    assert ag.ops["release_memory"]({}) == {"free_before": 1, "free_after": 2}
