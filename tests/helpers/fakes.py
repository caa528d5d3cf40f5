"""Test doubles for the backend: a fake hypervisor driver and a fake guest agent.

`FakeAgent` is the agent's real end of the guest link (`guest_engine.server.LinkServer`)
on 127.0.0.1, with a scripted controller and a fake engine socket (`FakeEngine`) behind
it. `FakeDriver` plays the hypervisor: "booting" the VM starts a `FakeAgent` with the
token from the boot config, "powering it off" closes the agent and every stream to it,
as QEMU's exit closes its forwarded connections. Together they let `desktop.backend`
run end to end with no VM.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import vm_image
from desktop import home
from desktop.drivers import DriverError, VMSpec
from desktop.drivers.shares import SharedFolder
from desktop.link.tcp import TcpLink
from guest_engine import protocol, server
from tests.helpers import ninep_client

AGENT_VERSION = "0.1.0"
ENGINE_VERSION = "26.1.5"
KERNEL = "6.6.30-cove"
HTTP_REPLY = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nOK"
KEEP_ALIVE_REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK"
ECHO_TRAILER = b"<eof>"  # sent by the fake engine after the client's half-close
# An attach, as Docker's clients send it, and the engine's answer that makes the
# connection a raw stream (the fake engine echoes it).
ATTACH = (b"POST /v1.45/containers/c/attach?stream=1&stdin=1&stdout=1 HTTP/1.1\r\n"
          b"Host: api.moby.localhost\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
ATTACH_REPLY = (b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
                b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
BOOT_SERIAL = [
    "[    0.000000] Linux version 6.6.30-cove (fake)",
    "[    0.912345] Run /init as init process",
    "[    1.500000] cove-agent: listening on 10811",
]
CRASH_SERIAL = [
    "[    0.000000] Linux version 6.6.30-cove (fake)",
    "[    0.412000] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI",
    "[    0.413000] Kernel panic - not syncing: Fatal exception in interrupt",
]


def fake_image(folder: Path) -> vm_image.Image:
    """A stand-in for a built image: the backend only hands its paths to the driver."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vmlinuz", "initramfs", "root.sqfs"):
        (folder / name).write_bytes(b"fake " + name.encode())
    (folder / "manifest.json").write_text(json.dumps({"key": "fake-key", "arch": "amd64"}))
    return vm_image.Image(folder, "fake-key", "amd64")


