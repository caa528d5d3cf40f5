"""The backend's control API: JSON lines over a 0600 unix socket in the instance folder
(on Windows, the named pipe ``\\\\.\\pipe\\cove-<user>-<instance>-control``, open to the user
only).

A request is one JSON object per line with an ``op``; the reply is one line
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``. The ``events``
request turns the connection into a stream of event lines (past events first, when
asked, then live ones). docs/protocol.md lists the ops.

* `client`: `ControlClient`, what the CLI, the tray and the tests use (typed methods).
* `server`: the framing and the op table the backend fills in.
"""

from desktop.control.client import ControlClient, ControlError

__all__ = ["ControlClient", "ControlError"]
