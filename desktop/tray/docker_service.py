"""The dashboard's view of the engine: the Docker SDK on Cove's own socket.

`DockerService` turns the engine's API replies into small rows the views show
(`ContainerRow`, `ImageRow`, `VolumeRow`) and carries out the dashboard's actions. Every
call blocks on the engine, so callers run it off the GUI thread (see `worker.py`).
Errors are `DockerError`, with a message fit for a status bar.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


PASSIVE_HEADER = "X-Cove-Passive"
COMPOSE_PROJECT = "com.docker.compose.project"  # the label Compose puts on its containers


class DockerError(Exception):
    """The engine could not be reached or refused a request; the message says which."""


@dataclass(frozen=True)
class PortLink:
    host_ip: str
    host_port: int
    container_port: int
    proto: str

    @property
    def url(self) -> str | None:
        """A browser link for a TCP port published on the host (through Cove's localhost
        forwarding); None for UDP."""
        if self.proto != "tcp" or not self.host_port:
            return None
        return f"http://localhost:{self.host_port}/"

    @property
    def text(self) -> str:
        return f"{self.host_port}→{self.container_port}" + \
            ("" if self.proto == "tcp" else f"/{self.proto}")


@dataclass(frozen=True)
class ContainerRow:
    id: str
    name: str
    image: str
    state: str  # running, exited, created, paused, restarting, dead
    status: str  # the engine's words: "Up 3 minutes"
    created: int
    ports: list[PortLink] = field(default_factory=list)
    image_id: str = ""  # sha256:... of the image it runs
    volumes: tuple[str, ...] = ()  # the named volumes it mounts
    project: str = ""  # its Compose project ("" when Compose did not make it)


@dataclass(frozen=True)
class ImageRow:
    id: str
    tags: list[str]
    size: int
    created: int


@dataclass(frozen=True)
class VolumeRow:
    name: str
    driver: str
    mountpoint: str


def _ports(raw: list[dict[str, Any]] | None) -> list[PortLink]:
    seen: set[tuple[int, int, str]] = set()
    out: list[PortLink] = []
    for p in raw or []:
        if not p.get("PublicPort"):
            continue
        key = (int(p["PublicPort"]), int(p.get("PrivatePort", 0)), str(p.get("Type", "tcp")))
        if key in seen:  # the engine lists 0.0.0.0 and :: separately
            continue
        seen.add(key)
        out.append(PortLink(str(p.get("IP", "")), key[0], key[1], key[2]))
    return sorted(out, key=lambda pl: (pl.host_port, pl.proto))


def image_name(ref: str) -> str:
    """An image as people read it: its repo:tag, or a short ID (12 hex digits, as
    `docker ps` shows) for an image known only by its digest."""
    digest = ref[len("sha256:"):] if ref.startswith("sha256:") else ref
    if len(digest) == 64 and all(ch in "0123456789abcdef" for ch in digest):
        return digest[:12]
    return ref


def container_row(c: dict[str, Any]) -> ContainerRow:
    names = c.get("Names") or [c.get("Id", "")[:12]]
    return ContainerRow(
        id=c.get("Id", ""), name=names[0].lstrip("/"), image=image_name(c.get("Image", "")),
        state=c.get("State", ""), status=c.get("Status", ""), created=int(c.get("Created", 0)),
        ports=_ports(c.get("Ports")), image_id=str(c.get("ImageID", "")),
        volumes=tuple(str(m["Name"]) for m in c.get("Mounts") or []
                      if m.get("Type") == "volume" and m.get("Name")),
        project=str((c.get("Labels") or {}).get(COMPOSE_PROJECT, "")),
    )


@dataclass(frozen=True)
class Usage:
    """A running container's CPU and memory, from two stats readings."""

    cpu_percent: float | None  # of one core (200 % = two cores busy); None: one reading
    memory: int  # bytes in use, the page cache it could drop left out (as `docker stats`)
    limit: int  # bytes it may use (the VM's memory when no limit was set)

    @property
    def cpu_text(self) -> str:
        return "" if self.cpu_percent is None else f"{self.cpu_percent:.1f} %"

    @property
    def memory_text(self) -> str:
        return f"{human_size(self.memory)} / {human_size(self.limit)}" if self.limit else \
            human_size(self.memory)


