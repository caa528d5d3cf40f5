"""Facts about the host Cove runs on: its OS, CPU architecture, CPUs, memory, and a free
localhost port. One copy of each, for the drivers and the settings' defaults.

The standard library and psutil, and nothing from the rest of `desktop`: the platform
layer sits below the instance, the drivers and the backend.
"""

from __future__ import annotations

import os
import platform
import socket
import sys

import psutil

GIB = 2**30
# platform.machine() (lower-cased) -> Cove's (and Debian's) architecture names.
HOST_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_OS_NAMES = {"linux": "linux", "darwin": "darwin", "win32": "windows"}


def host_os() -> str:
    """"linux", "darwin" or "windows" (any other host: its `sys.platform`)."""
    return _OS_NAMES.get(sys.platform, sys.platform)


def host_arch() -> str:
    """"amd64" or "arm64" (any other machine: its lower-cased `platform.machine()`)."""
    machine = platform.machine().lower()
    return HOST_ARCH.get(machine, machine)


def host_cpus() -> int:
    return os.cpu_count() or 1


def host_memory() -> int:
    """The host's physical memory in bytes, from psutil on every host (Windows has no
    os.sysconf); sysconf, then 8 GiB, where psutil cannot say."""
    try:
        return int(psutil.virtual_memory().total)
    except (psutil.Error, OSError, RuntimeError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * GIB


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the time of the call."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
