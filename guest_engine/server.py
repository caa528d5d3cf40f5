"""The agent's end of the guest link: accept, authenticate, dispatch.

Every connection must open with a header carrying the per-boot token (see `protocol`);
anything else is closed without a byte in reply. Control sessions are handled by a
`Controller` the agent supplies; data streams are relayed here.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time

from guest_engine import dockerapi, protocol, relay

log = logging.getLogger(__name__)

HEADER_TIMEOUT = 5.0
# Connections still sending their header, at most: a flood of them (from anything that
# reaches the port) is closed at once instead of costing a thread each for HEADER_TIMEOUT.
MAX_PENDING = 32
TRANSIENT_ACCEPT = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                    errno.ECONNABORTED, errno.EINTR, errno.EAGAIN}


TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not imported at run time: boot time under emulation
    from collections.abc import Callable
    from typing import Any, Protocol

    class Controller(Protocol):
        def handle(self, request: dict[str, Any]) -> dict[str, Any]: ...
        def hello_events(self) -> list[dict[str, Any]]: ...
        def share_stream(self, index: int, conn: socket.socket) -> None: ...


def read_header(sock: socket.socket, timeout: float | None = None) -> bytes:
    """Read exactly the header line, leaving whatever follows it in the socket.

    Raises ProtocolError when the line is not complete within `timeout`.
    """
    deadline = time.monotonic() + (HEADER_TIMEOUT if timeout is None else timeout)
    seen = -1
    while True:
        peek = sock.recv(protocol.MAX_HEADER + 1, socket.MSG_PEEK)
        if not peek:
            raise protocol.ProtocolError("closed before the header")
        nl = peek.find(b"\n")
        if nl >= 0:
            return sock.recv(nl + 1)
        if len(peek) > protocol.MAX_HEADER:
            raise protocol.ProtocolError("header too long")
        if time.monotonic() > deadline:
            raise protocol.ProtocolError("no complete header in time")
        if len(peek) == seen:
            # Nothing new since the last look; wait without busy-looping.
            threading.Event().wait(0.005)
        seen = len(peek)


class ControlSession:
    """One control channel: JSON lines both ways over any file-like byte stream."""

    def __init__(self, rfile: Any, wfile: Any, controller: Controller,
                 on_close: Callable[[ControlSession], None]) -> None:
        self.rfile = rfile
        self.wfile = wfile
        self.controller = controller
        self.on_close = on_close
        self._wlock = threading.Lock()
        self.closed = False

    def send(self, msg: dict[str, Any]) -> None:
        data = protocol.encode_message(msg)
        with self._wlock:
            if self.closed:
                return
            try:
                self.wfile.write(data)
                self.wfile.flush()
            except OSError:
                self.closed = True

    def serve(self) -> None:
        try:
            for ev in self.controller.hello_events():
                self.send(ev)
            while not self.closed:
                line = self.rfile.readline()
                if not line:
                    break
                try:
                    req = protocol.decode_message(line)
                except protocol.ProtocolError as e:
                    self.send({"event": "error", "error": str(e)})
                    continue
                threading.Thread(target=self._answer, args=(req,), daemon=True).start()
        except OSError:
            pass
        finally:
            self.closed = True
            self.on_close(self)

    def _answer(self, req: dict[str, Any]) -> None:
        try:
            reply = self.controller.handle(req)
        except Exception as e:  # noqa: BLE001 - reported to the host
            log.exception("request %s failed", req.get("op"))
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        if "id" in req:
            reply = {"id": req["id"], **reply}
        self.send(reply)


class LinkServer:
    """Accepts link connections on TCP (and on vsock where the host has it: Hyper-V's
    hv_sock, `add_listener`) and pushes events to every control session."""

    def __init__(self, token: str, controller: Controller, port: int = protocol.AGENT_PORT,
                 docker_sock: str = dockerapi.DOCKER_SOCK, host: str = "0.0.0.0") -> None:
        self.token = token
        self.controller = controller
        self.port = port
        self.host = host
        self.docker_sock = docker_sock
        self.sessions: set[ControlSession] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._extra: list[socket.socket] = []
        self._closing = False
        self._pending = threading.BoundedSemaphore(MAX_PENDING)
        # The link's stream ops (`protocol.OPS`; the header parser admits no other):
        # op name -> what serves the stream, given the header's argument.
        self.ops: dict[str, Callable[[socket.socket, int | None], None]] = {
            "control": self._serve_control, "docker": self._relay_docker,
            "tcp": self._relay_tcp, "udp": self._relay_udp, "fs": self._share_stream,
            "echo": self._echo,
        }

    def start(self) -> int:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(128)
        self._listener = s
        self.port = s.getsockname()[1]
        threading.Thread(target=self._accept_loop, args=(s, False), daemon=True,
                         name="link-accept").start()
        return self.port

    def add_listener(self, listener: socket.socket) -> None:
        """Serve the link on a listening vsock socket too: same headers, same token.

        Only the host's connections are taken (peer CID 2); the socket may have served
        the boot config already (`boot.config.receive_boot_config`).
        """
        self._extra.append(listener)
        threading.Thread(target=self._accept_loop, args=(listener, True), daemon=True,
                         name="link-accept-vsock").start()

    def close(self) -> None:
        self._closing = True
        for listener in [self._listener, *self._extra]:
            if listener is None:
                continue
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept thread
            except OSError:
                pass
            listener.close()

    def broadcast(self, msg: dict[str, Any]) -> None:
        with self._lock:
            sessions = list(self.sessions)
        for s in sessions:
            s.send(msg)

    def _accept_loop(self, listener: socket.socket, vsock: bool) -> None:
        delay = 0.01
        while True:
            try:
                conn, addr = listener.accept()
                delay = 0.01
            except OSError as e:
                # Out of descriptors (or a client that gave up): wait and go on; only a
                # closed listener ends the loop.
                if self._closing or e.errno not in TRANSIENT_ACCEPT:
                    return
                log.warning("link accept failed (%s); retrying in %.2f s", e, delay)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if vsock:
                if not protocol.peer_is_host(addr):
                    log.warning("link connection refused: vsock peer %s is not the host", addr)
                    conn.close()
                    continue
            else:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not self._pending.acquire(blocking=False):
                log.warning("link connection refused: %d others are still sending their "
                            "header", MAX_PENDING)
                conn.close()
                continue
            threading.Thread(target=self._handle_pending, args=(conn,), daemon=True).start()

    def _handle_pending(self, conn: socket.socket) -> None:
        """`_handle`, for a connection the accept loop counted as pending: the count goes
        down once its header phase ends, however it ends."""
        self._handle(conn, header_done=self._pending.release)

    def _handle(self, conn: socket.socket,
                header_done: Callable[[], None] = lambda: None) -> None:
        try:
            conn.settimeout(HEADER_TIMEOUT)
            header = protocol.parse_header(read_header(conn))
            if not protocol.token_ok(self.token, header.token):
                raise protocol.ProtocolError("wrong token")
            conn.settimeout(None)
        except (protocol.ProtocolError, OSError) as e:
            log.warning("link connection refused: %s", e)
            conn.close()
            return
        finally:
            header_done()
        try:
            self.serve_op(conn, header)
        except OSError as e:
            log.debug("%s stream ended: %s", header.op, e)
            conn.close()

    def open_control(self, rfile: Any, wfile: Any) -> ControlSession:
        session = ControlSession(rfile, wfile, self.controller, self._drop)
        with self._lock:
            self.sessions.add(session)
        return session

    def _drop(self, session: ControlSession) -> None:
        with self._lock:
            self.sessions.discard(session)

    def serve_op(self, conn: socket.socket, header: protocol.Header) -> None:
        """Serve one authenticated stream by its header's op (`ops`); an OSError ends it."""
        self.ops[header.op](conn, header.arg)

    # -- stream ops: each serves the stream after the header (`protocol`'s docstring) ----

    def _serve_control(self, conn: socket.socket, arg: int | None) -> None:
        session = self.open_control(conn.makefile("rb"), conn.makefile("wb"))
        try:
            session.serve()
        finally:
            conn.close()

    def _relay_docker(self, conn: socket.socket, arg: int | None) -> None:
        target = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            target.connect(self.docker_sock)
        except OSError:
            target.close()
            raise
        relay.pipe(conn, target)

    def _relay_tcp(self, conn: socket.socket, arg: int | None) -> None:
        assert arg is not None
        target = socket.create_connection(("127.0.0.1", arg), timeout=5)
        target.settimeout(None)
        target.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        relay.pipe(conn, target)

    def _relay_udp(self, conn: socket.socket, arg: int | None) -> None:
        assert arg is not None
        self._udp(conn, arg)

    def _share_stream(self, conn: socket.socket, arg: int | None) -> None:
        assert arg is not None
        # Kept open until the kernel takes it (control op mount_share), then closed:
        # the mount holds its own reference to the socket.
        self.controller.share_stream(arg, conn)

    @staticmethod
    def _echo(conn: socket.socket, arg: int | None) -> None:
        buf = bytearray(relay.BUFSIZE)
        with conn:
            while n := conn.recv_into(buf):
                conn.sendall(memoryview(buf)[:n])

    @staticmethod
    def _udp(conn: socket.socket, port: int) -> None:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.connect(("127.0.0.1", port))

        def back() -> None:
            try:
                while True:
                    try:
                        data = u.recv(65535)
                    except ConnectionRefusedError:
                        continue  # an earlier datagram found nobody listening
                    conn.sendall(protocol.frame(data))
            except OSError:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        threading.Thread(target=back, daemon=True).start()
        deframer = protocol.Deframer()
        try:
            while chunk := conn.recv(65536):
                for dgram in deframer.feed(chunk):
                    try:
                        u.send(dgram)
                    except ConnectionRefusedError:
                        pass  # nobody listening yet; UDP just drops it
        finally:
            u.close()
            conn.close()

