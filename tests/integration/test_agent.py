"""The guest agent over the real link: versions, relay, port events, and its defences."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import uuid

from desktop.control import ControlClient
from desktop.link.channel import ControlChannel
from desktop.link.tcp import TcpLink
from tests.integration.conftest import Cove, wait_for


def _link(cove: Cove) -> TcpLink:
    token = json.loads((cove.folder / "boot.json").read_text())["token"]
    return TcpLink("127.0.0.1", cove.status()["link_port"], token)


def test_ready_with_versions(cove: Cove) -> None:
    st = cove.control("agent_status")
    assert isinstance(st, dict)
    assert st["agent_version"] == "0.1.0"
    assert st["engine_version"].startswith("26.")
    assert st["engine_state"] == "running"
    assert st["kernel"].startswith("6.")
    assert st["errors"] == []
    assert st["disk"]["device"] and st["balloon"] is True
    assert 0 < st["agent_start"] < st["engine_ready_at"]


def test_containerd_runs_without_the_cri_plugin(cove: Cove) -> None:
    """Cove's containerd config turns Kubernetes' CRI plugin off (start time, idle
    wakeups): containerd made no CRI state folder in this boot's /run (a tmpfs), and the
    engine (its only client) runs."""
    got = cove.cove("shell", "sh", "-c", "ls /run/containerd; "
                    "grep disabled_plugins /etc/containerd/config.toml").stdout
    assert "io.containerd.runtime.v2.task" in got, got  # containerd's own state is there
    assert "io.containerd.grpc.v1.cri" not in got.split("disabled_plugins")[0], got
    assert 'disabled_plugins = ["io.containerd.grpc.v1.cri"]' in got, got


def test_the_idle_vms_own_timers_are_set_down(cove: Cove) -> None:
    """What woke an idle VM most is off in the running guest: containerd's garbage
    collector looks 1000 of its runs apart (not every 0.3 s), collecting after a
    deletion at once; the kernel folds its memory counters every 10 s, does no
    proactive compaction and runs no lockup detector."""
    got = cove.cove("shell", "sh", "-c", "cat /proc/sys/vm/stat_interval "
                    "/proc/sys/vm/compaction_proactiveness /proc/sys/kernel/watchdog; "
                    "containerd config dump").stdout
    assert got.split()[:3] == ["10", "0", "0"], got[:200]
    gc = got.split('[plugins."io.containerd.gc.v1.scheduler"]', 1)[1].split("[", 1)[0]
    assert "pause_threshold = 0.001" in gc and "deletion_threshold = 1" in gc, gc
    assert 'schedule_delay = "100ms"' in gc, gc  # 1.7 reads a duration, not _ms


def test_ping_through_the_relay(cove: Cove) -> None:
    s = _link(cove).open("docker")
    try:
        s.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    finally:
        s.close()
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert data.endswith(b"\r\n\r\nOK")


def test_echo_stream_is_byte_exact(cove: Cove) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    s = _link(cove).open("echo")
    got = bytearray()

    def reader() -> None:
        while chunk := s.recv(65536):
            got.extend(chunk)

    t = threading.Thread(target=reader)
    t.start()
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)  # half-close: the echo still comes back
    t.join(60)
    s.close()
    assert bytes(got) == payload


def test_wrong_token_is_closed_without_reply(cove: Cove) -> None:
    good = _link(cove)
    bad = TcpLink(good.host, good.port, "0" * 64)
    s = bad.open("docker")
    s.settimeout(10)
    s.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
    try:
        data = s.recv(100)
    except ConnectionResetError:
        data = b""
    finally:
        s.close()
    assert data == b""
    # ...and the control channel refuses it too.
    assert ControlChannel(bad, lambda ev: None).connect(timeout=5) is False


def test_port_event_within_one_second(cove: Cove, hello_image: str) -> None:
    name = f"pev-{uuid.uuid4().hex[:8]}"
    client = ControlClient(cove.folder / "control.sock")
    seen: list[tuple[float, dict]] = []

    def follow() -> None:
        for ev in client.events(history=False):
            if ev.get("event") == "ports":
                seen.append((time.monotonic(), ev))
                if any(p["container"] == name for p in ev.get("removed", [])):
                    return

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    time.sleep(0.5)
    try:
        cove.docker("run", "-d", "--name", name, "-p", "18080:80", hello_image,
                    "httpd", "-f", "-p", "80")
        started = time.monotonic()
        deadline = started + 10
        added = None
        while added is None and time.monotonic() < deadline:
            for ts, ev in seen:
                for p in ev["added"]:
                    if p["container"] == name:
                        added = (ts, p)
            time.sleep(0.05)
        assert added is not None, f"no port event for {name}: {seen}"
        ts, port = added
        assert port == {"proto": "tcp", "port": 18080, "host_ip": "0.0.0.0",
                        "container": name, "container_port": 80}
        # `docker run -d` returns once the container started; the event may even come first.
        assert ts - started < 1.0, f"port event {ts - started:.2f} s after the start"
        forwarded = cove.control("ports")
        assert any(p["host_port"] == 18080 and p["container"] == name
                   for p in forwarded)  # type: ignore[union-attr]
    finally:
        cove.docker("rm", "-f", name, check=False)
        stopped = time.monotonic()
    t.join(10)
    removed = [ts for ts, ev in seen
               if any(p["container"] == name for p in ev.get("removed", []))]
    assert removed and removed[0] - stopped < 1.0


def test_container_cannot_reach_the_agent_or_engine(cove: Cove, hello_image: str) -> None:
    script = (
        # The agent's port, on the VM's address and through the bridge's gateway.
        "for a in 10.0.2.15 172.17.0.1; do "
        "  if echo x | nc -w 3 $a 10811 >/dev/null 2>&1; then echo OPEN-$a; fi; done; "
        # No engine API on TCP, no socket in the container.
        "for p in 2375 2376; do "
        "  if echo x | nc -w 3 172.17.0.1 $p >/dev/null 2>&1; then echo OPEN-$p; fi; done; "
        "test -e /var/run/docker.sock && echo SOCKET; "
        # The secret's channel is masked.
        "cat /sys/firmware/qemu_fw_cfg/by_name/opt/org.cove/boot/raw 2>/dev/null "
        "  && echo SECRET-READ; "
        "ls /sys/firmware 2>/dev/null | wc -l; echo done"
    )
    out = cove.docker("run", "--rm", hello_image, "sh", "-c", script).stdout
    token = json.loads((cove.folder / "boot.json").read_text())["token"]
    assert token not in out
    assert "OPEN" not in out and "SOCKET" not in out and "SECRET-READ" not in out, out
    assert out.strip().endswith("0\ndone"), out


def test_host_network_container_cannot_reach_the_agent(cove: Cove, hello_image: str) -> None:
    out = cove.docker(
        "run", "--rm", "--network", "host", hello_image, "sh", "-c",
        "for a in 127.0.0.1 10.0.2.15; do "
        "  if echo x | nc -w 3 $a 10811 >/dev/null 2>&1; then echo OPEN-$a; fi; done; echo done",
    ).stdout
    assert out.strip() == "done", out


def test_engine_config_refused_keeps_the_old_one(cove: Cove) -> None:
    from desktop.control import ControlError

    before = cove.cove("shell", "cat", "/etc/docker/daemon.json").stdout
    try:
        cove.control("engine_config", config={"no-such-option": True})
        raise AssertionError("a bad engine config was accepted")
    except ControlError as e:
        assert "no-such-option" in str(e) and "don't match any configuration option" in str(e)
    assert cove.cove("shell", "cat", "/etc/docker/daemon.json").stdout == before
    assert cove.docker("version", "--format", "{{.Server.Version}}").stdout.startswith("26.")


def test_engine_config_applied_and_engine_restarted(cove: Cove) -> None:
    label = f"cove-test={uuid.uuid4().hex[:6]}"
    cove.control("engine_config", config={"labels": [label]})
    labels = json.loads(cove.docker("info", "--format", "{{json .Labels}}").stdout)
    assert label in labels
    cove.control("engine_config", config={})
    labels = json.loads(cove.docker("info", "--format", "{{json .Labels}}").stdout)
    assert label not in (labels or [])


def test_engine_restarts_after_a_crash(cove: Cove) -> None:
    client = ControlClient(cove.folder / "control.sock")
    seen: list[str] = []

    def follow() -> None:
        for ev in client.events(history=False):
            seen.append(ev["event"])
            if ev["event"] == "running":
                return

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    time.sleep(0.5)
    cove.cove("shell", "sh", "-c", "kill -9 $(pidof dockerd)")
    t.join(180)
    assert seen[:1] == ["degraded"] and seen[-1] == "running", seen
    assert cove.docker("version", "--format", "{{.Server.Version}}").stdout.startswith("26.")
    assert cove.control("agent_status")["restarts"]["dockerd"] >= 1  # type: ignore[index]


def test_containerd_killed_is_started_again_and_the_engine_goes_on(
        cove: Cove, hello_image: str) -> None:
    """The supervisor sleeps until a daemon exits (it no longer looks every half
    second): containerd killed is started again at once, dockerd reconnects to it by
    itself, and the next `docker run` works."""
    before = cove.control("agent_status")["restarts"]["containerd"]  # type: ignore[index]
    old = cove.cove("shell", "pidof", "containerd").stdout.split()
    cove.cove("shell", "sh", "-c", "kill -9 $(pidof containerd)")

    def restarted() -> bool:
        now = cove.cove("shell", "pidof", "containerd", check=False).stdout.split()
        return bool(now) and now != old

    def ran() -> subprocess.CompletedProcess | None:
        r = cove.docker("run", "--rm", hello_image, "echo", "ok", check=False)
        return r if r.returncode == 0 else None

    wait_for("containerd started again", restarted, 60)
    assert cove.control("agent_status")["restarts"]["containerd"] == before + 1  # type: ignore[index]
    r = wait_for("docker run after containerd's restart (dockerd reconnects with its own "
                 "back-off)", ran, 120)
    assert r.stdout == "ok\n"
