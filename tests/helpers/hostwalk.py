"""Simulated hosts for walking `cove start` on hosts this machine is not: Windows
(Hyper-V, or QEMU with WHPX) and macOS (arm64 and Intel, QEMU with HVF).

Only the OS boundary is replaced, each fake behaving as the documented API does; the CLI,
lifecycle, backend, drivers, endpoints, link and QMP client are Cove's own code:

* the host's identity: `sys.platform`, `platform.machine()`;
* process creation: `cove backend` (`BackendProcess`: `desktop.backend.process.main` on
  a thread, as the detached process would run it), ``qemu-system-*`` (`FakeQemu`: checks
  its command line, serves QMP where the driver asked, a unix socket or a named pipe in
  the fake kernel, opens the user-network forwards and "boots" the guest: a `FakeAgent`
  behind the link port), its ``--version`` and accelerator trial runs, and
  ``powershell.exe`` (`HyperVHost`, a `Recorded` runner answering from the recorded
  fixtures, with the VM's state kept as Hyper-V would);
* Win32: named pipes, ACLs and the user's SID (`tests.helpers.winkernel.FakeKernel`),
  Hyper-V sockets (`HvSocket`: AF_HYPERV to (VM id, service)), Hyper-V's COM1 pipe;
  `os.kill` / `os.killpg` raise on Windows (signal 0 there is CTRL_C_EVENT; killpg does
  not exist);
* the host's sleep signal (`power.watch`) and `signal.signal` (the backend runs on a
  thread here, where Python allows no signal handlers).

Each QEMU process owns a real child process (a sleeper), so its pid is a live process
for psutil, the pid file and vm.json, and on macOS `os.killpg` reaches it for real.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from desktop.backend import core, timeouts
from desktop.drivers.hyperv import driver as hyperv_driver
from desktop.drivers.hyperv.powershell import Recorded, command
from desktop.drivers.qemu import accel as qaccel
from desktop.drivers.qemu import disk as qdisk
from desktop.drivers.qemu import driver as qdriver
from desktop.link import hvsock
from desktop.platform import _unix, _win32, _windows, endpoints, winpipe
from desktop.platform.processes import CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW
from guest_engine.boot.config import receive_boot_config
from guest_engine.protocol import AGENT_PORT, VMADDR_CID_HOST
from tests.helpers.fakes import BOOT_SERIAL, FakeAgent, FakeEngine, fake_image
from tests.helpers.paths import FIXTURES
from tests.helpers.winkernel import FakeKernel

VMID = "5b0a7e3c-92d1-4c7e-8f7a-1d6c2b9e4a10"  # the id fixtures/hyperv/start.json reports
WINDOWS_QEMU = "C:\\Program Files\\qemu"
QEMU_IMG = shutil.which("qemu-img")  # looked up before sys.platform is anything else
DETACHED_WINDOWS = CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW
QEMU_VERSION = "QEMU emulator version 8.2.0"
# What QEMU prints when an accelerator cannot start (its own words).
ACCEL_ERRORS = {
    "whpx": "{qemu}: WHPX: No accelerator found, hr=00000000\n"
            "{qemu}: failed to initialize whpx: No such device\n",
    "hvf": "{qemu}: Error: ret = HV_DENIED (0xfae94007, at ../accel/hvf/hvf-accel-ops.c:346)\n",
}


@dataclass(frozen=True)
class Host:
    """One kind of host: what `sys.platform` and `platform.machine()` say there."""

    name: str
    sys_platform: str
    machine: str

    @property
    def windows(self) -> bool:
        return self.sys_platform == "win32"


WINDOWS = Host("windows", "win32", "AMD64")
MAC_ARM = Host("macos-arm64", "darwin", "arm64")
MAC_INTEL = Host("macos-x86_64", "darwin", "x86_64")


def _option(value: str, key: str) -> str:
    """`key`'s value in a QEMU option string ("a=1,file=x,,y" -> file: "x,y")."""
    parts = value.replace(",,", "\0").split(",")
    for p in parts:
        k, _, v = p.partition("=")
        if k == key:
            return v.replace("\0", ",")
    raise AssertionError(f"no {key}= in {value!r}")


