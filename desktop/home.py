"""Every file name under ``$COVE_HOME`` and in an instance folder, in one place.

No other module spells one of these names: `desktop.instance.Instance` builds its paths
from them, and the drivers, the backend and the front ends ask the instance (or use the
names here for files a driver keeps beside the VM)::

    $COVE_HOME/                  (~/.cove unless set; short: socket paths < 104 bytes on macOS)
      images/                    the guest images, by key (vm_image)
      windows/                   the native Windows engine's own folder
      accel.json                 the accelerator verdict (QEMU's probe), for every instance
      engine.json                which engine the docker context points at (Windows)
      <instance>/                see the names below
"""

from __future__ import annotations

import os
from pathlib import Path

# -- $COVE_HOME ----------------------------------------------------------------------------
IMAGES_DIR = "images"
WINDOWS_ENGINE_DIR = "windows"
ACCEL_CACHE = "accel.json"
ENGINE_MODE = "engine.json"
# Folders in $COVE_HOME that are not instances.
RESERVED_NAMES = (IMAGES_DIR, WINDOWS_ENGINE_DIR)

# -- an instance folder ------------------------------------------------------------------
SETTINGS = "settings.json"  # resources, shares, engine config, port policy
SETTINGS_LOCK = "settings.lock"  # held while a writer reads, changes and writes settings
DATA_DISK = "data.qcow2"  # /var/lib/docker: images, containers, volumes
DOCKER_SOCK = "docker.sock"  # the forwarded engine API (0600)
CONTROL_SOCK = "control.sock"  # the backend's control API (0600)
BACKEND_PID = "backend.pid"  # "<pid> <start time>"
BACKEND_LOCK = "backend.lock"  # held by the instance's one backend for its whole life
BOOT_CONFIG = "boot.json"  # the per-boot token and config for the guest (0600)
EVENTS_LOG = "events.log"  # JSON lines: every state change and event
BACKEND_LOG = "backend.log"  # JSON lines: the backend's log
BACKEND_OUT = "backend.out"  # the backend's stdout and stderr (what a crash printed)
SERIAL_LOG = "serial.log"  # the guest's console
SERIAL_PREV_LOG = "serial.prev.log"  # the previous boot's console, for a post-mortem
SERIAL_CRASH_LOG = "serial.crash.log"  # the console of a boot whose kernel crashed
NO_ACTIVATE = "no-activate"  # present: do not make the docker context current
PREVIOUS_CONTEXT = "previous-context"  # the context that was current before Cove's
SSH_KEY = "ssh_key"  # the key `cove shell` logs in with (and its .pub)
SSH_KEY_PUB = "ssh_key.pub"
SSH_CONFIG = "ssh_config"  # for `ssh -F <folder>/ssh_config cove`
TRAY_LOCK = "tray.lock"  # held by the instance's one tray for its whole life
TRAY_SOCK = "tray.sock"  # where a second tray says "show" (Unix; a named pipe on Windows)
# Files the QEMU driver keeps in the instance folder.
QMP_SOCK = "qmp.sock"
QMP_EVENTS_SOCK = "qmp-events.sock"  # the backend's own monitor, for QEMU's events
QEMU_LOG = "qemu.log"
SAVED_STATE = "saved.state"  # the stopped VM's saved state (QEMU's migration stream)
SAVED_MANIFEST = "saved.json"  # what that state is valid with (0600: the link token)
VM_STATE = "vm.json"  # the running QEMU's pid, start time, link port (an orphan is found)


def virtiofs_socket(index: int) -> str:
    return f"virtiofs-{index}.sock"


def socket_paths(folder: Path, shares: int = 0) -> list[Path]:
    """Every unix socket an instance in `folder` with `shares` shared folders may create
    (the backend's, QEMU's monitors, one virtiofsd socket per share)."""
    names = [DOCKER_SOCK, CONTROL_SOCK, QMP_SOCK, QMP_EVENTS_SOCK]
    return [folder / n for n in names] + [folder / virtiofs_socket(i) for i in range(shares)]


def virtiofsd_log(index: int) -> str:
    return f"virtiofsd-{index}.log"


def probe_log(accel: str) -> str:
    return f"probe-{accel}.log"


def cove_home() -> Path:
    """``$COVE_HOME``, or ``~/.cove``."""
    return Path(os.environ.get("COVE_HOME") or Path.home() / ".cove")
