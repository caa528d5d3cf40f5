"""Hypervisor drivers: one small interface, one package per hypervisor, a registry.

A driver turns a `VMSpec` into a running VM and back. The backend talks only to this
interface (`Driver`), never to a driver's type; what only one hypervisor needs (QEMU's
forwarded ports, its QMP socket) stays inside that driver. `pick()` returns the best
driver available on this host (by priority); each driver registers itself:

* `desktop.drivers.qemu`: QEMU with KVM, HVF, WHPX or TCG (any host);
* `desktop.drivers.hyperv`: Hyper-V through PowerShell (Windows);
* `desktop.drivers.shares`: the shared folders both hand to the VM.

Exceptions::

    DriverError            the VM could not be created, started or stopped; the message
    +-- DiskError          names the problem and the fix
    +-- RestoreError       a saved state could not be restored (it is gone: boot instead)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from desktop import home

if TYPE_CHECKING:  # types only: neither imports this package back at run time
    from desktop.drivers.shares import SharedFolder
    from desktop.link import Link


class DriverError(Exception):
    """The hypervisor could not do what was asked; the message says why and what to do."""


class DiskError(DriverError):
    """The data disk is unusable (corrupt, has a backing file, cannot be created)."""


class RestoreError(DriverError):
    """A saved VM state could not be saved or restored; a restore's state is deleted."""


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
    kernel_args: str = ""  # appended to the kernel command line (e.g. "cove.debug")
    shares: list[SharedFolder] = field(default_factory=list)

    @property
    def serial_log(self) -> Path:
        return self.folder / home.SERIAL_LOG


class Driver(Protocol):
    name: str
    accel: str  # the accelerator in use ("kvm", "hvf", "whpx", "tcg"), once started
    accel_notes: list[str]  # why better accelerators were passed over

    def available(self) -> tuple[bool, str]:
        """(usable on this host, why not)."""
        ...

    def create(self, spec: VMSpec) -> bool:
        """Create the data disk if missing and check it; raises DiskError. True when the
        disk is provably blank (created now, or nothing ever written to it): only then
        may the guest format it."""
        ...

    def watch(self, on_resume: Callable[[], None]) -> None:
        """Call `on_resume` whenever the VM's vCPUs run again after a pause (QMP stop and
        cont, a host's tool, a restored state): its clock is behind then. A driver that
        cannot tell ignores it (the periodic clock push covers it, later)."""
        ...

    def find_orphan(self, folder: Path) -> int | None:
        """The pid of a VM of the instance in `folder` that still runs though the backend
        that started it died; None when there is none."""
        ...

    def stop_orphan(self, folder: Path) -> str | None:
        """Stop that VM as politely as any (its agent, ACPI, quit, kill); how it ended, or
        None when there was none. Nothing may touch the instance's disk before this."""
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

    def pause(self) -> None:
        """Stop the vCPUs, keeping the VM in memory (the Resource Saver); DriverError
        when the hypervisor refused."""
        ...

    def resume(self) -> None:
        """Run the vCPUs again after `pause`; DriverError when the hypervisor refused."""
        ...

    def wait(self, timeout: float | None) -> bool:
        """Wait for the VM to end; True if it has (None: wait for ever)."""
        ...

    def pid(self) -> int | None:
        """The hypervisor process's pid, if there is one."""
        ...

    def delete(self, spec: VMSpec) -> None:
        """Remove the VM's disk and files (after stop), a saved state with them."""
        ...

    def save(self, host: dict[str, Any]) -> str:
        """Save the running VM's whole state and end the VM, keeping `host` (what the
        backend must hand back unchanged) with it: "" when saved; otherwise why not, and
        the VM runs on as before."""
        ...

    def saved(self, spec: VMSpec) -> tuple[dict[str, Any] | None, str]:
        """Before `start`: the `host` of a saved state that is exactly this VM's (the
        next `start` then restores it, or raises RestoreError); otherwise None, any saved
        state deleted, and why (what changed since the save; "" when there was none)."""
        ...

    def link_address(self) -> tuple[str, int]:
        """Where the host reaches the guest agent (TCP)."""
        ...

    def ssh_address(self) -> tuple[str, int] | None:
        """Where the host reaches the guest's SSH server this boot (after `start`), or
        None when nothing forwards it to the host. Asks the hypervisor nothing."""
        ...

    def private_host_ports(self) -> list[int]:
        """The host's loopback ports that serve this VM's own link and SSH, for the boot
        about to start (picked by the first call, kept by `start`): the guest refuses its
        containers' connections to them, which would otherwise leave through the gateway
        and come back in through the hypervisor's forward (a hairpin). [] when no such
        forward exists (Hyper-V: the link is hvsock)."""
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