class FakeEngine:
    """Stands in for the guest's /var/run/docker.sock.

    A connection that opens with ``GET `` gets `HTTP_REPLY` once its request head is in;
    one that opens with `ATTACH` gets `ATTACH_REPLY`, then what follows is echoed back as
    it comes, then `ECHO_TRAILER` once the client half-closes (proving the half-close
    arrived and the stream could still answer).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.received: list[bytes] = []
        self.connections = 0
        self.wedged = False  # True: requests are read and never answered
        self.running = 0  # containers GET /containers/json lists
        self.info = {"ServerVersion": ENGINE_VERSION, "OSType": "linux",
                     "Architecture": "x86_64"}  # what GET /info answers
        self.keep_alive = False  # True: HTTP/1.1 GETs are answered on a kept-alive connection
        self.vm_paused: Any = lambda: False  # a request that arrives while True is noted
        self.while_paused: list[bytes] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._accept_loop, name="fake-engine")
        self._accept.start()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), name="fake-engine-conn")
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(15)
            try:
                data = conn.recv(65536)
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if data.startswith(ATTACH):
                    self.received.append(ATTACH)
                    conn.sendall(ATTACH_REPLY)
                    data = data[len(ATTACH):] or conn.recv(65536)
                elif data.startswith(b"GET "):
                    self.received.append(data)
                    if self.vm_paused():
                        self.while_paused.append(data)
                    if self._json_reply(conn, data):
                        return
                    if self.wedged:  # a stopped (or deadlocked) engine: no answer, and
                        # the connection held until it is not wedged any more (or 30 s)
                        deadline = time.monotonic() + 30
                        while self.wedged and time.monotonic() < deadline and \
                                not self._closing.wait(0.05):
                            pass
                        return
                    if self.keep_alive and b" HTTP/1.1\r\n" in data:
                        self._keep_alive(conn, data)
                        return
                    conn.sendall(HTTP_REPLY)
                    return
                while data:
                    conn.sendall(data)
                    data = conn.recv(65536)
                conn.sendall(ECHO_TRAILER)
            except OSError:
                pass

    def _json_reply(self, conn: socket.socket, data: bytes) -> bool:
        """GET /info and GET /containers/json are answered with JSON; True if done."""
        if data.split(b" ", 2)[1].endswith(b"/info"):
            body = json.dumps(self.info).encode()
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
            return True
        if data.startswith(b"GET /containers/json"):
            listed = json.dumps([{"Id": f"c{i}"} for i in range(self.running)])
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
                         b"\r\n" + listed.encode())
            return True
        return False

    def _keep_alive(self, conn: socket.socket, data: bytes) -> None:
        """HTTP/1.1 answers on one connection, one request head after another."""
        first = True  # noted by the caller already
        while True:
            head, sep, data = data.partition(b"\r\n\r\n")
            if not sep:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data = head + chunk
                continue
            if not first:
                self.received.append(head + sep)
                if self.vm_paused():
                    self.while_paused.append(head + sep)
            first = False
            conn.sendall(KEEP_ALIVE_REPLY)

    def close(self) -> None:
        self._closing.set()
        self._accept.join(5)
        self._sock.close()
        for t in self._threads:
            t.join(5)


class FakeController:
    """The agent's side of the control channel, scripted; records every request."""

    def __init__(self, agent: FakeAgent) -> None:
        self.agent = agent
        self.requests: list[dict[str, Any]] = []
        self.hellos = 0
        self._lock = threading.Lock()
        self.share_streams: dict[int, socket.socket] = {}
        self._streams_cv = threading.Condition()
        self.share_listings: dict[int, list[str]] = {}  # what a "mount" found in each
        self.mount_error = ""  # mount_share answers this error when set
        self.mounted_streams: dict[int, socket.socket] = {}  # the streams "mounted"
        self.published: list[dict[str, Any]] = []  # the ports each new session is told
        self.on_release_memory: Callable[[], None] = lambda: None  # the guest's reports start

    def hello_events(self) -> list[dict[str, Any]]:
        self.hellos += 1
        ready = not self.agent.never_ready and not self.agent.engine_error
        hello = {
            "event": "hello", "agent_version": AGENT_VERSION,
            "engine_state": "running" if ready else (
                "failed" if self.agent.engine_error else "starting"),
            "engine_error": self.agent.engine_error,
            "engine_version": ENGINE_VERSION if ready else "", "kernel": KERNEL,
            "image_key": "fake-key", "agent_start": 0.5,
            "engine_ready_at": 1.0 if ready else None,
        }
        if ready:
            engine = {"event": "engine", "state": "running", "version": ENGINE_VERSION,
                      "ready_at": 1.0}
        else:
            engine = {"event": "engine", "state": "starting"}
        # As the agent: the port list at every new session, even empty.
        ports = {"event": "ports", "added": list(self.published), "removed": [],
                 "snapshot": True}
        return [hello, engine, ports]

    def share_stream(self, index: int, conn: socket.socket) -> None:
        with self._streams_cv:
            self.share_streams[index] = conn
            self._streams_cv.notify_all()

    def _mount_share(self, index: int) -> dict[str, Any]:
        """What the kernel does when it mounts a host-served share: 9P version, attach,
        then (as `ls` would) open and list the root."""
        # The stream's header may be read after the request arrives, as in the real agent.
        with self._streams_cv:
            self._streams_cv.wait_for(lambda: index in self.share_streams, timeout=5)
            conn = self.share_streams.pop(index, None)
        if conn is None:
            return {"ok": False, "error": f"no fs {index} stream came from the host"}
        if self.mount_error:
            conn.close()
            return {"ok": False, "error": self.mount_error}
        client = ninep_client.Client(conn)
        client.version(65536)
        client.attach(0, ninep_client.NOFID, "root", "", 0)
        client.lopen(0, 0)
        names = [e[3] for e in client.readdir(0, 0, 8192)]
        self.share_listings[index] = sorted(n for n in names if n not in (".", ".."))
        old = self.mounted_streams.pop(index, None)
        if old is not None:
            old.close()  # the dead mount's stream, detached
        self.mounted_streams[index] = conn  # as the kernel: kept while mounted
        return {"ok": True, "result": {"index": index}}

    def ops(self, op: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r.get("op") == op]

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.requests.append(req)
        op = req.get("op")
        answer = self._OPS.get(op) if isinstance(op, str) else None
        if answer is None:
            return {"ok": False, "error": f"unknown op {op!r}"}
        return answer(self, req)

    # -- the ops, one method each (`_OPS` maps the op's name to it) --

    def _hello(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "result": self.hello_events()[0]}

    def _status(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "result": {**self.hello_events()[0], "uptime": 12.5}}

    def _ping(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "result": "pong"}

    def _set_time(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "result": {"adjusted": False, "drift_ms": 1.0}}

    def _shutdown(self, req: dict[str, Any]) -> dict[str, Any]:
        if not self.agent.ignore_shutdown:
            self.agent.on_shutdown()
        return {"ok": True, "result": "shutting down"}

    def _logs(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "result": {"name": req.get("name"),
                                       "lines": [f"{req.get('name')} line 1"]}}

    def _engine_config(self, req: dict[str, Any]) -> dict[str, Any]:
        config = req.get("config")
        if not isinstance(config, dict) or "bogus" in config:
            return {"ok": False, "error": "unable to configure the Docker daemon: "
                                          "the following directives don't match any "
                                          "configuration option: bogus"}
        return {"ok": True, "result": {"applied": True}}

    def _ports(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "result": []}

    def _touch(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "result": len(req.get("changes") or [])}

    def _mount(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._mount_share(int(req.get("index", -1)))

    def _trim(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "result": {"trimmed": "/mnt/data: 0 B (0 bytes) trimmed",
                                       "free": 1 << 30}}

    def _release_memory(self, req: dict[str, Any]) -> dict[str, Any]:
        self.on_release_memory()
        return {"ok": True, "result": {"free_before": 1 << 30, "free_after": 3 << 29}}

    _OPS: dict[str, Callable[[FakeController, dict[str, Any]], dict[str, Any]]] = {
        "hello": _hello, "status": _status, "ping": _ping, "set_time": _set_time,
        "shutdown": _shutdown, "logs": _logs, "engine_config": _engine_config,
        "ports": _ports, "touch": _touch, "mount_share": _mount, "trim": _trim,
        "release_memory": _release_memory,
    }


class _TrackingLinkServer(server.LinkServer):
    """A LinkServer that remembers its open streams, so a test can cut them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams: dict[socket.socket, str] = {}
        self._streams_lock = threading.Lock()

    def serve_op(self, conn: socket.socket, header: protocol.Header) -> None:
        with self._streams_lock:
            self.streams[conn] = header.op
        try:
            super().serve_op(conn, header)
        finally:
            with self._streams_lock:
                self.streams.pop(conn, None)

    def cut(self, op: str | None = None) -> int:
        """Shut down the open streams (of one op, or all); returns how many."""
        with self._streams_lock:
            conns = [c for c, o in self.streams.items() if op is None or o == op]
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return len(conns)


class FakeAgent:
    """The guest agent: the real LinkServer on 127.0.0.1 with `FakeController`."""

    def __init__(self, token: str, engine_sock: Path, *, never_ready: bool = False,
                 ignore_shutdown: bool = False, on_shutdown: Any = None,
                 engine_error: str = "", port: int = 0) -> None:
        self.token = token
        self.never_ready = never_ready
        self.engine_error = engine_error
        self.ignore_shutdown = ignore_shutdown
        self.on_shutdown = on_shutdown or (lambda: None)
        self.controller = FakeController(self)
        # `port`: where the host reaches it (a hypervisor's forward listens there).
        self.server = _TrackingLinkServer(token, self.controller, port=port, host="127.0.0.1",
                                          docker_sock=str(engine_sock))
        self.port = self.server.start()

    def broadcast(self, msg: dict[str, Any]) -> None:
        self.server.broadcast(msg)

    def drop_control(self) -> int:
        """Cut the control sessions (the agent keeps listening for new ones)."""
        return self.server.cut("control")

    def close(self) -> None:
        self.server.close()
        self.server.cut()
        for conn in list(self.controller.mounted_streams.values()):
            conn.close()  # the VM is off: its mounts are gone


class FakeDriver:
    """A hypervisor with no VM. Options:

    crash_boots      the first N boots "crash": a kernel panic in the serial log, the VM
                     off again, no agent
    ignore_shutdown  the agent acknowledges "shutdown" but the VM never powers off
    never_ready      the agent says hello but the engine never reaches "running"
    engine_error     the agent says the engine cannot start, and why (no data disk)
    silent_agent     the VM runs but no agent ever listens
    share_mount_error  the agent fails every "link" share's mount with this message
    saves            `save` keeps the VM's state (as QEMU with no share does); otherwise
                     it says why not, as for a VM QEMU cannot migrate

    "link" shares appear in the VM under /mnt/host (as on Windows).
    """

    name = "fake"

    def __init__(self, engine_sock: Path, *, crash_boots: int = 0,
                 ignore_shutdown: bool = False, never_ready: bool = False,
                 silent_agent: bool = False, power_off_delay: float = 0.1,
                 share_mount_error: str = "", engine_error: str = "",
                 saves: bool = False) -> None:
        self.engine_sock = engine_sock
        self.saves = saves
        self.saved_host: dict[str, Any] | None = None  # the state "on disk"
        self.save_calls: list[dict[str, Any]] = []
        self.restored = 0  # starts that loaded a saved state
        self.engine_error = engine_error
        self.share_mount_error = share_mount_error
        self.crash_boots = crash_boots
        self.ignore_shutdown = ignore_shutdown
        self.never_ready = never_ready
        self.silent_agent = silent_agent
        self.power_off_delay = power_off_delay
        self.accel = "tcg"
        self.accel_notes: list[str] = []
        self.created: list[VMSpec] = []
        self.closed_ports: list[object] = []  # each boot's config's private_host_ports
        self.share_notes: list[str] = []  # what resolve_shares says of its choices
        self.started: list[VMSpec] = []
        self.tokens: list[str] = []
        self.stop_calls: list[float] = []
        self.kill_calls = 0
        self.deleted: list[VMSpec] = []
        self.agent: FakeAgent | None = None
        self.agents: list[FakeAgent] = []
        self.spec: VMSpec | None = None
        self._running = False
        self._off = threading.Event()
        self._off.set()
        self._lock = threading.Lock()
        self._timers: list[threading.Timer] = []
        self.paused = False
        self.paused_at = 0.0  # monotonic, at the last pause
        # The hypervisor's process as pid() names it (this test's process when unset): a
        # test gives a process whose memory falls as QEMU's does when the guest reports.
        self.process_pid: int | None = None
        self.paused_calls = 0
        self.resumed_calls = 0
        self.refuse_pause = False

    # -- the Driver protocol -----------------------------------------------------------

    def available(self) -> tuple[bool, str]:
        return True, ""

    def watch(self, on_resume: Any) -> None:
        self.on_resume = on_resume

    def find_orphan(self, folder: Path) -> int | None:
        return None

    def stop_orphan(self, folder: Path) -> str | None:
        return None

    def create(self, spec: VMSpec) -> bool:
        self.created.append(spec)
        blank = not spec.data_disk.exists()
        spec.data_disk.touch()
        return blank

    def start(self, spec: VMSpec) -> None:
        self.spec = spec
        self.started.append(spec)
        if getattr(self, "_restoring", False):  # loaded once, then gone (as QEMU's)
            self._restoring, self.saved_host = False, None
            self.restored += 1
        config = json.loads(spec.boot_config.read_text())
        token = config["token"]
        self.tokens.append(token)
        self.closed_ports.append(config.get("private_host_ports"))
        if spec.serial_log.exists():  # as both real drivers: the previous boot's is kept
            spec.serial_log.replace(spec.serial_log.with_name(home.SERIAL_PREV_LOG))
        if len(self.started) <= self.crash_boots:
            spec.serial_log.write_text("\n".join(CRASH_SERIAL) + "\n")
            return  # the VM ran for a moment and is off again
        spec.serial_log.write_text("\n".join(BOOT_SERIAL) + "\n")
        with self._lock:
            self._running = True
            self._off.clear()
        if not self.silent_agent:
            self.agent = FakeAgent(token, self.engine_sock, never_ready=self.never_ready,
                                   ignore_shutdown=self.ignore_shutdown,
                                   on_shutdown=self.power_off_later,
                                   engine_error=self.engine_error)
            self.agent.controller.mount_error = self.share_mount_error
            self.agents.append(self.agent)

    def status(self) -> str:
        return "running" if self._running else "stopped"

    def stop(self, timeout: float = 30) -> None:
        self.stop_calls.append(timeout)
        self.power_off()

    def kill(self) -> None:
        self.kill_calls += 1
        self.power_off()

    def pause(self) -> None:
        """The vCPUs stop (recorded; the fake engine can tell, `FakeEngine.vm_paused`)."""
        self.paused_calls += 1
        self.paused_at = time.monotonic()
        if self.refuse_pause:
            raise DriverError("the fake hypervisor refused to pause")
        self.paused = True

    def resume(self) -> None:
        self.resumed_calls += 1
        self.paused = False
        if getattr(self, "on_resume", None) is not None:
            self.on_resume()

    def wait(self, timeout: float | None) -> bool:
        return self._off.wait(timeout)

    def pid(self) -> int | None:
        if not self._running:
            return None
        return self.process_pid or os.getpid()

    def save(self, host: dict[str, Any]) -> str:
        self.save_calls.append(host)
        if not self.saves:
            return "the fake VM cannot be saved"
        self.saved_host = host
        self.power_off()
        return ""

    def saved(self, spec: VMSpec) -> tuple[dict[str, Any] | None, str]:
        self._restoring = self.saved_host is not None
        return self.saved_host, ""

    def delete(self, spec: VMSpec) -> None:
        self.saved_host = None
        self.deleted.append(spec)
        spec.data_disk.unlink(missing_ok=True)

    def link_address(self) -> tuple[str, int]:
        assert self.spec is not None
        agent = self.agent
        if agent is not None and self._running:
            return "127.0.0.1", agent.port
        return "127.0.0.1", 0  # nothing listens there

    def ssh_address(self) -> tuple[str, int] | None:
        return None  # the fake agent runs no SSH server

    def private_host_ports(self) -> list[int]:
        # As QEMU's: a fresh pair per boot, kept until that boot's start().
        n = len(self.started)
        return [40000 + 2 * n, 40001 + 2 * n]

    def make_link(self, token: str) -> TcpLink:
        return TcpLink(*self.link_address(), token)

    def resolve_shares(self, shares: list[tuple[str, str]]) -> tuple[list[SharedFolder],
                                                                     list[str]]:
        return ([SharedFolder(p, f"cove{i}", "9p" if t == "auto" else t,
                              vm_path="/mnt/host" + p if t == "link" else "")
                 for i, (p, t) in enumerate(shares)], list(self.share_notes))

    # -- for tests ---------------------------------------------------------------------

    def serial(self, line: str) -> None:
        """The guest prints a line on its console."""
        assert self.spec is not None
        with self.spec.serial_log.open("a") as f:
            f.write(line + "\n")

    def power_off(self) -> None:
        """The VM ends (a clean power-off or a crash: the host sees the same)."""
        with self._lock:
            self._running = False
        if self.agent is not None:
            self.agent.close()
        self._off.set()

    def power_off_later(self) -> None:
        t = threading.Timer(self.power_off_delay, self.power_off)
        self._timers.append(t)
        t.start()

    def close(self) -> None:
        self.power_off()
        for t in self._timers:
            t.cancel()
            t.join(5)
