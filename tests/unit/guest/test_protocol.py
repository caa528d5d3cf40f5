"""The guest link's wire format (guest_engine.protocol)."""

from __future__ import annotations

import os

import pytest

from guest_engine import protocol
from guest_engine.protocol import Deframer, ProtocolError

TOKEN = "ab" * 32


@pytest.mark.parametrize("token, op, arg", [
    ("t k", "control", None), ("\n", "control", None), ("tök", "echo", None),
    ("t0k", "control", 5), ("t0k", "tcp", None), ("t0k", "tcp", 0), ("t0k", "udp", 65536),
    ("t0k", "fs", 64), ("t0k", "fs", -1)])
def test_encode_header_refuses_what_the_agent_would_not_read_back(
        token: str, op: str, arg: int | None) -> None:
    """Found by fuzzing: such a header went out (or a UnicodeEncodeError), and the agent
    read another header or none."""
    with pytest.raises(ProtocolError):
        protocol.encode_header(token, op, arg)


@pytest.mark.parametrize(
    ("op", "arg"),
    [("control", None), ("docker", None), ("echo", None), ("tcp", 8080), ("udp", 53),
     ("tcp", 1), ("udp", 65535), ("fs", 0), ("fs", 7), ("fs", protocol.MAX_SHARES - 1)],
)
def test_header_round_trip(op: str, arg: int | None) -> None:
    line = protocol.encode_header(TOKEN, op, arg)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    h = protocol.parse_header(line)
    assert h == protocol.Header(TOKEN, op, arg)
    # Without its newline too.
    assert protocol.parse_header(line[:-1]) == h


def test_encode_header_exact_bytes() -> None:
    assert protocol.encode_header("t0k", "tcp", 80) == b"COVE/1 t0k tcp 80\n"
    assert protocol.encode_header("t0k", "control") == b"COVE/1 t0k control\n"


def test_encode_header_refuses_unknown_op() -> None:
    with pytest.raises(ProtocolError, match="unknown op"):
        protocol.encode_header(TOKEN, "shell")


