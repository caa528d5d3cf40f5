"""The `cove` docker context, written into docker's own context store.

Docker keeps contexts under ``$DOCKER_CONFIG/contexts/meta/<sha256(name)>/meta.json``
and the current one as ``currentContext`` in ``$DOCKER_CONFIG/config.json``. Writing
these files directly (instead of running `docker context create`) works without the
docker CLI and keeps the rest of config.json untouched. The previous current context is
remembered in the instance folder and restored when the instance is deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any


def docker_config_dir() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")


def _meta_dir(name: str) -> Path:
    return docker_config_dir() / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()


def _read_config() -> dict[str, Any]:
    try:
        data = json.loads((docker_config_dir() / "config.json").read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_config(data: dict[str, Any]) -> None:
    """Replace config.json atomically, keeping its mode (it may hold registry
    credentials: a new one is 0600) and writing through a symlink as docker does."""
    path = (docker_config_dir() / "config.json").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o600
    tmp = path.with_name(path.name + ".cove-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent="\t") + "\n")
    os.chmod(tmp, mode)
    tmp.replace(path)


def current() -> str:
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
    d = _meta_dir(name)
    d.mkdir(parents=True, exist_ok=True)
    (d / "meta.json").write_text(json.dumps(meta))


def use(name: str, remember: Path | None = None) -> None:
    """Make `name` current; the one it replaces is written to `remember` (once)."""
    prev = current()
    if remember is not None and prev != name and not remember.exists():
        remember.write_text(prev + "\n")
    cfg = _read_config()
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
