"""The network: the hostname, lo and the first ethernet link (QEMU user networking's
fixed plan, else DHCP), the resolver that serves host.docker.internal, and the firewall
rule that keeps containers off the agent's ports."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from guest_engine import dns
from guest_engine.boot import paths, system

log = logging.getLogger(__name__)

DHCP_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    ;;
esac
"""


def setup_network(config: dict) -> dict:
    """Bring up lo and the first ethernet link: static for QEMU user networking, else DHCP."""
    socket.sethostname("cove")
    Path("/etc/hostname").write_text("cove\n")
    Path("/etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 cove\n::1 localhost\n")
    system.run(["ip", "link", "set", "lo", "up"])
    ifaces = sorted(
        p.name for p in Path("/sys/class/net").iterdir()
        if p.name != "lo" and (p / "device").exists()
    )
    if not ifaces:
        raise RuntimeError("no network interface found")
    iface = ifaces[0]
    system.run(["ip", "link", "set", iface, "up"])
    net = config.get("network", "user")
    if net == "user":
        # QEMU user networking's fixed plan: no DHCP round trips on the boot path.
        system.run(["ip", "addr", "add", "10.0.2.15/24", "dev", iface])
        system.run(["ip", "route", "add", "default", "via", "10.0.2.2", "dev", iface])
        Path("/etc/resolv.conf").write_text("nameserver 10.0.2.3\n")
        return {"interface": iface, "mode": "static", "address": "10.0.2.15",
                "gateway": "10.0.2.2"}
    script = paths.RUN_DIR / "udhcpc.sh"
    script.write_text(DHCP_SCRIPT)
    script.chmod(0o755)
    system.run(["busybox", "udhcpc", "-i", iface, "-n", "-q", "-t", "10", "-s", str(script)],
               timeout=60)
    addr = system.run(["ip", "-4", "-o", "addr", "show", "dev", iface]).stdout.split()
    route = system.run(["ip", "-4", "route", "show", "default"]).stdout.split()
    gateway = route[route.index("via") + 1] if "via" in route else ""
    return {"interface": iface, "mode": "dhcp",
            "address": addr[3].split("/")[0] if len(addr) > 3 else "", "gateway": gateway}


def setup_resolver(config: dict, network: dict) -> dict:
    """Serve DNS on the VM's address with the host's names; point resolv.conf at it.

    host.docker.internal is the host as the VM reaches it: QEMU's 10.0.2.2 (the host's
    localhost), or the gateway of a DHCP network, unless the host's boot config names
    another address. The upstreams are what the network gave the VM.
    """
    address = network.get("address", "")
    host = str(config.get("host_address") or network.get("gateway") or "")
    if not address or not host:
        raise RuntimeError("no address or gateway to serve host.docker.internal from")
    resolv = Path("/etc/resolv.conf")
    upstreams = dns.read_nameservers(resolv.read_text() if resolv.exists() else "")
    names = {"host.docker.internal": host,
             "gateway.docker.internal": str(network.get("gateway") or host)}
    fwd = dns.Forwarder(address, upstreams, names)
    fwd.start()
    resolv.write_text(f"# Cove's resolver: host.docker.internal, then {' '.join(upstreams)}\n"
                      f"nameserver {address}\n")
    return {"address": address, "upstreams": fwd.upstreams, "names": names}


# The chain the engine jumps to before its own forwarding rules and never flushes: rules
# here see every container's traffic that leaves the VM.
USER_CHAIN = "DOCKER-USER"


def _reject_new(chain: str, gateway: str, port: int | None = None) -> list[str]:
    """Reject a new TCP connection to the host through `gateway` (only the opening
    segment: replies to connections the host opened, whatever their port, pass)."""
    rule = ["iptables", "-w", "-I", chain, "-d", gateway, "-p", "tcp", "--syn"]
    if port is not None:
        rule += ["--dport", str(port)]
    return rule + ["-j", "REJECT", "--reject-with", "tcp-reset"]


def close_host_ports(gateway: str, ports: list[int], loopback_open: bool) -> None:
    """Keep containers away from the host's side of Cove.

    The gateway is the host's loopback (user networking): a container's connection to
    `gateway`:<port> of the link or SSH forward would come back into this VM through the
    hypervisor's forward, past `guard_port`. Those `ports` are closed to containers and to
    the VM's own processes (host-network containers) alike. With `loopback_open` False,
    every new connection from a container to the host's loopback is refused too (UDP as
    well); host-network containers share the VM's own network and are not held back.
    """
    system.run(["iptables", "-w", "-N", USER_CHAIN], check=False)  # the engine's, if it ran
    for port in ports:
        for chain in ("OUTPUT", USER_CHAIN):
            system.run(_reject_new(chain, gateway, port))
    if not loopback_open:
        system.run(_reject_new(USER_CHAIN, gateway))
        system.run(["iptables", "-w", "-I", USER_CHAIN, "-d", gateway, "-p", "udp",
                    "-j", "REJECT"])


def guard_port(port: int, iface: str) -> None:
    """Accept `port` only from the host's side (`iface`), never from containers.

    Containers route to the VM's own addresses through their bridge, and host-network
    containers share its loopback; both are refused here, before any secret is checked.
    """
    system.run(["iptables", "-w", "-I", "INPUT", "-p", "tcp", "--dport", str(port),
                "!", "-i", iface, "-j", "DROP"])
