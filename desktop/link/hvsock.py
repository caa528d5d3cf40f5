"""The guest link over Hyper-V sockets (Windows hosts with the Hyper-V driver).

The host reaches the agent's AF_VSOCK port through ``socket.AF_HYPERV`` at the VM's id
and the port's service GUID (`desktop.drivers.hyperv`); the same link delivers the boot
config, which a Hyper-V guest cannot get through fw_cfg.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from desktop.link import AgentError, LinkError
from guest_engine import protocol


class HvsockLink:
    """Streams over Hyper-V sockets (Windows hosts, Python 3.12+): ``AF_HYPERV`` to the
    VM's id and the service GUID of the agent's vsock port; a `Link`.

    A Hyper-V guest has no fw_cfg, so the boot config (with this boot's token) travels
    over the link itself: before the first stream, one connection carries it as a JSON
    line and gets ``{"ok": true}`` back (docs/protocol.md, "Boot config over hvsock").
    Only the host can open an hvsock connection to a guest, so no container can send or
    read it. `connect` is the socket factory (tests pass a fake).
    """

    def __init__(self, vm_id: str, service_id: str, token: str,
                 boot_config: bytes | None = None,
                 connect: Callable[[str, str, float], socket.socket] | None = None) -> None:
        self.token = token
        self.vm_id = vm_id
        self.service_id = service_id
        self._boot_config = boot_config
        self._connect = connect or hv_connect
        self._lock = threading.Lock()

    @property
    def config_delivered(self) -> bool:
        return self._boot_config is None

    def _dial(self, timeout: float) -> socket.socket:
        try:
            return self._connect(self.vm_id, self.service_id, timeout)
        except OSError as e:
            raise LinkError(f"cannot reach the guest agent over hvsock (VM {self.vm_id}, "
                            f"service {self.service_id}): {e}") from e

    def deliver_config(self, timeout: float = 5.0) -> None:
        """Send the boot config if it has not been accepted yet; raises LinkError."""
        with self._lock:
            config = self._boot_config
            if config is None:
                return
            s = self._dial(timeout)
            try:
                s.settimeout(timeout)
                s.sendall(config)
                with s.makefile("rb") as f:
                    reply = f.readline(protocol.MAX_HEADER)
            except OSError as e:
                raise LinkError(f"the guest did not take the boot config: {e}") from e
            finally:
                s.close()
            if not reply:
                raise LinkError("the guest closed the boot-config connection without a "
                                "reply (it refuses a config once it has one: restart the VM)")
            try:
                answer = protocol.decode_message(reply)
            except protocol.ProtocolError as e:
                raise LinkError(f"the guest answered the boot config with {reply[:80]!r}") \
                    from e
            if not answer.get("ok"):
                raise AgentError(f"the guest refused the boot config: "
                                 f"{answer.get('error', 'no reason given')}")
            self._boot_config = None

    def open(self, op: str, arg: int | None = None, timeout: float = 5.0) -> socket.socket:
        self.deliver_config(timeout)
        s = self._dial(timeout)
        s.settimeout(None)
        s.sendall(protocol.encode_header(self.token, op, arg))
        return s


def hv_connect(vm_id: str, service_id: str, timeout: float) -> socket.socket:
    """A connected AF_HYPERV stream socket (Windows, Python 3.12+)."""
    family = getattr(socket, "AF_HYPERV", None)
    if family is None:
        raise OSError("this Python has no Hyper-V sockets (socket.AF_HYPERV: Windows, "
                      "Python 3.12 or later)")
    raw = getattr(socket, "HV_PROTOCOL_RAW", 1)
    s = socket.socket(family, socket.SOCK_STREAM, raw)
    try:
        # A connect to a service nobody listens on yet can otherwise hang for long.
        s.setsockopt(raw, getattr(socket, "HVSOCKET_CONNECT_TIMEOUT", 1),
                     max(1, int(timeout * 1000)))
        s.settimeout(timeout)
        s.connect((vm_id, service_id))
    except OSError:
        s.close()
        raise
    return s
