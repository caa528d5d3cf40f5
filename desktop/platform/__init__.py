"""What differs between the hosts Cove runs on, chosen once and kept out of the logic.

* `hostinfo`: the host's OS, architecture, CPUs, memory and a free port (one copy each).
* `paths`: how host paths are written and where shared folders appear in the VM (pure;
  Windows rules are tested on any host).
* `endpoints`: the backend's listening endpoints and how clients reach them, picked for
  this host from `_unix` (sockets, mode 0600) or `_windows` (named pipes whose DACL
  grants the user and SYSTEM only; `winpipe`, over the ctypes calls in `_win32`).

* `sockets`: stale socket files removed, never anything else.
* `processes`: whether a process is alive, its start token (a reused pid is told apart),
  ending one, and detaching a helper, through psutil on every host.

Nothing here imports the rest of Cove (an import-linter contract keeps it so): the
endpoints take any object with an instance's paths and name.
"""
