"""Shared folders: a host folder as the VM sees it, whichever driver shares it.

Each driver resolves the settings' (path, transport) pairs into `SharedFolder`s
(`Driver.resolve_shares`); the backend puts their `boot_entry()` in the boot config and
serves the "link" ones itself (`desktop.services.ninep`).
"""

from __future__ import annotations

import ntpath
import os
from dataclasses import dataclass

from desktop.drivers import DriverError
from desktop.platform.paths import WindowsPaths

WINDOWS_PATHS = WindowsPaths()  # pure string rules: used on any host


@dataclass(frozen=True)
class SharedFolder:
    """A host folder mounted in the VM: at the same path, or (Windows) at `vm_path`."""

    path: str
    tag: str  # the device's mount tag, e.g. "cove0"
    transport: str  # "virtiofs", "9p" or "link" (resolved by the driver)
    vm_path: str = ""  # where the VM mounts it, when not at `path`

    @property
    def guest_path(self) -> str:
        return self.vm_path or self.path

    def boot_entry(self) -> dict[str, str]:
        return {"path": self.guest_path, "tag": self.tag, "transport": self.transport}

    def vm_path_of(self, host: str) -> str | None:
        """Where host path `host` appears in the VM, if it lies in this share (a Windows
        share through `WindowsPaths.translate`: drive paths, any case)."""
        if self.vm_path and ntpath.splitdrive(self.path)[0]:
            return WINDOWS_PATHS.translate(host, [self.path])
        if host == self.path or host.startswith(self.path.rstrip("/") + "/"):
            return self.guest_path + host[len(self.path.rstrip("/")):]
        return None


def require_folder(path: str) -> None:
    """DriverError unless `path` is a folder on this computer."""
    if not os.path.isdir(path):
        raise DriverError(f"cannot share {path}: it is not a folder on this computer; "
                          "create it or remove it from the shares setting")


def link_share(path: str, index: int, windows: bool) -> SharedFolder:
    """A folder Cove serves over the guest link (`desktop.services.ninep`); on Windows it appears
    in the VM under /mnt/host (C:\\Users\\me -> /mnt/host/c/Users/me)."""
    require_folder(path)
    vm_path = WINDOWS_PATHS.vm_path(path) if windows else ""
    return SharedFolder(path, f"cove{index}", "link", vm_path=vm_path)
