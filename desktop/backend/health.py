"""Whether the engine answers: `running` means `/_ping` answered through the guest link
a moment ago, not that it once did. A wedged engine (stopped, deadlocked, its socket
gone) turns the state to `degraded` with the reason, and back once it answers again."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

from desktop.link import Link, LinkError

log = logging.getLogger(__name__)

INTERVAL = 5.0  # between checks
TIMEOUT = 10.0  # for one answer (a busy engine under emulation is slow, not wedged)
FAILURES = 3  # in a row before the engine counts as not answering

PING = b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n"


def ping(link: Link, timeout: float | None = None) -> str | None:
    """None when the engine answers /_ping with 200 OK through `link`; else why not."""
    timeout = TIMEOUT if timeout is None else timeout
    try:
        s = link.open("docker", timeout=timeout)
    except LinkError as e:
        return f"the guest link refused: {e}"
    try:
        s.settimeout(timeout)
        s.sendall(PING)
        data = b""
        while b"\r\n" not in data and len(data) < 4096:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError as e:
        return f"no answer to /_ping in {timeout:.0f} s ({e})" if isinstance(
            e, socket.timeout) else f"the engine's connection failed: {e}"
    finally:
        s.close()
    status = data.split(b"\r\n", 1)[0].split()
    if len(status) >= 2 and status[1] == b"200":
        return None
    return f"the engine answered /_ping with {data[:60]!r}" if data else \
        "the engine closed the connection without answering /_ping"


class EngineHealth:
    """Checks the engine every INTERVAL on a thread of its own; `on_change(ok, why)` is
    called when the verdict changes (FAILURES failures in a row, or an answer again)."""

    def __init__(self, check: Callable[[], str | None],
                 on_change: Callable[[bool, str], None]) -> None:
        self.check = check
        self.on_change = on_change
        self.ok = True
        self.answered_at: float | None = None  # wall clock of the last answer
        self._failures = 0
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._loop, daemon=True, name="engine-health").start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(INTERVAL):
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
