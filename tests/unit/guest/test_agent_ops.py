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
            "mount_share", "shutdown"}


@pytest.fixture
def ag() -> agent.Agent:
    return agent.Agent(boot.BootInfo())


def test_the_table_names_every_op_the_host_sends(ag: agent.Agent) -> None:
    assert set(ag.ops) == HOST_OPS


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
