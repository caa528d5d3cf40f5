"""The guest link's wire format, shared by the agent (guest) and the backend (host).

Standard library only: the agent runs on the guest image's python3. The protocol is
written up in docs/protocol.md; in short:

Every connection to the agent opens with one header line::

    COVE/1 <token> <op> [<arg>]\\n

``token`` is the per-boot secret in hex. A header that is malformed, too long or carries
the wrong token gets no reply: the agent closes the connection. After the header:

* ``control``: JSON objects, one per line, both ways (requests with an ``id`` and their
  replies; events the agent pushes without one).
* ``docker``: a byte-for-byte relay to the engine's unix socket.
* ``tcp <port>``: a byte-for-byte relay to 127.0.0.1:<port> in the guest.
* ``udp <port>``: datagrams to 127.0.0.1:<port>, each framed as a 2-byte big-endian
  length and the payload, both ways.
* ``echo``: every byte is sent back (the link's floor, for benchmarks).
* ``fs <n>``: the host serves boot-config share n over 9P2000.L on this stream; the
  agent hands the socket to the kernel when the host asks (control op ``mount_share``).

Data streams send no reply before relaying, so opening one costs no round trip beyond
the connection itself; a target that cannot be reached closes the stream.
"""

from __future__ import annotations

import json
import struct

# hmac.compare_digest without importing hmac (which loads OpenSSL: a third of a second
# of boot under emulation). Same constant-time comparison.
from _operator import _compare_digest as compare_digest

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not imported at run time: boot time under emulation
    from typing import Any

VERSION = "COVE/1"
AGENT_PORT = 10811  # the agent's TCP port inside the guest
MAX_HEADER = 512
DATA_OPS = ("docker", "tcp", "udp", "echo", "fs")
MAX_SHARES = 64  # ``fs <n>``: n is below this
OPS = ("control", *DATA_OPS)
FW_CFG_NAME = "opt/org.cove/boot"  # fw_cfg entry carrying the boot config (with the secret)
VMADDR_CID_HOST = 2  # the host as a vsock peer (hv_sock reports every host peer so)
# Hyper-V sockets: Linux's hv_sock maps vsock port N to this service GUID on the host.
HV_VSOCK_TEMPLATE = "{port:08x}-facb-11e6-bd58-64006a7986d3"


class ProtocolError(Exception):
    """A message or header that does not follow the protocol."""


class Header:
    __slots__ = ("token", "op", "arg")

    def __init__(self, token: str, op: str, arg: int | None = None) -> None:
        self.token = token
        self.op = op
        self.arg = arg

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Header) and (self.token, self.op, self.arg) == (
            other.token, other.op, other.arg)

    def __repr__(self) -> str:
        return f"Header(op={self.op!r}, arg={self.arg!r})"


def encode_header(token: str, op: str, arg: int | None = None) -> bytes:
    """The header line for `op`; ProtocolError for one the agent would not read back as
    this very header (a token with a space or a non-ASCII character, a port out of
    range, an argument the op does not take)."""
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r}")
    parts = [VERSION, token, op] + ([str(arg)] if arg is not None else [])
    try:
        line = (" ".join(parts) + "\n").encode("ascii")
    except UnicodeEncodeError:
        raise ProtocolError("a header is ASCII") from None
    if b"\n" in line[:-1] or parse_header(line) != Header(token, op, arg):
        raise ProtocolError(f"{op} {arg!r}: not a header the agent reads back")
    return line


def parse_header(line: bytes) -> Header:
    """Parse a header line (without or with its newline); raises ProtocolError."""
    if len(line) > MAX_HEADER:
        raise ProtocolError("header too long")
    try:
        text = line.decode("ascii").rstrip("\n")
    except UnicodeDecodeError:
        raise ProtocolError("header is not ASCII") from None
    parts = text.split(" ")
    if len(parts) < 3 or parts[0] != VERSION:
        raise ProtocolError("not a COVE/1 header")
    _, token, op, *rest = parts
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r}")
    arg = None
    if op in ("tcp", "udp"):
        if (len(rest) != 1 or not rest[0].isdigit() or rest[0].startswith("0")
                or not 0 < int(rest[0]) < 65536):
            raise ProtocolError(f"{op} needs a port 1-65535")
        arg = int(rest[0])
    elif op == "fs":
        if (len(rest) != 1 or not rest[0].isdigit() or rest[0] != str(int(rest[0]))
                or not 0 <= int(rest[0]) < MAX_SHARES):
            raise ProtocolError(f"fs needs a share number 0-{MAX_SHARES - 1}")
        arg = int(rest[0])
    elif rest:
        raise ProtocolError(f"{op} takes no argument")
    return Header(token, op, arg)


def token_ok(expected: str, given: str) -> bool:
    return bool(expected) and bool(compare_digest(expected.encode(), given.encode()))


def peer_is_host(addr: object) -> bool:
    """An accepted vsock peer is the host: a local one would be CID 1 or the VM's own,
    and the link takes no connection from inside the VM (containers) on vsock."""
    return isinstance(addr, tuple) and len(addr) >= 1 and addr[0] == VMADDR_CID_HOST


def hv_service_id(port: int = AGENT_PORT) -> str:
    """The Hyper-V socket service GUID of the guest's vsock `port`."""
    return HV_VSOCK_TEMPLATE.format(port=port)


def encode_message(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


def decode_message(line: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(line)
    except ValueError as e:
        raise ProtocolError(f"not JSON: {e}") from None
    except RecursionError:  # nested deeper than the parser's stack: not a message of ours
        raise ProtocolError("not JSON Cove reads: nested too deeply") from None
    if not isinstance(msg, dict):
        raise ProtocolError("a message must be a JSON object")
    return msg


def frame(payload: bytes) -> bytes:
    if len(payload) > 0xFFFF:
        raise ProtocolError("datagram larger than 65535 bytes")
    return struct.pack(">H", len(payload)) + payload


class Deframer:
    """Splits a byte stream back into the datagrams `frame` made."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out = []
        while len(self._buf) >= 2:
            (n,) = struct.unpack_from(">H", self._buf)
            if len(self._buf) < 2 + n:
                break
            out.append(bytes(self._buf[2 : 2 + n]))
            del self._buf[: 2 + n]
        return out
