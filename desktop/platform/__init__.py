"""What differs between the hosts Cove runs on, chosen once and kept out of the logic.

* `paths`: how host paths are written and where shared folders appear in the VM (pure;
  Windows rules are tested on any host).
* `endpoints`: the backend's listening endpoints and how clients reach them, picked for
  this host from `_unix` (sockets, mode 0600) or `_windows` (named pipes whose DACL
  grants the user and SYSTEM only; `winpipe`, over the ctypes calls in `_win32`).

This package's ``__init__`` imports nothing, so that `desktop.instance` can use `paths`
while `endpoints` uses `desktop.instance`.
"""
