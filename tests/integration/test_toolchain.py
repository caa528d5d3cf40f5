"""The tools developers point at Cove's socket, with the real clients on the host: a
Compose project (a build, a healthcheck another service waits on, a bind of a host
folder, a published port, a named volume, a user-defined network; `up --build`, logs,
exec, `down -v`; `watch` syncing a host edit), a registry (Debian's docker-registry,
run as a container: push, pull, `docker login` with the CLI's credential store), and
BuildKit's `--target` and `--ssh`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Cove, free_port, http_get, wait_for


def _name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


COMPOSE = """\
services:
  web:
    build:
      context: ./web
    command: [sh, -c, "echo web-up; exec httpd -f -p 8080 -h /www"]
    volumes:
      - ./www:/www:ro
    ports:
      - "127.0.0.1:{port}:8080"
    networks: [back]
    healthcheck:
      test: [CMD, wget, -q, -O, /dev/null, "http://127.0.0.1:8080/index.html"]
      interval: 1s
      timeout: 3s
      retries: 60
  app:
    image: {hello}
    depends_on:
      web:
        condition: service_healthy
    command: [sh, -c, "wget -q -O /data/got http://web:8080/index.html; exec sleep 3600"]
    volumes:
      - data:/data
    networks: [back]
  sync:
    build:
      context: ./web
    command: [sleep, "3600"]
    develop:
      watch:
        - action: sync
          path: ./src
          target: /src
volumes:
  data:
networks:
  back:
