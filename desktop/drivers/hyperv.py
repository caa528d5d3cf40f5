"""The Hyper-V driver: Windows hosts with Hyper-V, through the Hyper-V PowerShell module.

Every operation is one PowerShell script (`desktop.drivers.powershell`), built by a pure
function of its inputs (`*_script` below) so the exact text is tested on any host; what
a script prints is one JSON object, parsed here. The VM, ``cove-<instance>``:

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
(`desktop.link.HvsockLink`; docs/protocol.md). Only the host can open an hvsock
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

from desktop.drivers import (
    Capabilities,
    DiskError,
    DriverError,
    SharedFolder,
    VMSpec,
    link_share,
    register,
)
from desktop.drivers.powershell import PowerShell, PowerShellError, quote
from guest_engine import protocol

log = logging.getLogger(__name__)

SWITCH = "Default Switch"
SERVICE_NAME = "Cove guest agent"
GCS_KEY = ("HKLM:\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Virtualization\\"
           "GuestCommunicationServices")
SETUP_COMMAND = "cove setup hyperv"
MIN_MEMORY_MIB = 512
DATA_BLOCK = "1MB"
STOP_MARGIN = 60.0  # seconds PowerShell may need beyond a stop's own timeout

# Get-VM's State -> the Driver protocol's three states.
STATES = {
    "Running": "running", "Starting": "running", "Stopping": "running",
    "Reset": "running", "RunningCritical": "running", "StartingCritical": "running",
    "StoppingCritical": "running", "ResetCritical": "running", "Other": "running",
    "Off": "stopped", "OffCritical": "stopped",
    "Paused": "paused", "Pausing": "paused", "Resuming": "paused", "Saved": "paused",
    "Saving": "paused", "FastSaved": "paused", "FastSaving": "paused",
    "PausedCritical": "paused", "SavedCritical": "paused", "PausingCritical": "paused",
    "ResumingCritical": "paused", "SavingCritical": "paused",
}


def service_id(port: int = protocol.AGENT_PORT) -> str:
    """The hvsock service GUID of the guest's vsock `port` (the agent listens on vsock)."""
    return protocol.hv_service_id(port)


def vm_name(instance: str) -> str:
    return f"cove-{instance}"


def emit(expr: str) -> str:
    """The PowerShell line that prints `expr` as the script's JSON result."""
    return f"ConvertTo-Json -InputObject ({expr}) -Compress -Depth 4"


def host_os() -> str:
    return {"win32": "windows", "linux": "linux", "darwin": "darwin"}.get(sys.platform,
                                                                          sys.platform)


# -- scripts ------------------------------------------------------------------------

def probe_script(service: str = service_id()) -> str:
    """What `available` needs to know, in one run (no Hyper-V cmdlet runs before the
    module and the user's rights are known: they would fail with less clear errors)."""
    return f"""\
$r = [ordered]@{{ module = $false }}
if (-not (Get-Module -ListAvailable -Name Hyper-V)) {{ {emit('$r')}; exit 0 }}
$r.module = $true
$svc = Get-Service -Name vmms -ErrorAction SilentlyContinue
$r.vmms = if ($svc) {{ [string]$svc.Status }} else {{ '' }}
$p = New-Object Security.Principal.WindowsPrincipal ([Security.Principal.WindowsIdentity]::GetCurrent())
$r.admin = $p.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)
$r.hyperv_admin = $p.IsInRole((New-Object Security.Principal.SecurityIdentifier 'S-1-5-32-578'))
$r.switch = @()
if ($r.admin -or $r.hyperv_admin) {{
  $r.switch = @(Get-VMSwitch -Name {quote(SWITCH)} -ErrorAction SilentlyContinue |
    Select-Object Name, @{{n='SwitchType';e={{[string]$_.SwitchType}}}}, @{{n='Id';e={{[string]$_.Id}}}})
}}
$r.service = Test-Path -LiteralPath {quote(GCS_KEY + chr(92) + service)}
{emit('$r')}"""  # noqa: E501 - PowerShell reads best one command a line


def setup_script(service: str = service_id()) -> str:
    """Register the agent's hvsock service (needs an elevated PowerShell, once)."""
    key = quote(GCS_KEY + "\\" + service)
    return f"""\
$key = {key}
if (-not (Test-Path -LiteralPath $key)) {{ New-Item -Path $key -Force | Out-Null }}
New-ItemProperty -LiteralPath $key -Name 'ElementName' -Value {quote(SERVICE_NAME)} -PropertyType String -Force | Out-Null
{emit('[ordered]@{ registered = $true; key = $key }')}"""  # noqa: E501 - PowerShell reads best one command a line


