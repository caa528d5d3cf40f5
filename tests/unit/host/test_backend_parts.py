"""Parts of the backend on their own: the event log's bound, the accept loop at the
descriptor limit, the open-file limit, the clock's jump check."""

from __future__ import annotations

import errno
import json
import socket
import threading
from pathlib import Path
from typing import Any

from desktop.backend.clock import HostClock
from desktop.backend.events import EventLog
from desktop.platform import limits, sockets


def test_the_event_log_is_bounded(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.log", max_bytes=2000)
    for i in range(100):
        log.emit("ports", added=[{"port": i, "pad": "x" * 40}])
    assert (tmp_path / "events.log").stat().st_size <= 2000 + 200
    assert (tmp_path / "events.log.1").stat().st_size <= 2000 + 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.log", "events.log.1"]
    last = json.loads((tmp_path / "events.log").read_text().splitlines()[-1])
    assert last["added"][0]["port"] == 99


def test_an_event_in_history_is_already_in_the_file(tmp_path: Path,
                                                   monkeypatch: Any) -> None:
    log = EventLog(tmp_path / "events.log")
    seen: list[int] = []
    real_open = Path.open

    def spying_open(self: Path, *a: Any, **kw: Any) -> Any:
        seen.append(len(log.history))  # what a reader of history sees while we write
        return real_open(self, *a, **kw)

    monkeypatch.setattr(Path, "open", spying_open)
    log.emit("running")
    log.emit("stopped")
    assert seen == [0, 1]
    assert [json.loads(x)["event"] for x in
            (tmp_path / "events.log").read_text().splitlines()] == ["running", "stopped"]


class _Listener:
    """accept() fails as a full descriptor table makes it fail, then works."""

    def __init__(self, failures: list[int]) -> None:
        self.failures = failures
        self.calls = 0

    def accept(self) -> tuple[Any, Any]:
        self.calls += 1
        if self.failures:
            raise OSError(self.failures.pop(0), "accept failed")
        return "conn", "addr"


def test_accept_outlasts_emfile_and_enfile() -> None:
    pauses: list[float] = []
    listener = _Listener([errno.EMFILE, errno.EMFILE, errno.ENFILE, errno.ECONNABORTED])
    assert sockets.accept(listener, lambda: False, sleep=pauses.append) == ("conn", "addr")
    assert listener.calls == 5
    assert pauses == [0.01, 0.02, 0.04, 0.08]


def test_accept_ends_when_the_listener_is_closed_or_broken() -> None:
    assert sockets.accept(_Listener([errno.EMFILE]), lambda: True, sleep=lambda s: None) is None
    assert sockets.accept(_Listener([errno.EBADF]), lambda: False, sleep=lambda s: None) is None


def test_a_real_listener_keeps_accepting_after_the_descriptors_come_back() -> None:
    import resource

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    got: list[Any] = []
    closed = threading.Event()

    def loop() -> None:
        while (a := sockets.accept(srv, closed.is_set)) is not None:
            got.append(a[0])

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hog: list[int] = []
    c1 = socket.create_connection(("127.0.0.1", port))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        try:
            while True:
                hog.append(socket.socket().detach())
        except OSError:
            pass  # the table is full: accept() now fails with EMFILE
        t = threading.Thread(target=loop, daemon=True)
        t.start()
        t.join(0.3)
        assert t.is_alive() and not got  # waiting, not ended
    finally:
        for fd in hog:
            socket.socket(fileno=fd).close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    c2 = socket.create_connection(("127.0.0.1", port))
    for _ in range(100):
        if len(got) == 2:
            break
        threading.Event().wait(0.05)
    assert len(got) == 2
    closed.set()
    srv.close()
    for s in (c1, c2, *got):
        s.close()


def test_the_open_file_limit_is_raised_towards_the_hard_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        now = limits.raise_fd_limit(4096)
        want = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
        assert now == want == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class _Channel:
    """A connected agent channel whose set_time requests take a while."""

    def __init__(self, during: Any = None) -> None:
        self.connected = threading.Event()
        self.connected.set()
        self.sent: list[int] = []
        self.during = during

    def request(self, op: str, **params: Any) -> None:
        assert op == "set_time"
        self.sent.append(params["ns"])
        if self.during is not None:
            during, self.during = self.during, None
            during()


def test_a_clock_jump_while_a_push_is_on_its_way_is_pushed_at_the_next_tick() -> None:
    """The jump check compares with the clocks as they were when the pushed time was
    taken: one read after the request returned would already include the jump."""
    clock = HostClock()
    channel = _Channel(during=lambda: clock.simulate_jump(3600))
    clock.push(channel)  # the host's clock jumps while this request is answered
    clock.maybe_push(channel)
    assert len(channel.sent) == 2, "the jump waited for the next scheduled push"
    assert channel.sent[1] - channel.sent[0] > 3599 * 10**9
    clock.maybe_push(channel)
    assert len(channel.sent) == 2, "pushed again with no jump and no schedule due"
