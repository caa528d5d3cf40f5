"""The `cove` docker context, written into docker's own context store.

Docker keeps contexts under ``$DOCKER_CONFIG/contexts/meta/<sha256(name)>/meta.json``
and the current one as ``currentContext`` in ``$DOCKER_CONFIG/config.json``. Writing
these files directly (instead of running `docker context create`) works without the
docker CLI and keeps the rest of config.json untouched. The previous current context is
remembered in the instance folder and restored when the instance is deleted.

config.json also holds the user's registry credentials, credential helpers and proxies:
only a missing file counts as empty. One Cove cannot read or parse is never rewritten;
`ContextError` says why, and the context is left as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from desktop.platform.files import atomic_write


def docker_config_dir() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")


def _meta_dir(name: str) -> Path:
    return docker_config_dir() / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()


class ContextError(Exception):
    """config.json cannot be read or is not docker's JSON; it is left byte for byte as
    it was. The message names the file, the problem and the fix."""


def _read_config() -> dict[str, Any]:
    """config.json's content: {} when there is none; ContextError when it cannot be read
    or parsed (it is never replaced then: it may hold the user's credentials)."""
    path = docker_config_dir() / "config.json"
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise ContextError(f"cannot read {path} ({e}); fix its owner or permissions "
                           f"(e.g. sudo chown $USER {path}); Cove left it as it is") from e
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ContextError(f"{path} is not valid JSON ({e}); fix it by hand (`docker` "
                           "cannot read it either); Cove left it as it is") from e
    if not isinstance(data, dict):
        raise ContextError(f"{path} is not a JSON object; fix it by hand; Cove left it "
                           "as it is")
    return data


def _write_config(data: dict[str, Any]) -> None:
    """Replace config.json atomically, keeping its mode (it may hold registry
    credentials: a new one is 0600) and writing through a symlink as docker does."""
    path = (docker_config_dir() / "config.json").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o600
    atomic_write(path, json.dumps(data, indent="\t") + "\n", mode)


def current() -> str:
    """The current context's name (ContextError when config.json is unreadable)."""
    return str(_read_config().get("currentContext") or "default")


def exists(name: str) -> bool:
    return (_meta_dir(name) / "meta.json").is_file()


def create(name: str, socket_url: str, description: str) -> None:
    """Write context `name` pointing at `socket_url` (unix://... or, on Windows,
    npipe:////./pipe/...: `desktop.platform.endpoints.docker_host` gives it)."""
    meta = {
        "Name": name,
        "Metadata": {"Description": description},
        "Endpoints": {"docker": {"Host": socket_url, "SkipTLSVerify": False}},
    }
    atomic_write(_meta_dir(name) / "meta.json", json.dumps(meta), 0o644)


def use(name: str, remember: Path | None = None) -> None:
    """Make `name` current; the one it replaces is written to `remember` (once).
    ContextError (and nothing written) when config.json cannot be read."""
    cfg = _read_config()
    prev = str(cfg.get("currentContext") or "default")
    if remember is not None and prev != name and not remember.exists():
        atomic_write(remember, prev + "\n")
    if name == "default":
        cfg.pop("currentContext", None)
    else:
        cfg["currentContext"] = name
    _write_config(cfg)


def remove(name: str, remembered: Path | None = None) -> None:
    """Delete context `name`; if it was current, restore the remembered one."""
    if current() == name:
        prev = "default"
        if remembered is not None and remembered.exists():
            prev = remembered.read_text().strip() or "default"
        if prev != "default" and not exists(prev):
            prev = "default"
        use(prev)
    shutil.rmtree(_meta_dir(name), ignore_errors=True)
    if remembered is not None:
        remembered.unlink(missing_ok=True)