def disk_script(path: Path, size_bytes: int) -> str:
    """Create the data disk, or report on the existing one (never changes it)."""
    return f"""\
$path = {quote(path)}
if (-not (Test-Path -LiteralPath $path)) {{
  $v = New-VHD -Path $path -SizeBytes {size_bytes} -Dynamic -BlockSizeBytes {DATA_BLOCK}
  {emit('[ordered]@{ created = $true; format = [string]$v.VhdFormat; type = [string]$v.VhdType; size = $v.Size }')}
  exit 0
}}
try {{ $v = Get-VHD -Path $path }} catch {{
  {emit('[ordered]@{ created = $false; readable = $false; error = [string]$_.Exception.Message }')}
  exit 0
}}
$ok = $true; $why = ''
try {{ $ok = [bool](Test-VHD -Path $path) }} catch {{ $ok = $false; $why = [string]$_.Exception.Message }}
{emit('[ordered]@{ created = $false; readable = $true; ok = $ok; error = $why; format = [string]$v.VhdFormat; type = [string]$v.VhdType; size = $v.Size; parent = [string]$v.ParentPath; attached = [bool]$v.Attached }')}"""  # noqa: E501 - PowerShell reads best one command a line


def resize_script(path: Path, size_bytes: int) -> str:
    return f"Resize-VHD -Path {quote(path)} -SizeBytes {size_bytes}\n{emit('$true')}"


