"""Port discovery: which guest ports the host should forward, pushed as changes.

Two sources, merged:

* the engine's containers (``GET /containers/json``), refreshed on every container
  event: each published port with the host address the container asked for
  (``-p 8080:80`` means all interfaces, ``-p 127.0.0.1:8080:80`` loopback only);
* the guest's listening sockets (``/proc/net/{tcp,udp}{,6}``), so servers in
  ``--network host`` containers count too. Listeners the first source already explains
  (the engine's proxy) and the agent's own ports are left out.

`PortTracker.update` computes the difference against what it last reported; the agent
sends each non-empty difference to the host as a ``ports`` event.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import namedtuple
from collections.abc import Callable, Iterable
from pathlib import Path

from guest_engine import dockerapi

log = logging.getLogger(__name__)

TCP_LISTEN = "0A"
ALL_V4 = "0.0.0.0"
LOOPBACK_V4 = "127.0.0.1"


class Port(namedtuple("Port", "proto port host_ip container container_port",
                      defaults=(ALL_V4, "", 0))):
    """One port the host should open (a namedtuple: dataclasses cost boot time).

    proto: "tcp" or "udp"; host_ip: what the container asked for, "0.0.0.0" (all
    interfaces) or "127.0.0.1"; container: its name, "" for a listener of unknown owner.
    """

    __slots__ = ()

    def to_json(self) -> dict:
        return dict(self._asdict())


def normalize_ip(ip: str) -> str:
    """Fold the engine's address forms: any wildcard -> 0.0.0.0, any loopback -> 127.0.0.1."""
    if ip in ("", "0.0.0.0", "::"):
        return ALL_V4
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ALL_V4
    if addr.is_loopback:
        return LOOPBACK_V4
    return ALL_V4 if addr.is_unspecified else str(addr)


def from_containers(containers: Iterable[dict]) -> set[Port]:
    """Published ports from a ``GET /containers/json`` reply (running containers)."""
    out: set[Port] = set()
    for c in containers:
        if c.get("State") not in (None, "running"):
            continue
        names = c.get("Names") or [""]
        name = names[0].lstrip("/")
        for p in c.get("Ports") or []:
            public = p.get("PublicPort")
            if not public:
                continue
            out.add(Port(p.get("Type", "tcp"), int(public), normalize_ip(p.get("IP", "")),
                         name, int(p.get("PrivatePort", 0))))
    return out


def parse_proc_net(text: str, proto: str) -> set[tuple[str, str, int]]:
    """Listening sockets in a /proc/net/{tcp,udp}{,6} table: {(proto, ip, port)}."""
    out = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        local, state = fields[1], fields[3]
        if proto == "tcp" and state != TCP_LISTEN:
            continue
        if proto == "udp" and fields[2] != "00000000:0000" and not fields[2].endswith(":0000"):
            continue  # a connected UDP socket is a client, not a server
        hexip, hexport = local.split(":")
        port = int(hexport, 16)
        raw = bytes.fromhex(hexip)
        if len(raw) == 4:
            ip = str(ipaddress.IPv4Address(raw[::-1]))
        else:
            # /proc prints IPv6 as four host-order 32-bit words.
            words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
            ip = str(ipaddress.IPv6Address(b"".join(words)))
        out.add((proto, normalize_ip(ip), port))
    return out


def read_listeners(root: Path = Path("/proc/net")) -> set[tuple[str, str, int]]:
    found: set[tuple[str, str, int]] = set()
    for name, proto in (("tcp", "tcp"), ("tcp6", "tcp"), ("udp", "udp"), ("udp6", "udp")):
        try:
            found |= parse_proc_net((root / name).read_text(), proto)
        except OSError:
            pass
    return found


def from_listeners(listeners: Iterable[tuple[str, str, int]], published: set[Port],
                   own_ports: set[int]) -> set[Port]:
    """Listeners not explained by a published port nor the agent: host-network servers.

    Only wildcard listeners count: a server bound to the VM's loopback or to one of its
    addresses is not meant to be reached from outside.
    """
    taken = {(p.proto, p.port) for p in published}
    out = set()
    for proto, ip, port in listeners:
        if ip != ALL_V4 or (proto, port) in taken or port in own_ports:
            continue
        if proto == "udp" and port in (68, 546):  # DHCP clients
            continue
        out.add(Port(proto, port, ALL_V4, "", port))
    return out


# How often the guest's listeners are read: often while a host-network container runs
# (its servers listen in the VM's own namespace, found only this way); rarely otherwise,
# when every port a container publishes comes with the engine's events. Each scan wakes
# the idle VM (measured in benchmarks/rest.py).
FAST_SCAN = 0.25
SLOW_SCAN = 5.0


def host_network(containers: list[dict]) -> bool:
    """Whether a container the engine lists runs in the VM's network (`--network host`)."""
    return any((c.get("HostConfig") or {}).get("NetworkMode") == "host" for c in containers)


class PortTracker:
    """Holds the last reported set; `update` returns (added, removed)."""

    def __init__(self) -> None:
        self.current: set[Port] = set()

    def update(self, ports: set[Port]) -> tuple[list[Port], list[Port]]:
        added = sorted(ports - self.current)
        removed = sorted(self.current - ports)
        self.current = set(ports)
        return added, removed


class PortWatcher:
    """Watches the engine and the guest's sockets; calls `notify` with each change."""

    def __init__(self, notify: Callable[[dict], None], own_ports: set[int],
                 fast: float = FAST_SCAN, slow: float = SLOW_SCAN) -> None:
        self.notify = notify
        self.own_ports = own_ports
        self.fast, self.slow = fast, slow
        self.interval = slow  # until the engine says a host-network container runs
        self.tracker = PortTracker()
        self._published: set[Port] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._refresh_now = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._events_loop, daemon=True, name="port-events").start()
        threading.Thread(target=self._scan_loop, daemon=True, name="port-scan").start()

    def stop(self) -> None:
        self._stop.set()

    def snapshot(self) -> list[dict]:
        with self._lock:
            return [p.to_json() for p in sorted(self.tracker.current)]

    def _refresh_published(self) -> None:
        try:
            listed = dockerapi.get_json("/containers/json")
            self._published = from_containers(listed)
            self.interval = self.fast if host_network(listed) else self.slow
        except (OSError, ValueError) as e:
            self.interval = self.fast  # the engine does not say: look often
            log.debug("containers not listed: %s", e)

    def _publish(self) -> None:
        # One read: the events thread may replace the set meanwhile, and a port the
        # engine just published must count as either published or a listener, never as
        # neither (which would close the host's port for a moment).
        published = self._published
        ports = published | from_listeners(read_listeners(), published, self.own_ports)
        with self._lock:
            added, removed = self.tracker.update(ports)
        if added or removed:
            self.notify({"event": "ports", "added": [p.to_json() for p in added],
                         "removed": [p.to_json() for p in removed]})

    def _events_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._refresh_published()
                self._refresh_now.set()
                for ev in dockerapi.events({"type": ["container"]}):
                    if ev.get("Action", "").split(":")[0] in (
                        "start", "die", "stop", "kill", "destroy", "pause", "unpause",
                        "restart", "create",
                    ):
                        self._refresh_published()
                        self._refresh_now.set()
                    if self._stop.is_set():
                        return
            except (OSError, ValueError):
                pass  # the engine restarted or is not up yet: reconnect
            self._stop.wait(1)

    def _scan_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._publish()
            except Exception:  # noqa: BLE001 - keep watching whatever happened
                log.exception("port scan failed")
            self._refresh_now.wait(self.interval)
            self._refresh_now.clear()
            time.sleep(0.01)
