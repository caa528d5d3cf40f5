"""The backend's own limits: as many open files as the OS lets it have.

Each forwarded connection, link stream and shared file costs the backend a descriptor;
the usual soft limit (1024 on Linux, 256 on macOS) is reached by one busy container.
The hard limit is the OS's word; macOS also caps a process at OPEN_MAX (10240) whatever
the hard limit says. Windows has no such limit for sockets and pipes.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)

TARGET = 65536
DARWIN_OPEN_MAX = 10240


def raise_fd_limit(target: int = TARGET) -> int:
    """Raise the soft limit on open files towards `target` (never past the hard limit);
    returns the soft limit now in force (0 where there is none to raise)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if sys.platform == "darwin":
        want = min(want, DARWIN_OPEN_MAX)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-file limit to %d: %s", want, e)
    return soft