def usage(prev: dict[str, Any] | None, cur: dict[str, Any]) -> Usage:
    """`docker stats`' figures from two readings of the engine's stats (`prev` may be
    None: the first; then no CPU figure). CPU: the container's CPU time over the host's,
    times the CPUs online; memory: usage less inactive file pages (cgroup v2) or cache
    (v1)."""
    cpu = cur.get("cpu_stats") or {}
    mem = cur.get("memory_stats") or {}
    stats = mem.get("stats") or {}
    used = int(mem.get("usage", 0)) - int(stats.get("inactive_file", stats.get("cache", 0)))
    pct: float | None = None
    if prev is not None:
        pcpu = prev.get("cpu_stats") or {}
        d_cont = int((cpu.get("cpu_usage") or {}).get("total_usage", 0)) - \
            int((pcpu.get("cpu_usage") or {}).get("total_usage", 0))
        d_sys = int(cpu.get("system_cpu_usage", 0)) - int(pcpu.get("system_cpu_usage", 0))
        cpus = int(cpu.get("online_cpus") or
                   len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []) or 1)
        pct = round(100.0 * d_cont / d_sys * cpus, 1) if d_sys > 0 and d_cont >= 0 else 0.0
    return Usage(pct, max(used, 0), int(mem.get("limit", 0)))


@dataclass(frozen=True)
class DiskUsage:
    """`docker system df` as (total bytes, reclaimable bytes) per kind."""

    images: tuple[int, int]
    containers: tuple[int, int]
    volumes: tuple[int, int]
    build_cache: tuple[int, int]


def disk_usage(df: dict[str, Any]) -> DiskUsage:
    """The engine's GET /system/df answer summed as `docker system df` does: an image
    is reclaimable when no container uses it, a volume when none mounts it, a
    container's writable layer when it is stopped, a cache record when not in use."""
    images = df.get("Images") or []
    img_total = int(df.get("LayersSize") or sum(int(i.get("Size", 0)) for i in images))

    def unique(i: dict[str, Any]) -> int:  # what only this image holds
        return int(i.get("Size", 0)) - max(int(i.get("SharedSize") or 0), 0)

    img_free = sum(unique(i) for i in images if i.get("Containers") == 0)
    cont = df.get("Containers") or []
    c_total = sum(int(c.get("SizeRw") or 0) for c in cont)
    c_free = sum(int(c.get("SizeRw") or 0) for c in cont if c.get("State") != "running")
    vols = df.get("Volumes") or []
    v_size = [(int((v.get("UsageData") or {}).get("Size", 0)),
               int((v.get("UsageData") or {}).get("RefCount", 0))) for v in vols]
    v_total = sum(max(sz, 0) for sz, _ in v_size)
    v_free = sum(max(sz, 0) for sz, refs in v_size if refs == 0)
    cache = df.get("BuildCache") or []
    b_total = sum(int(b.get("Size", 0)) for b in cache)
    b_free = sum(int(b.get("Size", 0)) for b in cache if not b.get("InUse"))
    return DiskUsage((img_total, max(img_free, 0)), (c_total, c_free), (v_total, v_free),
                     (b_total, b_free))