def args_of(cmd: list[str], flag: str) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == flag]


def arg_of(cmd: list[str], flag: str) -> str:
    found = args_of(cmd, flag)
    assert len(found) == 1, f"{flag} occurs {len(found)} times in {cmd}"
    return found[0]


# -- the guest ------------------------------------------------------------------------------


class Guest:
    """The VM's inside as the host sees it: a console, and once booted the agent (the real
    link server, `FakeAgent`) with the token the host gave it. `off` is set when the
    guest has powered off (asked by the agent's shutdown, or ACPI)."""

    def __init__(self, sim: SimulatedHost) -> None:
        self.sim = sim
        self.agent: FakeAgent | None = None
        self.off = threading.Event()
        self.on_off: list[Callable[[], None]] = []
        self._timers: list[threading.Timer] = []
        self._lock = threading.Lock()

    def boot(self, token: str, serial: Path | None, port: int = 0) -> FakeAgent:
        if serial is not None:
            serial.write_text("\n".join(BOOT_SERIAL) + "\n")
        self.agent = FakeAgent(token, self.sim.engine.path, port=port,
                               on_shutdown=self.power_off_later)
        self.sim.agents.append(self.agent)
        return self.agent

    def power_off_later(self, delay: float = 0.1) -> None:
        t = threading.Timer(delay, self.power_off)
        self._timers.append(t)
        t.start()

    def power_off(self) -> None:
        with self._lock:
            if self.off.is_set():
                return
            self.off.set()
        if self.agent is not None:
            self.agent.close()
        for f in self.on_off:
            f()

    def close(self) -> None:
        self.power_off()
        for t in self._timers:
            t.cancel()
            if t.is_alive() and t is not threading.current_thread():
                t.join(5)


# -- QEMU -----------------------------------------------------------------------------------


