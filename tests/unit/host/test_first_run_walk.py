"""`cove start` then `cove stop`, walked on the hosts this machine is not: Windows with
Hyper-V, Windows with QEMU and WHPX, macOS on Apple silicon and on Intel (QEMU and HVF).

Everything between the command line and the OS is Cove's real code: `desktop.cli`'s
commands, `lifecycle` (spawning the backend, following its events, the engine's /info),
the backend's boot steps, the driver the registry picks, the endpoints, the guest link and
the QMP client. Only the OS answers are fakes (`tests.helpers.hostwalk`): the platform's
name, process creation (QEMU, PowerShell, the backend's own process), the Win32 pipes and
ACLs, Hyper-V sockets; the guest is the fake agent (the real link server).

What these walks cannot reach, and why (stated here so that nobody takes them for more):

* Windows' path style (`platform.paths.HOST_PATHS`) and its endpoints module are chosen
  at import time, and `settings.parse_shares` / the API guard bind the path style as a
  default argument: the walks switch the endpoints (the module's functions) but share no
  folders on Windows (the user's profile is on a server, so there is no default share).
  Windows shares are tested on their own (test_winpaths.py, test_apiguard.py).
* The file lock (`platform.locks`, msvcrt on Windows) and file writes are this host's.
* A published port bound with SO_EXCLUSIVEADDRUSE needs Winsock (Linux refuses the
  option); the port-taken walk is QEMU's forward, which needs no such option.
* Real WHPX/HVF, QEMU's own pipe code, PowerShell's cmdlets, vmwp.exe: their answers are
  the documented ones (fixtures/hyperv, QEMU's messages), not observed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from desktop import cli
from desktop.drivers.qemu import driver as qdriver
from desktop.instance import Instance
from desktop.platform import _win32, winpipe
from tests.helpers.fakes import BOOT_SERIAL, ENGINE_VERSION
from tests.helpers.hostwalk import (
    DETACHED_WINDOWS,
    MAC_ARM,
    MAC_INTEL,
    VMID,
    WINDOWS,
    FakeQemu,
    Host,
    SimulatedHost,
    arg_of,
    args_of,
)
from tests.helpers.winkernel import SID

TAG = winpipe.user_tag(SID)
PIPE = f"\\\\.\\pipe\\cove-{TAG}-default-"


@pytest.fixture
def simulate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., SimulatedHost]]:
    """A simulated host in a short COVE_HOME (socket paths are bounded); afterwards no
    thread, backend or QEMU of the walk is left."""
    before = set(threading.enumerate())
    # Not under /tmp: macOS shares /tmp by default, and a home inside it would overlap.
    # (A Windows runner has no /var/tmp: its own temporary folder, then.)
    home = Path(tempfile.mkdtemp(prefix="cw-", dir="/var/tmp" if os.path.isdir("/var/tmp")
                                 else None))
    made: list[SimulatedHost] = []

    def make(host: Host, hyperv: tuple[str, ...] = (), qemu: bool = True) -> SimulatedHost:
        sim = SimulatedHost(host, home, monkeypatch, hyperv)
        made.append(sim)
        if qemu:
            sim.install_qemu()
        return sim

    yield make
    for sim in made:
        sim.close()
    deadline = time.monotonic() + 10
    while (left := [t for t in set(threading.enumerate()) - before if t.is_alive()]) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    shutil.rmtree(home, ignore_errors=True)
    assert not left, f"threads left behind: {left}"
    for sim in made:
        assert all(q.poll() is not None for q in sim.qemus), "a QEMU still runs"


def cove(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def events(sim: SimulatedHost) -> list[dict[str, Any]]:
    inst = Instance("default")
    return [json.loads(line) for line in inst.events_log.read_text().splitlines()]


def the_qemu(sim: SimulatedHost) -> FakeQemu:
    assert len(sim.qemus) == 1, sim.qemus
    return sim.qemus[0]


def started(sim: SimulatedHost, capsys: pytest.CaptureFixture[str], arch: str) -> str:
    """`cove start` on a fresh COVE_HOME: it must reach running; its stdout line."""
    sim.image(arch)
    code, out, err = cove(capsys, "start")
    assert code == 0, err
    assert out.startswith("Cove is running (")
    assert f"Docker engine {ENGINE_VERSION}" in out  # /info through Cove's endpoint
    assert sim.backends and sim.backends[0].poll() is None
    return out


def stopped(sim: SimulatedHost, capsys: pytest.CaptureFixture[str]) -> None:
    """`cove stop`: the agent's shutdown (the polite way), the backend gone."""
    code, out, err = cove(capsys, "stop")
    assert code == 0, err
    assert out.startswith("Cove (default) stopped")
    assert sim.backends[0].wait(15) == 0
    assert [r for a in sim.agents for r in a.controller.ops("shutdown")], \
        "the agent was not asked to power off first"
    evs = events(sim)
    kinds = [e["event"] for e in evs]
    assert kinds[-3:] == ["stopping", "saved_state", "stopped"]
    # Not saved on any of these: Hyper-V's saves are not Cove's yet, QEMU on Windows has
    # no file to save to, and the simulated QEMU has no migration (no `getfd`).
    assert evs[-2]["action"] == "not_saved", evs[-2]


