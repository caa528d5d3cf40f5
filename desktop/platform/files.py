"""Writing a file so that a crash at any moment leaves either the old content or the new
one, never a mix: a temporary file of a unique name beside it, written, flushed to the
disk, then renamed over it (and the folder flushed, where the OS allows it). And folders
only their owner may enter (`private_folder`)."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

from desktop.platform.acl import make_private


def atomic_write(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically; the file gets `mode` (from its first byte:
    a secret is never readable by others, not even for a moment)."""
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename in it) to the disk; a no-op where folders
    cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class NotPrivateError(PermissionError):
    """A folder Cove keeps private belongs to another user; the message names it and the
    fix."""


def _private_folder_windows(path: Path, api: Any = None) -> None:
    """Windows: make `path` (and parents) and set its private DACL (`acl.make_private`);
    NotPrivateError, naming the folder and the fix, when Windows refuses."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        make_private(path, api)
    except OSError as e:
        raise NotPrivateError(
            f"cannot make {path} private to you ({e}); Cove keeps its sockets, logs and "
            "the VM's disk there: take ownership of the folder (Properties, Security, "
            "Advanced) or set COVE_HOME to a folder of your own") from None


def private_folder(path: Path) -> None:
    """Make `path` a folder that only its owner can enter: created 0700 (missing parents
    as usual), or, when it exists and is ours, narrowed to 0700 if group or others had
    any access (a folder made before, or by hand with a loose umask). Raises
    NotPrivateError when another user owns it: sockets and logs there would be theirs
    to read and to connect to.

    On Windows the mode means nothing and a folder outside the profile (``D:\\cove``)
    inherits its drive's ACL, which lets every local user in: the folder gets a
    protected DACL for the user, SYSTEM and Administrators (`_private_folder_windows`).
    """
    if sys.platform == "win32":  # as `acl.make_private` decides: one test for Windows
        _private_folder_windows(path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # the umask takes bits away only; this is the mode whatever it is
    except FileExistsError:
        pass
    st = os.stat(path)  # through a link: $COVE_HOME may be a link to a folder elsewhere
    if st.st_uid != os.geteuid():
        raise NotPrivateError(
            f"{path} belongs to another user (uid {st.st_uid}), and Cove keeps its sockets "
            "and logs there; make it yours (sudo chown -R \"$(id -un)\" " f"{path}) or set "
            "COVE_HOME to a folder of your own")
    if st.st_mode & stat.S_ISVTX and st.st_mode & 0o002:
        raise NotPrivateError(
            f"{path} is a folder every user shares (like /tmp); set COVE_HOME to a folder "
            "of your own")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