@pytest.mark.parametrize(
    "line",
    [
        b"COVE/2 " + TOKEN.encode() + b" control\n",  # wrong version
        b"cove/1 " + TOKEN.encode() + b" control\n",
        b"HTTP/1.1 GET /\n",
        b"COVE/1 " + TOKEN.encode() + b"\n",  # no op
        b"COVE/1\n",
        b"\n",
        b"",
        b"COVE/1 " + TOKEN.encode() + b" shell\n",  # unknown op
        b"COVE/1 " + TOKEN.encode() + b" CONTROL\n",
        b"COVE/1 " + TOKEN.encode() + b" tcp\n",  # missing port
        b"COVE/1 " + TOKEN.encode() + b" udp\n",
        b"COVE/1 " + TOKEN.encode() + b" tcp 0\n",
        b"COVE/1 " + TOKEN.encode() + b" tcp 65536\n",
        b"COVE/1 " + TOKEN.encode() + b" udp 99999\n",
        b"COVE/1 " + TOKEN.encode() + b" tcp abc\n",
        b"COVE/1 " + TOKEN.encode() + b" tcp -1\n",
        b"COVE/1 " + TOKEN.encode() + b" tcp 80 81\n",  # extra port
        b"COVE/1 " + TOKEN.encode() + b" control 1\n",  # op takes no argument
        b"COVE/1 " + TOKEN.encode() + b" echo x\n",
        b"COVE/1 " + TOKEN.encode() + b" docker 2375\n",
        b"COVE/1 " + TOKEN.encode() + b" fs\n",  # fs needs a share number
        b"COVE/1 " + TOKEN.encode() + b" fs 01\n",
        b"COVE/1 " + TOKEN.encode() + b" fs -1\n",
        b"COVE/1 " + TOKEN.encode() + b" fs 64\n",
        b"COVE/1 " + TOKEN.encode() + b" fs 1 2\n",
        b"COVE/1  " + TOKEN.encode() + b" control\n",  # double space shifts the fields
        "COVE/1 t\u00f6ken control\n".encode(),  # not ASCII
        b"COVE/1 \xff\xfe control\n",
    ],
)
def test_parse_header_rejects(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        protocol.parse_header(line)


def test_parse_header_port_error_names_the_op() -> None:
    with pytest.raises(ProtocolError, match="udp needs a port 1-65535"):
        protocol.parse_header(b"COVE/1 x udp 0\n")
    with pytest.raises(ProtocolError, match="control takes no argument"):
        protocol.parse_header(b"COVE/1 x control 5\n")


def test_parse_header_length_limit() -> None:
    # Exactly MAX_HEADER bytes (newline included) is accepted; one more is not.
    prefix = b"COVE/1 "
    suffix = b" control\n"
    ok = prefix + b"a" * (protocol.MAX_HEADER - len(prefix) - len(suffix)) + suffix
    assert len(ok) == protocol.MAX_HEADER
    assert protocol.parse_header(ok).op == "control"
    too_long = prefix + b"a" * (protocol.MAX_HEADER + 1 - len(prefix) - len(suffix)) + suffix
    with pytest.raises(ProtocolError, match="too long"):
        protocol.parse_header(too_long)


def test_token_ok() -> None:
    assert protocol.token_ok(TOKEN, TOKEN)
    assert not protocol.token_ok(TOKEN, TOKEN[:-1] + "c")
    assert not protocol.token_ok(TOKEN, TOKEN[:-1])
    assert not protocol.token_ok(TOKEN, "")
    # An agent that never got a token must refuse everyone, even an empty token.
    assert not protocol.token_ok("", "")
    assert not protocol.token_ok("", TOKEN)


def test_message_round_trip() -> None:
    msg = {"id": 7, "op": "set_time", "ns": 1795000000000000000, "s": "ünï"}
    data = protocol.encode_message(msg)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert b" " not in data  # compact separators
    assert protocol.decode_message(data) == msg
    assert protocol.decode_message(data.rstrip(b"\n")) == msg


@pytest.mark.parametrize("line", [b"[1, 2]\n", b"42\n", b'"hello"\n', b"null\n", b"true\n"])
def test_decode_message_refuses_non_objects(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="JSON object"):
        protocol.decode_message(line)


@pytest.mark.parametrize("line", [b"{\n", b"not json\n", b"", b"\xff\xfe\n",
                                  b"[" * 100_000 + b"\n"])
def test_decode_message_refuses_non_json(line: bytes) -> None:
    """Also JSON nested past the parser's stack (found by fuzzing: a RecursionError ended
    the reading thread, the host's and the agent's alike)."""
    with pytest.raises(ProtocolError):
        protocol.decode_message(line)


def test_frame_layout() -> None:
    assert protocol.frame(b"abc") == b"\x00\x03abc"
    assert protocol.frame(b"") == b"\x00\x00"
    big = b"x" * 0xFFFF
    assert protocol.frame(big)[:2] == b"\xff\xff"
    with pytest.raises(ProtocolError, match="65535"):
        protocol.frame(b"x" * 0x10000)


def test_deframer_split_across_feeds() -> None:
    payload = os.urandom(1000)
    data = protocol.frame(payload)
    d = Deframer()
    out: list[bytes] = []
    for i in range(len(data)):  # one byte at a time, the length prefix split too
        out += d.feed(data[i : i + 1])
        if i < len(data) - 1:
            assert out == []
    assert out == [payload]


def test_deframer_several_frames_in_one_feed() -> None:
    dgrams = [b"one", b"", b"three" * 100, os.urandom(0xFFFF)]
    data = b"".join(protocol.frame(g) for g in dgrams)
    d = Deframer()
    # All but the last byte: the last frame stays pending.
    assert d.feed(data[:-1]) == dgrams[:-1]
    assert d.feed(data[-1:]) == [dgrams[-1]]
    assert d.feed(b"") == []


def test_deframer_empty_datagram() -> None:
    d = Deframer()
    assert d.feed(b"\x00\x00") == [b""]
    assert d.feed(b"\x00\x00\x00\x00\x00\x01z") == [b"", b"", b"z"]
