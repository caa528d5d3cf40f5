"""The Hyper-V driver: the PowerShell each operation runs, and what it makes of the output.

Nothing here runs PowerShell: `Recorded` answers the scripts from the transcripts in
fixtures/hyperv (written from Microsoft's documented cmdlet output), through the same
wrapping, error classification and JSON parsing a real run goes through.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from desktop import drivers
from desktop.drivers import DiskError, DriverError, VMSpec
from desktop.drivers.hyperv import driver as hyperv_driver
from desktop.drivers.hyperv import powershell, scripts
from desktop.drivers.hyperv.powershell import Call, PowerShellError, Recorded, quote
from desktop.drivers.shares import SharedFolder
from desktop.link import AgentError, LinkError
from desktop.link.channel import ControlChannel
from desktop.link.hvsock import HvsockLink
from desktop.platform import _windows
from guest_engine import protocol
from tests.helpers.paths import FIXTURES as ALL_FIXTURES
from tests.helpers.paths import REPO
from tests.helpers.pwsh import unquote

FIXTURES = ALL_FIXTURES / "hyperv"
TOKEN = "ab" * 32
VMID = "5b0a7e3c-92d1-4c7e-8f7a-1d6c2b9e4a10"


def recorded(*names: str) -> Recorded:
    return Recorded.load(*(FIXTURES / f"{n}.json" for n in names))


@pytest.fixture(autouse=True)
def user_tag(monkeypatch: pytest.MonkeyPatch) -> str:
    """This user's tag in Windows names (from the SID there)."""
    monkeypatch.setattr(_windows, "_tag", "0a1b2c3d4e")
    return "0a1b2c3d4e"


@pytest.fixture
def spec(tmp_path: Path) -> VMSpec:
    image = tmp_path / "image"
    image.mkdir()
    for name in ("vmlinuz", "initramfs", "root.sqfs", "boot.vhdx", "root.vhdx"):
        (image / name).write_bytes(b"x")
    folder = tmp_path / "default"
    folder.mkdir()
    boot = folder / "boot.json"
    boot.write_text(json.dumps({"token": TOKEN, "network": "user", "shares": []}))
    return VMSpec(name="default", folder=folder, kernel=image / "vmlinuz",
                  initramfs=image / "initramfs", root_image=image / "root.sqfs",
                  data_disk=folder / "data.qcow2", boot_config=boot, cpus=4,
                  memory_mib=4096, disk_gib=64)


def driver(runner: Recorded, os_name: str = "windows") -> hyperv_driver.HyperVDriver:
    return hyperv_driver.HyperVDriver("amd64", os_name=os_name, runner=runner)


def started(spec: VMSpec, *more: str) -> tuple[hyperv_driver.HyperVDriver, Recorded]:
    ps = recorded("start", *more)
    d = driver(ps)
    d.start(spec)
    return d, ps


# -- the PowerShell runner ------------------------------------------------------------

@pytest.mark.parametrize("value, literal", [
    ("cove-default", "'cove-default'"),
    ("it's", "'it''s'"),
    ("'; Remove-Item -Recurse C:\\ #", "'''; Remove-Item -Recurse C:\\ #'"),
    ("$(Stop-Computer)", "'$(Stop-Computer)'"),
    ("`n$env:USERNAME", "'`n$env:USERNAME'"),
    ("a\u2019b", "'a\u2019\u2019b'"),  # PowerShell ends single-quoted strings at ’ too
    ("C:\\Users\\Jürgen\\.cove", "'C:\\Users\\Jürgen\\.cove'"),
])
def test_quote_makes_inert_single_quoted_literals(value: str, literal: str) -> None:
    assert quote(value) == literal


@pytest.mark.parametrize("name", [
    "x'; Stop-Computer -Force; '", "''''", "\u2018\u2019\u201a\u201b'", "a b\tc",
    "$null", "@(1)", "`'", "ünï ‘code’",
])
def test_hostile_values_read_back_unchanged(name: str, spec: VMSpec) -> None:
    assert unquote(quote(name)) == name
    # A hostile instance name stays inside its literal in the script that uses it.
    script = scripts.state_script(scripts.vm_name(name, "0a1b2c3d4e"))
    first = script.splitlines()[0]
    assert first == f"$vm = Get-VM -Name {quote('cove-0a1b2c3d4e-' + name)}"
    assert unquote(first.split("-Name ", 1)[1]) == "cove-0a1b2c3d4e-" + name


