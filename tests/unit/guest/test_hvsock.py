"""The guest's side of the Hyper-V link: vsock detection, the boot config that arrives
over the first hvsock connection, the vsock listener beside TCP, and the data-disk
search that must never pick the EFI boot disk. Sockets are socketpairs behind a fake
listener (no vsock is needed)."""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
from pathlib import Path

import pytest

from guest_engine import boot, protocol, server

TOKEN = "cd" * 32
HOST = (protocol.VMADDR_CID_HOST, 1025)


class FakeListener:
    """accept() hands out queued (connection, address) pairs; TimeoutError while the
    queue is empty (as a listener with a timeout would), OSError once closed."""

    def __init__(self) -> None:
        self.pending: queue.Queue[tuple[socket.socket, tuple[int, int]]] = queue.Queue()
        self.timeouts: list[float | None] = []
        self.closed = False

    def connect(self, addr: tuple[int, int]) -> socket.socket:
        """A peer at `addr` connects; returns the peer's end."""
        peer, ours = socket.socketpair()
        self.pending.put((ours, addr))
        return peer

    def settimeout(self, t: float | None) -> None:
        self.timeouts.append(t)

    def accept(self) -> tuple[socket.socket, tuple[int, int]]:
        while not self.closed:
            try:
                return self.pending.get(timeout=0.02)
            except queue.Empty:
                if self.timeouts and self.timeouts[-1] is not None:
                    raise TimeoutError("timed out") from None
        raise OSError("closed")

    def shutdown(self, how: int) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = True


def _send_refusable(s: socket.socket, data: bytes) -> None:
    """Send to a server that may already have closed the connection (refused it)."""
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def _recv_all(s: socket.socket) -> bytes:
    """Everything until the peer closes; a reset (closed with our bytes unread) too."""
    s.settimeout(5)
    out = b""
    try:
        while chunk := s.recv(4096):
            out += chunk
    except ConnectionResetError:
        pass
    return out


# -- the boot config over vsock ---------------------------------------------------------

def test_config_from_the_host_is_taken_and_acknowledged() -> None:
    lst = FakeListener()
    config = {"token": TOKEN, "network": "dhcp", "engine_config": {"debug": True}}
    host = lst.connect(HOST)
    host.sendall(json.dumps(config).encode() + b"\n")
    assert boot.config.receive_boot_config(lst, timeout=5) == config
    assert _recv_all(host) == b'{"ok":true}\n'
    host.close()
    assert lst.timeouts[-1] is None  # left blocking for the link's accept loop


