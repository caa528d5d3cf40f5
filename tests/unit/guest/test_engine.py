"""The engine's supervisor: what it does before the daemons run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from guest_engine import engine


def test_page_in_reads_each_program_whole_on_a_thread_and_skips_a_missing_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's programs are read into the page cache while the boot goes on: every
    byte of each (counted through the reads), a missing path skipped, the caller never
    held up."""
    import builtins

    a, b = tmp_path / "containerd", tmp_path / "dockerd"
    a.write_bytes(b"c" * (3 << 20))
    b.write_bytes(b"d" * ((1 << 20) + 5))
    got: dict[str, int] = {}
    real_open = builtins.open

    def counting_open(path, mode="r", *args, **kw):  # type: ignore[no-untyped-def]
        f = real_open(path, mode, *args, **kw)
        real_read = f.read

        def read(n: int = -1) -> bytes:
            data = real_read(n)
            got[str(path)] = got.get(str(path), 0) + len(data)
            return data

        f.read = read
        return f

    monkeypatch.setattr(builtins, "open", counting_open)
    t = engine.page_in((str(a), str(tmp_path / "missing"), str(b)))
    t.join(10)
    assert not t.is_alive() and t.daemon
    assert got == {str(a): 3 << 20, str(b): (1 << 20) + 5}
    assert engine.PROGRAMS == ("/usr/bin/containerd", "/usr/sbin/dockerd")


def _until(cond: Callable[[], object], seconds: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_supervisor_sleeps_until_a_daemon_exits_and_restarts_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real child processes stand for containerd and dockerd. While both run the
    supervisor looks at neither (it looked every half second: two wakes a second of an
    idle VM); each one's exit still wakes it at once: containerd is started again, dockerd
    relaunched after its back-off; stop() ends both and the supervisor."""
    import os
    import signal
    import sys
    import threading
    import time

    from guest_engine import dockerapi
    from guest_engine.boot import paths

    sock = tmp_path / "containerd.sock"
    sock.touch()
    monkeypatch.setattr(engine, "CONTAINERD_SOCK", str(sock))
    monkeypatch.setattr(engine, "DAEMON_JSON", tmp_path / "daemon.json")
    monkeypatch.setattr(paths, "LOG_DIR", tmp_path / "log")
    monkeypatch.setattr(engine, "BACKOFF", (0.2,))
    monkeypatch.setattr(dockerapi, "ping", lambda *a, **k: True)
    monkeypatch.setattr(dockerapi, "get_json", lambda *a, **k: {"Version": "test"})
    looks = []
    real_running = engine.Service.running

    def running(self: engine.Service) -> bool:
        looks.append(self.name)
        return real_running(self)

    monkeypatch.setattr(engine.Service, "running", running)
    states: list[str] = []
    eng = engine.Engine(lambda ev: states.append(str(ev.get("state"))))
    daemon = [sys.executable, "-c", "import time; time.sleep(120)"]
    eng.containerd.argv = eng.dockerd.argv = daemon
    eng.start()
    try:
        _until(lambda: eng.state == "running")
        time.sleep(0.3)
        before = len(looks)
        time.sleep(1.5)
        assert len(looks) == before, "the supervisor polled the daemons while they ran"

        assert eng.containerd.proc is not None
        old = eng.containerd.proc.pid
        os.kill(old, signal.SIGKILL)
        _until(lambda: eng.containerd.restarts == 1 and eng.containerd.proc is not None
               and eng.containerd.proc.pid != old and real_running(eng.containerd))

        assert eng.dockerd.proc is not None
        old = eng.dockerd.proc.pid
        os.kill(old, signal.SIGKILL)
        _until(lambda: eng.dockerd.restarts == 1 and eng.state == "running"
               and eng.dockerd.proc is not None and eng.dockerd.proc.pid != old)
        assert "restarting" in states
    finally:
        eng.stop(5)
    assert not real_running(eng.dockerd) and not real_running(eng.containerd)
    _until(lambda: not any(t.name == "engine" for t in threading.enumerate()), 5)
