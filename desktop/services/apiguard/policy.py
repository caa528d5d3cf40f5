"""The docker.sock guard's policy: which requests to refuse or rewrite.

Pure functions of a request's parsed JSON body (`desktop.services.apiguard.body`), the
shares and the host's path style (`bind_sources`, `outside_shares`, `refusal`,
`windows_binds`), put together by `make_check` into the `Check` that
`desktop.services.apiguard.relay` calls for the requests `routes.checked_kind` names.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Callable
from typing import Any

from desktop.platform.paths import HOST_PATHS, HostPaths, WindowsPaths
from desktop.services.apiguard.body import BodyError, Slot, dumps, parse, slots
from desktop.services.apiguard.routes import CONTAINER, checked_kind
from desktop.settings import VM_RESERVED

log = logging.getLogger(__name__)

# A check gets (method, target, body) and returns None to pass the request, a message
# (str) to refuse it, or a new body (bytes) to send to the engine instead.
Check = Callable[[str, str, bytes], str | bytes | None]

# The engine's own socket, mounted for docker-in-docker: it exists in the VM and is the
# engine Cove runs, which is what such a container wants.
VM_PATHS = ("/var/run/docker.sock", "/run/docker.sock")


def _norm(path: str) -> str:
    # normpath keeps a leading "//"; Linux and macOS read it as "/".
    return "/" + posixpath.normpath(path).lstrip("/")


def _under(path: str, root: str) -> bool:
    """`path` is `root` or inside it (both normalized); "/home/meadow" is not in "/home/me"."""
    return root == "/" or path == root or path.startswith(root + "/")


def _posix_source(slot: Slot) -> str | None:
    """The host path `slot` binds on Linux and macOS, or None (a named volume, or a path
    the engine refuses itself)."""
    if slot.form == "bind":
        parts = slot.value.split(":", 3)  # as the engine splits it: a lone path is a target
        return parts[0] if len(parts) > 1 and parts[0].startswith("/") else None
    if slot.form == "device" and slot.value and not slot.value.startswith("/"):
        return "/" + slot.value  # mount(2) takes it from the engine's folder, /
    return slot.value if slot.value.startswith("/") else None


def bind_sources(doc: Any, kind: str = CONTAINER) -> list[str]:
    """The host paths a request of `kind` (`desktop.services.apiguard.routes`) whose
    parsed body is `doc` bind-mounts, in order, without duplicates.

    From ``Binds`` ("src:dst[:opts]"; a src not starting with "/" is a named volume),
    the Source of ``Mounts`` of Type "bind", and the device of volumes the local driver
    would bind-mount (``o=bind``): in a container creation's ``HostConfig`` (or its top
    level), a service's ``TaskTemplate.ContainerSpec``, a volume creation's
    ``DriverOpts``. Malformed entries are skipped: the engine reports them better than
    Cove could.
    """
    found = [src for slot in slots(kind, doc) if (src := _posix_source(slot)) is not None]
    return list(dict.fromkeys(found))


def outside_shares(sources: list[str], shares: list[str],
                   allowed: tuple[str, ...] = VM_PATHS) -> list[str]:
    """The normalized `sources` that are neither in a share nor one of `allowed`."""
    roots = [_norm(s) for s in shares if isinstance(s, str) and s.startswith("/")]
    exempt = {_norm(a) for a in allowed}
    out: list[str] = []
    for src in sources:
        if not isinstance(src, str) or not src.startswith("/"):
            continue  # not a host path of Linux or macOS; not Cove's to judge
        p = _norm(src)
        if p in exempt or any(_under(p, r) for r in roots) or p in out:
            continue
        out.append(p)
    return out


def host_folders(sources: list[str]) -> list[str]:
    """`sources` normalized, without duplicates and without the VM's own paths."""
    exempt = {_norm(a) for a in VM_PATHS}
    return [p for p in dict.fromkeys(_norm(s) for s in sources) if p not in exempt]


def _reserved(path: str) -> str | None:
    """The VM folder that `path` would overlap as a share (shares must not), if any."""
    for r in VM_RESERVED:
        if _under(path, r) or _under(r, path):
            return r
    return None


def suggested_share(path: str, is_file: Callable[[str], bool] = os.path.isfile) -> str | None:
    """The folder to share so that `path` is visible in the VM, or None if none can be.

    Its top two levels ("/opt/data/x" -> "/opt/data"; "/opt/data" itself): wide enough to
    cover its neighbours, narrow enough not to share a whole system folder. Deeper where
    that would overlap the VM's own folders ("/var/lib/app/x" -> "/var/lib/app"); a file
    gives its folder.
    """
    parts = [p for p in path.split("/") if p]
    for depth in range(min(2, len(parts)), len(parts) + 1):
        folder = "/" + "/".join(parts[:depth])
        if _reserved(folder):
            continue
        if depth == len(parts) and is_file(folder):
            folder = "/" + "/".join(parts[:depth - 1])
            if folder == "/" or _reserved(folder):
                return None
        return folder
    return None


