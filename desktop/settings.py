"""Cove's settings of one instance, and their validation (pure: no files, no processes).

`Settings` is what ``settings.json`` holds: resources, the shared folders, the engine's
config, the port policy. Every check is here, and each failure is a `SettingsError`
whose message names the field and the fix; `desktop.instance` reads and writes the file
and never overwrites one that fails these checks.
"""

from __future__ import annotations

import os
import posixpath
import re
import sys
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from desktop.platform.hostinfo import host_arch, host_cpus, host_memory
from desktop.platform.paths import HOST_PATHS, HostPaths, WindowsPaths

MIB = 2**20
GIB = 2**30


class SettingsError(ValueError):
    """A setting, flag or file is invalid; the message names it and the fix."""


def default_memory_mib() -> int:
    """Half the host's memory, at most 8 GiB (at least 1 GiB)."""
    return max(1024, min(host_memory() // 2, 8 * GIB) // MIB)


def default_arch() -> str:
    """The guest architecture that runs fastest here: the host's own (Apple silicon and
    ARM laptops get arm64); amd64 where the host is neither."""
    return "arm64" if host_arch() == "arm64" else "amd64"


def default_cpus() -> int:
    return max(1, min(host_cpus(), 4))


# "link": Cove's own 9P server over the guest link (`desktop.services.ninep`), what Windows hosts
# use; any host can choose it (slower than the hypervisor's devices).
SHARE_TRANSPORTS = ("auto", "virtiofs", "9p", "link")
# The VM's own folders: a share mounted on or over one of them would break the VM.
VM_RESERVED = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/mnt/data", "/proc",
               "/run", "/sbin", "/sys", "/usr", "/var/lib/containerd", "/var/lib/docker",
               "/var/run")
MAX_SHARES = 16


def default_shares() -> list[Any]:
    """The user's home folder and the temporary folder, so a bind of a folder a tool made
    with `tempfile.mkdtemp()` works as it does on the engine's own socket; on macOS also
    where volumes live and /private, /tmp's real place. On Windows the temporary folder
    is inside the profile (AppData\\Local\\Temp), which is shared."""
    if sys.platform == "darwin":
        return [str(Path.home()), "/Volumes", "/private", "/tmp", "/var/folders"]
    if sys.platform == "win32":
        # The user's profile folder (C:\Users\me), seen in the VM at /mnt/host/c/Users/me.
        profile = os.environ.get("USERPROFILE") or str(Path.home())
        try:
            return [WindowsPaths().normalize(profile)]
        except ValueError:
            return []  # a profile on a network share: nothing is shared by default
    home = Path.home()
    out = [str(home)] if home.is_dir() else []
    tmp = os.path.normpath(tempfile.gettempdir())
    if os.path.isdir(tmp) and not any(path_under(tmp, p) or path_under(p, tmp) for p in out):
        try:
            parse_shares([tmp])  # e.g. TMPDIR=/var/tmp/x is fine, TMPDIR=/run/user/1000 not
        except SettingsError:
            return out
        out.append(tmp)
    return out


def path_under(path: str, root: str) -> bool:
    """`path` is `root` or inside it (both normalized): "/home/meadow" is not in "/home/me"."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def parse_shares(entries: Any, paths: HostPaths = HOST_PATHS) -> list[tuple[str, str]]:
    """The `shares` setting as [(path, transport)]; SettingsError names the bad entry.

    An entry is a folder path, or {"path": ..., "transport": "auto"|"virtiofs"|"9p"|"link"}.
    Each folder is mounted in the VM at the same path, so it must be absolute and
    normalized, must not be (or contain) one of the VM's own folders, and shares must
    not nest (one mount would hide part of the other). With Windows `paths`, a folder is
    a drive path (returned normalized: "c:/Users/me" -> "C:\\Users\\me"), mounted under
    /mnt/host, so the VM's own folders are out of its way; network paths are refused.
    """
    if not isinstance(entries, list):
        raise SettingsError("shares: must be a list of folder paths")
    if len(entries) > MAX_SHARES:
        raise SettingsError(f"shares: {len(entries)} folders; at most {MAX_SHARES}")
    out: list[tuple[str, str]] = []
    for e in entries:
        if isinstance(e, str):
            path, transport = e, "auto"
        elif isinstance(e, dict) and isinstance(e.get("path"), str) and \
                set(e) <= {"path", "transport"}:
            path, transport = e["path"], e.get("transport", "auto")
        else:
            raise SettingsError(
                f"shares: {e!r} is not a folder path nor {{\"path\": ..., \"transport\": ...}}")
        if transport not in SHARE_TRANSPORTS:
            raise SettingsError(f"shares: {path}: transport {transport!r} is not one of "
                                f"{', '.join(SHARE_TRANSPORTS)}")
        if isinstance(paths, WindowsPaths):
            path = _windows_share(path, paths, [p for p, _ in out])
        else:
            _check_posix_share(path, [p for p, _ in out])
        out.append((path, transport))
    return out


def _check_posix_share(path: str, others: list[str]) -> None:
    """SettingsError unless `path` can be mounted at the same path in the VM beside the
    shares `others`."""
    if not path.startswith("/"):
        raise SettingsError(f"shares: {path!r} is not an absolute path; write it from /")
    # normpath keeps a leading "//"; Linux reads it as "/" ("//etc" is /etc).
    norm = "/" + posixpath.normpath(path).lstrip("/")
    if norm != path:
        raise SettingsError(f"shares: write {path!r} as {norm!r}")
    if path == "/":
        raise SettingsError("shares: / would share the whole computer and hide the VM's "
                            "own files; share the folders you work in, e.g. your home")
    for r in VM_RESERVED:
        if path_under(path, r) or path_under(r, path):
            raise SettingsError(f"shares: {path} overlaps the VM's own {r}; share a "
                                "folder outside it (e.g. under your home)")
    for other in others:
        if path_under(path, other) or path_under(other, path):
            inner, outer = (path, other) if path_under(path, other) else (other, path)
            raise SettingsError(f"shares: {inner} is inside {outer}, which is shared "
                                "too; keep only one of them")


def _windows_share(path: str, paths: WindowsPaths, others: list[str]) -> str:
    """`path` normalized as a Windows share beside `others`; SettingsError if it cannot be."""
    try:
        norm = paths.normalize(path)
    except ValueError as e:
        raise SettingsError(f"shares: {e}") from None
    if norm.endswith(":\\"):
        raise SettingsError(f"shares: {norm} would share the whole drive; share the folders "
                            "you work in, e.g. your user folder")
    for other in others:
        if paths.under(norm, other) or paths.under(other, norm):
            raise SettingsError(f"shares: {norm} and {other} overlap (one is inside "
                                "the other); keep only one of them")
    return norm


SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:i?B)?|(B))?\s*", re.IGNORECASE)


def parse_size(value: str | int, what: str, unit: int = MIB) -> int:
    """'4G', '4GiB', '512M', '2048' (in `unit`) -> bytes; SettingsError naming `what`."""
    if isinstance(value, int):
        return value * unit
    m = SIZE_RE.fullmatch(str(value))
    if not m:
        raise SettingsError(
            f"{what}: {value!r} is not a size; use a number with M or G, e.g. 4G or 512M"
        )
    number = float(m.group(1))
    if m.group(3):
        mult = 1  # plain bytes
    else:
        mult = {"": unit, "K": 2**10, "M": MIB, "G": GIB, "T": 2**40}[(m.group(2) or "").upper()]
    return int(number * mult)


MAX_RESOURCE_SAVER_MINUTES = 1440


def check_resource_saver(minutes: Any) -> float:
    """The Resource Saver's idle minutes, checked; SettingsError names the fix."""
    if isinstance(minutes, bool) or not isinstance(minutes, int | float) or \
            not 0 <= minutes <= MAX_RESOURCE_SAVER_MINUTES or minutes != minutes:
        raise SettingsError(
            f"resource_saver_minutes: {minutes!r} must be a number of minutes from 0 (never "
            f"rest) to {MAX_RESOURCE_SAVER_MINUTES}, e.g. 5")
    return float(minutes)


@dataclass
class Settings:
    cpus: int = field(default_factory=default_cpus)
    memory_mib: int = field(default_factory=default_memory_mib)
    disk_gib: int = 64
    arch: str = field(default_factory=default_arch)
    engine_config: dict[str, Any] = field(default_factory=dict)
    expose_ports_on_all_interfaces: bool = False
    shares: list[Any] = field(default_factory=default_shares)
    # Windows only: also serve the engine on \\.\pipe\docker_engine (what docker SDKs and
    # IDEs use when they ignore contexts) whenever no other program (Docker Desktop) holds
    # it; Cove never takes it from one. False: Cove's own pipe and context only.
    docker_engine_pipe: bool = True
    # True (as Docker Desktop): host.docker.internal reaches every service on the host's
    # loopback (databases, dev servers). False: containers reach none of them; published
    # ports, the internet and the host's other addresses work as before.
    containers_reach_host_loopback: bool = True
    # Resource Saver: after this many idle minutes (no running container, no client
    # connection open or opened) the VM's vCPUs are paused until the next use; 0: never.
    resource_saver_minutes: float = 5

    def validate(self) -> None:
        if not isinstance(self.cpus, int) or isinstance(self.cpus, bool) or self.cpus < 1:
            raise SettingsError(f"cpus: {self.cpus!r} must be a whole number of at least 1")
        if self.cpus > host_cpus():
            raise SettingsError(
                f"cpus: {self.cpus} is more than this computer has ({host_cpus()}); "
                f"use at most {host_cpus()}"
            )
        if not isinstance(self.memory_mib, int) or self.memory_mib < 512:
            raise SettingsError(f"memory: {self.memory_mib!r} MiB is too little; use at least 512M")
        total = host_memory() // MIB
        if self.memory_mib > total:
            raise SettingsError(
                f"memory: {self.memory_mib} MiB is more than this computer has ({total} MiB); "
                f"use at most {total // 1024}G"
            )
        if not isinstance(self.disk_gib, int) or not 8 <= self.disk_gib <= 4096:
            raise SettingsError(f"disk: {self.disk_gib!r} GiB must be between 8G and 4096G")
        if self.arch not in ("amd64", "arm64"):
            raise SettingsError(f"arch: {self.arch!r} is not supported; use amd64 or arm64")
        if not isinstance(self.engine_config, dict):
            raise SettingsError("engine_config: must be a JSON object (the engine's daemon.json)")
        if not isinstance(self.expose_ports_on_all_interfaces, bool):
            raise SettingsError("expose_ports_on_all_interfaces: must be true or false")
        if not isinstance(self.docker_engine_pipe, bool):
            raise SettingsError("docker_engine_pipe: must be true or false")
        if not isinstance(self.containers_reach_host_loopback, bool):
            raise SettingsError("containers_reach_host_loopback: must be true or false")
        check_resource_saver(self.resource_saver_minutes)
        parse_shares(self.shares)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, source: str = "settings") -> Settings:
        if not isinstance(data, dict):
            raise SettingsError(f"{source}: must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(
                f"{source}: unknown field {unknown[0]!r}; known fields: {', '.join(sorted(known))}"
            )
        s = cls(**data)
        s.validate()
        return s
