"""The default Docker socket, /var/run/docker.sock, pointed at an instance's socket.

Many tools look there before any docker context: Testcontainers' defaults, IDE plugins,
CI scripts, SDKs built without the CLI's config. `cove setup default-socket` (with the
user's consent, as root: /var/run is root's) makes it a symlink to the instance's
docker.sock, as Docker Desktop does on macOS, and `cove delete` takes it back. The rule
is that of the Windows `docker_engine` pipe: Cove never takes the path from another
engine. A socket that answers (a dockerd of the host, another product's link to its own
socket) is left alone and the refusal names it; only a link to nothing, or a link to a
socket nothing answers on, is replaced.

Unix only (macOS and Linux); Windows has the pipe (`winpipe.DOCKER_ENGINE`).
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

DEFAULT_SOCKET = Path("/var/run/docker.sock")


class DefaultSocketError(Exception):
    """The default socket could not be set or taken back; the message says why and how."""


def _answers(path: str) -> bool:
    """True when something accepts a connection on the unix socket at `path`."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(path)
    except OSError:
        return False
    finally:
        s.close()
    return True


def points_at(target: Path, path: Path | None = None) -> bool:
    """True when `path` (the default socket) is a symlink to `target` (the instance's
    socket)."""
    path = path or DEFAULT_SOCKET
    try:
        return os.path.abspath(os.path.join(os.path.dirname(path), os.readlink(path))) == \
            os.path.abspath(target)
    except OSError:
        return False


def describe(path: Path | None = None) -> str:
    """What is at `path` (the default socket) now, in words for a message."""
    path = path or DEFAULT_SOCKET
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "nothing"
    if stat.S_ISLNK(st.st_mode):
        dest = os.readlink(path)
        live = _answers(str(path))
        return f"a link to {dest} ({'an engine answers there' if live else 'nothing answers'})"
    if stat.S_ISSOCK(st.st_mode):
        return ("a socket an engine answers on" if _answers(str(path))
                else "a socket nothing answers on")
    return "a file that is not a socket"


def claim(target: Path, path: Path | None = None) -> str:
    """Make `path` a symlink to `target`; returns what was done, in words. Raises
    DefaultSocketError when another engine holds it, or when it cannot be written."""
    path = path or DEFAULT_SOCKET
    if points_at(target, path):
        return f"{path} already points at {target}"
    replaced = ""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        what = describe(path)
        if stat.S_ISSOCK(st.st_mode):
            raise DefaultSocketError(
                f"{path} is {what}: Cove does not take it from another engine; stop that "
                f"engine, or remove the socket yourself (sudo rm {path}), and run this "
                "again")
        if not stat.S_ISLNK(st.st_mode):
            raise DefaultSocketError(
                f"{path} is {what}: Cove leaves it as it is; remove it yourself (sudo rm "
                f"{path}) if nothing needs it, and run this again")
        if _answers(str(path)):
            raise DefaultSocketError(
                f"{path} is {what}: another engine serves it; quit that engine (or remove "
                f"the link: sudo rm {path}) and run this again")
        replaced = f" (it was {what})"
    tmp = path.with_name(f".{path.name}.cove-{os.getpid()}")
    try:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        os.symlink(target, tmp)
        os.replace(tmp, path)  # atomic: a client never finds the path missing
    except PermissionError as e:
        raise DefaultSocketError(
            f"cannot write {path} ({e.strerror}): it is root's; run it as root "
            "(sudo cove setup default-socket)") from e
    except OSError as e:
        raise DefaultSocketError(f"cannot make {path}: {e}") from e
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass
    return f"{path} now points at {target}{replaced}"


def release(target: Path, path: Path | None = None) -> bool:
    """Remove `path` when it is our link to `target` (anything else is left as it is);
    True when removed. Raises DefaultSocketError when it is ours but cannot be removed."""
    path = path or DEFAULT_SOCKET
    if not points_at(target, path):
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise DefaultSocketError(
            f"{path} still points at {target}, which is gone: remove it as root "
            f"(sudo rm {path}); {e.strerror}") from e
    return True
