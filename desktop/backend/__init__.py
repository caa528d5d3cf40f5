"""The backend: one long-lived process per instance that owns the VM.

`cove start` launches it detached (`cove backend --instance NAME`). It boots the VM
through a driver, keeps the guest link's control channel (reconnecting when it drops),
serves the engine socket and the control API, pushes the host's clock, and records every
state change as an event (JSON lines in ``events.log``, and live to control clients):

    starting -> running <-> degraded -> stopping -> stopped
                       \\-> error (with a reason) -> stopped

`Backend.run` returns when the VM is gone and everything it opened is closed again
(sockets, pid file), whichever way it ended.

The package, one module per concern:

* `core`: `Backend`, the orchestration (state, run, stop, what the agent says);
* `boot`: the start's named steps (`Boot.STEPS`), `StartError`;
* `events`: the event log and its live subscribers;
* `clock`: the guest's clock following the host's;
* `engine_socket`: docker.sock (and docker_engine on Windows) to the engine;
* `shares`: this boot's shared folders, the "link" ones served, change notifications;
* `health`: whether the engine answers; `timeouts`: how long each wait lasts;
* `process`: `main`, the backend process, its log, its one restart.
"""

from desktop.backend.boot import StartError
from desktop.backend.core import Backend
from desktop.backend.process import main

__all__ = ["Backend", "StartError", "main"]
