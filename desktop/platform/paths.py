"""How host paths are written, and where a shared host folder appears in the VM.

On Linux and macOS a shared folder appears in the VM at its own path, so a bind mount's
source needs no translation (`PosixPaths`). On Windows a shared folder such as
``C:\\Users\\me`` appears at ``/mnt/host/c/Users/me`` (`WindowsPaths`), and the docker
socket's guard (`desktop.services.apiguard`) rewrites the sources of bind mounts to that path
before the engine sees them.

Why ``/mnt/host/<drive>``: one prefix holds every host drive, so nothing of the host can
land on a folder of the VM's own (``instance.VM_RESERVED``: ``/mnt/data`` is a sibling,
not a parent); WSL's ``/mnt/c`` would put drive letters next to ``/mnt/data``, and Docker
Desktop's ``/run/desktop/mnt/host/c`` lies under ``/run``, which the VM owns.

Everything here is pure string work (``ntpath`` and ``posixpath`` run anywhere), so the
Windows rules are tested on Linux. `HOST_PATHS` is the style of the host Cove runs on,
chosen once; the logic takes a style object instead of looking at ``sys.platform``.
"""

from __future__ import annotations

import ntpath
import posixpath
import re
import sys
from collections.abc import Callable

VM_MOUNT_ROOT = "/mnt/host"

# A Windows absolute path with a drive, as Docker clients write one in a bind: "C:\x",
# "c:/x"; or Git Bash's escape of it, "//c/x" (a single "/c/x" is left alone: it may as
# well be a path of the VM, which Git Bash users pass that way on purpose).
_DRIVE_PATH = re.compile(r"([A-Za-z]):[\\/](.*)", re.DOTALL)
_GITBASH_PATH = re.compile(r"//([A-Za-z])(?:/(.*))?", re.DOTALL)
_GITBASH_BIND = re.compile(r"//[A-Za-z](?=[/:]|$)")  # "//var/run/docker.sock" is not one


class PosixPaths:
    """Linux and macOS: host paths are the VM's paths (shares are mounted at the same path)."""

    windows = False


class WindowsPaths:
    """Windows: drive paths, compared without regard to case, mounted under /mnt/host."""

    windows = True
    mount_root = VM_MOUNT_ROOT

    def normalize(self, path: str) -> str:
        """``C:\\Users\\me`` for any spelling of an absolute drive path ("c:/Users//me/",
        "//c/Users/me"); ValueError, whose message says what to write, for anything else."""
        if not isinstance(path, str) or not path:
            raise ValueError(f"{path!r} is not a folder path")
        if path.startswith(("\\\\", "//")) and not _GITBASH_PATH.fullmatch(path):
            raise ValueError(
                f"{path} is a network (UNC) path; Cove shares folders on this computer's "
                "drives only: copy the files to a local folder, or map the share to a drive "
                "letter and share that")
        m = _DRIVE_PATH.fullmatch(path) or _GITBASH_PATH.fullmatch(path)
        if m is None:
            raise ValueError(f"{path!r} is not an absolute path; write it with its drive, "
                             "e.g. C:\\Users\\me\\src")
        drive, rest = m.group(1).upper(), (m.group(2) or "").replace("/", "\\")
        if ":" in rest or any(c in rest for c in '<>"|?*'):
            raise ValueError(f"{path!r} has characters Windows does not allow in a path")
        norm = ntpath.normpath(f"{drive}:\\{rest}")
        return norm if norm.endswith(":\\") else norm.rstrip("\\")

    @staticmethod
    def _key(path: str) -> str:
        return path.casefold()

    def under(self, path: str, root: str) -> bool:
        """`path` is `root` or inside it (both normalized); case does not matter on Windows."""
        p, r = self._key(path), self._key(root).rstrip("\\")
        return p == r or p.startswith(r + "\\")

    def vm_path(self, path: str) -> str:
        """Where normalized host path `path` appears in the VM when its folder is shared:
        ``C:\\Users\\me`` -> ``/mnt/host/c/Users/me``."""
        drive, rest = path[0].lower(), path[3:].replace("\\", "/")
        return posixpath.join(self.mount_root, drive, rest).rstrip("/")

    def translate(self, path: str, shares: list[str]) -> str | None:
        """The VM path of host path `path` (normalized) through the share holding it, in the
        share's own spelling of the part they have in common; None when no share holds it."""
        for share in shares:
            if self.under(path, share):
                rest = path[len(share):].lstrip("\\")
                vm = self.vm_path(share)
                return posixpath.join(vm, rest.replace("\\", "/")) if rest else vm
        return None

    def split_bind(self, bind: str) -> tuple[str, str] | None:
        """A ``HostConfig.Binds`` entry as (host source, the rest from its ":"), when its
        source is a Windows drive path and a target follows; None for a named volume or a
        path of the VM."""
        m = _DRIVE_PATH.match(bind)
        if m is not None:
            start = 2
        elif _GITBASH_BIND.match(bind) is not None:
            start = 3
        else:
            return None
        end = bind.find(":", start)
        if end < 0:
            # No target: not a bind the engine takes ("v:/v" is volume v at /v, or a
            # drive path with no target; either way the engine says what is wrong).
            return None
        return bind[:end], bind[end:]

    def suggested_share(self, path: str, is_file: Callable[[str], bool]) -> str | None:
        """The folder to share so that `path` (normalized) is seen in the VM: its top two
        levels below the drive, as on Linux; a file gives its folder; None for a drive root."""
        parts = [p for p in path[3:].split("\\") if p]
        if not parts:
            return None
        folder = path[:3] + "\\".join(parts[:2])
        if len(parts) <= 2 and is_file(folder):
            folder = path[:3] + "\\".join(parts[:len(parts) - 1])
        return None if folder.endswith(":\\") else folder


HostPaths = PosixPaths | WindowsPaths
HOST_PATHS: HostPaths = WindowsPaths() if sys.platform == "win32" else PosixPaths()