class FakeQemu:
    """``qemu-system-*`` as `subprocess.Popen` gives it to the driver.

    At start, as QEMU does before its main loop: checks the binary matches the guest
    (`-machine`), opens the user network's host forwards (refused when a port is taken,
    with QEMU's message on its log, exit status 1), creates its monitors: ``-qmp
    unix:PATH,server=on`` binds a socket (Linux, macOS), ``-chardev pipe,path=NAME``
    creates ``\\\\.\\pipe\\NAME`` with one instance in the fake kernel and waits for
    that one client before it boots (Windows). Then it boots the guest (the fw_cfg boot
    config's token; the serial file) and serves QMP: ``system_powerdown`` powers the
    guest off, ``quit`` ends QEMU. It ends when the guest powers off (status 0), by
    ``quit``, or killed (`kill`, or SIGKILL to its process group on POSIX).
    """

    def __init__(self, sim: SimulatedHost, cmd: list[str], stdin: Any = None,
                 stdout: Any = None, stderr: Any = None, **options: Any) -> None:
        self.sim = sim
        self.cmd = list(cmd)
        self.options = options
        self.returncode: int | None = None
        self.ended_by = ""  # "guest" (powered off), "quit", "killed"
        self.kills: list[str] = []  # TerminateProcess / SIGKILL, as the driver asked
        self.qmp: list[tuple[str, str]] = []  # (transport, command) in order
        self.guest = Guest(sim)
        self.guest.on_off.append(lambda: self._exit(0, "guest"))
        self._ended = threading.Event()
        self._lock = threading.Lock()
        self._closers: list[Callable[[], None]] = []
        self._threads: list[threading.Thread] = []
        self._pipe_handle: int | None = None
        self._cancel = threading.Event()
        sim.qemus.append(self)
        self._sleeper = subprocess.Popen(  # the process psutil, vm.json and killpg see
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
            start_new_session=bool(options.get("start_new_session")))
        self.pid = self._sleeper.pid
        self._thread(self._watch_sleeper, "fake-qemu-pid")
        name = Path(self.cmd[0]).name.removesuffix(".exe")
        self.name = name
        error = self._open_forwards() or self._open_monitors()
        if error:
            stdout.write(f"{name}: {error}\n".encode())
            stdout.flush()
            self._exit(1, "error")

    # -- the Popen surface the driver uses --

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(self.cmd, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        """Windows: TerminateProcess (POSIX: SIGKILL)."""
        self.kills.append("TerminateProcess" if self.sim.host.windows else "SIGKILL")
        self._exit(1 if self.sim.host.windows else -9, "killed")

    terminate = kill

    # -- start --

    def _thread(self, target: Callable[..., None], name: str, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def _open_forwards(self) -> str:
        netdev = arg_of(self.cmd, "-netdev")
        self.forwards: dict[int, int] = {}
        for rule in netdev.split(",")[2:]:
            spec = rule.removeprefix("hostfwd=")
            _, _, ports = spec.split(":", 2)
            host_port, guest_port = ports.split("-:")
            self.forwards[int(guest_port)] = int(host_port)
            if int(guest_port) == AGENT_PORT:
                continue  # the agent's listener is opened below, at boot
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", int(host_port)))
                s.listen(1)
            except OSError:
                s.close()
                return f"-netdev {netdev}: Could not set up host forwarding rule '{spec}'"
            self._closers.append(s.close)
        link = self.forwards[AGENT_PORT]
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.1", link))
        except OSError:
            return f"-netdev {netdev}: Could not set up host forwarding rule " \
                   f"'tcp:127.0.0.1:{link}-:{AGENT_PORT}'"
        finally:
            probe.close()
        return ""

    def _open_monitors(self) -> str:
        for qmp in args_of(self.cmd, "-qmp"):
            assert qmp.startswith("unix:") and ",server=on" in qmp, qmp
            path = qmp.removeprefix("unix:").split(",")[0]
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(path)
            s.listen(4)
            self._closers.append(lambda s=s, p=path: (_shut(s), s.close(),
                                                      Path(p).unlink(missing_ok=True)))
            self._thread(self._accept_unix, "fake-qemu-qmp", s, Path(path).name)
        chardevs = [c for c in args_of(self.cmd, "-chardev") if c.startswith("pipe,")]
        if not chardevs:
            self._boot()  # POSIX: the monitors wait for no one (wait=off)
            return ""
        assert self.sim.host.windows, "a pipe chardev on a host without named pipes"
        name = winpipe.PIPE_PREFIX + _option(chardevs[0], "path")
        if self.sim.qemu_pipe_delay:
            self._thread(self._serve_pipe_later, "fake-qemu-pipe", name)
            return ""
        return self._create_pipe(name)

    def _create_pipe(self, name: str) -> str:
        try:
            # chardev/char-pipe.c: PIPE_ACCESS_DUPLEX, byte mode, one instance, the
            # default security descriptor.
            self._pipe_handle = self.sim.kernel.create_pipe_as(
                self.pid, name, _win32.PIPE_ACCESS_DUPLEX | _win32.FILE_FLAG_OVERLAPPED, 1)
        except _win32.Win32Error as e:
            return f"-chardev pipe,id=qmp,path={name.removeprefix(winpipe.PIPE_PREFIX)}: " \
                   f"Failed CreateNamedPipe ({e.code})"
        self._thread(self._serve_pipe, "fake-qemu-pipe")
        return ""

    def _serve_pipe_later(self, name: str) -> None:
        if not self._cancel.wait(self.sim.qemu_pipe_delay):
            self._create_pipe(name)

    def _serve_pipe(self) -> None:
        """QEMU waits for its monitor's one client before it boots the guest."""
        kernel, handle = self.sim.kernel, self._pipe_handle
        assert handle is not None
        try:
            kernel.connect_named_pipe(handle)
        except _win32.Win32Error:
            return  # QEMU ended first
        self._boot()
        self._serve_qmp(winpipe.PipeConnection(kernel, handle, server=True), "pipe")

    def _boot(self) -> None:
        if self.returncode is not None:
            return
        boot = _option(arg_of(self.cmd, "-fw_cfg"), "file")
        token = json.loads(Path(boot).read_text())["token"]
        serial = Path(arg_of(self.cmd, "-serial").removeprefix("file:"))
        self.sim.engine.info["Architecture"] = (
            "aarch64" if self.name.endswith("aarch64") else "x86_64")
        self.guest.boot(token, serial, port=self.forwards[AGENT_PORT])

    # -- QMP --

    def _accept_unix(self, listener: socket.socket, name: str) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            self._closers.append(lambda c=conn: _shut(c))
            self._thread(self._serve_qmp, "fake-qemu-qmp-conn", conn, name)

    def _serve_qmp(self, stream: Any, transport: str) -> None:
        greeting = {"QMP": {"version": {"qemu": {"major": 8, "minor": 2, "micro": 0},
                                        "package": ""}, "capabilities": ["oob"]}}
        if transport == "pipe":
            self._closers.append(lambda: _end_pipe(stream))
        buf = b""
        try:
            stream.sendall(json.dumps(greeting).encode() + b"\r\n")
            while self.returncode is None:
                chunk = stream.recv(4096)
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        self._execute(stream, transport, json.loads(line)["execute"])
        except OSError:
            return
        finally:
            if transport != "pipe":
                stream.close()

    def _execute(self, stream: Any, transport: str, name: str) -> None:
        self.qmp.append((transport, name))
        known = {"qmp_capabilities", "system_powerdown", "quit", "stop", "cont",
                 "query-status"}
        reply: dict[str, Any] = {"return": {}} if name in known else {
            "error": {"class": "CommandNotFound", "desc": f"The command {name} has not "
                                                          "been found"}}
        if name == "query-status":
            reply = {"return": {"status": "running", "running": True}}
        stream.sendall(json.dumps(reply).encode() + b"\r\n")
        if name == "system_powerdown":
            self.guest.power_off_later()
        elif name == "quit":
            self._exit(0, "quit")

    # -- the end --

    def _watch_sleeper(self) -> None:
        code = self._sleeper.wait()
        self._exit(code, "killed")  # a signal from outside (killpg): no-op once ended

    def _exit(self, code: int, why: str) -> None:
        with self._lock:
            if self.returncode is not None:
                return
            self.ended_by = why
            self.returncode = code
        self._cancel.set()
        self.guest.close()
        if self._pipe_handle is not None and self.sim.kernel is not None:
            end = self.sim.kernel.handles[self._pipe_handle]
            if not end.closed and end.peer is None:  # never connected: no stream owns it
                self.sim.kernel.close(self._pipe_handle)
        for close in reversed(self._closers):
            try:
                close()
            except OSError:
                pass
        assert self._sleeper.stdin is not None
        self._sleeper.stdin.close()  # it reads stdin to its end: no signal needed
        self._sleeper.wait()
        self._ended.set()

    def close(self) -> None:
        if self.returncode is None:
            self._exit(0, "test teardown")
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(5)


def _end_pipe(conn: winpipe.PipeConnection) -> None:
    """QEMU's end of its monitor pipe goes: its reader is woken, the client sees EOF."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()


def _shut(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# -- Hyper-V --------------------------------------------------------------------------------


class _VsockListener:
    """The guest's AF_VSOCK listener as the agent sees it: each accepted peer is the host
    (CID 2), which alone can open hvsock connections to a VM."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])

    def accept(self) -> tuple[socket.socket, tuple[int, int]]:
        conn, _ = self.sock.accept()
        return conn, (VMADDR_CID_HOST, 1024)

    def settimeout(self, t: float | None) -> None:
        self.sock.settimeout(t)

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes an accept()
        except OSError:
            pass
        self.sock.close()


class HyperVHost(Recorded):
    """powershell.exe on a Windows host with Hyper-V: the recorded answers of
    fixtures/hyperv (`names`), and a VM whose state the scripts change as Hyper-V
    would: Start-VM boots the guest (which takes its boot config over hvsock, in the
    agent's own `receive_boot_config`), Get-VM reports the state, the wait script
    blocks until the VM is off, Stop-VM asks the guest's shutdown service, -TurnOff
    cuts the power."""

    def __init__(self, sim: SimulatedHost, *names: str) -> None:
        super().__init__()
        self.add(Recorded.load(*(FIXTURES / "hyperv" / f"{n}.json" for n in names)).calls)
        self.sim = sim
        self.state = "Off"
        self.guest: Guest | None = None
        self.vsock: _VsockListener | None = None
        self.turned_off = 0
        self.stop_vm_jobs = 0
        self.dials: list[tuple[str, str, int]] = []  # (vm id, service, connect timeout)
        self._threads: list[threading.Thread] = []

    def execute(self, script: str, timeout: float | None) -> tuple[int, str, str]:
        command(script)
        if "Start-VM -VM $vm" in script:
            self._start_vm()
        elif "while ($true)" in script:
            limit = float(script.split("$limit = ", 1)[1].split(";", 1)[0])
            return self._answer(ended=self._wait_off(None if limit < 0 else limit))
        elif "Stop-VM -VM $vm -Force -AsJob" in script:
            self.stop_vm_jobs += 1
            if self.guest is not None:
                self.guest.power_off()
            return self._answer(state=self.state, forced=False)
        elif "-TurnOff" in script and "Remove-VM" not in script:
            self.turned_off += 1
            if self.guest is not None:
                self.guest.power_off()
            return self._answer(killed=True)
        elif "state = [string]$vm.State" in script and "Suspend-VM" not in script:
            return self._answer(id=VMID, state=self.state)
        return super().execute(script, timeout)

    @staticmethod
    def _answer(**result: Any) -> tuple[int, str, str]:
        return 0, json.dumps(result) + "\r\n", ""

    def _wait_off(self, limit: float | None) -> bool:
        return self.guest is None or self.guest.off.wait(limit)

    def _start_vm(self) -> None:
        self.guest = guest = Guest(self.sim)
        self.state = "Running"
        self.vsock = vsock = _VsockListener()

        def off() -> None:
            self.state = "Off"
            vsock.close()

        guest.on_off.append(off)
        t = threading.Thread(target=self._guest_boot, args=(guest, vsock),
                             name="hyperv-guest", daemon=True)
        self._threads.append(t)
        t.start()

    def _guest_boot(self, guest: Guest, vsock: _VsockListener) -> None:
        """The agent's start on Hyper-V: the boot config over vsock first."""
        try:
            config = receive_boot_config(vsock, timeout=10)  # type: ignore[arg-type]
        except OSError:
            return  # powered off before the host sent it
        if not config or guest.off.is_set():
            return
        self.sim.boot_configs.append(config)
        agent = guest.boot(config["token"], None)
        agent.server.add_listener(vsock)  # type: ignore[arg-type]

    def serial_pipe(self, name: str, mode: str = "r", buffering: int = -1) -> Any:
        """`open()` of COM1's pipe: the guest's console while the VM runs."""
        assert name == hyperv_driver.serial_pipe("default") and mode == "rb", name
        if self.guest is None or self.guest.off.is_set():
            raise FileNotFoundError(2, "The system cannot find the file specified", name)
        r, w = os.pipe()
        os.write(w, ("\n".join(BOOT_SERIAL) + "\n").encode())
        self.guest.on_off.append(lambda: os.close(w))
        return os.fdopen(r, "rb", buffering=0)

    def close(self) -> None:
        if self.guest is not None:
            self.guest.close()
        for t in self._threads:
            t.join(5)


class HvSocket(socket.socket):
    """``socket.socket(AF_HYPERV, SOCK_STREAM, HV_PROTOCOL_RAW)``: connect((VM id,
    service GUID)) reaches the VM's vsock listener, if that VM runs."""

    hyperv: HyperVHost  # set on the subclass each simulated host makes

    def __init__(self, family: int = -1, type: int = -1, proto: int = -1,
                 fileno: int | None = None) -> None:
        if fileno is None:
            assert (family, proto) == (socket.AF_HYPERV, socket.HV_PROTOCOL_RAW), \
                (family, type, proto)
            super().__init__(socket.AF_INET, socket.SOCK_STREAM)
        else:
            super().__init__(family, type, proto, fileno)
        self._connect_timeout = 0

    def setsockopt(self, level: int, option: int, value: Any, *rest: Any) -> None:
        if (level, option) == (socket.HV_PROTOCOL_RAW, socket.HVSOCKET_CONNECT_TIMEOUT):
            self._connect_timeout = int(value)
            return
        super().setsockopt(level, option, value, *rest)

    def connect(self, address: Any) -> None:
        vm_id, service = address
        hv = self.hyperv
        hv.dials.append((vm_id, service, self._connect_timeout))
        if vm_id != VMID or hv.vsock is None or hv.state != "Running":
            raise ConnectionRefusedError(errno.ECONNREFUSED, "No connection could be made "
                                         "because the target machine actively refused it")
        super().connect(("127.0.0.1", hv.vsock.port))


# -- cove backend ---------------------------------------------------------------------------


class BackendProcess:
    """`cove backend --instance NAME` as `subprocess.Popen` gives it to `lifecycle`: the
    process's own `main` on a thread; an exception that would end the process is written
    to its output, as Python does, with exit status 1."""

    def __init__(self, sim: SimulatedHost, argv: list[str], stdin: Any = None,
                 stdout: Any = None, stderr: Any = None, close_fds: bool = True,
                 **options: Any) -> None:
        assert argv[:5] == [sys.executable, "-m", "desktop", "backend", "--instance"], argv
        self.sim = sim
        self.options = options
        self.instance = argv[5]
        self.returncode: int | None = None
        self.out = Path(stdout.name)
        self.pid = os.getpid()  # the pid file says so: the backend is this process
        sim.backends.append(self)
        self.thread = threading.Thread(target=self._run, name="cove-backend", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from desktop.backend import process

        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        try:
            self.returncode = process.main(self.instance)
        except Exception as e:  # noqa: BLE001 - the process would die with a traceback
            with self.out.open("a") as f:
                f.write(f"Traceback (most recent call last):\n  ...\n"
                        f"{type(e).__module__}.{type(e).__qualname__}: {e}\n")
            self.returncode = 1
        finally:
            for h in root.handlers[:]:
                if h not in handlers:
                    root.removeHandler(h)
                    h.close()
            root.setLevel(level)

    def poll(self) -> int | None:
        return None if self.thread.is_alive() else self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        self.thread.join(timeout)
        return self.poll()


# -- the host -------------------------------------------------------------------------------


class SimulatedHost:
    """One host of kind `host` under `home` (COVE_HOME, short: socket paths are bounded),
    with the fakes above installed through `monkeypatch`. Knobs, set before the start:

    * `installed`: the program names shutil.which finds (and where);
    * `accels`: the accelerators the host can run (others fail their trial boot with
      QEMU's own words, `ACCEL_ERRORS`);
    * `hyperv`: the Hyper-V host answering powershell.exe (None: no PowerShell runs are
      expected);
    * `qemu_pipe_delay`: seconds before QEMU creates its monitor pipe.
    """

    def __init__(self, host: Host, home: Path, monkeypatch: pytest.MonkeyPatch,
                 hyperv: tuple[str, ...] = ()) -> None:
        self.host = host
        self.home = home
        self.mp = monkeypatch
        self.engine = FakeEngine(home / "engine.sock")
        self.agents: list[FakeAgent] = []
        self.qemus: list[FakeQemu] = []
        self.backends: list[BackendProcess] = []
        self.boot_configs: list[dict[str, Any]] = []
        self.accels: set[str] = {"whpx" if host.windows else "hvf"}
        self.accel_trials: list[list[str]] = []
        self.qemu_pipe_delay = 0.0
        self.kernel: FakeKernel | None = FakeKernel() if host.windows else None
        self.installed: dict[str, str] = {}
        self.hyperv = HyperVHost(self, *hyperv) if hyperv else None
        self._install()

    # -- what the host has --

    def install_qemu(self) -> None:
        """QEMU as its installer puts it: %ProgramFiles%\\qemu on Windows (the app adds it
        to PATH), Homebrew's /opt/homebrew/bin on Apple silicon, /usr/local/bin on Intel."""
        for binary in ("qemu-system-x86_64", "qemu-system-aarch64"):
            if self.host.windows:
                self.installed[binary] = f"{WINDOWS_QEMU}\\{binary}.exe"
            else:
                prefix = "/opt/homebrew" if self.host.machine == "arm64" else "/usr/local"
                self.installed[binary] = f"{prefix}/bin/{binary}"
        # qemu-img comes with QEMU; it runs for real (this machine's, the same program).
        assert QEMU_IMG is not None, "qemu-img is needed (apt-get install qemu-utils)"
        self.installed["qemu-img"] = QEMU_IMG

    def image(self, arch: str) -> Path:
        """The guest image of this version of Cove for `arch` (with the Hyper-V disks)."""
        from vm_image import builder, recipe

        folder = builder.images_dir() / builder.image_key(recipe.get_arch(arch))
        fake_image(folder)
        (folder / "manifest.json").write_text(json.dumps({"arch": arch}))
        for name in ("boot.vhdx", "root.vhdx"):
            (folder / name).write_bytes(b"vhdx")
        return folder

    # -- the patches --

    def _install(self) -> None:
        mp, host = self.mp, self.host
        mp.setenv("COVE_HOME", str(self.home))
        mp.setenv("COVE_IMAGES", str(self.home / "images"))
        mp.setenv("DOCKER_CONFIG", str(self.home / "docker-config"))
        mp.setenv("HOME", str(self.home / "user"))
        (self.home / "user").mkdir(parents=True, exist_ok=True)
        mp.delenv("COVE_INSTANCE", raising=False)
        mp.delenv(qdriver.HOSTFWD_ENV, raising=False)
        mp.setattr(sys, "platform", host.sys_platform)
        mp.setattr(platform, "machine", lambda: host.machine)
        # Backends run on threads here: no signal handlers, and no host sleep signal.
        mp.setattr(core, "signal", SimpleNamespace(
            SIGTERM=signal.SIGTERM, SIGINT=signal.SIGINT, SIGHUP=signal.SIGHUP,
            signal=lambda sig, handler: None))
        mp.setattr(core.power, "watch", lambda sleep, wake: SimpleNamespace(
            close=lambda: None))
        mp.setattr(timeouts, "AGENT_TIMEOUT", 10.0)
        mp.setattr(timeouts, "ENGINE_TIMEOUT", 10.0)
        mp.setattr(timeouts, "STOP_AGENT_TIMEOUT", 10.0)
        from desktop import lifecycle

        mp.setattr(lifecycle, "subprocess", SimpleNamespace(
            Popen=lambda *a, **kw: BackendProcess(self, *a, **kw),
            DEVNULL=subprocess.DEVNULL))
        mp.setattr(qdriver, "subprocess", SimpleNamespace(
            Popen=lambda *a, **kw: FakeQemu(self, *a, **kw), DEVNULL=subprocess.DEVNULL,
            TimeoutExpired=subprocess.TimeoutExpired))
        mp.setattr(qaccel, "subprocess", SimpleNamespace(
            run=self._run_qemu, TimeoutExpired=subprocess.TimeoutExpired))
        mp.setattr(qdriver, "shutil", SimpleNamespace(which=self.installed.get))
        mp.setattr(qdisk, "shutil", SimpleNamespace(which=self.installed.get))
        mp.setattr(hyperv_driver, "PowerShell", self._powershell)
        if host.windows:
            self._install_windows()
        else:
            for name in ("connect_control", "connect_url", "docker_host", "listen_control",
                         "listen_engine", "local_server_name"):
                mp.setattr(endpoints, name, getattr(_unix, name))

    def _install_windows(self) -> None:
        mp = self.mp
        for name in ("connect_control", "connect_url", "docker_host", "listen_control",
                     "listen_engine", "local_server_name"):
            mp.setattr(endpoints, name, getattr(_windows, name))
        mp.setattr(_win32, "load", lambda: self.kernel)
        mp.setattr(_windows, "_state", None)
        mp.setattr(_windows, "_tag", None)
        # A roaming profile on a server: nothing is shared by default (Windows' path
        # style is bound at import time; see the walk's module docstring).
        mp.setenv("USERPROFILE", "\\\\fileserver\\profiles\\alice")

        def no_signals(*args: Any) -> None:
            raise AssertionError(f"os.kill/os.killpg{args} on Windows (signal 0 is "
                                 "CTRL_C_EVENT there; killpg does not exist)")

        mp.setattr(os, "kill", no_signals)
        mp.setattr(os, "killpg", no_signals)
        mp.setattr(socket, "AF_HYPERV", 34, raising=False)
        mp.setattr(socket, "HV_PROTOCOL_RAW", 1, raising=False)
        mp.setattr(socket, "HVSOCKET_CONNECT_TIMEOUT", 1, raising=False)
        if self.hyperv is not None:
            hv_socket = type("HvSocket", (HvSocket,), {"hyperv": self.hyperv})
            mp.setattr(hvsock, "socket", SimpleNamespace(
                socket=hv_socket, AF_HYPERV=34, SOCK_STREAM=socket.SOCK_STREAM,
                HV_PROTOCOL_RAW=1, HVSOCKET_CONNECT_TIMEOUT=1))
            mp.setattr(hyperv_driver, "open", self.hyperv.serial_pipe, raising=False)

    def _powershell(self) -> Recorded:
        # No Hyper-V host: a runner that has no answer (AssertionError) for any script.
        return self.hyperv if self.hyperv is not None else Recorded()

    def _run_qemu(self, cmd: list[str], **kw: Any) -> subprocess.CompletedProcess:
        """`subprocess.run` of QEMU: --version, and the accelerator's trial boot."""
        assert cmd[0] in self.installed.values(), cmd
        if cmd[1:] == ["--version"]:
            return subprocess.CompletedProcess(cmd, 0, QEMU_VERSION + "\n", "")
        assert "cove.probe" in arg_of(cmd, "-append"), cmd
        self.accel_trials.append(cmd)
        accel = arg_of(cmd, "-accel").split(",")[0]  # tcg,tb-size=...: its options after
        if accel in self.accels:
            serial = Path(arg_of(cmd, "-serial").removeprefix("file:"))
            serial.write_bytes(b"...\r\n" + qaccel.PROBE_MARKER + b"\r\n")
            return subprocess.CompletedProcess(cmd, 0, b"", b"")
        name = Path(cmd[0]).name.removesuffix(".exe")
        return subprocess.CompletedProcess(cmd, 1, b"", ACCEL_ERRORS[accel].format(
            qemu=name).encode())

    # -- the end --

    def close(self) -> None:
        for b in self.backends:
            if b.thread.is_alive():
                from desktop.control import ControlClient, ControlError
                from desktop.instance import Instance

                try:
                    ControlClient(Instance(b.instance).control_socket, timeout=5).stop()
                except ControlError:
                    pass
                b.thread.join(30)
        for q in self.qemus:
            q.close()
        if self.hyperv is not None:
            self.hyperv.close()
        for a in self.agents:
            a.close()
        self.engine.close()
        alive = [b for b in self.backends if b.thread.is_alive()]
        assert not alive, "a backend did not stop"


def wait_until(pred: Callable[[], Any], timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := pred():
            return got
        time.sleep(0.02)
    return pred()
