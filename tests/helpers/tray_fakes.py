"""Test doubles for the tray: a fake backend and a fake Docker engine, both real servers.

`FakeBackend` listens on the instance's control.sock and speaks the backend's control
protocol (desktop/backend.py `_handle_control`): one JSON request per connection
answered with one line, and `events` turning the connection into a JSON-lines stream
(history first). It writes the instance's pid file with the test's own pid, so
`pidfile.read_live` sees a running backend until it is stopped.

`FakeDockerAPI` is a small HTTP/1.1 server on a unix socket answering the Docker Engine
API calls the dashboard makes through the real Docker SDK, with chunked streams for
`/events` and followed logs that the test feeds.
"""

from __future__ import annotations

import json
import queue
import re
import select
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from desktop import pidfile
from desktop.instance import Instance

ENGINE_VERSION = "26.1.5"

Query = dict[str, list[str]]
"""A request's query string, parsed (urllib.parse.parse_qs)."""


class FakeBackend:
    def __init__(self, inst: Instance, state: str = "running") -> None:
        self.inst = inst
        inst.ensure_folder()
        self.requests: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        self.state = state
        self.engine_config_error = ""
        self.on_trim: Callable[[], None] = lambda: None  # the guest's fstrim, for a test
        # As the real status: the accelerator and why, the context, Resource Saver.
        self.extra_status: dict[str, Any] = {
            "accel": "tcg", "accel_notes": ["/dev/kvm cannot run this guest: software "
                                            "emulation (slower)"],
            "context": "cove-t", "resource_saver": {"minutes": 5.0, "resting": False}}
        self._subs: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(inst.control_socket))
        self._sock.listen(16)
        pidfile.write(inst.pid_file)
        if state:
            self.emit("starting", step="vm")
            if state == "running":
                self.emit("running", engine_version=ENGINE_VERSION, seconds=1.0)
        self._accept = threading.Thread(target=self._accept_loop, name="fake-backend")
        self._accept.start()

    def ops(self, op: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r.get("op") == op]

    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def emit(self, kind: str, **fields: Any) -> None:
        ev = {"time": round(time.time(), 3), "event": kind, **fields}
        if kind in ("starting", "running", "degraded", "stopping", "stopped", "error"):
            self.state = kind
        line = json.dumps(ev).encode() + b"\n"
        with self._lock:
            self.history.append(ev)
            for s in list(self._subs):
                try:
                    s.sendall(line)
                except OSError:
                    self._subs.remove(s)

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), name="fake-backend-conn")
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        rfile = conn.makefile("rb")
        try:
            line = rfile.readline()
            if not line:
                return
            req = json.loads(line)
            with self._lock:
                self.requests.append(req)
            op = req.get("op")
            if op == "events":
                with self._lock:
                    if req.get("history", True):
                        for ev in self.history:
                            conn.sendall(json.dumps(ev).encode() + b"\n")
                    self._subs.append(conn)
                while rfile.readline():
                    pass
                return
            try:
                reply = {"ok": True, "result": self._op(op, req)}
            except ValueError as e:
                reply = {"ok": False, "error": str(e)}
            conn.sendall(json.dumps(reply).encode() + b"\n")
            if op == "stop":
                self.stop_now()
        except OSError:
            pass
        finally:
            rfile.close()
            with self._lock:
                if conn in self._subs:
                    self._subs.remove(conn)
            conn.close()

    def _op(self, op: str, req: dict[str, Any]) -> Any:
        if op == "ping":
            return "pong"
        if op == "status":
            with self._lock:
                failed = {(e["proto"], e["host_port"]): e for e in self.history
                          if e["event"] == "port_failed"}
            return {"state": self.state, "instance": self.inst.name,
                    "engine_version": ENGINE_VERSION if self.state == "running" else "",
                    "reason": "", "ssh_config": str(self.inst.folder / "ssh_config"),
                    "ports": [{"proto": p, "host_port": n, "state": "failed",
                               "reason": e.get("reason", ""), "container": e.get("container")}
                              for (p, n), e in failed.items()], **self.extra_status}
        if op == "stop":
            return "stopping"
        if op == "trim":
            self.on_trim()
            return {"trimmed": "/mnt/data: 5 MiB (5242880 bytes) trimmed", "free": 1}
        if op == "agent_status":  # the guest's /proc/meminfo, in bytes as the agent sends
            return {"memory": {"total": 2_048_000_000, "available": 1_536_000_000}}
        if op == "engine_config":
            if self.engine_config_error:
                raise ValueError(f"the engine refused the config: {self.engine_config_error}")
            return {"applied": True}
        raise ValueError(f"unknown op {op!r}")

    def stop_now(self) -> None:
        """What the real backend does when asked to stop: events, then it is gone."""
        self.emit("stopping", reason="requested")
        self.emit("stopped")
        self.close()

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        with self._lock:
            subs, self._subs = self._subs, []
        for s in subs:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.inst.control_socket.unlink(missing_ok=True)
        pidfile.remove_if_ours(self.inst.pid_file)
        if threading.current_thread() is not self._accept:
            self._accept.join(5)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(5)


