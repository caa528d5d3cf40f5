"""Port discovery (guest_engine.ports) from recorded engine replies and /proc/net tables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from guest_engine import ports
from guest_engine.ports import Port, PortTracker
from tests.helpers.paths import FIXTURES

PROC_NET = FIXTURES / "proc_net"


@pytest.fixture
def containers() -> list[dict]:
    return json.loads((FIXTURES / "containers_json.json").read_text())


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("", "0.0.0.0"),
        ("0.0.0.0", "0.0.0.0"),
        ("::", "0.0.0.0"),
        ("0:0:0:0:0:0:0:0", "0.0.0.0"),
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.53", "127.0.0.1"),
        ("::1", "127.0.0.1"),
        ("192.168.1.20", "192.168.1.20"),
        ("10.0.2.15", "10.0.2.15"),
        ("fe80::1", "fe80::1"),
        ("not-an-ip", "0.0.0.0"),
    ],
)
def test_normalize_ip(ip: str, expected: str) -> None:
    assert ports.normalize_ip(ip) == expected


def test_from_containers_recorded_reply(containers: list[dict]) -> None:
    got = ports.from_containers(containers)
    assert got == {
        # IPv4 and IPv6 bindings of the same port are one port for the host.
        Port("tcp", 8080, "0.0.0.0", "web", 80),
        # Loopback-only stays loopback-only (and ::1 folds into 127.0.0.1).
        Port("udp", 5353, "127.0.0.1", "dns", 53),
    }
    # Not there: the exited old-api's 8000, db's unpublished 5432.
    assert all(p.port not in (8000, 5432) for p in got)


def test_from_containers_edge_cases() -> None:
    got = ports.from_containers([
        # No State (older engines, or /containers/json without all=1): counts as running.
        {"Names": ["/a"], "Ports": [{"PrivatePort": 1, "PublicPort": 1001}]},
        {"Names": [], "State": "running", "Ports": [{"IP": "0.0.0.0", "PrivatePort": 2,
                                                      "PublicPort": 1002, "Type": "udp"}]},
        {"State": "paused", "Names": ["/p"], "Ports": [{"PrivatePort": 3, "PublicPort": 1003}]},
        {"State": "running", "Names": ["/n"], "Ports": None},
        {"State": "running", "Names": ["/z"], "Ports": [{"PrivatePort": 4, "PublicPort": 0}]},
    ])
    assert got == {Port("tcp", 1001, "0.0.0.0", "a", 1), Port("udp", 1002, "0.0.0.0", "", 2)}


def test_parse_proc_net_tcp() -> None:
    got = ports.parse_proc_net((PROC_NET / "tcp").read_text(), "tcp")
    assert got == {
        ("tcp", "0.0.0.0", 8080),
        ("tcp", "127.0.0.1", 3306),
        ("tcp", "0.0.0.0", 10811),
        ("tcp", "0.0.0.0", 22),
        ("tcp", "0.0.0.0", 5001),
        ("tcp", "10.0.2.15", 80),
    }
    # Established (01) and TIME_WAIT (06) sockets are not listeners.
    assert not {p for _, _, p in got} & {44444, 40000}


def test_parse_proc_net_tcp6() -> None:
    got = ports.parse_proc_net((PROC_NET / "tcp6").read_text(), "tcp")
    by_port = {port: ip for _, ip, port in got}
    assert set(by_port) == {8080, 8001, 8002, 8003, 8004}
    assert by_port[8080] == "0.0.0.0"  # :: is the wildcard
    assert by_port[8002] == "0.0.0.0"
    assert by_port[8001] == "127.0.0.1"  # ::1 is loopback
    assert by_port[8004] == "fe80::1234:5678"  # word order and byte order both right
    assert by_port[8003] != "0.0.0.0"  # ::ffff:127.0.0.1 is not all interfaces
    # The established ::1 connection to 53412 does not appear as a second 8001 entry.
    assert sum(1 for _, _, p in got if p == 8001) == 1


def test_parse_proc_net_udp() -> None:
    got = ports.parse_proc_net((PROC_NET / "udp").read_text(), "udp")
    assert got == {
        ("udp", "0.0.0.0", 68),
        ("udp", "0.0.0.0", 5353),
        ("udp", "127.0.0.1", 53),
        ("udp", "0.0.0.0", 8080),
    }  # the connected client socket (to 8.8.8.8:53, local port 41394) is left out


def test_parse_proc_net_header_only_and_blank_lines() -> None:
    header = (PROC_NET / "tcp").read_text().splitlines()[0]
    assert ports.parse_proc_net(header + "\n", "tcp") == set()
    assert ports.parse_proc_net("", "udp") == set()
    assert ports.parse_proc_net(header + "\n\n   \n", "tcp") == set()


def test_read_listeners(tmp_path: Path) -> None:
    for name in ("tcp", "tcp6", "udp"):  # no udp6: a kernel without IPv6 UDP is fine
        shutil.copy(PROC_NET / name, tmp_path / name)
    got = ports.read_listeners(tmp_path)
    assert ("tcp", "0.0.0.0", 5001) in got
    assert ("tcp", "0.0.0.0", 8002) in got
    assert ("udp", "0.0.0.0", 8080) in got
    assert not any(p == 9000 for _, _, p in got)
    assert ports.read_listeners(tmp_path / "missing") == set()


def test_from_listeners(containers: list[dict]) -> None:
    published = ports.from_containers(containers)
    listeners = ports.read_listeners(PROC_NET)
    got = ports.from_listeners(listeners, published, own_ports={10811, 22})
    assert got == {
        Port("tcp", 5001, "0.0.0.0", "", 5001),  # a --network host server
        Port("tcp", 8002, "0.0.0.0", "", 8002),  # the same, on ::
        Port("udp", 8080, "0.0.0.0", "", 8080),  # tcp 8080 is published, udp 8080 is not
        Port("udp", 9000, "0.0.0.0", "", 9000),
    }
    found = {(p.proto, p.port) for p in got}
    assert ("tcp", 8080) not in found  # the engine's proxy for web
    assert ("udp", 5353) not in found  # explained by dns's published port
    assert ("tcp", 10811) not in found and ("tcp", 22) not in found  # the agent's own
    assert ("tcp", 3306) not in found and ("tcp", 80) not in found  # not wildcard
    assert ("udp", 68) not in found and ("udp", 546) not in found  # DHCP clients


def test_from_listeners_own_ports_only_when_given() -> None:
    listeners = {("tcp", "0.0.0.0", 22)}
    assert ports.from_listeners(listeners, set(), {22}) == set()
    assert ports.from_listeners(listeners, set(), set()) == {Port("tcp", 22, "0.0.0.0", "", 22)}


def test_port_to_json() -> None:
    assert Port("tcp", 8080, "0.0.0.0", "web", 80).to_json() == {
        "proto": "tcp", "port": 8080, "host_ip": "0.0.0.0", "container": "web",
        "container_port": 80,
    }


def test_port_tracker_updates() -> None:
    t = PortTracker()
    web = Port("tcp", 8080, "0.0.0.0", "web", 80)
    dns = Port("udp", 5353, "127.0.0.1", "dns", 53)
    api = Port("tcp", 3000, "0.0.0.0", "api", 3000)

    assert t.update({web, dns}) == ([web, dns], [])
    assert t.update({web, dns}) == ([], [])  # nothing changed: nothing to report
    assert t.update({web, api}) == ([api], [dns])
    # The same port now bound by another container is a removal plus an addition.
    web2 = Port("tcp", 8080, "0.0.0.0", "web2", 80)
    assert t.update({web2, api}) == ([web2], [web])
    assert t.update(set()) == ([], [api, web2])
    assert t.current == set()


def test_port_tracker_keeps_its_own_copy() -> None:
    t = PortTracker()
    s = {Port("tcp", 1, "0.0.0.0", "", 1)}
    t.update(s)
    s.add(Port("tcp", 2, "0.0.0.0", "", 2))
    added, removed = t.update(s)
    assert [p.port for p in added] == [2] and removed == []


def test_port_tracker_sorted_output() -> None:
    t = PortTracker()
    ps = {Port("udp", 9, "0.0.0.0"), Port("tcp", 80, "0.0.0.0"), Port("tcp", 8, "0.0.0.0")}
    added, _ = t.update(ps)
    assert [(p.proto, p.port) for p in added] == [("tcp", 8), ("tcp", 80), ("udp", 9)]


def test_a_publish_racing_a_scan_never_drops_the_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's proxy listens before the container's port is listed; if the events
    thread lists it during a scan, the port is reported either way, never dropped."""
    seen: list[dict] = []
    w = ports.PortWatcher(seen.append, own_ports=set())
    listener = {("tcp", "0.0.0.0", 18094)}
    published = {ports.Port("tcp", 18094, "0.0.0.0", "web", 80)}

    def scan_while_the_engine_answers() -> set:
        w._published = published  # the events thread, mid-scan
        return listener

    monkeypatch.setattr(ports, "read_listeners", scan_while_the_engine_answers)
    w._publish()
    assert [p["port"] for p in seen[-1]["added"]] == [18094]
    w._publish()  # now seen as the container's: one change, the same port
    assert [p["port"] for p in seen[-1]["added"]] == [18094]
    assert [p["port"] for p in seen[-1]["removed"]] == [18094]
    assert seen[-1]["added"][0]["container"] == "web"


