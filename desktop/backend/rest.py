"""Resource Saver: an idle VM rests (its vCPUs paused) and the next use wakes it.

Idle means, for `resource_saver_minutes` in a row: no container running, no engine
API request being answered (see `Connection`), no connection open to a published port,
none opened, and no control request that needs the guest. Then the guest's vCPUs are
paused (QMP `stop`, Hyper-V's Suspend-VM): the host spends nothing on it but its memory,
and of that less: just before the pause the guest drops its clean page cache and compacts
what is free (the agent's `release_memory`), and free page reporting hands those pages to
the host, whose QEMU discards them. The kernel reports in passes 2 s apart, each of a few
hundred MiB at most (its budget per free list), so a large cache takes several: the
pause waits until the hypervisor process's resident memory has stopped falling
(`wait_given_back`), or the VM would rest holding what it had not reported yet.
The first use wakes it before it is served, never refused: a connection to the engine
socket or to a published port, a control request that needs the guest (`wake`,
`cove shell`, logs, stop). The clock is
set after the wake, as after a host's sleep.

What does not keep the VM awake:
* an engine API connection kept alive between requests (an SDK's connection pool): it
  holds the VM awake only while one of its requests is being answered (`Connection`).
* a connection that says it is passive (``X-Cove-Passive: 1`` on its requests): the
  tray's `docker events` stream and its refreshes, which would otherwise keep it awake
  for ever. A passive request still wakes a resting VM (it needs the engine); it just
  does not count as a use, and its connection left open does not hold the VM awake.
* the control API's passive requests (`status`, `ping`, `ports`, `events`): served from
  what the backend knows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from desktop.drivers import DriverError

log = logging.getLogger(__name__)

PASSIVE_HEADER = b"x-cove-passive"
CHECK_EVERY = 5.0  # seconds between idle checks (shorter when the idle time is)
# No rest this soon after any request, a passive one too: its answer may still be on
# its way, and a VM paused under it would hold it until the next wake.
REQUEST_GRACE = 5.0
GIVEN_BACK_STEP = 1 << 20  # a fall of less is QEMU's own noise, not pages given back


def wait_given_back(rss: Callable[[], int | None], go_on: Callable[[], bool],
                    quiet: float, longest: float, every: float = 0.5,
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> tuple[int, float]:
    """Wait while the hypervisor process's resident memory (`rss()`, bytes; None when it
    cannot be read) keeps falling: until it has not fallen for `quiet` seconds, `longest`
    seconds in all, or `go_on()` says no (a use came). (bytes it fell, seconds waited)."""
    t0 = clock()
    first = rss()
    if first is None:
        return 0, 0.0
    low, low_at = first, t0
    while go_on():
        now = clock()
        if now - low_at >= quiet or now - t0 >= longest:
            break
        sleep(every)
        got = rss()
        if got is None:
            break
        if got <= low - GIVEN_BACK_STEP:
            low, low_at = got, clock()
    return first - low, clock() - t0


class Connection:
    """One client connection's share in keeping the VM awake (see `ResourceSaver.use`).

    A connection of raw bytes (a published port) holds the VM awake while it is open.
    An engine API connection holds it while one of its requests is unanswered: a
    streamed answer (`logs -f`, `events`, a build's progress) until it ends, an attach,
    exec or upgrade until the connection closes. A kept-alive connection between
    requests (an SDK's pool) holds nothing, nor does a passive request.
    """

    def __init__(self, saver: ResourceSaver, held: bool) -> None:
        self._saver = saver
        self.active = False  # holding the VM awake
        self._waiting = 0  # requests sent, not yet answered (passive ones not counted)
        self._passive: list[bool] = []  # per request in flight, in order
        if held:
            self._set(True)

    def _set(self, active: bool) -> None:
        if active and not self.active:
            self.active = True
            self._saver._hold(self)
        elif not active and self.active:
            self.active = False
            self._saver._release(self)

    def request_seen(self, headers: list[tuple[bytes, bytes]]) -> None:
        """A request on this connection (the engine answers them in order)."""
        passive = any(k.lower() == PASSIVE_HEADER and v.strip() == b"1" for k, v in headers)
        # Every request needs the engine, a passive one too (a kept-alive connection may
        # carry one after the VM went to rest): woken first; only others count as a use.
        self._saver.requested()
        self._saver.wake("docker", use=not passive)
        self._passive.append(passive)
        if not passive:
            self._waiting += 1
            self._set(True)

    def response_ended(self) -> None:
        """The engine's answer to the oldest request in flight has ended."""
        if self._passive and not self._passive.pop(0):
            self._waiting -= 1
            self._saver.touch()
            if self._waiting <= 0:
                self._set(False)


class ResourceSaver:
    """`pause`/`resume` stop and start the vCPUs; `running_containers` asks the engine
    (None when it cannot say: then the VM does not rest); `on_rest`/`on_wake` report the
    change (the backend's state)."""

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None],
                 running_containers: Callable[[], int | None],
                 on_rest: Callable[[float], None], on_wake: Callable[[float, str], None],
                 minutes: float = 0, prepare: Callable[[], None] = lambda: None,
                 on_request: Callable[[], None] = lambda: None) -> None:
        self._pause, self._resume = pause, resume
        self._on_request = on_request  # every engine API request, passive ones too
        self._prepare = prepare  # before the pause: the guest gives its free memory back
        self._running_containers = running_containers
        self._on_rest, self._on_wake = on_rest, on_wake
        self.minutes = minutes
        self.resting = False
        self.rested_at: float | None = None  # monotonic
        self.wakes = 0
        self._open = 0  # connections that keep the VM awake
        self._last_use = time.monotonic()
        self._last_request = 0.0  # any request, passive ones too
        self._last_check = 0.0
        self._enabled = True  # False until the engine runs, and once the backend stops
        self._lock = threading.Lock()

    # -- settings and the backend's life ------------------------------------------------

    def set_minutes(self, minutes: float) -> None:
        self.minutes = minutes
        self.touch()

    def enable(self, on: bool) -> None:
        self._enabled = on
        self.touch()

    # -- uses ---------------------------------------------------------------------------

    def touch(self) -> None:
        """Something used the VM now: the idle time starts again."""
        self._last_use = time.monotonic()

    def requested(self) -> None:
        self._last_request = time.monotonic()
        self._on_request()

    def wake(self, why: str, use: bool = True) -> None:
        """Make sure the VM runs (resuming it when it rests); with `use`, count this as a
        use (the idle time starts again)."""
        with self._lock:
            if use:
                self._last_use = time.monotonic()
            if not self.resting:
                return
            t0 = time.monotonic()
            try:
                self._resume()
            except DriverError as e:
                log.warning("could not wake the VM (%s): %s", why, e)
                return
            self.resting = False
            self.wakes += 1
            rested = t0 - (self.rested_at or t0)
            self.rested_at = None
            self._last_use = time.monotonic()
        log.info("the VM woke (%s) after resting %.0f s", why, rested)
        self._on_wake(time.monotonic() - t0, why)

    @contextmanager
    def use(self, why: str, held: bool = True) -> Iterator[Connection]:
        """A client connection's life: the VM is woken first. With `held` it is kept
        awake while the connection is open; else while its requests are answered
        (`Connection.request_seen`, `Connection.response_ended`)."""
        self.wake(why)
        c = Connection(self, held)
        try:
            yield c
        finally:
            c._set(False)
            self.touch()

    def _hold(self, c: Connection) -> None:
        with self._lock:
            self._open += 1
        self.touch()

    def _release(self, c: Connection) -> None:
        with self._lock:
            self._open -= 1

    # -- resting ------------------------------------------------------------------------

    def tick(self) -> bool:
        """Called about every second: rests the VM when it has been idle long enough.
        True when it went to rest now."""
        if self.resting or not self._enabled or self.minutes <= 0:
            return False
        idle_for = self.minutes * 60
        now = time.monotonic()
        if now - self._last_use < idle_for or self._open or \
                now - self._last_request < min(REQUEST_GRACE, idle_for):
            return False
        if now - self._last_check < min(CHECK_EVERY, idle_for / 2):
            return False
        self._last_check = now
        running = self._running_containers()
        if running is None or running > 0:
            if running:
                self.touch()  # a running container is a use; asked again after the idle time
            return False
        # Outside the lock (it takes seconds): a use meanwhile wakes nothing, and the checks
        # below then find it and the VM stays awake.
        self._prepare()
        with self._lock:
            if not self.still_idle():
                return False
            try:
                self._pause()
            except DriverError as e:
                log.warning("could not let the VM rest: %s", e)
                self.touch()
                return False
            self.resting = True
            self.rested_at = time.monotonic()
        log.info("the VM rests: idle for %.1f min, no container running", self.minutes)
        self._on_rest(self.minutes)
        return True

    def still_idle(self) -> bool:
        """Whether nothing has used the VM since it was found idle (for `prepare`, which
        stops waiting once something has)."""
        idle_for = self.minutes * 60
        now = time.monotonic()
        return not (self._open or self.resting or not self._enabled or self.minutes <= 0
                    or now - self._last_use < idle_for
                    or now - self._last_request < min(REQUEST_GRACE, idle_for))

    def status(self) -> dict[str, Any]:
        return {"minutes": self.minutes, "resting": self.resting, "wakes": self.wakes,
                "open_connections": self._open,
                "idle_seconds": round(time.monotonic() - self._last_use, 1)}
