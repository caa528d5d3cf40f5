"""The backend's control API: JSON lines over a 0600 unix socket in the instance folder
(on Windows, the named pipe ``\\\\.\\pipe\\cove-<instance>-control``, open to the user only).

A request is one JSON object per line with an ``op``; the reply is one line
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``. The ``events``
request turns the connection into a stream of event lines (past events first, when
asked, then live ones). The CLI and the tray are both clients (`ControlClient`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from desktop.platform import endpoints
from desktop.platform.endpoints import Stream


class ControlError(Exception):
    """The backend is not reachable, or refused the request (message is its own)."""


class ControlClient:
    """A client of the control API of the instance whose control socket is `path` (on
    Windows the instance's pipe, found by the folder's name)."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout

    def _connect(self, timeout: float | None) -> Any:
        try:
            s: Stream = endpoints.connect_control(self.path, timeout)
        except OSError as e:
            raise ControlError(f"Cove's backend is not running ({self.path}: {e})") from e
        return s

    def request(self, op: str, timeout: float | None = None, **params: Any) -> Any:
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
        reply = json.loads(line)
        if not reply.get("ok"):
            raise ControlError(reply.get("error", "unknown error"))
        return reply.get("result")

    def events(self, history: bool = True) -> Iterator[dict[str, Any]]:
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
        try:
            self.request("ping", timeout=2)
            return True
        except (ControlError, ValueError):
            return False