def test_the_listeners_are_read_often_only_while_a_host_network_container_runs(
        monkeypatch: pytest.MonkeyPatch, containers: list[dict]) -> None:
    """Each scan wakes the idle VM: with only bridge containers (their ports come with
    the engine's events) the scan is slow; a host-network one makes it fast, and so does
    an engine that does not answer."""
    w = ports.PortWatcher(lambda ev: None, own_ports=set())
    assert w.interval == ports.SLOW_SCAN  # before the engine said anything
    listed: list[object] = [containers]

    def get_json(path: str) -> object:
        assert path == "/containers/json"
        if isinstance(listed[0], Exception):
            raise listed[0]
        return listed[0]

    monkeypatch.setattr(ports.dockerapi, "get_json", get_json)
    w._refresh_published()
    assert w.interval == ports.SLOW_SCAN and w._published  # bridge only
    host = {**containers[0], "Id": "h" * 64, "Names": ["/srv"], "Ports": [],
            "HostConfig": {"NetworkMode": "host"}}
    listed[0] = [*containers, host]
    w._refresh_published()
    assert w.interval == ports.FAST_SCAN
    listed[0] = OSError("engine restarting")
    w._refresh_published()
    assert w.interval == ports.FAST_SCAN
    listed[0] = []
    w._refresh_published()
    assert w.interval == ports.SLOW_SCAN
    assert ports.FAST_SCAN <= 0.25 and ports.SLOW_SCAN >= 5 * ports.FAST_SCAN