def windows_binds(doc: Any, shares: list[str], paths: WindowsPaths,
                  kind: str = CONTAINER) -> tuple[list[str], list[str]]:
    """Rewrite, in `doc` (the parsed body of a request of `kind`), the Windows sources of
    its bind mounts to their paths in the VM; return (the host folders it binds, those of
    them outside every share), both normalized, in order, without duplicates. Sources
    outside the shares stay as they were (the request is to be refused); other binds
    (named volumes, paths of the VM such as /var/run/docker.sock) are left alone.
    """
    roots = []
    for sh in shares:
        try:
            roots.append(paths.normalize(sh))
        except ValueError:
            continue
    found: list[str] = []
    outside: list[str] = []

    def vm(source: str) -> str | None:
        try:
            host = paths.normalize(source)
        except ValueError:
            return None  # not a Windows path Cove can place: the engine answers it
        found.append(host)
        target = paths.translate(host, roots)
        if target is None:
            outside.append(host)
        return target

    for slot in slots(kind, doc):
        if slot.form == "bind":
            split = paths.split_bind(slot.value)
            if split is not None and (target := vm(split[0])) is not None:
                slot.set(target + split[1])
        elif not slot.value.startswith("/") and (target := vm(slot.value)) is not None:
            slot.set(target)
    return list(dict.fromkeys(found)), list(dict.fromkeys(outside))


def refusal(outside: list[str], shares: list[str], paths: HostPaths | None = None,
            is_file: Callable[[str], bool] = os.path.isfile) -> str:
    """The error the docker client shows for a creation that binds `outside` paths
    (written as `paths` writes them; Linux and macOS paths when None)."""
    first = outside[0]
    more = f" (and {len(outside) - 1} more)" if len(outside) > 1 else ""
    shared = (f"shared folders: {', '.join(shares)}" if shares
              else "no folder is shared with the VM")
    what = (f"bind mount source {first}{more} is not in a folder Cove shares with its VM, "
            f"so the container would get an empty folder from the VM instead ({shared})")
    if isinstance(paths, WindowsPaths):
        folder = paths.suggested_share(first, is_file)
        if folder is None:
            return (f"{what}. A whole drive cannot be shared: move the files into a "
                    "shared folder, or share a folder with `cove shares add PATH` (or "
                    "Settings > Shared folders in the tray) and restart Cove")
    else:
        folder = suggested_share(first, is_file)
    if folder is None:
        vm = _reserved(first)
        why = (f"{vm} is one of the VM's own folders and cannot be shared" if vm
               else "the folder that holds it cannot be shared")
        return (f"{what}. {why}: move the files into a shared folder, or share another "
                "folder with `cove shares add PATH` (or Settings > Shared folders in the "
                "tray) and restart Cove")
    it = "it" if folder == first else "its folder"
    return (f"{what}. Share {it} with `cove shares add {folder}` (or Settings > Shared "
            "folders in the tray), then restart Cove")


def _unreadable(method: str, target: str, problem: str) -> str:
    """The error the docker client shows for a checked request whose body `problem`
    says is not UTF-8 JSON."""
    kind = checked_kind(method, target) or "request"
    return (f"the body of {method} {target} {problem}. Cove reads the bind mounts of "
            f"each {kind} before the engine gets it, and passes none it cannot read: "
            "send the body as JSON in UTF-8")


def make_check(shares: Callable[[], list[str]],
               on_binds: Callable[[list[str]], None] | None = None,
               paths: HostPaths = HOST_PATHS,
               is_file: Callable[[str], bool] = os.path.isfile) -> Check:
    """A `check` for `guarded_pipe`: refuses the creations (`routes.checked_kind`) that
    bind paths outside `shares()`, and those whose body is not UTF-8 JSON.

    An empty body passes (the engine answers it), and so does a body that is JSON but
    not an object. When the request passes and binds host folders, `on_binds` gets those
    (normalized, the VM's socket left out); its errors are logged, never raised into
    the relay. With Windows `paths`, a request that binds shared Windows folders gets its
    body rewritten to the VM's paths (the check returns the new body).
    """
    return _Checker(shares, on_binds, paths, is_file)


class _Checker:
    def __init__(self, shares: Callable[[], list[str]],
                 on_binds: Callable[[list[str]], None] | None, paths: HostPaths,
                 is_file: Callable[[str], bool]) -> None:
        self.shares = shares
        self.on_binds = on_binds
        self.paths = paths
        self.is_file = is_file

    def __call__(self, method: str, target: str, body: bytes) -> str | bytes | None:
        kind = checked_kind(method, target)
        if kind is None or not body:
            return None
        try:
            doc = parse(body)
        except BodyError as e:
            log.info("refused %s %s: its body %s", method, target, e)
            return _unreadable(method, target, str(e))
        current = list(self.shares())
        if isinstance(self.paths, WindowsPaths):
            found, outside = windows_binds(doc, current, self.paths, kind)
            new_body: bytes | None = dumps(doc).encode() if found else None
        else:
            sources = bind_sources(doc, kind)
            found, outside = host_folders(sources), outside_shares(sources, current)
            new_body = None
        if outside:
            log.info("refused %s %s: binds %s outside the shares", method, target,
                     ", ".join(outside))
            windows = self.paths if isinstance(self.paths, WindowsPaths) else None
            return refusal(outside, current, windows, self.is_file)
        self._report(found)
        return new_body

    def _report(self, folders: list[str]) -> None:
        if self.on_binds is not None and folders:
            try:
                self.on_binds(folders)
            except Exception:
                log.exception("on_binds failed for %s", folders)


def reported_folders(method: str, target: str, body: bytes) -> list[str]:
    """The host folders (normalized, the VM's socket left out) that a checked request
    with this `body`, as sent to the engine, binds; none if it is not one or not JSON."""
    kind = checked_kind(method, target)
    if kind is None or not body:
        return []
    try:
        return host_folders(bind_sources(parse(body), kind))
    except BodyError:
        return []
