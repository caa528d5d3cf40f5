"""vsock, the link's transport on Hyper-V (hv_sock) and virtio-vsock hosts: which
transport reaches the host, and a listener for the link (which on Hyper-V first
carries the boot config, `config.receive_boot_config`)."""

from __future__ import annotations

import logging
import os
import socket

from guest_engine import protocol

log = logging.getLogger(__name__)

VMADDR_CID_ANY = 0xFFFFFFFF


def vsock_transport(sys_root: str = "/sys") -> str | None:
    """Which vsock transport reaches the host: "hyperv", "virtio" or None.

    hv_sock loads only on Hyper-V (it refuses hosts older than Windows 10); the virtio
    transport's module loads anywhere, so it counts only once it has a device.
    """
    if os.path.isdir(f"{sys_root}/module/hv_sock"):
        return "hyperv"
    drv = f"{sys_root}/bus/virtio/drivers/vmw_vsock_virtio_transport"
    try:
        if any(n.startswith("virtio") for n in os.listdir(drv)):
            return "virtio"
    except OSError:
        pass
    return None


def vsock_listener(port: int = protocol.AGENT_PORT,
                   transport: str | None = None) -> socket.socket | None:
    """A listening AF_VSOCK socket on `port`, or None when there is no vsock to the host
    (QEMU without a vsock device: nothing listens, nothing is logged as an error)."""
    family = getattr(socket, "AF_VSOCK", None)
    if family is None or transport is None:
        return None
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        log.info("no vsock listener (%s transport): %s", transport, e)
        return None
    try:
        s.bind((VMADDR_CID_ANY, port))
        s.listen(128)
    except OSError as e:
        s.close()
        log.info("no vsock listener on port %d (%s transport): %s", port, transport, e)
        return None
    log.info("link listens on vsock port %d (%s)", port, transport)
    return s
