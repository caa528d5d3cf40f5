"""The engine API the backend serves: docker.sock (or Cove's pipe) to the VM's engine
through the guard, and on Windows ``\\\\.\\pipe\\docker_engine``, which follows the
active engine (the VM, or native Windows containers)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from desktop.control import ControlError
from desktop.instance import Instance
from desktop.link import Link, LinkError
from desktop.platform import endpoints
from desktop.platform.endpoints import Stream
from desktop.services import apiguard
from guest_engine import relay

log = logging.getLogger(__name__)


class EngineSocket:
    """`link` gives the guest link of this boot; `check` is the docker.sock guard's;
    `use(why, held)` wraps each connection's life (the Resource Saver: it wakes the VM
    first and learns from each request and answer whether the connection keeps the VM
    awake)."""

    def __init__(self, inst: Instance, link: Callable[[], Link | None],
                 check: apiguard.Check,
                 use: Callable[[str, bool], AbstractContextManager[Any]] | None = None
                 ) -> None:
        self.inst = inst
        self._link = link
        self._check = check
        self._use = use
        # The docker_engine pipe (Windows, when Cove serves it): "" forwards to the VM,
        # else the DOCKER_HOST URL of the engine it forwards to (Windows containers).
        self.docker_engine_served = False
        self.docker_engine_target = ""

    def forward_docker(self, conn: Stream) -> None:
        if self._use is None:
            self._forward(conn, None)
            return
        with self._use("docker", False) as use:
            self._forward(conn, use.request_seen, use.response_ended)

    def _forward(self, conn: Stream, on_request: Callable[[Any], None] | None,
                 on_response_end: Callable[[], None] | None = None) -> None:
        link = self._link()
        assert link is not None
        try:
            up = link.open("docker")
        except LinkError as e:
            log.warning("engine connection failed: %s", e)
            conn.close()
            return
        apiguard.guarded_pipe(conn, up, self._check, on_request=on_request,
                              on_response_end=on_response_end)

    def forward_docker_engine(self, conn: Stream) -> None:
        """The docker_engine pipe: to the VM, or while Windows containers are active to
        their engine (unguarded: that engine reads Windows paths itself)."""
        target = self.docker_engine_target
        if not target:
            self.forward_docker(conn)
            return
        try:
            up = endpoints.connect_url(target, 10)
        except OSError as e:
            log.warning("docker_engine: cannot reach %s: %s", target, e)
            conn.close()
            return
        relay.pipe(conn, up)

    def set_docker_engine_target(self, endpoint: str) -> dict[str, Any]:
        """Where docker_engine forwards new connections ("" or this instance's own
        address: the VM); open connections finish where they are."""
        if endpoint == endpoints.docker_host(self.inst):
            endpoint = ""
        if endpoint and not endpoint.startswith(("npipe://", "unix://")):
            raise ControlError(f"docker_engine_target: {endpoint!r} is not an engine "
                               "address (npipe:////./pipe/NAME or unix:///path)")
        self.docker_engine_target = endpoint
        log.info("docker_engine now forwards to %s", endpoint or "the VM")
        return self.status()

    def status(self) -> dict[str, Any]:
        return {"served": self.docker_engine_served,
                "target": self.docker_engine_target or endpoints.docker_host(self.inst)}
