"""The control API's client: one connection per request, or a stream of events."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from desktop.platform import endpoints
from desktop.platform.endpoints import Stream
from desktop.status import Event, Status


class ControlError(Exception):
    """The backend is not reachable, or refused the request (message is its own)."""


class ControlClient:
    """A client of the control API of the instance whose control socket is `path` (on
    Windows the instance's pipe, found by the folder's name)."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout

    def _connect(self, timeout: float | None) -> Any:  # a socket or a pipe: has makefile
        try:
            s: Stream = endpoints.connect_control(self.path, timeout)
        except OSError as e:
            raise ControlError(f"Cove's backend is not running ({self.path}: {e})") from e
        return s

    def request(self, op: str, timeout: float | None = None, **params: Any) -> Any:
        """One request; its result, or ControlError with the backend's message."""
        s = self._connect(timeout or self.timeout)
        try:
            s.sendall(json.dumps({"op": op, **params}).encode() + b"\n")
            line = s.makefile("rb").readline()
        except OSError as e:
            raise ControlError(f"the backend did not answer {op!r}: {e}") from e
        finally:
            s.close()
        if not line:
            raise ControlError(f"the backend closed the connection during {op!r}")
        try:
            reply = json.loads(line)
        except ValueError as e:
            raise ControlError(f"the backend's reply to {op!r} is not JSON: {e}") from e
        if not reply.get("ok"):
            raise ControlError(reply.get("error", "unknown error"))
        return reply.get("result")

    # -- the ops (docs/protocol.md) ---------------------------------------------------

    def status(self, timeout: float | None = None) -> Status:
        return cast(Status, self.request("status", timeout=timeout))

    def stop(self, reason: str = "requested", save: bool = False) -> None:
        """Ask the backend to stop; `save`: save the VM's state for the next start where
        it can be saved."""
        self.request("stop", reason=reason, save=save)

    def ports(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self.request("ports"))

    def logs(self, name: str, lines: int = 200) -> str:
        return str(self.request("logs", name=name, lines=lines))

    def agent_status(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.request("agent_status"))

    def engine_config(self, config: dict[str, Any], timeout: float = 200) -> Any:
        return self.request("engine_config", timeout=timeout, config=config)

    def docker_engine_target(self, endpoint: str) -> dict[str, Any]:
        return cast(dict[str, Any], self.request("docker_engine_target", endpoint=endpoint))

    def clock_offset(self, seconds: float) -> dict[str, Any]:
        """Tests only: answered by a backend started with COVE_TEST_OPS=1 (else the
        backend says "unknown op")."""
        return cast(dict[str, Any], self.request("clock_offset", seconds=seconds))

    def events(self, history: bool = True) -> Iterator[Event]:
        """Yield events until the backend closes the stream (it exits)."""
        s = self._connect(None)
        try:
            s.sendall(json.dumps({"op": "events", "history": history}).encode() + b"\n")
            for line in s.makefile("rb"):
                try:
                    yield json.loads(line)
                except ValueError:
                    continue
        except OSError:
            return
        finally:
            s.close()

    def alive(self) -> bool:
        """The backend answers a ping within 2 s."""
        try:
            self.request("ping", timeout=2)
            return True
        except (ControlError, ValueError):
            return False