def start_script(name: str, spec: VMSpec, parents: tuple[Path, Path],
                 children: tuple[Path, Path], data: Path, vm_dir: Path, pipe: str) -> str:
    """Remake the VM from scratch and start it: a VM left by an earlier run (or edited by
    hand in Hyper-V Manager) is replaced, so every boot has the same hardware."""
    # Hyper-V takes memory sizes in whole 2 MiB steps.
    mib = max(2, spec.memory_mib // 2 * 2)
    mem = mib * 2**20
    low = min(MIN_MEMORY_MIB, mib) * 2**20
    (boot_parent, root_parent), (boot_child, root_child) = parents, children
    return f"""\
$name = {quote(name)}
$old = Get-VM -Name $name -ErrorAction SilentlyContinue
if ($old) {{
  if ([string]$old.State -ne 'Off') {{ Stop-VM -VM $old -TurnOff -Force }}
  Remove-VM -VM $old -Force
}}
foreach ($p in @({quote(boot_child)}, {quote(root_child)})) {{
  if (Test-Path -LiteralPath $p) {{ Remove-Item -LiteralPath $p -Force }}
}}
New-VHD -Path {quote(boot_child)} -ParentPath {quote(boot_parent)} -Differencing | Out-Null
New-VHD -Path {quote(root_child)} -ParentPath {quote(root_parent)} -Differencing | Out-Null
$vm = New-VM -Name $name -Generation 2 -MemoryStartupBytes {mem} -NoVHD -Path {quote(vm_dir)}
Set-VM -VM $vm -AutomaticCheckpointsEnabled $false -CheckpointType Disabled -AutomaticStartAction Nothing -AutomaticStopAction ShutDown
Set-VMMemory -VM $vm -DynamicMemoryEnabled $true -MinimumBytes {low} -StartupBytes {mem} -MaximumBytes {mem}
Set-VMProcessor -VM $vm -Count {spec.cpus}
$boot = Add-VMHardDiskDrive -VM $vm -Path {quote(boot_child)} -Passthru
Add-VMHardDiskDrive -VM $vm -Path {quote(root_child)}
Add-VMHardDiskDrive -VM $vm -Path {quote(data)}
Set-VMFirmware -VM $vm -EnableSecureBoot Off -FirstBootDevice $boot
Connect-VMNetworkAdapter -VMName $name -SwitchName {quote(SWITCH)}
Set-VMComPort -VM $vm -Number 1 -Path {quote(pipe)}
Start-VM -VM $vm
$vm = Get-VM -Name $name
{emit('[ordered]@{ id = [string]$vm.Id; state = [string]$vm.State }')}"""  # noqa: E501 - PowerShell reads best one command a line


def state_script(name: str) -> str:
    return (f"$vm = Get-VM -Name {quote(name)}\n"
            + emit("[ordered]@{ id = [string]$vm.Id; state = [string]$vm.State }"))


def wait_script(name: str, timeout: float | None) -> str:
    """Poll inside one PowerShell process (a process per poll would cost a second each)."""
    limit = -1 if timeout is None else round(timeout, 1)
    return f"""\
$name = {quote(name)}; $limit = {limit}; $t0 = [DateTime]::UtcNow
while ($true) {{
  $vm = Get-VM -Name $name -ErrorAction SilentlyContinue
  if (-not $vm -or [string]$vm.State -eq 'Off') {{ {emit('[ordered]@{ ended = $true }')}; exit 0 }}
  if ($limit -ge 0 -and ([DateTime]::UtcNow - $t0).TotalSeconds -ge $limit) {{
    {emit('[ordered]@{ ended = $false; state = [string]$vm.State }')}; exit 0
  }}
  Start-Sleep -Milliseconds 500
}}"""


def stop_script(name: str, timeout: float) -> str:
    """A shutdown through the guest's shutdown integration service, then a turn-off
    when it has not ended within `timeout` (Stop-VM has no timeout of its own)."""
    return f"""\
$name = {quote(name)}
$vm = Get-VM -Name $name
if ([string]$vm.State -eq 'Off') {{ {emit('[ordered]@{ state = "Off"; forced = $false }')}; exit 0 }}
$job = Stop-VM -VM $vm -Force -AsJob
$t0 = [DateTime]::UtcNow
while ([string](Get-VM -Name $name).State -ne 'Off' -and ([DateTime]::UtcNow - $t0).TotalSeconds -lt {round(timeout, 1)}) {{
  Start-Sleep -Milliseconds 500
}}
$forced = $false
if ([string](Get-VM -Name $name).State -ne 'Off') {{
  Stop-Job -Job $job -ErrorAction SilentlyContinue
  Stop-VM -Name $name -TurnOff -Force
  $forced = $true
}}
{emit('[ordered]@{ state = [string](Get-VM -Name $name).State; forced = $forced }')}"""  # noqa: E501 - PowerShell reads best one command a line


def kill_script(name: str) -> str:
    return f"""\
$vm = Get-VM -Name {quote(name)} -ErrorAction SilentlyContinue
if ($vm -and [string]$vm.State -ne 'Off') {{ Stop-VM -VM $vm -TurnOff -Force }}
{emit('[ordered]@{ killed = [bool]$vm }')}"""


def delete_script(name: str, paths: list[Path]) -> str:
    listed = ", ".join(quote(p) for p in paths)
    return f"""\
$vm = Get-VM -Name {quote(name)} -ErrorAction SilentlyContinue
if ($vm) {{
  if ([string]$vm.State -ne 'Off') {{ Stop-VM -VM $vm -TurnOff -Force }}
  Remove-VM -VM $vm -Force
}}
foreach ($p in @({listed})) {{
  if (Test-Path -LiteralPath $p) {{ Remove-Item -LiteralPath $p -Force -Recurse }}
}}
{emit('[ordered]@{ removed = [bool]$vm }')}"""


def address_script(name: str) -> str:
    return f"""\
$a = Get-VMNetworkAdapter -VMName {quote(name)} | Select-Object -First 1
{emit('[ordered]@{ switch = [string]$a.SwitchName; mac = [string]$a.MacAddress; status = [string]($a.Status -join ","); addresses = @($a.IPAddresses) }')}"""  # noqa: E501 - PowerShell reads best one command a line


# -- parsing ------------------------------------------------------------------------

def parse_probe(r: dict[str, Any] | None) -> tuple[bool, str]:
    """`probe_script`'s result as (usable, why not and how to fix it)."""
    if not r or not r.get("module"):
        return False, ("the Hyper-V PowerShell module is not installed; enable Hyper-V in an "
                       "elevated PowerShell (Enable-WindowsOptionalFeature -Online "
                       "-FeatureName Microsoft-Hyper-V-All) and restart Windows")
    if r.get("vmms") != "Running":
        return False, ("the Hyper-V Virtual Machine Management service (vmms) is "
                       f"{str(r.get('vmms') or 'missing').lower()}; start it in an elevated "
                       "PowerShell (Start-Service vmms) or restart Windows")
    if not (r.get("admin") or r.get("hyperv_admin")):
        return False, ("you are not in the Hyper-V Administrators group; add yourself in an "
                       "elevated PowerShell (Add-LocalGroupMember -SID S-1-5-32-578 -Member "
                       "$env:USERNAME), then sign out and in again")
    if not r.get("switch"):
        return False, (f"Hyper-V's '{SWITCH}' virtual switch is missing (Windows 10 1709 "
                       "and later make it when Hyper-V is enabled); re-enable Hyper-V or "
                       "restart Windows to have it made again")
    if not r.get("service"):
        return False, ("Cove's guest link service is not registered with Hyper-V; run "
                       f"`{SETUP_COMMAND}` once in an elevated PowerShell")
    return True, ""


def map_state(state: str) -> str:
    if state not in STATES:
        log.warning("unknown Hyper-V VM state %r; taken as running", state)
    return STATES.get(state, "running")


def first_ipv4(addresses: list[str]) -> str | None:
    for a in addresses:
        parts = a.split(".")
        if len(parts) == 4 and all(p.isdigit() for p in parts) and not a.startswith("169.254."):
            return a
    return None


def check_disk(path: Path, r: dict[str, Any], size_gib: int) -> bool:
    """`disk_script`'s report on an existing disk: raises DiskError for one Cove must not
    use (the file is left as it is); True when it should grow to `size_gib`."""
    if not r.get("readable", True):
        raise DiskError(
            f"the data disk {path} is not a readable virtual disk ({r.get('error', '')}); "
            "it is left untouched: move it aside to keep it, or run `cove reset` to start "
            "with a new one")
    if r.get("format") != "VHDX":
        raise DiskError(f"the data disk {path} is {r.get('format') or 'of unknown format'}, "
                        "not VHDX; move it aside or run `cove reset`")
    if r.get("parent") or r.get("type") == "Differencing":
        raise DiskError(
            f"the data disk {path} is a differencing disk over {r.get('parent')}; Cove "
            "refuses such disks (its data would live in another file). Merge it with "
            "Merge-VHD, or run `cove reset`")
    if not r.get("ok", False):
        raise DiskError(
            f"the data disk {path} is damaged ({r.get('error') or 'Test-VHD failed'}); it is "
            "left untouched: copy it somewhere safe, then try Hyper-V Manager's Edit Disk, "
            "or run `cove reset` for a new one")
    return int(r.get("size") or 0) < size_gib * 2**30


# -- the driver ---------------------------------------------------------------------

class HyperVDriver:
    name = "hyperv"
    capabilities = Capabilities(vsock=True, virtiofs=False, ninep=False, balloon=True,
                                hostfwd=False, virtio_serial=False)

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
        return vm_name(self.spec.name)

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

    def create(self, spec: VMSpec) -> None:
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
            return
        if check_disk(path, r, spec.disk_gib):
            try:
                self.ps.run("growing the data disk", resize_script(path, size), timeout=120)
            except PowerShellError as e:
                raise DiskError(f"could not grow the data disk to {spec.disk_gib} GiB: {e}") \
                    from e

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
            spec.serial_log.replace(spec.serial_log.with_name("serial.prev.log"))
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

    def kill(self) -> None:
        if self.spec is not None:
            self.ps.run("turning the VM off", kill_script(self.vm), timeout=STOP_MARGIN)

    def pid(self) -> int | None:
        return None  # see the module's docstring

    def delete(self, spec: VMSpec) -> None:
        paths = [data_disk(spec), spec.folder / "boot.vhdx", spec.folder / "root.vhdx",
                 spec.folder / "hyperv"]
        self.ps.run("deleting the VM", delete_script(vm_name(spec.name), paths),
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

    def make_link(self, token: str) -> Any:
        """The guest link for this boot: hvsock, delivering the boot config first."""
        from desktop.link import HvsockLink

        if not self.vm_id:
            raise DriverError("the Hyper-V VM is not started: no VM id to connect to")
        return HvsockLink(self.vm_id, service_id(), token, boot_config=self.boot_config)

    def resolve_shares(self, shares: list[tuple[str, str]]) -> tuple[list[SharedFolder],
                                                                     list[str]]:
        """Hyper-V VMs have no file-sharing device: Cove serves every share itself, over
        Hyper-V sockets (`desktop.ninep`), mounted in the VM under /mnt/host."""
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
    return f"\\\\.\\pipe\\cove-{instance}-com1"


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


if __name__ == "__main__":
    sys.exit(main())
