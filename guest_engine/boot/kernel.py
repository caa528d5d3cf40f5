"""Kernel modules (no udev here: the drivers for the devices present, then the engine's),
the sysctls the engine needs, and the balloon device's presence."""

from __future__ import annotations

import logging
from pathlib import Path

from guest_engine.boot import system

log = logging.getLogger(__name__)

# Drivers no modalias names (fw_cfg and the vsock transports) and those udev would load.
DEVICE_MODULES = ("qemu_fw_cfg", "virtio_balloon", "virtio_rng", "button", "evdev", "vsock",
                  "vmw_vsock_virtio_transport", "hv_sock")
ENGINE_MODULES = (
    "ext4", "overlay", "br_netfilter", "bridge", "veth", "nf_tables", "nft_compat", "nft_chain_nat",
    "nf_nat", "nf_conntrack", "xt_conntrack", "xt_MASQUERADE", "xt_addrtype", "xt_nat",
    "ip_tables", "iptable_nat", "iptable_filter", "ip6_tables", "ip6table_nat",
    "ip6table_filter", "vxlan", "ipvlan", "macvlan", "tun",
)

SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
    "fs.inotify.max_user_watches": "524288",
    "fs.inotify.max_user_instances": "8192",
    "vm.max_map_count": "262144",
    "kernel.panic": "10",
    # An idle VM's own timers (counted in the guest with these off: interrupts 59/s to
    # 48/s). Per-CPU memory counters are folded every 10 s, not every second;
    # kcompactd's proactive compaction looked twice a second (the Resource Saver's
    # release_memory compacts when it matters); the lockup detector's per-CPU timer ran
    # every 4 s, and under emulation a vCPU the host did not run looks locked up anyway.
    "vm.stat_interval": "10",
    "vm.compaction_proactiveness": "0",
    "kernel.watchdog": "0",
}


def load_modules() -> None:
    """Load the drivers for the devices present (no udev here), then the engine's."""
    aliases = set()
    for path in system.sysfs_glob("/sys/bus/*/devices/*/modalias"):
        try:
            aliases.add(Path(path).read_text().strip())
        except OSError:
            pass
    if aliases:
        system.run(["modprobe", "-a", "-q", "-b", *sorted(aliases)], check=False)
    # One modprobe for all (it goes on past one that is missing or fails, as hv_sock
    # does off Hyper-V): each program run costs a tenth of a second under emulation.
    system.run(["modprobe", "-a", "-q", *DEVICE_MODULES], check=False)
    proc = system.run(["modprobe", "-a", *ENGINE_MODULES], check=False)
    if proc.returncode != 0:
        log.warning("some engine modules did not load: %s", proc.stderr.strip())


def set_sysctls(root: Path = Path("/proc/sys")) -> None:
    for key, value in SYSCTLS.items():
        p = root / key.replace(".", "/")
        try:
            p.write_text(value)
        except OSError as e:
            log.warning("sysctl %s=%s: %s", key, value, e)


def balloon_present() -> bool:
    return any(
        Path(p).resolve().name == "virtio_balloon"
        for p in system.sysfs_glob("/sys/bus/virtio/devices/*/driver")
    )
