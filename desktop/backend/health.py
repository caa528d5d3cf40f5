"""Whether the engine answers: `running` means `/_ping` answered through the guest link
a moment ago, not that it once did. A wedged engine (stopped, deadlocked, its socket
gone) turns the state to `degraded` with the reason, and back once it answers again."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable

from desktop.link import Link, LinkError

log = logging.getLogger(__name__)

INTERVAL = 5.0  # between checks while clients use the engine, and after a failed one
# With no client request for IDLE_AFTER, checks come every IDLE_INTERVAL: each one is a
# new connection through the guest link to dockerd, and at 5 s they were a third of an
# idle VM's wakes (guest interrupts 31.9/s with them, 20.2/s without, measured on TCG).
IDLE_AFTER = 60.0
IDLE_INTERVAL = 30.0
TIMEOUT = 10.0  # for one answer (a busy engine under emulation is slow, not wedged)
FAILURES = 3  # in a row before the engine counts as not answering

PING = b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n"
RUNNING = (b'GET /containers/json?filters=%7B%22status%22%3A%5B%22running%22%5D%7D '
           b'HTTP/1.0\r\nHost: docker\r\n\r\n')
MAX_LIST = 16 * 2**20


def _exchange(link: Link, request: bytes, timeout: float, enough: Callable[[bytes], bool],
              limit: int) -> bytes:
    """Send one HTTP/1.0 request to the engine through `link`; what it answered, read
    until `enough` says so, the engine closes, or `limit` bytes. LinkError, OSError."""
    s = link.open("docker", timeout=timeout)
    try:
        s.settimeout(timeout)
        s.sendall(request)
        data = b""
        while not enough(data) and len(data) < limit:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data
    finally:
        s.close()


def running_containers(link: Link, timeout: float = TIMEOUT) -> int | None:
    """How many containers run, as the engine says through `link`; None when it cannot
    be asked or its answer cannot be read (the Resource Saver then keeps the VM awake)."""
    try:
        data = _exchange(link, RUNNING, timeout, lambda d: False, MAX_LIST)
    except (LinkError, OSError) as e:
        log.debug("running containers: %s", e)
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        return None
    try:
        listed = json.loads(body)
    except ValueError:
        return None
    return len(listed) if isinstance(listed, list) else None


def ping(link: Link, timeout: float | None = None) -> str | None:
    """None when the engine answers /_ping with 200 OK through `link`; else why not."""
    timeout = TIMEOUT if timeout is None else timeout
    try:
        data = _exchange(link, PING, timeout, lambda d: b"\r\n" in d, 4096)
    except LinkError as e:
        return f"the guest link refused: {e}"
    except OSError as e:
        return f"no answer to /_ping in {timeout:.0f} s ({e})" if isinstance(
            e, socket.timeout) else f"the engine's connection failed: {e}"
    status = data.split(b"\r\n", 1)[0].split()
    if len(status) >= 2 and status[1] == b"200":
        return None
    return f"the engine answered /_ping with {data[:60]!r}" if data else \
        "the engine closed the connection without answering /_ping"


class EngineHealth:
    """Checks the engine on a thread of its own, every INTERVAL while it is in use (see
    `used`), every IDLE_INTERVAL when not; `on_change(ok, why)` is called when the
    verdict changes (FAILURES failures in a row, or an answer again)."""

    def __init__(self, check: Callable[[], str | None],
                 on_change: Callable[[bool, str], None]) -> None:
        self.check = check
        self.on_change = on_change
        self.ok = True
        self.answered_at: float | None = None  # wall clock of the last answer
        self._failures = 0
        self._stop = threading.Event()
        self._soon = threading.Event()
        self.paused: Callable[[], bool] = lambda: False  # True: the VM rests; no checks
        self._used_at = time.monotonic()  # the last client request (the start counts)

    def start(self) -> None:
        threading.Thread(target=self._loop, daemon=True, name="engine-health").start()

    def stop(self) -> None:
        self._stop.set()
        self._soon.set()

    def check_soon(self) -> None:
        """Check now rather than at the end of the interval (after the host woke)."""
        self._soon.set()

    def used(self) -> None:
        """A client asked the engine. Checks come every INTERVAL again, the first at
        once when the engine was idle (whoever is back is told soon if it is wedged)."""
        now = time.monotonic()
        was_idle = now - self._used_at >= IDLE_AFTER
        self._used_at = now
        if was_idle:
            self._soon.set()

    def interval(self) -> float:
        if self._failures or time.monotonic() - self._used_at < IDLE_AFTER:
            return INTERVAL
        return max(INTERVAL, IDLE_INTERVAL)

    def _loop(self) -> None:
        while True:
            self._soon.wait(self.interval())
            self._soon.clear()
            if self._stop.is_set():
                return
            if not self.paused():
                self.check_once()

    def check_once(self) -> None:
        why = self.check()
        if why is None:
            self.answered_at = time.time()
            self._failures = 0
            if not self.ok:
                self.ok = True
                self.on_change(True, "")
            return
        self._failures += 1
        log.info("engine health check failed (%d): %s", self._failures, why)
        if self.ok and self._failures >= FAILURES:
            self.ok = False
            self.on_change(False, why)