# -- the engine --------------------------------------------------------------------------


def container(cid: str, name: str, image: str, state: str = "running",
              ports: list[dict[str, Any]] | None = None, image_id: str = "",
              volumes: tuple[str, ...] = (), labels: dict[str, str] | None = None
              ) -> dict[str, Any]:
    """A container as GET /containers/json lists it (the fields the dashboard reads)."""
    return {"Id": cid, "Names": [f"/{name}"], "Image": image, "ImageID": image_id,
            "State": state,
            "Status": "Up 2 minutes" if state == "running" else "Exited (0) 1 hour ago",
            "Created": 1_790_000_000, "Ports": ports or [], "Labels": labels or {},
            "Mounts": [{"Type": "volume", "Name": v, "Destination": f"/{v}",
                        "Driver": "local"} for v in volumes]
            + [{"Type": "bind", "Source": "/home/me", "Destination": "/src"}]}


def default_containers() -> list[dict[str, Any]]:
    return [
        container("c1" * 32, "web", "nginx:1.27", image_id="sha256:" + "a" * 64, ports=[
            {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
            {"IP": "::", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
            {"IP": "0.0.0.0", "PrivatePort": 53, "PublicPort": 5353, "Type": "udp"}]),
        container("c2" * 32, "db", "postgres:16", volumes=("pgdata",), ports=[
            {"IP": "127.0.0.1", "PrivatePort": 5432, "PublicPort": 5432, "Type": "tcp"}]),
        container("c3" * 32, "job", "busybox", state="exited", volumes=("pgdata",),
                  image_id="sha256:" + "a" * 64),
    ]


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    api: FakeDockerAPI


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def address_string(self) -> str:
        return "fake-client"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        self.server.api.handle(self)

    do_GET = do_POST = do_DELETE = do_HEAD = _handle


class FakeDockerAPI:
    """The calls it got are in `calls` as (method, path without the version prefix)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.containers = default_containers()
        self.images = [
            {"Id": "sha256:" + "a" * 64, "RepoTags": ["nginx:1.27"], "Size": 187_000_000,
             "Created": 1_780_000_000},
            {"Id": "sha256:" + "b" * 64, "RepoTags": ["<none>:<none>"], "Size": 5_000_000,
             "Created": 1_770_000_000},
        ]
        self.volumes = [{"Name": "pgdata", "Driver": "local",
                         "Mountpoint": "/var/lib/docker/volumes/pgdata/_data"}]
        self.calls: list[tuple[str, str]] = []
        self.df_types: list[str] = []  # each /system/df's ?type= ("" for all)
        self.volume_sizes: dict[str, int] = {}  # what df says a volume takes (5 MB)
        self.stats_reads: dict[str, int] = {}
        self.pulls: list[str] = []
        self.created: list[tuple[str, dict[str, Any]]] = []
        self.on_prune: Callable[[], None] = lambda: None  # the guest's trim, for a test
        self.info = {"ServerVersion": ENGINE_VERSION, "KernelVersion": "6.12.0-cove",
                     "OperatingSystem": "Debian GNU/Linux 13 (trixie)", "NCPU": 2,
                     "HttpProxy": "http://alice:s3cret@proxy.example:3128"}
        self._streams: list[queue.Queue[bytes | None]] = []
        self._logs: dict[str, list[queue.Queue[bytes | None]]] = {}
        self._lock = threading.Lock()
        self.server = _Server(str(path), _Handler)
        self.server.api = self
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, name="fake-docker")
        self._thread.start()

    # -- feeding streams -----------------------------------------------------------------

    def event(self, type_: str = "container", action: str = "start", **attrs: Any) -> None:
        msg = {"Type": type_, "Action": action, "Actor": {"ID": "x", "Attributes": attrs},
               "time": int(time.time())}
        with self._lock:
            for q in self._streams:
                q.put(json.dumps(msg).encode() + b"\n")

    def log(self, cid: str, line: str) -> None:
        frame = struct.pack(">BxxxL", 1, len(line) + 1) + line.encode() + b"\n"
        with self._lock:
            for q in self._logs.get(cid, []):
                q.put(frame)

    def log_followers(self, cid: str) -> int:
        with self._lock:
            return len(self._logs.get(cid, []))

    def event_streams(self) -> int:
        with self._lock:
            return len(self._streams)

    def close(self) -> None:
        with self._lock:
            for q in self._streams + [q for qs in self._logs.values() for q in qs]:
                q.put(None)
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
        self.path.unlink(missing_ok=True)

    # -- serving -------------------------------------------------------------------------

    def _find(self, ref: str) -> dict[str, Any] | None:
        for c in self.containers:
            if c["Id"] == ref or c["Names"][0] == "/" + ref:
                return c
        return None

    def handle(self, h: _Handler) -> None:
        url = urlsplit(h.path)
        path = re.sub(r"^/v1\.\d+", "", url.path)
        method = h.command
        with self._lock:
            self.calls.append((method, path))
        route = self._ROUTES.get((method, path))
        if route is not None:
            return route(self, h, parse_qs(url.query))
        m = re.fullmatch(r"/containers/([^/]+)(?:/(\w+))?", path)
        if m and m.group(1) != "json" and self._container(h, method, m.group(1), m.group(2)):
            return None
        if method == "DELETE" and path.startswith("/images/"):
            return self._delete_image(h, path.removeprefix("/images/"))
        if method == "DELETE" and path.startswith("/volumes/"):
            return self._delete_volume(h, path.removeprefix("/volumes/"))
        return self._json(h, {"message": f"page not found: {method} {path}"}, 404)

    # -- the routes: (method, path) in `_ROUTES`, then one container's, then deletes --

    def _ping(self, h: _Handler, q: Query) -> None:
        self._send(h, 200, b"OK", "text/plain")

    def _version(self, h: _Handler, q: Query) -> None:
        self._json(h, {"Version": ENGINE_VERSION, "ApiVersion": "1.45",
                       "MinAPIVersion": "1.24", "Os": "linux"})

    def _info(self, h: _Handler, q: Query) -> None:
        self._json(h, self.info)

    def _containers(self, h: _Handler, q: Query) -> None:
        everything = q.get("all", ["0"])[0] in ("1", "true", "True")
        self._json(h, [c for c in self.containers if everything or c["State"] == "running"])

    def _images(self, h: _Handler, q: Query) -> None:
        self._json(h, self.images)

    def _prune_images(self, h: _Handler, q: Query) -> None:
        """Untagged images; with the filter dangling=false, every image no container
        uses (as the engine's prune)."""
        filters = json.loads(q.get("filters", ["{}"])[0])
        used = {c.get("ImageID") for c in self.containers}
        if filters.get("dangling") in (["false"], {"false": True}):
            gone = [i for i in self.images if i["Id"] not in used]
        else:
            gone = [i for i in self.images if i["RepoTags"] == ["<none>:<none>"]]
        self.images = [i for i in self.images if i not in gone]
        self._json(h, {"ImagesDeleted": [{"Deleted": i["Id"]} for i in gone],
                       "SpaceReclaimed": sum(i["Size"] for i in gone)})

    def _volumes(self, h: _Handler, q: Query) -> None:
        self._json(h, {"Volumes": self.volumes, "Warnings": None})

    def _prune_volumes(self, h: _Handler, q: Query) -> None:
        gone, self.volumes = self.volumes, []
        self._json(h, {"VolumesDeleted": [v["Name"] for v in gone], "SpaceReclaimed": 4096})

    def _pull(self, h: _Handler, q: Query) -> None:
        """POST /images/create: as the engine answers. "nosuch..." is refused at once
        (404); "offline/..." fails inside the stream, after its first message; anything
        else streams two layers' progress and is then listed."""
        name, tag = q.get("fromImage", [""])[0], q.get("tag", ["latest"])[0]
        self.pulls.append(f"{name}:{tag}")
        if name.startswith("nosuch"):
            return self._json(h, {"message": f"pull access denied for {name}, repository "
                                  "does not exist or may require 'docker login': denied: "
                                  "requested access to the resource is denied"}, 404)
        msgs: list[dict[str, Any]] = [{"status": f"Pulling from {name}", "id": tag}]
        if name.startswith("offline/"):
            msgs.append({"errorDetail": {"message": "dial tcp: lookup registry.example: "
                                                    "no such host"},
                         "error": "dial tcp: lookup registry.example: no such host"})
        else:
            for layer, size in (("l1", 3_000_000), ("l2", 1_000_000)):
                msgs += [{"status": "Pulling fs layer", "id": layer, "progressDetail": {}},
                         {"status": "Downloading", "id": layer,
                          "progressDetail": {"current": size // 2, "total": size}},
                         {"status": "Download complete", "id": layer, "progressDetail": {}},
                         {"status": "Pull complete", "id": layer, "progressDetail": {}}]
            msgs.append({"status": f"Status: Downloaded newer image for {name}:{tag}"})
            self.images.append({"Id": "sha256:" + "e" * 64, "RepoTags": [f"{name}:{tag}"],
                                "Size": 4_000_000, "Created": 1_790_000_000})
        # Chunked, a message a chunk, as the engine streams it (the SDK decodes a stream
        # only when it is chunked).
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for m in msgs:
            item = json.dumps(m).encode() + b"\r\n"
            h.wfile.write(f"{len(item):x}\r\n".encode() + item + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()

    def _create(self, h: _Handler, q: Query) -> None:
        """POST /containers/create: kept in `created` (name, body) and listed, created."""
        body = json.loads(h.body or b"{}")
        name = q.get("name", [""])[0] or f"auto{len(self.created)}"
        if any(c["Names"] == [f"/{name}"] for c in self.containers):
            return self._json(h, {"message": f'Conflict. The container name "/{name}" is '
                                  "already in use"}, 409)
        cid = f"{len(self.created) + 1:02d}" * 32
        self.created.append((name, body))
        self.containers.append(container(cid, name, body.get("Image", ""), state="created"))
        self._json(h, {"Id": cid, "Warnings": []}, 201)

    def _df(self, h: _Handler, q: Query) -> None:
        """GET /system/df: the images listed (nginx used by web), 2 MB of writable layers
        (1 MB of it stopped), the volumes (pgdata: 5 MB, mounted by db), 3 MB of build
        cache (1 MB in use)."""
        self.df_types.append(",".join(q.get("type", [])))
        volumes = [{"Name": v["Name"], "UsageData": {
            "Size": self.volume_sizes.get(v["Name"], 5_000_000), "RefCount": 1}}
            for v in self.volumes]
        if q.get("type") == ["volume"]:  # as the engine: only what was asked for
            return self._json(h, {"Volumes": volumes})
        used = {c.get("ImageID") for c in self.containers}
        self._json(h, {
            "LayersSize": sum(i["Size"] for i in self.images),
            "Images": [{**i, "SharedSize": 0, "Containers": int(i["Id"] in used)}
                       for i in self.images],
            "Containers": [{"Id": c["Id"], "State": c["State"], "SizeRw": 1_000_000}
                           for c in self.containers[:2]],
            "Volumes": volumes,
            "BuildCache": [{"ID": "b1", "Size": 2_000_000, "InUse": False},
                           {"ID": "b2", "Size": 1_000_000, "InUse": True}]})

    def _prune_containers(self, h: _Handler, q: Query) -> None:
        gone = [c for c in self.containers if c["State"] != "running"]
        self.containers = [c for c in self.containers if c not in gone]
        self.on_prune()
        self._json(h, {"ContainersDeleted": [c["Id"] for c in gone],
                       "SpaceReclaimed": 1_000_000 * len(gone)})

    def _prune_builds(self, h: _Handler, q: Query) -> None:
        self.on_prune()
        self._json(h, {"CachesDeleted": ["b1"], "SpaceReclaimed": 2_000_000})

    def _events(self, h: _Handler, q: Query) -> None:
        self._stream(h, self._streams, "application/json")

    _ROUTES: dict[tuple[str, str], Callable[[FakeDockerAPI, _Handler, Query], None]] = {
        ("GET", "/_ping"): _ping,
        ("GET", "/version"): _version,
        ("GET", "/info"): _info,
        ("GET", "/containers/json"): _containers,
        ("GET", "/images/json"): _images,
        ("POST", "/images/prune"): _prune_images,
        ("GET", "/volumes"): _volumes,
        ("POST", "/volumes/prune"): _prune_volumes,
        ("GET", "/events"): _events,
        ("POST", "/images/create"): _pull,
        ("POST", "/containers/create"): _create,
        ("GET", "/system/df"): _df,
        ("POST", "/containers/prune"): _prune_containers,
        ("POST", "/build/prune"): _prune_builds,
    }

    def _container(self, h: _Handler, method: str, ref: str, action: str | None) -> bool:
        """/containers/{ref}[/{action}]; False if no route takes (method, action)."""
        c = self._find(ref)
        if c is None:
            self._json(h, {"message": f"No such container: {ref}"}, 404)
            return True
        route = self._CONTAINER_ROUTES.get((method, action))
        if route is None:
            return False
        route(self, h, c)
        return True

    def _inspect(self, h: _Handler, c: dict[str, Any]) -> None:
        self._json(h, {"Id": c["Id"], "Name": c["Names"][0],
                       "Config": {"Tty": False, "Env": ["SECRET=x"]}})

    def _stats(self, h: _Handler, c: dict[str, Any]) -> None:
        """One reading (stream=false, one-shot): each adds half a second of CPU time over
        two seconds of the host's two CPUs' time (50 % of a core), 20 MB in use."""
        with self._lock:
            n = self.stats_reads[c["Id"]] = self.stats_reads.get(c["Id"], 0) + 1
        self._json(h, {
            "cpu_stats": {"cpu_usage": {"total_usage": n * 500_000_000},
                          "system_cpu_usage": n * 2_000_000_000, "online_cpus": 2},
            "memory_stats": {"usage": 30_000_000, "limit": 2_000_000_000,
                             "stats": {"inactive_file": 10_000_000}}})

    def _logs_of(self, h: _Handler, c: dict[str, Any]) -> None:
        self._stream(h, self._logs.setdefault(c["Id"], []), "application/vnd.docker.raw-stream")

    def _start(self, h: _Handler, c: dict[str, Any]) -> None:
        c["State"], c["Status"] = "running", "Up Less than a second"
        self._send(h, 204, b"")

    def _stop(self, h: _Handler, c: dict[str, Any]) -> None:
        c["State"], c["Status"] = "exited", "Exited (0) Less than a second ago"
        self._send(h, 204, b"")

    def _remove(self, h: _Handler, c: dict[str, Any]) -> None:
        self.containers.remove(c)
        self._send(h, 204, b"")

    _CONTAINER_ROUTES: dict[tuple[str, str | None],
                            Callable[[FakeDockerAPI, _Handler, dict[str, Any]], None]] = {
        ("GET", "json"): _inspect,
        ("GET", "logs"): _logs_of,
        ("GET", "stats"): _stats,
        ("POST", "start"): _start,
        ("POST", "restart"): _start,
        ("POST", "stop"): _stop,
        ("DELETE", None): _remove,
    }

    def _delete_image(self, h: _Handler, ref: str) -> None:
        self.images = [i for i in self.images if i["Id"] != ref]
        self._json(h, [{"Deleted": ref}])

    def _delete_volume(self, h: _Handler, name: str) -> None:
        self.volumes = [v for v in self.volumes if v["Name"] != name]
        self._send(h, 204, b"")

    @staticmethod
    def _send(h: _Handler, code: int, body: bytes, ctype: str = "application/json") -> None:
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Api-Version", "1.45")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _json(self, h: _Handler, data: Any, code: int = 200) -> None:
        self._send(h, code, json.dumps(data).encode())

    @staticmethod
    def _client_gone(conn: socket.socket) -> bool:
        readable, _, _ = select.select([conn], [], [], 0)
        if not readable:
            return False
        try:
            return conn.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _stream(self, h: _Handler, registry: list[queue.Queue[bytes | None]],
                ctype: str) -> None:
        q: queue.Queue[bytes | None] = queue.Queue()
        with self._lock:
            registry.append(q)
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.wfile.flush()
        try:
            while True:
                try:
                    item = q.get(timeout=0.05)
                except queue.Empty:
                    if self._client_gone(h.connection):
                        break
                    continue
                if item is None:
                    h.wfile.write(b"0\r\n\r\n")
                    break
                h.wfile.write(f"{len(item):x}\r\n".encode() + item + b"\r\n")
                h.wfile.flush()
        except OSError:
            pass
        finally:
            with self._lock:
                if q in registry:
                    registry.remove(q)
            h.close_connection = True
