"""The host's boot config (with the per-boot secret): from QEMU's fw_cfg, or, on Hyper-V
(no fw_cfg), as the first connection on the link's vsock listener."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

from guest_engine import protocol
from guest_engine.boot import system, vsock

log = logging.getLogger(__name__)

CONFIG_WAIT = 600.0  # seconds to wait for the host's boot config over vsock
MAX_CONFIG = 65536  # bytes: the boot config line (the engine config is inside it)


FW_CFG_SYSFS = Path("/sys/firmware/qemu_fw_cfg")
FW_CFG_DRIVER = Path("/sys/bus/platform/drivers/fw_cfg")


def read_boot_config(sysfs: Path = FW_CFG_SYSFS) -> dict:
    """The host's boot config (with the per-boot secret), from QEMU's fw_cfg, which is
    then taken out of sysfs (`hide_fw_cfg`). On Hyper-V (no fw_cfg) it returns {} at once.

    The kernel command line would not do (/proc/cmdline is readable in every container).
    """
    path = sysfs / "by_name" / protocol.FW_CFG_NAME / "raw"
    wait = vsock.vsock_transport() != "hyperv"
    for _ in range(20 if wait else 0):
        if path.exists():
            break
        time.sleep(0.05)
    try:
        config = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        (log.error if wait else log.info)("no boot config from the host at %s: %s", path, e)
        return {}
    hide_fw_cfg(sysfs)
    return config if isinstance(config, dict) else {}


def hide_fw_cfg(sysfs: Path = FW_CFG_SYSFS, driver: Path | None = None) -> bool:
    """Take fw_cfg (and the secret in it) out of sysfs for the rest of the boot: the
    engine masks /sys/firmware in containers, but a container run with
    ``systempaths=unconfined`` (or one given the VM's /sys) would read it. The module
    is unloaded; where the driver is built in, its device is unbound. True once gone."""
    driver = driver or FW_CFG_DRIVER
    system.run(["modprobe", "-r", "qemu_fw_cfg"], check=False)
    if sysfs.exists() and driver.is_dir():
        for dev in driver.iterdir():
            # The bound device(s), e.g. QEMU0002:00 or 9020000.fw-cfg ("module" is not one).
            if dev.is_symlink() and dev.name != "module":
                try:
                    (driver / "unbind").write_text(dev.name)
                except OSError as e:
                    log.warning("fw_cfg: cannot unbind %s: %s", dev.name, e)
    if sysfs.exists():
        log.error("fw_cfg is still in sysfs (%s): the boot secret stays readable there", sysfs)
        return False
    return True


def _read_line(conn: socket.socket, limit: int) -> bytes:
    buf = bytearray()
    while b"\n" not in buf and len(buf) <= limit:
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def receive_boot_config(listener: socket.socket, timeout: float = CONFIG_WAIT) -> dict:
    """Wait for the host to send the boot config over vsock (Hyper-V has no fw_cfg).

    The host opens a connection and sends the config as one JSON line; the agent answers
    ``{"ok":true}`` and closes it. Peers other than the host, and lines that are not a
    config with a token, are closed without a reply. The listener stays open for the
    link. Returns {} when nothing came within `timeout`.
    """
    deadline = time.monotonic() + timeout
    listener.settimeout(1.0)
    try:
        while time.monotonic() < deadline:
            try:
                conn, addr = listener.accept()
            except TimeoutError:
                continue
            with conn:
                if not protocol.peer_is_host(addr):
                    log.warning("boot config: refused a connection from %s", addr)
                    continue
                try:
                    conn.settimeout(5.0)
                    line = _read_line(conn, MAX_CONFIG)
                    config = json.loads(line) if line.endswith(b"\n") else None
                except (OSError, ValueError) as e:
                    log.warning("boot config: unreadable (%s)", e)
                    continue
                if not isinstance(config, dict) or not isinstance(config.get("token"), str) \
                        or not config["token"]:
                    log.warning("boot config: not a config with a token; closed")
                    continue
                try:
                    conn.sendall(protocol.encode_message({"ok": True}))
                except OSError as e:
                    log.warning("boot config: the host went away before the reply (%s)", e)
                    continue
                log.info("boot config received over vsock")
                return config
    finally:
        listener.settimeout(None)
    log.error("no boot config from the host over vsock within %.0f s", timeout)
    return {}
