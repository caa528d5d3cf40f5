"""The tray's Docker client: every request it sends says it is passive, so the tray's
own events stream and refreshes never keep an idle VM awake (desktop/backend/rest.py).
A real SDK client against a small HTTP server on a unix socket."""

from __future__ import annotations

import json
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from desktop.tray import docker_service


class _Engine:
    """Answers /version and /_ping; keeps each request's head."""

    def __init__(self, path: Path) -> None:
        self.heads: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.heads.append(data)
                body = json.dumps({"ApiVersion": "1.45", "Version": "26.1.5"}).encode() \
                    if b" /version" in data.split(b"\r\n", 1)[0] else b"OK"
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Connection: close\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def engine() -> Iterator[tuple[_Engine, Path]]:
    d = Path(tempfile.mkdtemp(prefix="cove-ds-", dir="/tmp"))
    e = _Engine(d / "docker.sock")
    yield e, d / "docker.sock"
    e.close()


def test_the_trays_requests_say_they_are_passive(engine: tuple[_Engine, Path]) -> None:
    e, path = engine
    svc = docker_service.DockerService(path)
    try:
        svc.client.ping()
    finally:
        svc.close()
    pings = [h for h in e.heads if h.startswith(b"GET /v1.45/_ping") or b"/_ping" in h]
    assert pings, e.heads
    assert all(b"\r\nx-cove-passive: 1\r\n" in h.lower() for h in pings), pings


def test_rows_carry_image_volumes_and_compose_project_and_users_counts_them() -> None:
    from desktop.tray.docker_service import container_row, users
    from tests.helpers.tray_fakes import container

    a = container_row(container("a" * 64, "api", "app:1", image_id="sha256:" + "1" * 64,
                                volumes=("data", "cache"),
                                labels={"com.docker.compose.project": "shop"}))
    b = container_row(container("b" * 64, "old", "app:1", state="exited",
                                image_id="sha256:" + "1" * 64, volumes=("data",)))
    assert (a.image_id, a.volumes, a.project) == ("sha256:" + "1" * 64, ("data", "cache"),
                                                  "shop")
    assert b.project == ""  # not made by Compose; the bind mount is no volume
    assert users([b, a]) == ({"sha256:" + "1" * 64: ["api", "old"]},
                             {"data": ["api", "old"], "cache": ["api"]})


def test_usage_is_docker_stats_figures() -> None:
    from desktop.tray.docker_service import usage

    def reading(cpu: int, system: int, mem: int, inactive: int, **extra: object) -> dict:
        return {"cpu_stats": {"cpu_usage": {"total_usage": cpu}, "system_cpu_usage": system,
                              **extra},
                "memory_stats": {"usage": mem, "limit": 4_000_000_000,
                                 "stats": {"inactive_file": inactive}}}

    first = usage(None, reading(10**9, 10**10, 50_000_000, 20_000_000, online_cpus=4))
    assert (first.cpu_percent, first.memory, first.cpu_text) == (None, 30_000_000, "")
    assert first.memory_text == "30.0 MB / 4.0 GB"
    # 1 s of the container's CPU time over 4 s of the host's 4 CPUs: one core busy.
    u = usage(reading(10**9, 10**10, 0, 0, online_cpus=4),
              reading(2 * 10**9, 14 * 10**9, 0, 0, online_cpus=4))
    assert u.cpu_text == "100.0 %"
    # An older engine lists the CPUs instead of counting them; a counter that went back
    # (the container restarted) is 0, not a negative figure.
    old = {"percpu_usage": [1, 1]}
    v = usage({"cpu_stats": {"cpu_usage": {"total_usage": 5, **old}, "system_cpu_usage": 0}},
              {"cpu_stats": {"cpu_usage": {"total_usage": 2, **old}, "system_cpu_usage": 10}})
    assert v.cpu_percent == 0.0


def test_image_references_split_as_the_pull_api_takes_them() -> None:
    from desktop.tray.docker_service import pull_message, split_ref

    assert split_ref("nginx") == ("nginx", "latest")
    assert split_ref("nginx:1.27") == ("nginx", "1.27")
    assert split_ref("localhost:5000/team/app") == ("localhost:5000/team/app", "latest")
    assert split_ref("localhost:5000/team/app:v2") == ("localhost:5000/team/app", "v2")
    assert split_ref("alpine@sha256:" + "0" * 64) == ("alpine", "sha256:" + "0" * 64)
    msg = pull_message("ghcr.io/me/private:1", "unauthorized: authentication required")
    assert msg == ("Cannot pull ghcr.io/me/private:1: ghcr.io wants a login (docker login "
                   "ghcr.io): unauthorized: authentication required")
    assert pull_message("localhost:5000/x", "connection refused").startswith(
        "Cannot pull localhost:5000/x: the registry localhost:5000 cannot be reached")
    assert pull_message("x", "something else") == "Cannot pull x: something else"


def test_pull_progress_averages_the_layers_and_counts_small_ones_done() -> None:
    from desktop.tray.docker_service import PullProgress

    p = PullProgress()
    for m in ({"status": "Pulling from cove/dash", "id": "v1"},
              {"status": "Pulling fs layer", "id": "a"},
              {"status": "Pulling fs layer", "id": "b"}):
        p.update(m)
    assert (p.percent, p.text) == (0, "2 layers, 0 %")  # the tag is no layer
    p.update({"status": "Downloading", "id": "a",
              "progressDetail": {"current": 50, "total": 100}})
    p.update({"status": "Download complete", "id": "b"})  # small: never said its size
    assert p.percent == 75
    p.update({"status": "Pull complete", "id": "a"})
    p.update({"status": "Digest: sha256:" + "0" * 64})
    p.update({"status": "Status: Downloaded newer image for cove/dash:v1"})
    assert p.percent == 100 and p.status == "Status: Downloaded newer image for cove/dash:v1"


class _Client:
    def __init__(self, fail: bool) -> None:
        self.fail, self.closed = fail, False

    def ping(self) -> bool:
        if self.fail:
            import requests
            raise requests.ConnectionError("connection reset")
        return True

    def close(self) -> None:
        self.closed = True


def test_a_client_that_failed_is_closed_and_the_next_call_connects_afresh(
        tmp_path: Path) -> None:
    """A connection error drops the client; its pooled sockets are closed then, not
    left for the garbage collector (a ResourceWarning, and an open socket, each time)."""
    (tmp_path / "docker.sock").touch()
    made: list[_Client] = []

    def factory(url: str) -> _Client:
        made.append(_Client(fail=not made))  # the first fails, the next works
        return made[-1]

    svc = docker_service.DockerService(tmp_path / "docker.sock", client_factory=factory)
    with pytest.raises(docker_service.DockerError, match="did not answer"):
        svc._call(lambda: svc.client.ping())
    assert made[0].closed
    assert svc._call(lambda: svc.client.ping()) is True
    assert len(made) == 2 and not made[1].closed
    svc.close()
    assert made[1].closed


def test_a_failure_on_an_old_client_keeps_the_one_made_since(tmp_path: Path) -> None:
    """Two workers share the service: one's late failure on the client it used must
    not throw away (or close) the fresh client the other has made meanwhile."""
    (tmp_path / "docker.sock").touch()
    old, new = _Client(fail=True), _Client(fail=False)
    svc = docker_service.DockerService(tmp_path / "docker.sock",
                                       client_factory=lambda url: new)
    svc._client = old

    def late_failure() -> None:
        svc._client = new  # another worker retired `old` and connected again
        old.ping()

    with pytest.raises(docker_service.DockerError):
        svc._call(late_failure)
    assert svc._client is new and not new.closed