def test_two_users_default_instances_are_two_vms(monkeypatch: pytest.MonkeyPatch,
                                                  spec: VMSpec) -> None:
    """Hyper-V's VM names are the machine's: each user's "default" has its own VM (the
    tag hashes the SID, as in the pipe names), and one user's start never removes the
    other's VM (the start script removes an old VM of its own name)."""
    from desktop.platform import winpipe

    names = set()
    for sid in ("S-1-5-21-1-2-3-1001", "S-1-5-21-1-2-3-1002"):
        monkeypatch.setattr(_windows, "_tag", winpipe.user_tag(sid))
        d, ps = started(spec)
        names.add(d.vm)
        assert f"$name = {quote(d.vm)}" in ps.scripts[0].splitlines()
    assert len(names) == 2 and all(n.endswith("-default") for n in names)


def test_quote_refuses_nul() -> None:
    with pytest.raises(ValueError, match="NUL"):
        quote("a\0b")


def test_command_line_is_encoded_utf16le() -> None:
    script = powershell.wrap("Get-VM -Name 'cove-Jürgen'")
    cmd = powershell.command(script)
    assert cmd[:6] == ["powershell.exe", "-NoProfile", "-NonInteractive", "-ExecutionPolicy",
                       "Bypass", "-EncodedCommand"]
    assert base64.b64decode(cmd[6]).decode("utf-16-le") == script
    with pytest.raises(ValueError, match="over the 12000-character limit"):
        powershell.command("x" * 12001)


def test_wrap_stops_on_errors_and_reports_them_on_stderr() -> None:
    script = powershell.wrap("Get-VM\n\nStart-VM")
    lines = script.splitlines()
    assert lines[0] == "$ErrorActionPreference = 'Stop'"
    assert "[Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false" in lines
    assert "  Get-VM" in lines and "  Start-VM" in lines
    assert '  [Console]::Error.WriteLine("COVE-ERROR $id $msg")' in lines
    assert lines[-2:] == ["  exit 1", "}"]


