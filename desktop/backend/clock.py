"""The guest's clock follows the host's: pushed every few seconds, and at once when the
host's wall clock jumped against its monotonic one (a sleep, or the user set it)."""

from __future__ import annotations

import logging
import time
from typing import Any

from desktop.backend import timeouts
from desktop.control import ControlError
from desktop.link import LinkError
from desktop.link.channel import ControlChannel

log = logging.getLogger(__name__)

TEN_YEARS = 10 * 365 * 86400


class HostClock:
    def __init__(self) -> None:
        self._offset_ns = 0  # a simulated jump of the host's clock (tests)
        self._last_push = 0.0  # monotonic
        self._last_wall: float | None = None

    def host_time_ns(self) -> int:
        """The host's clock as the guest should follow it."""
        return time.time_ns() + self._offset_ns

    def simulate_jump(self, seconds: float) -> dict[str, Any]:
        """From now on, behave as if the host's clock were `seconds` off the real one.

        The jump is seen by the same check that sees a real one (the wall clock moved
        unlike the monotonic one), so tests exercise the real path. 0 ends the simulation.
        """
        if not -TEN_YEARS < seconds < TEN_YEARS:
            raise ControlError("clock_offset: seconds must be within ten years")
        self._offset_ns = int(seconds * 1e9)
        log.info("host clock offset for the guest set to %+.3f s", seconds)
        return {"offset_seconds": seconds, "host_time_ns": self.host_time_ns()}

    def push(self, channel: ControlChannel | None) -> None:
        """Set the guest's clock now (when the agent is connected)."""
        if channel is None or not channel.connected.is_set():
            return
        # Both clocks as they were when the time was taken: a jump while the request is
        # on its way is then seen at the next tick, not hidden until the next schedule.
        # `mono` (the host's monotonic clock, shared by every process of the host) lets
        # the agent drop a push that arrives after a later one: pushes queued while the
        # VM was paused arrive together and are handled on threads of their own.
        ns, mono = self.host_time_ns(), time.monotonic_ns()
        try:
            channel.request("set_time", ns=ns, mono=mono, timeout=5)
        except LinkError as e:
            log.debug("time push failed: %s", e)
        self._last_push = mono / 1e9
        self._last_wall = ns / 1e9

    def maybe_push(self, channel: ControlChannel | None) -> None:
        """Every TIME_PUSH_INTERVAL, and at once when the wall clock jumped."""
        now_m, now_w = time.monotonic(), self.host_time_ns() / 1e9
        last_wall = self._last_wall if self._last_wall is not None else now_w
        expected = last_wall + (now_m - self._last_push)
        jumped = abs(now_w - expected) > 1.0
        if jumped or now_m - self._last_push >= timeouts.TIME_PUSH_INTERVAL:
            self.push(channel)