"""


@pytest.fixture
def project(cove: Cove, hello_image: str, shares: dict[str, Path]) -> Iterator[tuple[str, Path]]:
    """A Compose project in a shared folder (its bind mount must be shared)."""
    d = shares["auto"] / _name("compose-")
    (d / "web").mkdir(parents=True)
    (d / "www").mkdir()
    (d / "src").mkdir()
    (d / "web" / "Dockerfile").write_text(f"FROM {hello_image}\nRUN echo built > /built\n")
    (d / "www" / "index.html").write_text("from the host folder\n")
    (d / "src" / "app.txt").write_text("v1\n")
    port = free_port()
    (d / "compose.yaml").write_text(COMPOSE.format(port=port, hello=hello_image))
    name = _name("p")
    try:
        yield name, d
    finally:
        cove.docker("compose", "-p", name, "-f", str(d / "compose.yaml"), "down", "-v",
                    "-t", "1", check=False, timeout=300)
        shutil.rmtree(d, ignore_errors=True)


def test_a_compose_project_builds_waits_on_health_and_comes_down(
        cove: Cove, project: tuple[str, Path]) -> None:
    name, d = project
    up = ["compose", "-p", name, "-f", str(d / "compose.yaml")]
    cove.docker(*up, "up", "--build", "-d", "web", "app", timeout=600)
    port = int(cove.docker(*up, "port", "web", "8080").stdout.strip().rsplit(":", 1)[1])
    # From the host, through Cove's forward of the published port.
    assert wait_for("the web service from the host", lambda: http_get(port, "/index.html")) == \
        b"from the host folder\n"
    # The app started only once web was healthy, and reached it by name on the network.
    got = wait_for("app's fetch", lambda: cove.docker(*up, "exec", "-T", "app", "cat",
                                                     "/data/got", check=False).stdout)
    assert got == "from the host folder\n"
    # One JSON object per line (Compose 2.21 and later).
    ps = [json.loads(line) for line in
          cove.docker(*up, "ps", "--format", "json").stdout.splitlines() if line.strip()]
    health = {p["Service"]: p.get("Health", "") for p in ps}
    assert health["web"] == "healthy", ps
    assert cove.docker(*up, "exec", "-T", "web", "cat", "/built").stdout == "built\n"
    assert "web-up" in cove.docker(*up, "logs", "web").stdout
    volume = f"{name}_data"
    assert cove.docker("volume", "inspect", volume, check=False).returncode == 0
    cove.docker(*up, "down", "-v", "-t", "1", timeout=300)
    assert cove.docker("volume", "inspect", volume, check=False).returncode != 0
    assert cove.docker("network", "inspect", f"{name}_back", check=False).returncode != 0
    assert cove.docker(*up, "ps", "-a", "-q").stdout.strip() == ""


def test_compose_watch_syncs_a_host_edit_into_the_container(
        cove: Cove, project: tuple[str, Path]) -> None:
    name, d = project
    up = ["compose", "-p", name, "-f", str(d / "compose.yaml")]
    cove.docker(*up, "up", "--build", "-d", "sync", timeout=600)
    watch = subprocess.Popen(["docker", "--context", cove.context, *up, "watch", "sync"],
                             env=cove.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    lines: list[str] = []
    assert watch.stdout is not None
    out_pipe = watch.stdout
    reader = threading.Thread(target=lambda: lines.extend(out_pipe), daemon=True)
    reader.start()
    try:
        # Watch builds and starts the service first; an edit before it watches is not
        # synced (it does not copy the tree at start).
        wait_for("watch to be enabled", lambda: any("Watch enabled" in ln for ln in lines),
                 timeout=300)
        assert watch.poll() is None, "".join(lines)
        (d / "src" / "app.txt").write_text("v2, edited on the host\n")

        def synced() -> bool:
            got = cove.docker(*up, "exec", "-T", "sync", "cat", "/src/app.txt", check=False)
            return got.stdout == "v2, edited on the host\n"

        wait_for("the edit in the container", synced, timeout=120)
    finally:
        watch.terminate()
        try:
            watch.wait(timeout=30)
        except subprocess.TimeoutExpired:
            watch.kill()
            watch.wait()
        reader.join(10)
        out_pipe.close()
    assert any('Syncing "sync" after changes were detected' in ln for ln in lines), lines


# -- a registry ------------------------------------------------------------------------------

def test_docker_login_push_and_pull_with_a_local_registry(
        cove: Cove, hello_image: str, registry: int, tmp_path: Path) -> None:
    port = registry
    ref = f"localhost:{port}/cove/hello:{uuid.uuid4().hex[:6]}"
    cove.docker("tag", hello_image, ref)
    # Unauthenticated: the registry refuses, and the error reaches the CLI.
    denied = cove.docker("push", ref, check=False, timeout=300)
    assert denied.returncode != 0 and "no basic auth credentials" in (
        denied.stderr + denied.stdout), denied.stderr
    # `docker login` keeps the credentials where the CLI keeps them (its config's store);
    # each push then carries them to the engine in the VM (X-Registry-Auth).
    got = cove.docker("login", f"localhost:{port}", "-u", "cove", "--password-stdin",
                      input="s3cret-pw\n")
    assert "Login Succeeded" in got.stdout
    config = json.loads((cove.docker_config / "config.json").read_text())
    assert f"localhost:{port}" in config.get("auths", {}), config
    try:
        cove.docker("push", ref, timeout=300)
        catalog = json.loads(http_get(port, "/v2/_catalog", auth="cove:s3cret-pw"))
        assert "cove/hello" in catalog["repositories"]
        cove.docker("rmi", ref)
        cove.docker("pull", ref, timeout=300)
        assert cove.docker("run", "--rm", ref, "echo", "pulled").stdout == "pulled\n"
    finally:
        cove.docker("logout", f"localhost:{port}", check=False)
        cove.docker("rmi", "-f", ref, check=False)


# A docker credential helper (the protocol docker-credential-* programs speak: store, get,
# erase, list on stdin/stdout), keeping what it is given in a JSON file beside it.
CRED_HELPER = """#!/usr/bin/env python3
import json, sys
from pathlib import Path
db = Path(__file__).with_name("creds.json")
creds = json.loads(db.read_text()) if db.exists() else {}
op, data = sys.argv[1], sys.stdin.read().strip()
with db.with_name("calls.log").open("a") as log:
    log.write(op + "\\n")
if op == "store":
    entry = json.loads(data)
    creds[entry["ServerURL"]] = [entry["Username"], entry["Secret"]]