def volume_sizes(df: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in df.get("Volumes") or []:
        size = (v.get("UsageData") or {}).get("Size")
        if isinstance(size, int) and size >= 0:  # -1: not computed
            out[str(v.get("Name", ""))] = size
    return out


def users(containers: list[ContainerRow]) -> tuple[dict[str, list[str]],
                                                    dict[str, list[str]]]:
    """({image id: names of the containers made from it}, {volume: names of those that
    mount it}), stopped containers included: they keep an image and a volume in use."""
    images: dict[str, list[str]] = {}
    volumes: dict[str, list[str]] = {}
    for c in sorted(containers, key=lambda c: c.name):
        if c.image_id:
            images.setdefault(c.image_id, []).append(c.name)
        for v in c.volumes:
            volumes.setdefault(v, []).append(c.name)
    return images, volumes


def image_row(i: dict[str, Any]) -> ImageRow:
    tags = [t for t in i.get("RepoTags") or [] if t != "<none>:<none>"]
    return ImageRow(id=i.get("Id", ""), tags=tags, size=int(i.get("Size", 0)),
                    created=int(i.get("Created", 0)))


class DockerService:
    """The engine behind Cove's socket (`Instance.docker_socket`).

    `client_factory` builds the SDK client (tests may pass another); the default is
    ``docker.DockerClient(base_url="unix://" + socket)``.
    """

    def __init__(self, socket_path: Path,
                 client_factory: Callable[[str], Any] | None = None,
                 base_url: str | None = None) -> None:
        self.socket_path = socket_path
        # On Windows the engine is a named pipe (npipe://...), which has no path to check.
        self.base_url = base_url or "unix://" + str(socket_path)
        self._factory = client_factory or _sdk_client
        self._client: Any = None
        self._lock = threading.RLock()  # the Dashboard's workers share one client

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                if self.base_url.startswith("unix://") and not self.socket_path.exists():
                    raise DockerError("the Docker engine is not running (start Cove first)")
                self._client = self._call(lambda: self._factory(self.base_url))
            return self._client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        _close(client)

    def _retire(self, client: Any) -> None:
        """Drop `client` after a failure so the next call connects afresh, and close
        it: its pooled sockets would otherwise stay open until the garbage collector
        finds them. A client another thread has made since is kept."""
        with self._lock:
            if client is None or self._client is not client:
                return
            self._client = None
        _close(client)

    def _call(self, fn: Callable[[], Any]) -> Any:
        import docker.errors
        import requests

        used = self._client
        try:
            return fn()
        except docker.errors.APIError as e:
            raise DockerError(str(e.explanation or e)) from e
        except (docker.errors.DockerException, requests.RequestException, OSError) as e:
            self._retire(used if used is not None else self._client)
            raise DockerError(f"the Docker engine did not answer: {e}") from e

    # -- reading -----------------------------------------------------------------------

    def containers(self) -> list[ContainerRow]:
        raw = self._call(lambda: self.client.api.containers(all=True))
        return sorted((container_row(c) for c in raw), key=lambda r: (r.state != "running",
                                                                      r.name))

    def running_count(self) -> int:
        return len(self._call(lambda: self.client.api.containers(all=False)))

    def images(self) -> list[ImageRow]:
        raw = self._call(lambda: self.client.api.images())
        return sorted((image_row(i) for i in raw), key=lambda r: (not r.tags, r.tags, r.id))

    def volumes(self) -> list[VolumeRow]:
        raw = self._call(lambda: self.client.api.volumes()) or {}
        return sorted((VolumeRow(v.get("Name", ""), v.get("Driver", ""),
                                 v.get("Mountpoint", "")) for v in raw.get("Volumes") or []),
                      key=lambda v: v.name)

    def volume_sizes(self) -> dict[str, int]:
        """What each volume's data takes in the VM (`docker system df -v`), by name. The
        engine walks every volume to answer, so callers ask while the sizes are shown, not
        at each refresh. A size the engine could not read is left out."""
        def df() -> Any:
            api = self.client.api
            # Volumes alone (API 1.42, Docker 23): no image or build-cache walk.
            return api._result(api._get(api._url("/system/df"), params={"type": "volume"}),
                               True)
        return volume_sizes(self._call(df) or {})

    def info(self) -> dict[str, Any]:
        return dict(self._call(lambda: self.client.api.info()))

    def version(self) -> dict[str, Any]:
        return dict(self._call(lambda: self.client.api.version()))

    # -- containers ----------------------------------------------------------------------

    def start(self, cid: str) -> None:
        self._call(lambda: self.client.api.start(cid))

    def stop(self, cid: str) -> None:
        self._call(lambda: self.client.api.stop(cid))

    def restart(self, cid: str) -> None:
        self._call(lambda: self.client.api.restart(cid))

    def remove(self, cid: str) -> None:
        self._call(lambda: self.client.api.remove_container(cid, force=True))

    def inspect(self, cid: str) -> dict[str, Any]:
        """The engine's whole record of the container (`docker inspect`)."""
        return dict(self._call(lambda: self.client.api.inspect_container(cid)))

    def pull(self, ref: str) -> Iterator[dict[str, Any]]:
        """The engine's progress messages while it pulls `ref` (an error the engine
        puts in the stream ends it with DockerError, as one it answers at once)."""
        repo, tag = split_ref(ref)
        stream = self._call(lambda: self.client.api.pull(repo, tag=tag, stream=True,
                                                         decode=True))

        def messages() -> Iterator[dict[str, Any]]:
            try:
                for msg in stream:
                    if isinstance(msg, dict) and msg.get("error"):
                        raise DockerError(str(msg["error"]))
                    yield msg
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
        return messages()

    def run(self, image: str, **kwargs: Any) -> str:
        """`docker run -d` with docker-py's options (`runform.RunSpec.create_kwargs`);
        the new container's name."""
        return str(self._call(lambda: self.client.containers.run(image, **kwargs)).name)

    def stats_sample(self, cid: str) -> dict[str, Any]:
        """One reading of the container's counters, at once (one_shot: the engine does
        not wait a second for a second reading; `Usage` diffs two of ours)."""
        return dict(self._call(lambda: self.client.api.stats(cid, stream=False,
                                                             one_shot=True)))

    def follow_logs(self, cid: str, tail: int = 500) -> LogStream:
        """The container's last `tail` lines, then new ones as they come (close() ends it)."""
        stream = self._call(lambda: self.client.api.logs(cid, stream=True, follow=True,
                                                         tail=tail, timestamps=False))
        return LogStream(stream)

    # -- images and volumes --------------------------------------------------------------

    def remove_image(self, image_id: str, force: bool = False) -> None:
        self._call(lambda: self.client.api.remove_image(image_id, force=force))

    def prune_images(self) -> int:
        """Remove dangling images; returns the bytes reclaimed."""
        res = self._call(lambda: self.client.api.prune_images()) or {}
        return int(res.get("SpaceReclaimed") or 0)

    def remove_volume(self, name: str) -> None:
        self._call(lambda: self.client.api.remove_volume(name))

    def prune_volumes(self) -> int:
        res = self._call(lambda: self.client.api.prune_volumes()) or {}
        return int(res.get("SpaceReclaimed") or 0)

    def disk_usage(self) -> DiskUsage:
        """`docker system df`: what images, containers, volumes and the build cache
        take in the VM, and how much of each nothing uses."""
        return disk_usage(self._call(lambda: self.client.api.df()) or {})

    def reclaim(self, containers: bool, images: bool, volumes: bool, build_cache: bool
                ) -> int:
        """Prune what is ticked (stopped containers, images no container uses, volumes
        none mounts, the build cache); the bytes the engine says it freed."""
        api = self.client.api
        freed = 0
        steps = [(containers, lambda: api.prune_containers()),
                 (images, lambda: api.prune_images(filters={"dangling": False})),
                 (volumes, lambda: api.prune_volumes(filters={"all": True})),
                 (build_cache, lambda: api.prune_builds())]
        for wanted, step in steps:
            if wanted:
                res = self._call(step) or {}
                freed += int(res.get("SpaceReclaimed") or 0)
        return freed

    # -- events --------------------------------------------------------------------------

    def events(self) -> Any:
        """The engine's events as dicts (a stream whose close() ends it)."""
        return self._call(lambda: self.client.api.events(decode=True))


class LogStream:
    """Decoded log lines from the SDK's log stream; close() from any thread ends it."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._partial = ""

    def __iter__(self) -> Iterator[str]:
        try:
            for chunk in self._raw:
                text = self._partial + (chunk.decode("utf-8", "replace")
                                        if isinstance(chunk, bytes) else str(chunk))
                *lines, self._partial = text.split("\n")
                yield from lines
        except Exception as e:  # the stream ends with the container or on close()
            log.debug("log stream ended: %s", e)
        if self._partial:
            yield self._partial

    def close(self) -> None:
        try:
            self._raw.close()
        except Exception:  # already closed
            pass


def split_ref(ref: str) -> tuple[str, str]:
    """(repository, tag or digest) of an image reference, as the pull API takes them:
    "nginx" is nginx:latest; a registry's port ("localhost:5000/app") is no tag."""
    ref = ref.strip()
    if "@" in ref:
        repo, _, digest = ref.partition("@")
        return repo, digest
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1:]
    return ref, "latest"