def test_only_the_host_and_only_a_config_count(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    lst = FakeListener()
    good = {"token": TOKEN}
    # A local peer (a process in the VM: CID 1) with a perfect config: refused.
    local = lst.connect((1, 5000))
    local.sendall(json.dumps({"token": "evil"}).encode() + b"\n")
    # The host, but a link header (it thinks the guest has its config): refused.
    header = lst.connect(HOST)
    header.sendall(protocol.encode_header(TOKEN, "control"))
    # JSON without a token, and a line that never ends before the host closes.
    notoken = lst.connect(HOST)
    notoken.sendall(b'{"network":"dhcp"}\n')
    partial = lst.connect(HOST)
    partial.sendall(b'{"token": "x"')
    partial.shutdown(socket.SHUT_WR)
    host = lst.connect(HOST)
    host.sendall(json.dumps(good).encode() + b"\n")
    assert boot.config.receive_boot_config(lst, timeout=5) == good
    # Each refused connection was closed without a byte.
    for s in (local, header, notoken, partial):
        assert _recv_all(s) == b""
        s.close()
    assert _recv_all(host) == b'{"ok":true}\n'
    host.close()
    assert "refused a connection from (1, 5000)" in caplog.text


def test_no_config_in_time(caplog: pytest.LogCaptureFixture) -> None:
    lst = FakeListener()
    t0 = time.monotonic()
    assert boot.config.receive_boot_config(lst, timeout=0.1) == {}
    assert time.monotonic() - t0 < 3
    assert "no boot config from the host over vsock within 0 s" in caplog.text


def test_config_line_is_bounded() -> None:
    lst = FakeListener()
    host = lst.connect(HOST)
    threading.Thread(target=lambda: host.sendall(b"{" + b" " * (boot.config.MAX_CONFIG + 10)),
                     daemon=True).start()
    assert boot.config.receive_boot_config(lst, timeout=0.5) == {}
    host.close()


def test_early_waits_for_the_config_over_vsock_when_fw_cfg_has_none(
        monkeypatch: pytest.MonkeyPatch) -> None:
    lst = FakeListener()
    monkeypatch.setattr(boot.kernel, "load_modules", lambda: None)
    monkeypatch.setattr(boot.config, "read_boot_config", lambda: {})
    monkeypatch.setattr(boot.vsock, "vsock_transport", lambda: "hyperv")
    monkeypatch.setattr(boot.vsock, "vsock_listener", lambda transport: lst
                        if transport == "hyperv" else None)
    monkeypatch.setattr(boot.kernel, "set_sysctls", lambda: None)
    monkeypatch.setattr(boot.shares, "relocate_root_home", lambda: None)
    monkeypatch.setattr(boot.shareguard, "load", lambda: [])
    monkeypatch.setattr(boot.disk, "setup_data_disk", lambda blank=False: ("sdc", {}))
    host = lst.connect(HOST)
    host.sendall(json.dumps({"token": TOKEN, "network": "dhcp"}).encode() + b"\n")
    info = boot.BootInfo()
    boot.early(info)
    host.close()
    assert info.config["token"] == TOKEN and info.errors == []
    assert info.vsock is lst  # kept for the link


def test_early_on_qemu_opens_no_vsock(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str | None] = []
    monkeypatch.setattr(boot.kernel, "load_modules", lambda: None)
    monkeypatch.setattr(boot.config, "read_boot_config", lambda: {"token": TOKEN})
    monkeypatch.setattr(boot.vsock, "vsock_listener", lambda transport: opened.append(transport))
    monkeypatch.setattr(boot.kernel, "set_sysctls", lambda: None)
    monkeypatch.setattr(boot.shares, "relocate_root_home", lambda: None)
    monkeypatch.setattr(boot.shareguard, "load", lambda: [])
    monkeypatch.setattr(boot.disk, "setup_data_disk", lambda blank=False: ("vdb", {}))
    info = boot.BootInfo()
    boot.early(info)
    assert opened == [] and info.vsock is None


# -- transport detection and the listener ----------------------------------------------

def test_vsock_transport(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    assert boot.vsock.vsock_transport(str(sysfs)) is None
    drv = sysfs / "bus/virtio/drivers/vmw_vsock_virtio_transport"
    drv.mkdir(parents=True)
    for f in ("bind", "unbind", "uevent"):
        (drv / f).write_text("")
    # QEMU without a vsock device: the module is loaded, no device is bound.
    assert boot.vsock.vsock_transport(str(sysfs)) is None
    (drv / "virtio3").mkdir()
    assert boot.vsock.vsock_transport(str(sysfs)) == "virtio"
    (sysfs / "module/hv_sock").mkdir(parents=True)
    assert boot.vsock.vsock_transport(str(sysfs)) == "hyperv"


def test_no_listener_without_a_transport_or_af_vsock(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple] = []
    monkeypatch.setattr(boot.vsock.socket, "socket", lambda *a: made.append(a))
    assert boot.vsock.vsock_listener(transport=None) is None
    monkeypatch.delattr(boot.vsock.socket, "AF_VSOCK", raising=False)
    assert boot.vsock.vsock_listener(transport="hyperv") is None
    assert made == []


def test_listener_that_cannot_bind_is_quietly_absent(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    class NoBind:
        closed = False

        def __init__(self, *a: object) -> None:
            self.args = a

        def bind(self, addr: tuple[int, int]) -> None:
            assert addr == (boot.vsock.VMADDR_CID_ANY, protocol.AGENT_PORT)
            raise OSError(99, "Cannot assign requested address")

        def close(self) -> None:
            NoBind.closed = True

    caplog.set_level(logging.INFO)
    monkeypatch.setattr(boot.vsock.socket, "AF_VSOCK", 40, raising=False)
    monkeypatch.setattr(boot.vsock.socket, "socket", NoBind)
    assert boot.vsock.vsock_listener(transport="virtio") is None
    assert NoBind.closed
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_read_boot_config_does_not_wait_on_hyperv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boot.vsock, "vsock_transport", lambda: "hyperv")
    slept: list[float] = []
    monkeypatch.setattr(boot.config.time, "sleep", slept.append)
    assert boot.config.read_boot_config() == {}
    assert slept == []


# -- the link served on vsock -----------------------------------------------------------

class Controller:
    def handle(self, request: dict) -> dict:
        return {"ok": True, "result": "pong"}

    def hello_events(self) -> list[dict]:
        return [{"event": "hello"}]


def test_link_server_serves_vsock_from_the_host_only() -> None:
    srv = server.LinkServer(TOKEN, Controller())
    lst = FakeListener()
    srv.add_listener(lst)  # type: ignore[arg-type]
    try:
        # The same header and token as over TCP.
        host = lst.connect(HOST)
        host.settimeout(5)
        host.sendall(protocol.encode_header(TOKEN, "echo") + b"hi")
        assert host.recv(2) == b"hi"
        host.close()
        # A peer inside the VM is closed before its header is even read.
        with lst.connect((1, 7)) as local:
            _send_refusable(local, protocol.encode_header(TOKEN, "echo") + b"hi")
            assert _recv_all(local) == b""
        # A wrong token from the host gets nothing either.
        with lst.connect(HOST) as bad:
            _send_refusable(bad, protocol.encode_header("00" * 32, "echo") + b"hi")
            assert _recv_all(bad) == b""
    finally:
        srv.close()
    assert lst.closed


def test_peer_is_host() -> None:
    assert protocol.peer_is_host((2, 1234))
    assert not protocol.peer_is_host((1, 1234))
    assert not protocol.peer_is_host((3, 1234))
    assert not protocol.peer_is_host(("127.0.0.1", 2))
    assert not protocol.peer_is_host(None)
    assert protocol.hv_service_id() == "00002a3b-facb-11e6-bd58-64006a7986d3"


# -- the data disk is never the EFI boot disk ------------------------------------------

def test_data_disk_search_skips_partitioned_disks(monkeypatch: pytest.MonkeyPatch) -> None:
    gpt_disk = bytearray(1024)
    gpt_disk[510:512] = b"\x55\xaa"
    gpt_disk[512:520] = b"EFI PART"
    mbr_only = bytearray(1024)
    mbr_only[510:512] = b"\x55\xaa"
    disks = {"sdx": bytes(gpt_disk), "sdy": b"hsqs" + bytes(1020), "sdw": bytes(mbr_only),
             "sdz": bytes(1024)}
    monkeypatch.setattr(boot.disk, "_block_devices", lambda: sorted(disks))
    monkeypatch.setattr(boot.disk, "_read_at", lambda dev, off, n: disks[dev][off:off + n])
    assert boot.disk.find_data_device() == "sdz"
    del disks["sdz"]
    assert boot.disk.find_data_device() is None  # no blank disk: nothing to format