def test_runner_runs_powershell_and_parses_its_json(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
        seen.append(cmd)
        assert kw["timeout"] == 7 and kw["stdin"] == subprocess.DEVNULL
        return subprocess.CompletedProcess(cmd, 0, b'\xef\xbb\xbf{"a":"J\xc3\xbcrgen"}\r\n', b"")

    monkeypatch.setattr(powershell.subprocess, "run", run)
    ps = powershell.PowerShell(exe="C:\\Windows\\powershell.exe")
    assert ps.run("reading", "Get-Thing", timeout=7) == {"a": "Jürgen"}
    assert seen[0][0] == "C:\\Windows\\powershell.exe"
    assert "Get-Thing" in base64.b64decode(seen[0][-1]).decode("utf-16-le")


def test_runner_without_powershell(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(powershell.shutil, "which", lambda name: None)
    with pytest.raises(PowerShellError, match="powershell.exe not found") as e:
        powershell.PowerShell().run("x", "Get-VM")
    assert e.value.kind == "not-installed"


def test_runner_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
        raise subprocess.TimeoutExpired(cmd, 3)

    monkeypatch.setattr(powershell.subprocess, "run", run)
    with pytest.raises(PowerShellError, match="did not finish within 3 s") as e:
        powershell.PowerShell(exe="powershell.exe").run("x", "Get-VM", timeout=3)
    assert e.value.kind == "timeout"


@pytest.mark.parametrize("fixture, kind, words", [
    ("cmdlet-missing", "missing-module",
     ["is not recognized as the name of a cmdlet", "Enable-WindowsOptionalFeature -Online "
      "-FeatureName Microsoft-Hyper-V-All", "restart Windows"]),
    ("permission-denied", "permission",
     ["You do not have the required permission", "Hyper-V Administrators",
      "Add-LocalGroupMember -SID S-1-5-32-578 -Member $env:USERNAME", "sign out and in"]),
    ("vm-missing", "not-found",
     ['unable to find a virtual machine with name "cove-0a1b2c3d4e-default"']),
])
def test_failures_name_the_problem_and_the_fix(fixture: str, kind: str,
                                               words: list[str]) -> None:
    ps = recorded(fixture)
    with pytest.raises(PowerShellError) as e:
        ps.run("reading the VM's state", scripts.state_script("cove-0a1b2c3d4e-default"))
    assert e.value.kind == kind
    text = str(e.value)
    assert text.startswith("reading the VM's state failed: ")
    for w in words:
        assert w in text
    assert "COVE-ERROR" not in text and "Microsoft.HyperV.PowerShell" not in text


def test_unknown_failure_keeps_the_exit_status_and_powershells_text() -> None:
    err = ("At line:3 char:1\r\n+ New-VM -Name\r\n"
           "    + FullyQualifiedErrorId : MissingArgument,Microsoft.HyperV.New-VM\r\n")
    e = powershell.classify("starting", 1, "", err)
    assert e.kind == "failed"
    assert "exit status 1" in str(e) and "MissingArgument" in str(e)


def test_output_that_is_not_json() -> None:
    ps = Recorded([Call(["Get-VM"], stdout="Name State\r\n---- -----\r\n")])
    with pytest.raises(PowerShellError, match="not JSON") as e:
        ps.run("listing", "Get-VM")
    assert e.value.kind == "bad-output"


def test_recorded_refuses_unexpected_scripts() -> None:
    ps = recorded("probe-ready")
    with pytest.raises(AssertionError, match="no recorded PowerShell output"):
        ps.run("x", "Remove-VM -Name 'cove-default' -Force")


# -- available() and the registry --------------------------------------------------------

def test_available_only_on_windows() -> None:
    ps = Recorded()
    ok, why = driver(ps, os_name="linux").available()
    assert not ok and why == "Hyper-V runs only on Windows hosts (this one is linux)"
    ok, why = hyperv_driver.HyperVDriver("arm64", os_name="windows", runner=ps).available()
    assert not ok and "amd64 only" in why
    assert ps.scripts == []  # nothing asked of PowerShell where it cannot help


def test_available_needs_af_hyperv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(socket, "AF_HYPERV", raising=False)
    ok, why = driver(recorded("probe-ready")).available()
    assert not ok and "socket.AF_HYPERV" in why and "Python 3.12" in why


@pytest.fixture
def af_hyperv(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend to be a Windows Python with Hyper-V sockets."""
    monkeypatch.setattr(socket, "AF_HYPERV", 34, raising=False)


@pytest.mark.usefixtures("af_hyperv")
@pytest.mark.parametrize("fixture, words", [
    ("probe-ready", None),
    ("probe-no-module", ["Hyper-V PowerShell module is not installed",
                         "Enable-WindowsOptionalFeature"]),
    ("probe-vmms-stopped", ["(vmms) is stopped", "Start-Service vmms"]),
    ("probe-not-hyperv-admin", ["not in the Hyper-V Administrators group",
                                "Add-LocalGroupMember -SID S-1-5-32-578"]),
    ("probe-no-switch", ["'Default Switch' virtual switch is missing"]),
    ("probe-unregistered", ["guest link service is not registered",
                            "cove setup hyperv", "elevated"]),
])
def test_available_reads_the_probe(fixture: str, words: list[str] | None) -> None:
    ps = recorded(fixture)
    ok, why = driver(ps).available()
    assert ok is (words is None)
    for w in words or []:
        assert w in why
    assert len(ps.scripts) == 1


def test_probe_script() -> None:
    s = scripts.probe_script()
    assert "if (-not (Get-Module -ListAvailable -Name Hyper-V))" in s
    assert "$svc = Get-Service -Name vmms -ErrorAction SilentlyContinue" in s
    assert "IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)" in s
    assert "SecurityIdentifier 'S-1-5-32-578'" in s
    # The switch is asked for only by someone allowed to (else the error is less clear).
    assert s.index("if ($r.admin -or $r.hyperv_admin)") < s.index("Get-VMSwitch -Name "
                                                                   "'Default Switch'")
    assert ("$r.service = Test-Path -LiteralPath 'HKLM:\\SOFTWARE\\Microsoft\\Windows NT\\"
            "CurrentVersion\\Virtualization\\GuestCommunicationServices\\"
            "00002a3b-facb-11e6-bd58-64006a7986d3'") in s
    assert s.splitlines()[-1] == "ConvertTo-Json -InputObject ($r) -Compress -Depth 4"


def test_service_id_is_the_vsock_template() -> None:
    assert scripts.service_id() == "00002a3b-facb-11e6-bd58-64006a7986d3"
    assert protocol.AGENT_PORT == 0x2A3B
    assert scripts.service_id(22) == "00000016-facb-11e6-bd58-64006a7986d3"


def test_registry_prefers_hyperv_only_where_available(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    from desktop.drivers.qemu import driver as qemu_driver

    monkeypatch.setattr(qemu_driver.shutil, "which", lambda n: "/usr/bin/" + n)
    # Not Windows: QEMU, and Hyper-V's reason is there when nothing else works.
    monkeypatch.setattr(hyperv_driver, "host_os", lambda: "linux")
    assert isinstance(drivers.pick(arch="amd64"), qemu_driver.QemuDriver)
    with pytest.raises(DriverError, match="hyperv: Hyper-V runs only on Windows hosts"):
        drivers.pick("hyperv")
    # Windows with Hyper-V ready: Hyper-V first.
    monkeypatch.setattr(hyperv_driver, "host_os", lambda: "windows")
    monkeypatch.setattr(socket, "AF_HYPERV", 34, raising=False)
    ready = recorded("probe-ready")
    monkeypatch.setattr(hyperv_driver, "PowerShell", lambda: ready)
    d = drivers.pick(arch="amd64", accel_cache=tmp_path / "accel.json")
    assert isinstance(d, hyperv_driver.HyperVDriver) and d.name == "hyperv"
    # Windows without the Hyper-V module: QEMU (WHPX), as before.
    monkeypatch.setattr(hyperv_driver, "PowerShell", lambda: recorded("probe-no-module"))
    assert isinstance(drivers.pick(arch="amd64"), qemu_driver.QemuDriver)


# -- create: the data disk ---------------------------------------------------------------

def test_create_makes_a_dynamic_vhdx(spec: VMSpec) -> None:
    ps = recorded("disk-new")
    driver(ps).create(spec)
    s = ps.scripts[0]
    assert s.splitlines()[0] == f"$path = {quote(spec.folder / 'data.vhdx')}"
    assert "if (-not (Test-Path -LiteralPath $path)) {" in s
    assert "  $v = New-VHD -Path $path -SizeBytes 68719476736 -Dynamic -BlockSizeBytes 1MB" in s
    assert "try { $v = Get-VHD -Path $path } catch {" in s
    assert "try { $ok = [bool](Test-VHD -Path $path) } catch {" in s
    # Nothing in the script changes or removes an existing disk.
    for verb in ("Remove-Item", "Resize-VHD", "Convert-VHD", "Optimize-VHD"):
        assert verb not in s


def test_create_accepts_a_healthy_disk(spec: VMSpec) -> None:
    ps = recorded("disk-existing")
    driver(ps).create(spec)
    assert len(ps.scripts) == 1


def test_create_grows_a_smaller_disk(spec: VMSpec) -> None:
    ps = recorded("disk-smaller")
    driver(ps).create(spec)
    assert ps.scripts[1].splitlines()[0] == (
        f"Resize-VHD -Path {quote(spec.folder / 'data.vhdx')} -SizeBytes 68719476736")
    assert ps.unused() == []


@pytest.mark.parametrize("fixture, words", [
    ("disk-corrupt", ["not a readable virtual disk", "corrupted and unreadable",
                      "left untouched", "move it aside", "cove reset"]),
    ("disk-test-failed", ["is damaged", "failed the integrity check", "left untouched",
                          "copy it somewhere safe", "cove reset"]),
    ("disk-differencing", ["differencing disk over", "data_1F3A.vhdx", "Merge-VHD"]),
    ("disk-vhd", ["is VHD, not VHDX"]),
])
def test_create_refuses_a_bad_disk_and_keeps_it(spec: VMSpec, fixture: str,
                                                words: list[str]) -> None:
    disk = spec.folder / "data.vhdx"
    disk.write_bytes(b"precious")
    ps = recorded(fixture)
    with pytest.raises(DiskError) as e:
        driver(ps).create(spec)
    for w in words:
        assert w in str(e.value)
    assert len(ps.scripts) == 1  # no second script: nothing resized, nothing removed
    assert disk.read_bytes() == b"precious"


def test_create_when_powershell_fails(spec: VMSpec) -> None:
    ps = Recorded([Call(["New-VHD"], stderr=(
        "COVE-ERROR InvalidOperation,Microsoft.Vhd.PowerShell.Cmdlets.NewVhd You do not have "
        "the required permission to complete this task.\r\n"), exit=1)])
    with pytest.raises(DiskError, match="could not create or check the data disk .*"
                                        "Hyper-V Administrators"):
        driver(ps).create(spec)


# -- start ------------------------------------------------------------------------------

def test_start_script(spec: VMSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    d, ps = started(spec)
    s = ps.scripts[0]
    lines = s.splitlines()
    img, f = spec.kernel.parent, spec.folder
    expected = [
        "$name = 'cove-0a1b2c3d4e-default'",
        "$old = Get-VM -Name $name -ErrorAction SilentlyContinue",
        "  if ([string]$old.State -ne 'Off') { Stop-VM -VM $old -TurnOff -Force }",
        "  Remove-VM -VM $old -Force",
        f"New-VHD -Path {quote(f / 'boot.vhdx')} -ParentPath {quote(img / 'boot.vhdx')} "
        "-Differencing | Out-Null",
        f"New-VHD -Path {quote(f / 'root.vhdx')} -ParentPath {quote(img / 'root.vhdx')} "
        "-Differencing | Out-Null",
        "$vm = New-VM -Name $name -Generation 2 -MemoryStartupBytes 4294967296 -NoVHD "
        f"-Path {quote(f / 'hyperv')}",
        "Set-VM -VM $vm -AutomaticCheckpointsEnabled $false -CheckpointType Disabled "
        "-AutomaticStartAction Nothing -AutomaticStopAction ShutDown",
        "Set-VMMemory -VM $vm -DynamicMemoryEnabled $true -MinimumBytes 536870912 "
        "-StartupBytes 4294967296 -MaximumBytes 4294967296",
        "Set-VMProcessor -VM $vm -Count 4",
        f"$boot = Add-VMHardDiskDrive -VM $vm -Path {quote(f / 'boot.vhdx')} -Passthru",
        f"Add-VMHardDiskDrive -VM $vm -Path {quote(f / 'root.vhdx')}",
        f"Add-VMHardDiskDrive -VM $vm -Path {quote(f / 'data.vhdx')}",
        "Set-VMFirmware -VM $vm -EnableSecureBoot Off -FirstBootDevice $boot",
        "Connect-VMNetworkAdapter -VMName $name -SwitchName 'Default Switch'",
        "Set-VMComPort -VM $vm -Number 1 -Path '\\\\.\\pipe\\cove-0a1b2c3d4e-default-com1'",
        "Start-VM -VM $vm",
    ]
    positions = [lines.index(e) for e in expected]
    assert positions == sorted(positions), "the steps run in this order"
    assert d.vm_id == VMID
    assert d.pid() is None  # vmwp.exe is the Hyper-V service's, not ours
    # The image's disks are only ever parents: nothing attaches or removes them.
    assert f"-Path {quote(img / 'boot.vhdx')}" not in s
    assert f"Remove-Item -LiteralPath {quote(img / 'boot.vhdx')}" not in s


def test_start_sends_dhcp_in_the_boot_config(spec: VMSpec) -> None:
    d, _ = started(spec)
    assert d.boot_config is not None and d.boot_config.endswith(b"\n")
    config = json.loads(d.boot_config)
    assert config == {"token": TOKEN, "network": "dhcp", "shares": []}
    link = d.make_link(TOKEN)
    assert isinstance(link, HvsockLink)
    assert (link.vm_id, link.service_id) == (VMID, "00002a3b-facb-11e6-bd58-64006a7986d3")


def test_start_rounds_memory_to_2_mib(spec: VMSpec) -> None:
    spec.memory_mib = 1023
    _, ps = started(spec)
    assert "-MemoryStartupBytes 1071644672 " in ps.scripts[0]  # 1022 MiB


def test_start_without_hyperv_disks(spec: VMSpec) -> None:
    (spec.kernel.parent / "boot.vhdx").unlink()
    ps = Recorded()
    with pytest.raises(DriverError, match=r"has no Hyper-V disks \(boot.vhdx\).*"
                                          r"python -m vm_image hyperv"):
        driver(ps).start(spec)
    assert ps.scripts == []


def test_start_notes_ignored_kernel_args(spec: VMSpec) -> None:
    spec.kernel_args = "cove.debug"
    d, _ = started(spec)
    assert d.accel == "hyperv"
    assert d.accel_notes and "'cove.debug' are ignored" in d.accel_notes[0]


def test_start_refuses_device_shares(spec: VMSpec) -> None:
    spec.shares = [SharedFolder(str(spec.folder), "cove0", "9p")]
    with pytest.raises(DriverError, match=r"over 9p: Hyper-V VMs have no virtiofs or 9p "
                                          r"device; set its transport to auto"):
        driver(Recorded()).start(spec)


def test_resolve_shares_serves_every_folder_over_the_link(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Cove's own 9P server (over Hyper-V sockets) shares each folder, mounted under
    /mnt/host in the VM; "auto" and "link" both mean it."""
    d = driver(Recorded())
    assert d.resolve_shares([]) == ([], [])
    monkeypatch.setattr("os.path.isdir", lambda p: p in ("C:\\Users\\ana", "D:\\src"))
    assert d.resolve_shares([("C:\\Users\\ana", "auto"), ("D:\\src", "link")]) == ([
        SharedFolder("C:\\Users\\ana", "cove0", "link", "/mnt/host/c/Users/ana"),
        SharedFolder("D:\\src", "cove1", "link", "/mnt/host/d/src")], [])
    with pytest.raises(DriverError) as e:
        d.resolve_shares([("C:\\Users\\ana", "virtiofs")])
    assert str(e.value) == ("cannot share C:\\Users\\ana over virtiofs: Hyper-V VMs have "
                            "no virtiofs or 9p device; set its transport to auto (Cove serves "
                            "it over Hyper-V sockets)")
    with pytest.raises(DriverError, match=r"cannot share E:\\gone: it is not a folder"):
        d.resolve_shares([("E:\\gone", "auto")])


def test_make_link_before_start() -> None:
    with pytest.raises(DriverError, match="not started"):
        driver(Recorded()).make_link(TOKEN)


# -- status, stop, kill, wait, delete, address ---------------------------------------------

@pytest.mark.parametrize("state, expected", [
    ("Running", "running"), ("Starting", "running"), ("Stopping", "running"),
    ("Off", "stopped"), ("Paused", "paused"), ("Saved", "paused"), ("Saving", "paused"),
    ("RunningCritical", "running"), ("OffCritical", "stopped"), ("Something", "running"),
])
def test_state_mapping(state: str, expected: str) -> None:
    assert scripts.map_state(state) == expected


def test_status_stop_wait(spec: VMSpec) -> None:
    d, ps = started(spec, "lifecycle")
    assert d.status() == "running"
    assert ps.scripts[1] == ("$vm = Get-VM -Name 'cove-0a1b2c3d4e-default'\n"
                             "ConvertTo-Json -InputObject ([ordered]@{ id = [string]$vm.Id; "
                             "state = [string]$vm.State }) -Compress -Depth 4")
    d.stop(timeout=20)
    s = ps.scripts[2]
    # Polite (the guest's shutdown integration service) with a timeout, then turn-off.
    assert "$job = Stop-VM -VM $vm -Force -AsJob" in s
    assert "-lt 20) {" in s
    assert s.index("-AsJob") < s.index("Stop-VM -Name $name -TurnOff -Force")
    assert ps.timeouts[2] == 20 + hyperv_driver.STOP_MARGIN
    assert d.wait(5) is True
    assert "$name = 'cove-0a1b2c3d4e-default'; $limit = 5;" in ps.scripts[3]
    assert "if (-not $vm -or [string]$vm.State -eq 'Off')" in ps.scripts[3]


def test_stop_that_had_to_force(spec: VMSpec, caplog: pytest.LogCaptureFixture) -> None:
    d, _ = started(spec, "stop-forced")
    d.stop(timeout=3)
    assert "did not shut down in 3 s; Hyper-V turned it off" in caplog.text


def test_wait_timeout_and_forever(spec: VMSpec) -> None:
    d, ps = started(spec, "wait-timeout")
    assert d.wait(2) is False
    ps.add([Call(["$limit = -1;"], stdout='{"ended":true}\r\n')])
    assert d.wait(None) is True
    assert ps.timeouts[-1] is None


def test_a_vm_that_is_gone(spec: VMSpec) -> None:
    d, ps = started(spec, "vm-missing")
    assert d.status() == "stopped"
    d.stop()  # nothing to stop: no error


def test_status_when_not_allowed_raises(spec: VMSpec) -> None:
    d, _ = started(spec, "permission-denied")
    with pytest.raises(PowerShellError, match="Hyper-V Administrators"):
        d.status()


def test_kill_turns_off(spec: VMSpec) -> None:
    d, ps = started(spec)
    ps.add([Call(["Stop-VM -VM $vm -TurnOff -Force"], stdout='{"killed":true}\r\n')])
    d.kill()
    assert ps.scripts[1].splitlines()[0] == ("$vm = Get-VM -Name 'cove-0a1b2c3d4e-default' "
                                             "-ErrorAction SilentlyContinue")


def test_delete_removes_vm_and_disks(spec: VMSpec) -> None:
    ps = recorded("delete")
    spec.serial_log.write_text("old boot")
    driver(ps).delete(spec)
    s = ps.scripts[0]
    f = spec.folder
    assert (f"foreach ($p in @({quote(f / 'data.vhdx')}, {quote(f / 'boot.vhdx')}, "
            f"{quote(f / 'root.vhdx')}, {quote(f / 'hyperv')})) {{") in s
    assert s.index("Stop-VM -VM $vm -TurnOff -Force") < s.index("Remove-VM -VM $vm -Force")
    assert not spec.serial_log.exists()
    # The image's own disks are never in the list.
    assert str(spec.kernel.parent) not in s


def test_link_address(spec: VMSpec) -> None:
    d, ps = started(spec, "address")
    assert d.link_address() == ("172.29.38.114", protocol.AGENT_PORT)
    d2, _ = started(spec, "address-none")
    with pytest.raises(DriverError, match="no IPv4 address on the Default Switch yet"):
        d2.link_address()


def test_first_ipv4() -> None:
    assert scripts.first_ipv4(["fe80::1", "169.254.3.4", "172.20.1.9"]) == "172.20.1.9"
    assert scripts.first_ipv4(["fe80::1"]) is None


def test_serial_console_is_copied_to_serial_log(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    import io

    tries: list[int] = []

    def opener() -> io.BytesIO:
        tries.append(1)
        if len(tries) < 3:
            raise FileNotFoundError(2, "The system cannot find the file specified")
        return io.BytesIO(b"cove-initramfs: root /dev/sdb mounted at 1.20 s\r\n")

    log_file = tmp_path / "serial.log"
    hyperv_driver.copy_serial(opener, log_file, retry=0)
    assert len(tries) == 3
    assert log_file.read_bytes() == b"cove-initramfs: root /dev/sdb mounted at 1.20 s\r\n"

    def never() -> io.BytesIO:
        raise FileNotFoundError(2, "no pipe")

    hyperv_driver.copy_serial(never, tmp_path / "none.log", attempts=2, retry=0)
    assert not (tmp_path / "none.log").exists()
    assert "serial console pipe never opened" in caplog.text


def test_start_keeps_the_previous_serial_log(spec: VMSpec) -> None:
    spec.serial_log.write_text("last boot")
    started(spec)
    assert (spec.folder / "serial.prev.log").read_text() == "last boot"


# -- setup (the hvsock service registration) -------------------------------------------

def test_setup_script() -> None:
    lines = scripts.setup_script().splitlines()
    assert lines[0] == ("$key = 'HKLM:\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\"
                        "Virtualization\\GuestCommunicationServices\\"
                        "00002a3b-facb-11e6-bd58-64006a7986d3'")
    assert lines[1] == ("if (-not (Test-Path -LiteralPath $key)) { New-Item -Path $key -Force "
                        "| Out-Null }")
    assert lines[2] == ("New-ItemProperty -LiteralPath $key -Name 'ElementName' -Value "
                        "'Cove guest agent' -PropertyType String -Force | Out-Null")


def test_setup_needs_elevation() -> None:
    with pytest.raises(DriverError, match=r"needs an administrator: run `cove "
                                          r"setup hyperv` in a PowerShell "
                                          r"opened with 'Run as administrator'"):
        hyperv_driver.setup(recorded("setup-not-elevated"))
    assert hyperv_driver.setup(recorded("setup")).endswith("\\00002a3b-facb-11e6-bd58-64006a7986d3")


def test_setup_command_line(monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    assert hyperv_driver.main(["nonsense"]) == 2
    monkeypatch.setattr(hyperv_driver, "PowerShell", lambda: recorded("setup-not-elevated"))
    assert hyperv_driver.main(["setup"]) == 1
    assert "Run as administrator" in capsys.readouterr().err


# -- the host side of the hvsock link ----------------------------------------------------

class FakeGuest:
    """Stands in for the agent's vsock listener: each connect gets one end of a
    socketpair; `serve` runs a handler on the other end in a thread."""

    def __init__(self, handler: object) -> None:
        self.handler = handler
        self.dials: list[tuple[str, str, float]] = []
        self.threads: list[threading.Thread] = []

    def connect(self, vm_id: str, service: str, timeout: float) -> socket.socket:
        self.dials.append((vm_id, service, timeout))
        host, guest = socket.socketpair()
        t = threading.Thread(target=self.handler, args=(guest, len(self.dials)))
        t.start()
        self.threads.append(t)
        return host

    def join(self) -> None:
        for t in self.threads:
            t.join(5)


def test_hvsock_link_delivers_the_config_first() -> None:
    got: dict[int, bytes] = {}

    def guest(conn: socket.socket, n: int) -> None:
        with conn, conn.makefile("rb") as f:
            got[n] = f.readline()
            if n == 1:
                conn.sendall(b'{"ok":true}\n')
            elif n == 2:
                conn.sendall(b"pong")

    g = FakeGuest(guest)
    config = b'{"token":"' + TOKEN.encode() + b'","network":"dhcp"}\n'
    link = HvsockLink(VMID, scripts.service_id(), TOKEN, boot_config=config, connect=g.connect)
    s = link.open("echo", timeout=2)
    assert s.recv(4) == b"pong"
    s.close()
    s = link.open("tcp", 8080)
    s.close()
    g.join()
    assert got[1] == config
    assert got[2] == protocol.encode_header(TOKEN, "echo")
    assert got[3] == protocol.encode_header(TOKEN, "tcp", 8080)  # the config went once
    assert link.config_delivered
    assert g.dials[0] == (VMID, "00002a3b-facb-11e6-bd58-64006a7986d3", 2)


def test_hvsock_link_when_the_guest_refuses_or_is_not_up() -> None:
    def refuse(conn: socket.socket, n: int) -> None:
        with conn, conn.makefile("rb") as f:
            f.readline()
            conn.sendall(b'{"ok":false,"error":"no token"}\n')

    g = FakeGuest(refuse)
    link = HvsockLink(VMID, "svc", TOKEN, boot_config=b"{}\n", connect=g.connect)
    with pytest.raises(AgentError, match="refused the boot config: no token"):
        link.open("control")
    g.join()
    assert not link.config_delivered

    def down(vm_id: str, service: str, timeout: float) -> socket.socket:
        raise ConnectionRefusedError(10061, "No connection could be made")

    link = HvsockLink(VMID, "svc", TOKEN, boot_config=b"{}\n", connect=down)
    with pytest.raises(LinkError, match=f"cannot reach the guest agent over hvsock \\(VM "
                                        f"{VMID}, service svc\\)"):
        link.open("control")
    # A control channel keeps trying (the guest is still booting): no exception.
    assert ControlChannel(link, lambda e: None).connect(timeout=0.1) is False


def test_hv_connect_needs_af_hyperv(monkeypatch: pytest.MonkeyPatch) -> None:
    from desktop.link import hvsock

    monkeypatch.delattr(socket, "AF_HYPERV", raising=False)
    with pytest.raises(OSError, match="no Hyper-V sockets"):
        hvsock.hv_connect(VMID, "svc", 1)


def test_module_imports_without_windows() -> None:
    # The driver module must import anywhere: the registry imports it on every host.
    code = "import desktop.drivers.hyperv, desktop.drivers.hyperv.powershell; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_pause_and_resume_are_suspend_vm_and_resume_vm(spec: VMSpec) -> None:
    """The Resource Saver on Hyper-V: Suspend-VM keeps the VM in memory with its vCPUs
    stopped; Resume-VM runs it again. Each checks the state Hyper-V reports after."""
    d, ps = started(spec)
    ps.add([Call(["Suspend-VM -Name 'cove-0a1b2c3d4e-default'"],
                 stdout='{"state":"Paused"}\r\n'),
            Call(["Resume-VM -Name 'cove-0a1b2c3d4e-default'"],
                 stdout='{"state":"Running"}\r\n'),
            Call(["Suspend-VM"], stdout='{"state":"Running"}\r\n')])
    d.pause()
    d.resume()
    with pytest.raises(DriverError, match="pausing the VM: Hyper-V says the VM is Running"):
        d.pause()


def test_a_refused_pause_is_a_driver_error_naming_it(spec: VMSpec) -> None:
    d, ps = started(spec)
    ps.add([Call(["Suspend-VM"], exit=1, stderr=(
        "Suspend-VM : The operation cannot be performed while the object is in its "
        "current state.\r\n"))])
    with pytest.raises(DriverError, match="pausing the VM failed"):
        d.pause()