elif op == "get":
    if data not in creds:
        print("credentials not found in native keychain")
        sys.exit(1)
    print(json.dumps({"ServerURL": data, "Username": creds[data][0],
                      "Secret": creds[data][1]}))
elif op == "erase":
    creds.pop(data, None)
elif op == "list":
    print(json.dumps({k: v[0] for k, v in creds.items()}))
db.write_text(json.dumps(creds))
"""


def test_a_credential_helper_keeps_the_login_and_serves_push_and_pull(
        cove: Cove, hello_image: str, registry: int, tmp_path: Path) -> None:
    """With `credsStore` set (as Docker Desktop's osxkeychain or desktop helpers do), the
    CLI asks the helper for the registry's credentials at each push and pull, and sends
    them through Cove's socket; config.json holds no secret."""
    port = registry
    helpers = tmp_path / "helpers"
    helpers.mkdir()
    prog = helpers / "docker-credential-covetest"
    prog.write_text(CRED_HELPER)
    prog.chmod(0o755)
    env = {**cove.env, "PATH": f"{helpers}:{os.environ['PATH']}"}
    config_file = cove.docker_config / "config.json"
    saved = config_file.read_text()
    config_file.write_text(json.dumps({**json.loads(saved), "credsStore": "covetest"}))
    ref = f"localhost:{port}/cove/helped:{uuid.uuid4().hex[:6]}"

    def docker(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", "--context", cove.context, *args], env=env,
                              input=input, capture_output=True, text=True, timeout=300,
                              check=True)
    try:
        docker("login", f"localhost:{port}", "-u", "cove", "--password-stdin",
               input="s3cret-pw\n")
        stored = json.loads((helpers / "creds.json").read_text())
        assert stored == {f"localhost:{port}": ["cove", "s3cret-pw"]}
        config = json.loads(config_file.read_text())
        assert "s3cret" not in config_file.read_text()
        assert config["credsStore"] == "covetest" and config.get("currentContext") == \
            json.loads(saved).get("currentContext")
        docker("tag", hello_image, ref)
        docker("push", ref)
        docker("rmi", ref)
        docker("pull", ref)
        calls = (helpers / "calls.log").read_text().split()
        assert "store" in calls, calls
        assert calls[calls.index("store"):].count("get") >= 2, calls  # push and pull
        assert docker("run", "--rm", ref, "echo", "helped").stdout == "helped\n"
        docker("logout", f"localhost:{port}")
        assert json.loads((helpers / "creds.json").read_text()) == {}
    finally:
        config_file.write_text(saved)
        cove.docker("rmi", "-f", ref, check=False)


# -- BuildKit: --target and --ssh ----------------------------------------------------------


def test_buildx_target_and_ssh_forwarding(cove: Cove, hello_image: str,
                                          tmp_path: Path) -> None:
    """`--target` stops at the named stage; `--ssh default` forwards the host's SSH agent
    into a RUN step (BuildKit's session carries it through Cove's socket)."""
    (tmp_path / "Dockerfile").write_text(
        f"FROM {hello_image} AS first\n"
        "RUN echo first > /stage\n"
        "RUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && echo agent-forwarded > /ssh\n"
        f"FROM {hello_image} AS second\n"
        "RUN echo second > /stage\n")
    agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True)
    env = dict(cove.env)
    for part in agent.stdout.replace("\n", ";").split(";"):
        key, _, value = part.strip().partition("=")
        if key in ("SSH_AUTH_SOCK", "SSH_AGENT_PID"):
            env[key] = value
    tag = _name("target")
    try:
        got = subprocess.run(
            ["docker", "--context", cove.context, "buildx", "build", "--progress", "plain",
             "--load", "--target", "first", "--ssh", "default", "-t", tag, str(tmp_path)],
            env=env, capture_output=True, text=True, timeout=600)
        assert got.returncode == 0, got.stderr
        out = cove.docker("run", "--rm", tag, "cat", "/stage", "/ssh").stdout
        assert out == "first\nagent-forwarded\n"
    finally:
        os.kill(int(env["SSH_AGENT_PID"]), 15)
        cove.docker("rmi", "-f", tag, check=False)