def pull_message(ref: str, error: str) -> str:
    """A failed pull in words that say what to do."""
    low = error.lower()
    registry = ref.split("/")[0] if "/" in ref and ("." in ref.split("/")[0] or ":" in
                                                    ref.split("/")[0]) else "docker.io"
    if any(w in low for w in ("no such host", "dial tcp", "i/o timeout", "network is "
                              "unreachable", "connection refused", "tls handshake")):
        return (f"Cannot pull {ref}: the registry {registry} cannot be reached (no "
                f"network, a proxy needed, or the registry is down): {error}")
    if any(w in low for w in ("unauthorized", "authentication required", "no basic auth")):
        return f"Cannot pull {ref}: {registry} wants a login (docker login {registry}): {error}"
    if any(w in low for w in ("does not exist", "not found", "manifest unknown", "denied")):
        return (f"Cannot pull {ref}: no such image in {registry}, or it is private (check "
                f"the name and tag; docker login {registry} if it is yours): {error}")
    return f"Cannot pull {ref}: {error}"


class PullProgress:
    """The engine's pull messages folded into one figure: each layer's share done (its
    bytes downloaded of its size while it downloads; all of it once complete), averaged
    over the layers seen so far. A small layer may never report a size."""

    DONE = ("Download complete", "Pull complete", "Already exists")

    def __init__(self) -> None:
        self.layers: dict[str, float] = {}  # id -> fraction done
        self.status = ""

    def update(self, msg: dict[str, Any]) -> None:
        layer, status = str(msg.get("id", "")), str(msg.get("status", ""))
        detail = msg.get("progressDetail") or {}
        if layer and not status.startswith(("Pulling from", "Digest", "Status")):
            if status in self.DONE:
                self.layers[layer] = 1.0
            elif status.startswith("Downloading") and detail.get("total"):
                self.layers[layer] = min(int(detail.get("current", 0)) / int(detail["total"]),
                                         0.99)
            else:
                self.layers.setdefault(layer, 0.0)
        if not layer or not status.startswith(("Downloading", "Extracting", "Waiting")):
            self.status = status

    @property
    def percent(self) -> int:
        return int(100 * sum(self.layers.values()) / len(self.layers)) if self.layers else 0

    @property
    def text(self) -> str:
        n = len(self.layers)
        return f"{n} layer{'s' * (n != 1)}, {self.percent} %" if n else self.status


def _close(client: Any) -> None:
    if client is not None:
        try:
            client.close()
        except Exception:  # closing a broken client is best effort
            pass


def _sdk_client(base_url: str) -> Any:
    import docker

    client = docker.DockerClient(base_url=base_url, version="auto", timeout=30)
    # The tray's requests (its events stream, the Dashboard's refreshes) do not keep an
    # idle VM awake (desktop/backend/rest.py); they still wake it when they need it.
    client.api.headers[PASSIVE_HEADER] = "1"
    return client


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
