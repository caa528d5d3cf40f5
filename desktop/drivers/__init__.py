"""Hypervisor drivers: one small interface, one module per hypervisor, a registry.

A driver turns a `VMSpec` into a running VM and back. The backend talks only to this
interface; what a driver can do is described by `Capabilities` flags, never by checking
its type. `pick()` returns the best driver available on this host (by priority).

Exceptions::

    DriverError            the VM could not be created, started or stopped; the message
    +-- DiskError          names the problem and the fix
"""

from __future__ import annotations

import ntpath
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from desktop.platform.paths import WindowsPaths

if TYPE_CHECKING:
    from desktop.link import Link


WINDOWS_PATHS = WindowsPaths()  # pure string rules: used on any host


class DriverError(Exception):
    """The hypervisor could not do what was asked; the message says why and what to do."""


class DiskError(DriverError):
    """The data disk is unusable (corrupt, has a backing file, cannot be created)."""


@dataclass(frozen=True)
class Capabilities:
    vsock: bool = False
    virtiofs: bool = False
    ninep: bool = False
    balloon: bool = False
    hostfwd: bool = False
    virtio_serial: bool = False


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
    """A folder Cove serves over the guest link (`desktop.ninep`); on Windows it appears
    in the VM under /mnt/host (C:\\Users\\me -> /mnt/host/c/Users/me)."""
    require_folder(path)
    vm_path = WINDOWS_PATHS.vm_path(path) if windows else ""
    return SharedFolder(path, f"cove{index}", "link", vm_path=vm_path)


@dataclass
class VMSpec:
    """Everything a driver needs to boot one instance's VM."""

    name: str
    folder: Path  # the instance folder: sockets, logs, the data disk
    kernel: Path
    initramfs: Path
    root_image: Path
    data_disk: Path
    boot_config: Path  # JSON with the per-boot token; read by the guest via fw_cfg
    cpus: int = 2
    memory_mib: int = 2048
    disk_gib: int = 64
    arch: str = "amd64"
    link_port: int = 0  # host port forwarded to the agent (QEMU user networking)
    ssh_port: int = 0  # host port forwarded to the guest's SSH server
    extra_args: list[str] = field(default_factory=list)
    kernel_args: str = ""  # appended to the kernel command line (e.g. "cove.debug")
    # Extra QEMU user-networking forwards "tcp:127.0.0.1:HOST-:GUEST" (benchmarks use one
    # as the bare path that published ports are measured against).
    extra_hostfwd: list[str] = field(default_factory=list)
    shares: list[SharedFolder] = field(default_factory=list)

    @property
    def serial_log(self) -> Path:
        return self.folder / "serial.log"

    @property
    def qmp_socket(self) -> Path:
        return self.folder / "qmp.sock"

    @property
    def control_socket(self) -> Path:
        return self.folder / "guest-control.sock"


class Driver(Protocol):
    name: str
    capabilities: Capabilities
    accel: str  # the accelerator in use ("kvm", "hvf", "whpx", "tcg"), once started
    accel_notes: list[str]  # why better accelerators were passed over

    def available(self) -> tuple[bool, str]:
        """(usable on this host, why not)."""
        ...

    def create(self, spec: VMSpec) -> None:
        """Create the data disk if missing and check it; raises DiskError."""
        ...

    def start(self, spec: VMSpec) -> None:
        """Boot the VM; returns once the hypervisor runs it (not once the guest is up)."""
        ...

    def status(self) -> str:
        """"running", "stopped" or "paused"."""
        ...

    def stop(self, timeout: float = 30) -> None:
        """Stop politely, then by force (powerdown, quit, kill), each with a timeout."""
        ...

    def kill(self) -> None: ...

    def wait(self, timeout: float | None) -> bool:
        """Wait for the VM to end; True if it has (None: wait for ever)."""
        ...

    def pid(self) -> int | None:
        """The hypervisor process's pid, if there is one."""
        ...

    def delete(self, spec: VMSpec) -> None:
        """Remove the VM's disk and files (after stop)."""
        ...

    def link_address(self) -> tuple[str, int]:
        """Where the host reaches the guest agent (TCP)."""
        ...

    def make_link(self, token: str) -> Link:
        """The guest link for this boot, authenticated with `token`: TCP to
        `link_address()` (QEMU), or the driver's own transport (Hyper-V: hvsock, which
        also carries the boot config)."""
        ...

    def resolve_shares(self, shares: list[tuple[str, str]]) -> tuple[list[SharedFolder],
                                                                     list[str]]:
        """Settings' (path, transport) pairs as the folders this driver will share, with
        "auto" resolved; and notes on choices made. DriverError if one cannot be shared."""
        ...


Factory = Callable[..., Driver]  # called with keyword options: arch, accel_cache
_REGISTRY: list[tuple[int, Factory]] = []


def register(priority: int) -> Callable[[Factory], Factory]:
    """Register a driver factory; a higher priority is preferred by `pick`."""

    def deco(factory: Factory) -> Factory:
        _REGISTRY.append((priority, factory))
        _REGISTRY.sort(key=lambda t: -t[0])
        return factory

    return deco


def pick(name: str | None = None, **options: object) -> Driver:
    """The named driver, or the best available one, made with `options` (arch,
    accel_cache); raises DriverError naming why none is usable."""
    from desktop.drivers import hyperv, qemu  # noqa: F401 - each registers itself

    reasons = []
    for _, factory in _REGISTRY:
        d = factory(**options)
        if name is not None and d.name != name:
            continue
        ok, why = d.available()
        if ok:
            return d
        reasons.append(f"{d.name}: {why}")
    if name is not None and not reasons:
        raise DriverError(f"unknown driver {name!r}")
    raise DriverError("no hypervisor driver is usable here: " + "; ".join(reasons))
