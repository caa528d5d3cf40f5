"""What tools that know nothing of Cove find on a fresh instance: its default shares (the
home folder and the temporary folder), the default socket /var/run/docker.sock once `cove
setup default-socket` points it at Cove, and Testcontainers for Python run with its
defaults (no DOCKER_HOST, no docker context) through it.

Its own instance, with the default shares: the session's instance shares folders inside
the temporary folder, and shares do not nest.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Cove, own_instance

DEFAULT_SOCKET = Path("/var/run/docker.sock")


@pytest.fixture(scope="module")
def fresh(cove_home: tuple[Path, Path]) -> Iterator[Cove]:
    with own_instance(cove_home, "defaults", "--resource-saver", "0") as c:
        yield c


@pytest.fixture(scope="module")
def hello(fresh: Cove) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from desktop.demo import build_hello_image

    build_hello_image(["docker", "--context", fresh.context], "cove-hello", env=fresh.env)
    return "cove-hello"


def _answers(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


@pytest.fixture(scope="module")
def default_socket(fresh: Cove) -> Path:
    if os.path.lexists(DEFAULT_SOCKET) and _answers(DEFAULT_SOCKET) and \
            os.path.realpath(DEFAULT_SOCKET) != str(fresh.socket):
        pytest.skip(f"{DEFAULT_SOCKET} is another engine's on this machine: Cove leaves it")
    got = fresh.cove("setup", "default-socket", "--force")
    assert f"{DEFAULT_SOCKET} now points at {fresh.socket}" in got.stdout
    return DEFAULT_SOCKET


def test_the_home_and_temporary_folders_are_shared_by_default(fresh: Cove) -> None:
    shared = {s["path"]: s for s in fresh.status()["shares"]}
    assert set(shared) == {str(Path.home()), tempfile.gettempdir()}
    assert not any(s.get("error") for s in shared.values()), shared


def test_a_bind_of_a_folder_made_with_mkdtemp_works(fresh: Cove, hello: str) -> None:
    """What a test suite does through the engine's own socket: bind a folder it just made
    in the temporary folder, and read what the container wrote there."""
    d = Path(tempfile.mkdtemp())
    try:
        (d / "in.txt").write_text("from the host\n")
        got = fresh.docker("run", "--rm", "-v", f"{d}:/w", hello, "sh", "-c",
                           "cat /w/in.txt && echo from the container > /w/out.txt")
        assert got.stdout == "from the host\n"
        assert (d / "out.txt").read_text() == "from the container\n"
    finally:
        shutil.rmtree(d)


def test_the_default_socket_reaches_cove_and_status_says_so(fresh: Cove,
                                                            default_socket: Path) -> None:
    env = {k: v for k, v in fresh.env.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")}
    env["DOCKER_CONFIG"] = tempfile.mkdtemp()  # no context at all: the CLI's own default
    try:
        got = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                             env=env, capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(env["DOCKER_CONFIG"])
    assert got.returncode == 0 and got.stdout.strip() == fresh.status()["engine_version"], \
        got.stderr
    st = fresh.cove("status", "--json")
    assert json.loads(st.stdout)["default_paths"] == [str(default_socket)]
    assert f"default: {default_socket}" in fresh.cove("status").stdout


def test_testcontainers_with_its_defaults(fresh: Cove, hello: str, default_socket: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Testcontainers for Python finds the engine at the default socket (it reads neither
    docker contexts nor Cove's settings), maps a random host port, waits for a log line,
    binds a mkdtemp() folder, is reached on localhost, and removes its container.

    Ryuk (its reaper) is off: its image is on Docker Hub, which this machine cannot
    reach; the `with` block removes the container. When the tests themselves run in a
    container (/.dockerenv), Testcontainers would dial the bridge's gateway instead of
    localhost, so the connection mode is set to the one it takes on a laptop."""
    for var in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
    if os.path.exists("/.dockerenv"):
        monkeypatch.setenv("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
    monkeypatch.setenv("DOCKER_CONFIG", tempfile.mkdtemp())
    for name in [m for m in sys.modules if m.startswith("testcontainers")]:
        del sys.modules[name]  # its settings are read from the environment at import
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    www = Path(tempfile.mkdtemp())
    (www / "index.html").write_text("served from a mkdtemp() folder\n")
    label = f"cove-tc-{uuid.uuid4().hex[:8]}"
    c = (DockerContainer(hello).with_exposed_ports(8080)
         .with_volume_mapping(str(www), "/www", "ro")
         .with_kwargs(labels={"cove.test": label})
         .with_command(["sh", "-c", "echo ready; exec httpd -f -p 8080 -h /www"])
         .waiting_for(LogMessageWaitStrategy("ready")))
    try:
        with c:
            host, port = c.get_container_host_ip(), int(c.get_exposed_port(8080))
            assert host == "localhost" and port > 0
            deadline = time.monotonic() + 60
            while True:  # the port is forwarded once the guest reports it
                try:
                    body = urllib.request.urlopen(f"http://{host}:{port}/index.html",
                                                  timeout=5).read()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the mapped port never answered"
                    time.sleep(0.5)
            assert body == b"served from a mkdtemp() folder\n"
    finally:
        shutil.rmtree(www)
        shutil.rmtree(os.environ["DOCKER_CONFIG"])
    left = fresh.docker("ps", "-a", "-q", "--filter", f"label=cove.test={label}").stdout
    assert left.strip() == ""


def test_delete_takes_the_default_socket_back(fresh: Cove, default_socket: Path) -> None:
    assert os.path.islink(default_socket)
    fresh.cove("delete", "--force", timeout=300)
    assert not os.path.lexists(default_socket)
