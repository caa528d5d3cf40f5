"""Which requests the docker.sock guard looks into, decided on the path the engine routes.

The engine's router matches the percent-decoded path of the request target, with an
optional API version prefix (``/v1.45``; its pattern is ``[0-9.]+``, so ``/v1.45.0``
routes too), and answers paths with ``//``, ``.`` or ``..`` segments with a redirect to
the cleaned path. The guard decides on that path cleaned, so no spelling the engine
would take as a creation escapes the check: a target is decoded once (``%63reate`` is
``create``), cut at its query, cleaned (duplicate and trailing slashes, dot segments) and
stripped of one version prefix. Methods are compared as written, as the router does.
"""

from __future__ import annotations

import posixpath
import re
from urllib.parse import unquote_to_bytes

CONTAINER = "container creation"
VOLUME = "volume creation"
SERVICE = "service"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_VERSION = re.compile(r"/v[0-9.]+(?=/|$)")
_CHECKED = (
    (re.compile(r"/containers/create"), CONTAINER),
    (re.compile(r"/volumes/create"), VOLUME),
    (re.compile(r"/services/create|/services/[^/]+/update"), SERVICE),
)
# The engine takes over the connection (101, or a 200 with a raw stream) for these.
_HIJACKED = re.compile(r"/containers/.+/attach|/exec/.+/start")


def route_path(target: str) -> str:
    """The path the engine's router matches for request `target`, cleaned, without its
    version prefix: ``/v1.45//containers/%63reate/?name=x`` -> ``/containers/create``."""
    path = target
    if not path.startswith("/") and (m := _SCHEME.match(path)) is not None:
        path = path[m.end():]  # absolute form: scheme://authority/path
        if path.startswith("//"):
            end = re.search(r"[/?#]", path[2:])
            path = path[2 + end.start():] if end is not None else ""
    path = re.split(r"[?#]", path, maxsplit=1)[0]
    decoded = unquote_to_bytes(path).decode("latin-1")
    # normpath keeps a leading "//"; the router's cleaning does not.
    clean = "/" + posixpath.normpath("/" + decoded).lstrip("/")
    m = _VERSION.match(clean)
    return (clean[m.end():] or "/") if m is not None else clean


def checked_kind(method: str, target: str) -> str | None:
    """What a request creates that may bind host folders (`CONTAINER`, `VOLUME`,
    `SERVICE`: its body is checked), or None."""
    if method != "POST":
        return None
    path = route_path(target)
    for pattern, kind in _CHECKED:
        if pattern.fullmatch(path):
            return kind
    return None


def may_hijack(method: str, target: str) -> bool:
    """An attach or an exec start: the engine may answer with a raw stream."""
    return method == "POST" and _HIJACKED.fullmatch(route_path(target)) is not None