# -- the four hosts ------------------------------------------------------------------------


def test_windows_hyperv_first_run(simulate: Callable[..., SimulatedHost],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    sim = simulate(WINDOWS, hyperv=("probe-ready", "disk-new", "start"))
    out = started(sim, capsys, "amd64")
    assert out.rstrip().endswith("hyperv; docker context 'cove'")
    hv = sim.hyperv
    assert hv is not None
    # The registry asked Hyper-V first (priority), and QEMU was never run.
    assert "Get-Module -ListAvailable -Name Hyper-V" in hv.scripts[0]
    assert sim.qemus == [] and sim.accel_trials == []
    assert "New-VHD -Path $path -SizeBytes 68719476736 -Dynamic" in hv.scripts[1]
    start = next(s for s in hv.scripts if "Start-VM" in s)
    assert f"$name = 'cove-{TAG}-default'" in start
    assert f"Set-VMComPort -VM $vm -Number 1 -Path '{PIPE}com1'" in start
    # The boot config went over hvsock first (no fw_cfg), with DHCP and the link token.
    assert hv.dials[0][:2] == (VMID, "00002a3b-facb-11e6-bd58-64006a7986d3")
    assert hv.dials[0][2] > 0  # HVSOCKET_CONNECT_TIMEOUT set, in ms
    assert sim.boot_configs[0]["network"] == "dhcp"
    assert sim.boot_configs[0]["token"] == sim.agents[0].token
    # COM1's pipe is copied into serial.log, as QEMU's -serial file.
    inst = Instance("default")
    assert BOOT_SERIAL[-1] in inst.serial_log.read_text()
    _windows_endpoints(sim, inst)
    stopped(sim, capsys)
    assert hv.turned_off == 0 and hv.stop_vm_jobs == 0  # the guest powered itself off
    assert not any("-TurnOff" in s for s in hv.scripts if "Start-VM" not in s)


def _windows_endpoints(sim: SimulatedHost, inst: Instance) -> None:
    """Cove's engine and control pipes, with the user's DACL; the docker context is the
    pipe; no socket file; the instance folder's protected DACL; the backend detached."""
    kernel = sim.kernel
    assert kernel is not None
    made: dict[str, tuple[Any, ...]] = {}
    for c in kernel.created():
        made.setdefault(c[1], c)  # each pipe's first instance
    for role in ("engine", "control"):
        name, mode = PIPE + role, made[PIPE + role][2]
        assert mode & _win32.FILE_FLAG_FIRST_PIPE_INSTANCE, name
        assert made[name][6] == ("SA", f"D:P(A;;GA;;;SY)(A;;GA;;;{SID})")
    assert winpipe.DOCKER_ENGINE in made  # free on this host: served too
    assert not inst.docker_socket.exists() and not inst.control_socket.exists()
    meta = next((sim.home / "docker-config" / "contexts" / "meta").rglob("meta.json"))
    host = json.loads(meta.read_text())["Endpoints"]["docker"]["Host"]
    assert host == f"npipe:////./pipe/cove-{TAG}-default-engine"
    dacls = [c for c in kernel.calls if c[0] == "set_protected_dacl"]
    assert (str(inst.folder), f"D:P(A;OICI;FA;;;{SID})(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)") \
        in [c[1:] for c in dacls]
    assert sim.backends[0].options == {"creationflags": DETACHED_WINDOWS}


def test_windows_home_qemu_whpx_first_run(simulate: Callable[..., SimulatedHost],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Windows Home: no Hyper-V module, so the registry takes QEMU, which boots with WHPX
    and serves its monitor on a named pipe the driver holds for QEMU's life."""
    sim = simulate(WINDOWS, hyperv=("probe-no-module",))
    out = started(sim, capsys, "amd64")
    assert out.rstrip().endswith("whpx; docker context 'cove'")
    qemu = the_qemu(sim)
    cmd = qemu.cmd
    assert cmd[0] == "C:\\Program Files\\qemu\\qemu-system-x86_64.exe"
    assert arg_of(cmd, "-accel") == "whpx" and arg_of(cmd, "-cpu") == "max"
    assert arg_of(cmd, "-machine") == "q35,vmport=off"  # no hpet=off under WHPX
    assert [arg_of(t, "-accel") for t in sim.accel_trials] == ["whpx"]
    # QMP: the pipe QEMU made, reached by the driver, never TCP, no second monitor.
    assert arg_of(cmd, "-chardev") == f"pipe,id=qmp,path=cove-{TAG}-default-qmp"
    assert arg_of(cmd, "-mon") == "chardev=qmp,mode=control"
    assert "-qmp" not in cmd and not any("tcp:" in a and "hostfwd" not in a for a in cmd)
    assert qemu.qmp[0] == ("pipe", "qmp_capabilities")
    assert {t for t, _ in qemu.qmp} == {"pipe"}
    assert qemu.options == {"creationflags": DETACHED_WINDOWS}
    vm = json.loads((Instance("default").folder / "vm.json").read_text())
    assert vm["pid"] == qemu.pid and vm.get("qmp") in (None, "")
    _windows_endpoints(sim, Instance("default"))
    stopped(sim, capsys)
    assert qemu.ended_by == "guest" and qemu.kills == []  # no TerminateProcess
    assert not (Instance("default").folder / "vm.json").exists()


@pytest.mark.parametrize(("host", "binary", "arch", "machine", "console"), [
    (MAC_ARM, "/opt/homebrew/bin/qemu-system-aarch64", "arm64", "virt", "ttyAMA0"),
    (MAC_INTEL, "/usr/local/bin/qemu-system-x86_64", "amd64", "q35,vmport=off,hpet=off",
     "ttyS0"),
])
def test_macos_first_run(simulate: Callable[..., SimulatedHost],
                         capsys: pytest.CaptureFixture[str], host: Host, binary: str,
                         arch: str, machine: str, console: str) -> None:
    sim = simulate(host)
    out = started(sim, capsys, arch)
    assert out.rstrip().endswith("hvf; docker context 'cove'")
    inst = Instance("default")
    assert inst.load_settings().arch == arch  # the host's own, on a first run
    qemu = the_qemu(sim)
    cmd = qemu.cmd
    assert cmd[0] == binary
    assert arg_of(cmd, "-machine") == machine
    assert arg_of(cmd, "-accel") == "hvf" and arg_of(cmd, "-cpu") == "host"
    assert f"console={console}" in arg_of(cmd, "-append").split()
    assert arg_of(cmd, "-kernel").startswith(str(sim.home / "images" / arch))
    assert sim.engine.info["Architecture"] == ("aarch64" if arch == "arm64" else "x86_64")
    # QMP over unix sockets in the instance folder; the events monitor was followed.
    assert args_of(cmd, "-qmp") == [f"unix:{inst.folder / 'qmp.sock'},server=on,wait=off",
                                    f"unix:{inst.folder / 'qmp-events.sock'},server=on,"
                                    "wait=off"]
    assert wait_until_qmp(qemu, ("qmp-events.sock", "qmp_capabilities"))
    assert qemu.options == {"start_new_session": True}
    assert sim.backends[0].options == {"start_new_session": True}
    assert inst.docker_socket.is_socket() and (inst.docker_socket.stat().st_mode & 0o777) \
        == 0o600
    meta = next((sim.home / "docker-config" / "contexts" / "meta").rglob("meta.json"))
    assert json.loads(meta.read_text())["Endpoints"]["docker"]["Host"] == \
        f"unix://{inst.docker_socket}"
    stopped(sim, capsys)
    assert qemu.ended_by == "guest" and qemu.kills == []
    assert ("qmp.sock", "quit") not in qemu.qmp and not inst.docker_socket.exists()


def wait_until_qmp(qemu: FakeQemu, entry: tuple[str, str]) -> bool:
    deadline = time.monotonic() + 5
    while entry not in qemu.qmp and time.monotonic() < deadline:
        time.sleep(0.02)
    return entry in qemu.qmp


# -- what a first run can meet -------------------------------------------------------------


def _failed_start(sim: SimulatedHost, capsys: pytest.CaptureFixture[str],
                  arch: str = "amd64") -> str:
    sim.image(arch)
    code, out, err = cove(capsys, "start")
    assert code == 1 and out == ""
    line = err.strip().splitlines()[-1]
    assert line.startswith("cove: error: ")
    if sim.backends:
        assert sim.backends[0].wait(15) is not None, "the backend did not end"
    return line


def test_windows_home_without_qemu_says_what_to_install(
        simulate: Callable[..., SimulatedHost], capsys: pytest.CaptureFixture[str]) -> None:
    sim = simulate(WINDOWS, hyperv=("probe-no-module",), qemu=False)
    msg = _failed_start(sim, capsys)
    assert "no hypervisor driver is usable here" in msg
    assert "Hyper-V PowerShell module is not installed" in msg
    assert "Windows Home has no Hyper-V" in msg
    assert "qemu-system-x86_64 not found" in msg
    assert "winget install SoftwareFreedomConservancy.QEMU" in msg
    assert "apt-get" not in msg  # not a fix on Windows


def test_not_allowed_to_manage_hyperv_and_no_qemu(
        simulate: Callable[..., SimulatedHost], capsys: pytest.CaptureFixture[str]) -> None:
    """No admin rights: not an administrator, not in Hyper-V Administrators."""
    sim = simulate(WINDOWS, hyperv=("probe-not-hyperv-admin",), qemu=False)
    msg = _failed_start(sim, capsys)
    assert "not in the Hyper-V Administrators group" in msg
    assert "Add-LocalGroupMember -SID S-1-5-32-578 -Member $env:USERNAME" in msg
    assert "sign out and in again" in msg and "winget install" in msg


def test_not_allowed_to_manage_hyperv_falls_back_to_qemu(
        simulate: Callable[..., SimulatedHost], capsys: pytest.CaptureFixture[str]) -> None:
    sim = simulate(WINDOWS, hyperv=("probe-not-hyperv-admin",))
    out = started(sim, capsys, "amd64")
    assert "whpx" in out and the_qemu(sim).cmd[0].endswith("qemu-system-x86_64.exe")
    assert sim.hyperv is not None and len(sim.hyperv.scripts) == 1  # the probe only
    stopped(sim, capsys)


def test_windows_without_whpx_runs_on_tcg_and_says_how_to_enable_it(
        simulate: Callable[..., SimulatedHost], capsys: pytest.CaptureFixture[str]) -> None:
    sim = simulate(WINDOWS, hyperv=("probe-no-module",))
    sim.accels = set()
    sim.image("amd64")
    code, out, err = cove(capsys, "start")
    assert code == 0, err
    assert "tcg;" in out
    note = next(ln for ln in err.splitlines() if "note: whpx:" in ln)
    assert "WHPX: No accelerator found" in note  # QEMU's own words: the problem
    assert "Enable-WindowsOptionalFeature -Online -FeatureName HypervisorPlatform" in note
    assert "accel.json" in note and note.endswith("using software emulation (TCG)")
    assert arg_of(the_qemu(sim).cmd, "-accel") == "tcg"
    stopped(sim, capsys)


def test_macos_without_qemu_names_homebrew(simulate: Callable[..., SimulatedHost],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    sim = simulate(MAC_ARM, qemu=False)
    msg = _failed_start(sim, capsys, "arm64")
    assert "qemu-system-aarch64 not found" in msg and "brew install qemu" in msg
    assert "hyperv: Hyper-V runs only on Windows hosts (this one is darwin)" in msg
    assert "apt-get" not in msg


@pytest.mark.parametrize("host", [WINDOWS, MAC_INTEL], ids=["windows", "macos"])
def test_a_port_taken_before_qemu_opens_it(simulate: Callable[..., SimulatedHost],
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch,
                                           host: Host) -> None:
    """Cove picks free localhost ports for the VM's forwards; another program binds one
    before QEMU does: QEMU's message, and the fix."""
    sim = simulate(host, hyperv=("probe-no-module",) if host.windows else ())
    taken: list[socket.socket] = []
    real = qdriver.free_port

    def free_then_taken() -> int:
        port = real()
        if not taken:
            s = socket.socket()
            s.bind(("127.0.0.1", port))
            s.listen(1)
            taken.append(s)
        return port

    monkeypatch.setattr(qdriver, "free_port", free_then_taken)
    try:
        msg = _failed_start(sim, capsys)
        port = taken[0].getsockname()[1]
    finally:
        for s in taken:
            s.close()
    assert f"Could not set up host forwarding rule 'tcp:127.0.0.1:{port}-:10811'" in msg
    assert f"another program took a localhost port Cove had picked for the VM ({port}," \
        in msg
    assert "Start Cove again: it picks new ports at each start" in msg


def test_cove_engine_pipe_squatted(simulate: Callable[..., SimulatedHost],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Another program made Cove's engine pipe first: FILE_FLAG_FIRST_PIPE_INSTANCE
    fails, the start stops naming the pipe, and nothing serves beside the squatter."""
    sim = simulate(WINDOWS, hyperv=("probe-no-module",))
    assert sim.kernel is not None
    sim.kernel.create_pipe_as(666, PIPE + "engine", _win32.PIPE_ACCESS_DUPLEX)
    msg = _failed_start(sim, capsys)
    assert f"cannot serve the engine API: {PIPE}engine already exists" in msg
    assert "Stop it (`cove stop`, or end the program holding the pipe)" in msg
    assert the_qemu(sim).kills == []  # the VM was stopped the polite way


def test_qmp_pipe_squatted_before_qemu(simulate: Callable[..., SimulatedHost],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A program holds QEMU's monitor pipe (one instance): QEMU cannot create it."""
    sim = simulate(WINDOWS, hyperv=("probe-no-module",))
    assert sim.kernel is not None
    sim.kernel.create_pipe_as(666, PIPE + "qmp", _win32.PIPE_ACCESS_DUPLEX, 1)
    msg = _failed_start(sim, capsys)
    assert "QEMU exited at once (status 1)" in msg and "Failed CreateNamedPipe (231)" in msg
    assert f"another program holds the pipe {PIPE}qmp" in msg and "End it" in msg


def test_qmp_pipe_squatter_that_answers_first_is_refused(
        simulate: Callable[..., SimulatedHost], capsys: pytest.CaptureFixture[str]) -> None:
    """A program serves QEMU's pipe name before QEMU made it: the driver checks the
    server's pid, sends it nothing, and ends QEMU."""
    sim = simulate(WINDOWS, hyperv=("probe-no-module",))
    kernel = sim.kernel
    assert kernel is not None
    squat = kernel.create_pipe_as(666, PIPE + "qmp", _win32.PIPE_ACCESS_DUPLEX)
    sim.qemu_pipe_delay = 30.0
    msg = _failed_start(sim, capsys)
    assert f"QEMU's monitor {PIPE}qmp could not be reached" in msg
    assert "served by process 666" in msg and "End that program" in msg
    assert the_qemu(sim).kills == ["TerminateProcess"]
    assert not kernel.handles[squat].inbox  # not a byte of QMP reached the squatter
