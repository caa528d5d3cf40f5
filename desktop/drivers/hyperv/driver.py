"""The Hyper-V driver: Windows hosts with Hyper-V, through the Hyper-V PowerShell module.

Every operation is one PowerShell script, run by `powershell.PowerShell` and built by a
pure function of its inputs (`scripts`, with the readers of their JSON answers) so the
exact text is tested on any host; this module is the lifecycle around them, registered
with `desktop.drivers`. The VM, ``cove-<user>-<instance>`` (`scripts.vm_name`):

* Generation 2 (UEFI), Secure Boot off (Cove's unified kernel image is not signed by a
  key the firmware trusts), booting from ``boot.vhdx`` (an EFI system partition holding
  the kernel, initramfs and command line as one EFI program; made by `vm_image.hyperv`);
* ``root.vhdx``: the read-only squashfs root as a whole disk (the initramfs finds it by
  its magic, as under QEMU); ``boot.vhdx`` and ``root.vhdx`` are per-instance
  differencing disks over the image's copies, remade at each start, so instances share
  the image and never write to it;
* ``data.vhdx``: the data disk, a dynamic VHDX with 1 MiB blocks (Microsoft's advice
  for Linux guests: ext4's allocations waste less of a small block);
* dynamic memory (up to the configured size; the guest's hv_balloon gives memory back),
  one NIC on Hyper-V's NAT'd ``Default Switch`` (DHCP), COM1 on a named pipe.

The guest link is hvsock: the host reaches the agent's AF_VSOCK port through
``socket.AF_HYPERV`` (Python 3.12+) at the VM's id and the port's service GUID, which
must be registered once, elevated (`setup`). There is no fw_cfg, so the boot config
(with the per-boot secret) is the first message of the first hvsock connection
(`desktop.link.hvsock.HvsockLink`; docs/protocol.md). Only the host can open an hvsock
connection to the guest, so no container can supply or read it.

`pid()` is None: the VM runs in a worker process (vmwp.exe) that belongs to the Hyper-V
management service, not to Cove; its pid says nothing Cove can act on, and reading it
needs the VM's id in a process command line non-admin users cannot see.

Not run on a real Windows host by its authors: the scripts follow Microsoft's documented
cmdlets, and the recorded outputs in tests/unit/fixtures/hyperv are written from their
documented output; see docs/architecture.md, "Hyper-V".
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from desktop import home
from desktop.drivers import DiskError, DriverError, VMSpec, register
from desktop.drivers.hyperv.powershell import PowerShell, PowerShellError
from desktop.drivers.hyperv.scripts import (
    SETUP_COMMAND,
    SWITCH,
    address_script,
    check_disk,
    delete_script,
    disk_script,
    first_ipv4,
    kill_script,
    map_state,
    parse_probe,
    pause_script,
    probe_script,
    resize_script,
    service_id,
    setup_script,
    start_script,
    state_script,
    stop_script,
    vm_name,
    wait_script,
)
from desktop.drivers.shares import SharedFolder, link_share
from desktop.link.hvsock import HvsockLink
from desktop.platform import endpoints
from desktop.platform.hostinfo import host_os
from guest_engine import protocol

log = logging.getLogger(__name__)

STOP_MARGIN = 60.0  # seconds PowerShell may need beyond a stop's own timeout


class HyperVDriver:
    name = "hyperv"

    def __init__(self, arch: str = "amd64", os_name: str | None = None,
                 runner: PowerShell | None = None, accel_cache: Path | None = None) -> None:
        self.arch = arch
        self.os_name = os_name or host_os()
        self.ps = runner or PowerShell()
        self.accel = "hyperv"
        self.accel_notes: list[str] = []
        self.spec: VMSpec | None = None
        self.vm_id = ""
        self.boot_config: bytes | None = None

    @property
    def vm(self) -> str:
        if self.spec is None:
            raise DriverError("the Hyper-V driver has no VM yet: call start() first")
        return vm_name(self.spec.name, endpoints.windows_user_tag())

    # -- Driver ---------------------------------------------------------------------

    def available(self) -> tuple[bool, str]:
        if self.os_name != "windows":
            return False, f"Hyper-V runs only on Windows hosts (this one is {self.os_name})"
        if self.arch != "amd64":
            return False, f"Cove's Hyper-V boot disk is built for amd64 only, not {self.arch}"
        if not hasattr(socket, "AF_HYPERV"):
            return False, ("the guest link needs Hyper-V sockets (socket.AF_HYPERV), which "
                           "Python has from 3.12 on Windows; install Python 3.12 or later")
        try:
            return parse_probe(self.ps.run("checking Hyper-V", probe_script(), timeout=60))
        except PowerShellError as e:
            return False, str(e)

    def create(self, spec: VMSpec) -> bool:
        path = data_disk(spec)
        size = spec.disk_gib * 2**30
        try:
            r = self.ps.run("creating the data disk", disk_script(path, size), timeout=120)
        except PowerShellError as e:
            raise DiskError(f"could not create or check the data disk {path}: {e}") from e
        if not isinstance(r, dict):
            raise DiskError(f"checking the data disk {path}: no report from PowerShell")
        if r.get("created"):
            log.info("created the data disk %s (%d GiB, dynamic VHDX)", path, spec.disk_gib)
            return True
        if check_disk(path, r, spec.disk_gib):
            try:
                self.ps.run("growing the data disk", resize_script(path, size), timeout=120)
            except PowerShellError as e:
                raise DiskError(f"could not grow the data disk to {spec.disk_gib} GiB: {e}") \
                    from e
        return False  # an existing VHDX: never provably blank, the guest checks it

    def watch(self, on_resume: Callable[[], None]) -> None:
        pass  # Hyper-V's time sync integration service sets the guest's clock itself

    def find_orphan(self, folder: Path) -> int | None:
        # A Hyper-V VM is the Virtual Machine Management service's, not a child of the
        # backend: `start` finds it by name and turns a running one off before booting
        # (not yet the agent's polite shutdown that QEMU's orphans get).
        return None

    def stop_orphan(self, folder: Path) -> str | None:
        return None

    def start(self, spec: VMSpec) -> None:
        for sh in spec.shares:
            if sh.transport != "link":
                raise DriverError(f"cannot share {sh.path} over {sh.transport}: Hyper-V VMs "
                                  "have no virtiofs or 9p device; set its transport to auto")
        image = spec.kernel.parent
        parents = (image / "boot.vhdx", image / "root.vhdx")
        missing = [p.name for p in parents if not p.exists()]
        if missing:
            raise DriverError(
                f"the guest image {image} has no Hyper-V disks ({', '.join(missing)}); they "
                "are made on Linux with `python -m vm_image hyperv <image folder>` and ship "
                "with Cove's Windows installer")
        if spec.kernel_args:
            self.accel_notes = [f"kernel arguments {spec.kernel_args!r} are ignored: the "
                                "Hyper-V boot disk has its command line built in"]
        self.spec = spec
        self.boot_config = guest_boot_config(spec.boot_config)
        if spec.serial_log.exists():  # the previous boot's, kept for a post-mortem
            spec.serial_log.replace(spec.serial_log.with_name(home.SERIAL_PREV_LOG))
        children = (spec.folder / "boot.vhdx", spec.folder / "root.vhdx")
        r = self.ps.run("starting the Hyper-V VM",
                        start_script(self.vm, spec, parents, children, data_disk(spec),
                                     spec.folder / "hyperv", serial_pipe(spec.name)),
                        timeout=180)
        if not isinstance(r, dict) or not r.get("id"):
            raise DriverError(f"Hyper-V started {self.vm} but did not report its id")
        self.vm_id = str(r["id"])
        log.info("Hyper-V VM %s (%s) is %s", self.vm, self.vm_id, r.get("state"))
        if sys.platform == "win32":  # the pipe exists only there (os_name may be a test's)
            pipe = serial_pipe(spec.name)
            threading.Thread(target=copy_serial,
                             args=(lambda: open(pipe, "rb", buffering=0),  # noqa: SIM115
                                   spec.serial_log),
                             daemon=True, name="hyperv-serial").start()

    def status(self) -> str:
        if self.spec is None:
            return "stopped"
        try:
            r = self.ps.run("reading the VM's state", state_script(self.vm), timeout=60)
        except PowerShellError as e:
            if e.kind == "not-found":
                return "stopped"
            raise
        return map_state(str((r or {}).get("state", "")))

    def wait(self, timeout: float | None) -> bool:
        if self.spec is None:
            return True
        r = self.ps.run("waiting for the VM to stop", wait_script(self.vm, timeout),
                        timeout=None if timeout is None else timeout + STOP_MARGIN)
        return bool((r or {}).get("ended"))

    def stop(self, timeout: float = 30) -> None:
        """A guest shutdown (integration services), then turn-off after `timeout`.

        The polite first step, the agent's own shutdown, is the backend's (as with QEMU).
        """
        if self.spec is None:
            return
        try:
            r = self.ps.run("stopping the VM", stop_script(self.vm, timeout),
                            timeout=timeout + STOP_MARGIN)
        except PowerShellError as e:
            if e.kind == "not-found":
                return
            raise
        if (r or {}).get("forced"):
            log.warning("the VM did not shut down in %.0f s; Hyper-V turned it off", timeout)

    def pause(self) -> None:
        self._pause(True)

    def resume(self) -> None:
        self._pause(False)

    def _pause(self, pause: bool) -> None:
        """Suspend-VM or Resume-VM. Hyper-V's time sync service sets the guest's clock
        after a resume; the backend pushes it as well."""
        what = "pausing the VM" if pause else "resuming the VM"
        try:
            r = self.ps.run(what, pause_script(self.vm, pause), timeout=60)
        except PowerShellError as e:
            raise DriverError(f"{what} failed: {e}") from e
        state = str((r or {}).get("state", ""))
        want = "paused" if pause else "running"
        if map_state(state) != want:
            raise DriverError(f"{what}: Hyper-V says the VM is {state or 'in no state'}")

    def kill(self) -> None:
        if self.spec is not None:
            self.ps.run("turning the VM off", kill_script(self.vm), timeout=STOP_MARGIN)

    def pid(self) -> int | None:
        return None  # see the module's docstring

    def delete(self, spec: VMSpec) -> None:
        paths = [data_disk(spec), spec.folder / "boot.vhdx", spec.folder / "root.vhdx",
                 spec.folder / "hyperv"]
        self.ps.run("deleting the VM", delete_script(
            vm_name(spec.name, endpoints.windows_user_tag()), paths),
                    timeout=120)
        spec.serial_log.unlink(missing_ok=True)

    def link_address(self) -> tuple[str, int]:
        """The agent's TCP address on the Default Switch (the VM's DHCP address).

        It answers only once the boot config has arrived over hvsock; `make_link` is the
        way in. DriverError while the guest has no address yet.
        """
        r = self.ps.run("reading the VM's address", address_script(self.vm), timeout=60)
        addr = first_ipv4(list((r or {}).get("addresses") or []))
        if addr is None:
            raise DriverError(f"{self.vm} has no IPv4 address on the {SWITCH} yet")
        return addr, protocol.AGENT_PORT

    def ssh_address(self) -> tuple[str, int] | None:
        """None: nothing forwards the guest's SSH port to the host. dropbear listens on
        the VM's Default Switch address (`link_address`), which costs a PowerShell run
        to learn, and `desktop.ssh` reaches 127.0.0.1 only."""
        return None

    def save(self, host: dict[str, Any]) -> str:
        # Hyper-V has saved states of its own (Save-VM); Cove does not use them yet.
        return "Cove does not save Hyper-V VMs yet"

    def saved(self, spec: VMSpec) -> tuple[dict[str, Any] | None, str]:
        return None, ""

    def private_host_ports(self) -> list[int]:
        return []  # the link is hvsock; nothing of Cove's listens on the host for the VM

    def make_link(self, token: str) -> HvsockLink:
        """The guest link for this boot: hvsock, delivering the boot config first."""
        if not self.vm_id:
            raise DriverError("the Hyper-V VM is not started: no VM id to connect to")
        return HvsockLink(self.vm_id, service_id(), token, boot_config=self.boot_config)

    def resolve_shares(self, shares: list[tuple[str, str]]) -> tuple[list[SharedFolder],
                                                                     list[str]]:
        """Hyper-V VMs have no file-sharing device: Cove serves every share itself, over
        Hyper-V sockets (`desktop.services.ninep`), mounted in the VM under /mnt/host."""
        out = []
        for i, (path, transport) in enumerate(shares):
            if transport in ("virtiofs", "9p"):
                raise DriverError(
                    f"cannot share {path} over {transport}: Hyper-V VMs have no virtiofs "
                    "or 9p device; set its transport to auto (Cove serves it over Hyper-V "
                    "sockets)")
            out.append(link_share(path, i, windows=True))
        return out, []


def data_disk(spec: VMSpec) -> Path:
    """The data disk's VHDX: beside where QEMU keeps its qcow2, never the same file."""
    return spec.data_disk.with_suffix(".vhdx")


