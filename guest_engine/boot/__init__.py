"""The VM's boot duties, run once by the agent after the initramfs hands over.

In order (each step logs what it did; a step that fails is recorded in `BootInfo.errors`
and the boot goes on where it can, so the host can still connect and read why; only a
missing data disk or secret is fatal to the engine, not to the agent):

0. `mount_filesystems` (`filesystems`): /proc, /sys, /dev, /run, cgroup2, before logging.
1. `early`, what the engine needs before it starts:
   kernel modules (`kernel`); the other architectures' emulators (`binfmt`); the
   host's boot config, from fw_cfg or over vsock
   (`config`, `vsock`); sysctls (`kernel`); root's home out of /root; the share guard
   (`shareguard`), then the host's virtiofs and 9p shares, link shares marked pending
   (`shares`); the data disk (`disk`).
2. The agent starts the engine (dockerd waits for the pending link shares).
3. `late`, while the engine starts: the network and the resolver (`network`), the
   balloon device (`kernel`).
4. Later, from the agent: the link's firewall rule (`network.guard_port`), link shares
   mounted on the host's streams (`shares.mount_link_share`), daily trim and the clean
   unmount at power-off (`disk`).

The fixed paths live in `paths`; every command runs through `system.run`.
"""

from __future__ import annotations

import logging
import socket

from guest_engine.boot import (
    binfmt,
    config,
    disk,
    filesystems,
    kernel,
    network,
    paths,
    shareguard,
    shares,
    system,
    vsock,
)
from guest_engine.boot.filesystems import mount_filesystems

log = logging.getLogger(__name__)


class BootInfo:
    """What the boot found and did; reported to the host in hello and status."""

    def __init__(self) -> None:
        self.config: dict = {}
        self.data_device: str | None = None
        self.disk: dict = {}
        self.network: dict = {}
        self.balloon = False
        self.resolver: dict = {}
        self.shares: list[dict] = []
        self.binfmt: list[str] = []  # the other architectures' emulators registered
        self.share_guard: list[str] = []  # its programs attached (`shareguard`)
        self.errors: list[str] = []
        self.vsock: socket.socket | None = None  # the link's vsock listener, if any


def early(info: BootInfo) -> None:
    """What the engine needs before it can start: modules, sysctls, the data disk, and
    the host's boot config (it may carry the engine's config)."""
    kernel.load_modules()
    info.config = config.read_boot_config()
    if not info.config:
        # No fw_cfg (Hyper-V): the host sends the config over the link's first vsock
        # connection; the listener then serves the link (`Agent.run`).
        info.vsock = vsock.vsock_listener(transport=vsock.vsock_transport())
        if info.vsock is not None:
            info.config = config.receive_boot_config(info.vsock)
    if not info.config:
        info.errors.append("no boot config (secret) from the host")
    kernel.set_sysctls()
    try:
        info.binfmt = binfmt.register()
    except (OSError, RuntimeError) as e:
        info.errors.append(f"binfmt_misc (containers of other architectures): {e}")
    try:
        shares.relocate_root_home()
    except OSError as e:
        info.errors.append(f"root home: {e}")
    guard_error = ""
    try:
        info.share_guard = shareguard.load()
    except (OSError, RuntimeError) as e:
        guard_error = f"the share guard (no set-uid bits in shares) did not load: {e}"
        info.errors.append(guard_error)
        log.error("%s", guard_error)
    info.shares = shares.mount_shares(info.config.get("shares") or [], guard_error)
    for sh in info.shares:
        if sh["error"] and not sh.get("pending"):
            info.errors.append(f"share {sh['path']}: {sh['error']}")
    try:
        info.data_device, info.disk = disk.setup_data_disk(
            blank=info.config.get("data_disk_blank") is True)
    except Exception as e:  # noqa: BLE001 - reported to the host, boot goes on
        info.errors.append(f"data disk: {e}")
        log.exception("data disk setup failed")


def late(info: BootInfo) -> None:
    """What the link needs (runs while the engine starts): the network."""
    try:
        info.network = network.setup_network(info.config)
    except Exception as e:  # noqa: BLE001
        info.errors.append(f"network: {e}")
        log.exception("network setup failed")
    else:
        try:
            info.resolver = network.setup_resolver(info.config, info.network)
        except (RuntimeError, OSError) as e:
            info.errors.append(f"resolver (host.docker.internal): {e}")
            log.exception("resolver setup failed")
    info.balloon = kernel.balloon_present()


__all__ = ["BootInfo", "mount_filesystems", "early", "late", "config", "disk", "filesystems",
           "kernel", "network", "paths", "shareguard", "shares", "system", "vsock"]
