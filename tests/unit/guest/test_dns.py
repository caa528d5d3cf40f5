"""The VM's resolver: local answers for the host's names, everything else relayed."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from guest_engine import dns

NAMES = {"host.docker.internal": "10.0.2.2", "gateway.docker.internal": "10.0.2.2"}


def query(name: str, qtype: int = dns.QTYPE_A, qid: int = 0x1234) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)


def answers(reply: bytes) -> tuple[int, int, int, list[str]]:
    """(id, rcode, ancount, A addresses) of a reply with one question."""
    qid, flags, _, an, _, _ = struct.unpack("!HHHHHH", reply[:12])
    _, _, _, _, end = dns.parse_question(reply)
    addrs = []
    i = end
    for _ in range(an):
        _, rtype, _, _, rdlen = struct.unpack("!HHHIH", reply[i:i + 12])
        if rtype == dns.QTYPE_A:
            addrs.append(socket.inet_ntoa(reply[i + 12:i + 12 + rdlen]))
        i += 12 + rdlen
    return qid, flags & 0xF, an, addrs


def test_parse_question_reads_name_and_type() -> None:
    qid, name, qtype, qclass, end = dns.parse_question(query("Host.Docker.Internal", 28))
    assert (qid, name, qtype, qclass) == (0x1234, "host.docker.internal", 28, 1)
    assert end == len(query("Host.Docker.Internal", 28))


@pytest.mark.parametrize("bad", [b"", b"\0" * 11, query("a.b")[:-3],
                                 struct.pack("!HHHHHH", 1, 0x0100, 2, 0, 0, 0) + b"\0\0\1\0\1"])
def test_malformed_messages_are_refused(bad: bytes) -> None:
    with pytest.raises(dns.DNSError):
        dns.parse_question(bad)
    assert dns.local_answer(bad, NAMES) is None
    assert dns.servfail(bad) is None


def test_a_response_is_never_answered_as_a_query() -> None:
    msg = bytearray(query("host.docker.internal"))
    msg[2] |= 0x80
    assert dns.local_answer(bytes(msg), NAMES) is None


def test_host_names_are_answered_locally_case_insensitively() -> None:
    reply = dns.local_answer(query("HOST.docker.internal."[:-1]), NAMES)
    assert reply is not None
    assert answers(reply) == (0x1234, 0, 1, ["10.0.2.2"])
    assert dns.local_answer(query("example.org"), NAMES) is None


def test_aaaa_for_a_host_name_is_an_empty_answer_not_an_error() -> None:
    reply = dns.local_answer(query("gateway.docker.internal", dns.QTYPE_AAAA), NAMES)
    assert reply is not None
    assert answers(reply) == (0x1234, 0, 0, [])


def test_nameservers_are_read_from_resolv_conf() -> None:
    text = "# comment\nsearch lan\nnameserver 10.0.2.3\nnameserver  192.168.1.1 \noptions x\n"
    assert dns.read_nameservers(text) == ["10.0.2.3", "192.168.1.1"]


class FakeUpstream:
    """A DNS server on 127.0.0.1 answering every A query with 192.0.2.7 (UDP and TCP)."""

    def __init__(self) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.port = self.udp.getsockname()[1]
        self.tcp = socket.socket()
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", self.port))
        self.tcp.listen(4)
        self.seen: list[bytes] = []
        self.closed = False
        threading.Thread(target=self._udp, daemon=True).start()
        threading.Thread(target=self._tcp, daemon=True).start()

    def answer(self, msg: bytes) -> bytes:
        self.seen.append(msg)
        _, _, _, _, end = dns.parse_question(msg)
        return (msg[:2] + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0) + msg[12:end]
                + struct.pack("!HHHIH", 0xC00C, 1, 1, 30, 4) + socket.inet_aton("192.0.2.7"))

    def _udp(self) -> None:
        while not self.closed:
            try:
                msg, addr = self.udp.recvfrom(4096)
                # A datagram that is no query (an empty one: the socket shut down at
                # close) gets no answer, as from a real server.
                reply = self.answer(msg)
            except dns.DNSError:
                continue
            except OSError:
                return
            self.udp.sendto(reply, addr)

    def _tcp(self) -> None:
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            with conn:
                msg = dns._read_framed(conn)
                if msg:
                    r = self.answer(msg)
                    conn.sendall(struct.pack("!H", len(r)) + r)

    def close(self) -> None:
        self.closed = True
        try:  # wakes the thread in recvfrom: a bare close would leave it blocked, bound
            self.udp.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.udp.close()
        self.tcp.close()


@pytest.fixture
def forwarder():
    up = FakeUpstream()
    fwd = dns.Forwarder("127.0.0.1", ["127.0.0.1"], NAMES, port=0, upstream_port=up.port)
    fwd.start()
    yield fwd, up
    fwd.close()
    up.close()


def udp_ask(addr: tuple[str, int], msg: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(msg, addr)
        return s.recv(4096)


def tcp_ask(addr: tuple[str, int], msg: bytes) -> bytes:
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(struct.pack("!H", len(msg)) + msg)
        reply = dns._read_framed(s)
        assert reply is not None
        return reply


def test_udp_local_name_never_reaches_upstream(forwarder) -> None:
    fwd, up = forwarder
    assert answers(udp_ask(fwd.address, query("host.docker.internal")))[3] == ["10.0.2.2"]
    assert up.seen == [] and fwd.local_answers == 1


def test_udp_other_names_are_relayed_under_the_clients_id(forwarder) -> None:
    fwd, up = forwarder
    reply = udp_ask(fwd.address, query("example.org", qid=0xBEEF))
    assert answers(reply) == (0xBEEF, 0, 1, ["192.0.2.7"])
    assert len(up.seen) == 1 and dns.parse_question(up.seen[0])[1] == "example.org"


def test_tcp_serves_both_kinds_on_one_connection(forwarder) -> None:
    fwd, up = forwarder
    assert answers(tcp_ask(fwd.address, query("gateway.docker.internal")))[3] == ["10.0.2.2"]
    assert answers(tcp_ask(fwd.address, query("example.org", qid=7))) == (7, 0, 1,
                                                                            ["192.0.2.7"])


def test_without_upstreams_other_names_fail_fast() -> None:
    fwd = dns.Forwarder("127.0.0.1", [], NAMES, port=0)
    fwd.start()
    try:
        qid, rcode, an, _ = answers(udp_ask(fwd.address, query("example.org", qid=9)))
        assert (qid, rcode, an) == (9, 2, 0)  # SERVFAIL, at once
    finally:
        fwd.close()


def test_the_udp_loop_waits_for_a_datagram_not_a_timer_and_close_ends_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle VM's forwarder must not wake on a timer (it woke every second): with no
    query waiting for an upstream it blocks with no timeout; with one waiting, until
    that query is due to be swept; close() ends the loop at once."""
    import selectors
    import threading
    import time

    timeouts: list[float | None] = []
    real = selectors.DefaultSelector

    class Recording(real):  # type: ignore[valid-type,misc]
        def select(self, timeout=None):  # type: ignore[no-untyped-def]
            timeouts.append(timeout)
            return super().select(timeout)

    monkeypatch.setattr(selectors, "DefaultSelector", Recording)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # an upstream that never answers
    silent.bind(("127.0.0.1", 0))
    fwd = dns.Forwarder("127.0.0.1", ["127.0.0.1"], NAMES, port=0,
                        upstream_port=silent.getsockname()[1])
    fwd.start()
    try:
        deadline = time.monotonic() + 5
        while not timeouts and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert timeouts == [None]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.sendto(query("example.org", qid=3), fwd.address)
            silent.settimeout(5)
            assert silent.recv(4096)  # relayed; no answer comes
        time.sleep(0.2)
        assert timeouts[-1] == dns.PENDING_SECONDS
        loop = next(t for t in threading.enumerate() if t.name == "dns-udp")
    finally:
        fwd.close()
        silent.close()
    loop.join(1)
    assert not loop.is_alive()


def test_a_forwarder_closed_unstarted_leaves_no_socket_open() -> None:
    fwd = dns.Forwarder("127.0.0.1", [], NAMES, port=0)
    fwd.close()
    assert [s.fileno() for s in (fwd._udp, fwd._tcp, fwd._up, fwd._wake_r,
                                 fwd._wake_w)] == [-1] * 5
