"""The Hyper-V driver's PowerShell scripts, and what their answers mean: pure functions.

Each operation of `desktop.drivers.hyperv.driver` is one script built here from its
inputs (values always through `powershell.quote`), so the exact text is tested on any
host; each script prints one JSON object, read by the `parse_*`/`check_*` functions
below. Nothing here runs PowerShell: `powershell.PowerShell` does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from desktop.drivers import DiskError, VMSpec
from desktop.drivers.hyperv.powershell import quote
from guest_engine import protocol

log = logging.getLogger(__name__)

SWITCH = "Default Switch"
SERVICE_NAME = "Cove guest agent"
GCS_KEY = ("HKLM:\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Virtualization\\"
           "GuestCommunicationServices")
SETUP_COMMAND = "cove setup hyperv"
MIN_MEMORY_MIB = 512
DATA_BLOCK = "1MB"

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


def vm_name(instance: str, user: str) -> str:
    """The Hyper-V VM of one user's `instance`: ``cove-<user>-<instance>``. Hyper-V's VM
    names are the machine's, not the user's: the user's tag (`endpoints.windows_user_tag`,
    a hash of the SID, as in the pipe names) keeps two users' "default" apart."""
    return f"cove-{user}-{instance}"


def emit(expr: str) -> str:
    """The PowerShell line that prints `expr` as the script's JSON result."""
    return f"ConvertTo-Json -InputObject ({expr}) -Compress -Depth 4"


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


def pause_script(name: str, pause: bool) -> str:
    """Suspend-VM (the VM stays in memory, its vCPUs stopped) or Resume-VM; then the
    state Hyper-V reports."""
    verb = "Suspend-VM" if pause else "Resume-VM"
    return (f"{verb} -Name {quote(name)}\n"
            + emit(f"[ordered]@{{ state = [string](Get-VM -Name {quote(name)}).State }}"))


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
                       "-FeatureName Microsoft-Hyper-V-All) and restart Windows. Windows "
                       "Home has no Hyper-V: there Cove uses QEMU with the Windows "
                       "Hypervisor Platform")
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