def serial_pipe(instance: str) -> str:
    """COM1's pipe (Hyper-V serves it): named for the user too, as pipe names are global."""
    return endpoints.windows_pipe(instance, "com1")


def copy_serial(open_pipe: Callable[[], IO[bytes]], dest: Path, attempts: int = 60,
                retry: float = 0.5) -> None:
    """Copy the VM's COM1 (a named pipe Hyper-V serves while the VM runs) into
    serial.log, as QEMU's -serial file does: the backend shows its tail when the guest
    fails. Ends when the VM closes the pipe, or when it never opens within the tries."""
    for _ in range(attempts):
        try:
            pipe = open_pipe()
        except OSError:
            threading.Event().wait(retry)
            continue
        with pipe, dest.open("ab") as out:
            while chunk := pipe.read(4096):
                out.write(chunk)
                out.flush()
        return
    log.warning("the VM's serial console pipe never opened; no serial.log this boot")


def guest_boot_config(path: Path) -> bytes:
    """The backend's boot config as the guest gets it over hvsock: one JSON line, with
    the network set to DHCP (the Default Switch serves it; QEMU's fixed plan does not
    apply)."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DriverError(f"cannot read the boot config {path}: {e}") from e
    config["network"] = "dhcp"
    return json.dumps(config, separators=(",", ":")).encode() + b"\n"


def setup(runner: PowerShell | None = None) -> str:
    """Register the guest link's hvsock service (elevated, once per host)."""
    ps = runner or PowerShell()
    try:
        r = ps.run("registering Cove's guest link service", setup_script(), timeout=60)
    except PowerShellError as e:
        if e.kind == "permission" or "registry access is not allowed" in e.detail.lower():
            raise DriverError(
                "registering Cove's guest link service needs an administrator: run "
                f"`{SETUP_COMMAND}` in a PowerShell opened with 'Run as administrator'") \
                from e
        raise
    return str((r or {}).get("key", ""))


@register(priority=20)
def _factory(arch: str = "amd64", accel_cache: Path | None = None) -> HyperVDriver:
    return HyperVDriver(arch, accel_cache=accel_cache)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["setup"]:
        print(f"usage: {SETUP_COMMAND}", file=sys.stderr)
        return 2
    try:
        key = setup()
    except DriverError as e:
        print(f"cove: {e}", file=sys.stderr)
        return 1
    print(f"registered {key}")
    return 0
