"""The QEMU driver: KVM on Linux, HVF on macOS, WHPX on Windows, TCG anywhere.

`QemuDriver` is the lifecycle: it probes the accelerator (`accel`), checks the data disk
(`disk`), resolves the shares (`shares`) and starts their virtiofsd helpers
(`virtiofsd`), then runs the command line `command.build_command` makes. What only QEMU
needs stays here, not in the neutral `VMSpec`: at each start it picks the localhost
ports user networking forwards to the agent and to SSH, reads extra forwards from
``COVE_QEMU_HOSTFWD``, and owns QEMU's monitor: ``qmp.sock`` (and ``qmp-events.sock``)
in the instance folder on Linux and macOS, the named pipe
``\\\\.\\pipe\\cove-<user>-<instance>-qmp`` on Windows, where QEMU serves one client for
its whole life and the driver holds that connection (`qmp.Session`).

Stopping is polite first (see `QemuDriver.stop`): the backend asks the agent to power
off before calling it; then ACPI powerdown over QMP, then QMP quit, then SIGKILL.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from desktop import home
from desktop.drivers import DriverError, RestoreError, VMSpec, register
from desktop.drivers.qemu import orphan, qmp, savedstate
from desktop.drivers.qemu.accel import probe_accel, qemu_version, too_old_for_hvf
from desktop.drivers.qemu.command import Endpoint, Forwards, build_command, tcg_tb_mib
from desktop.drivers.qemu.disk import ensure_disk
from desktop.drivers.qemu.shares import resolve_shares
from desktop.drivers.qemu.virtiofsd import (
    Virtiofsd,
    find_virtiofsd,
    start_helpers,
    stop_helpers,
)
from desktop.drivers.shares import SharedFolder
from desktop.link.tcp import TcpLink
from desktop.platform import endpoints, processes
from desktop.platform.hostinfo import free_port, host_os

log = logging.getLogger(__name__)

QEMU_BINARIES = {"amd64": "qemu-system-x86_64", "arm64": "qemu-system-aarch64"}
# Extra user-networking forwards, "tcp:127.0.0.1:HOST-:GUEST" separated by spaces
# (benchmarks use one as the bare path that published ports are measured against).
HOSTFWD_ENV = "COVE_QEMU_HOSTFWD"
# A saved state is written and read by QEMU at disk speed (a 2 GiB VM: a few hundred MiB).
SAVE_TIMEOUT = 300
LOAD_TIMEOUT = 300


def qmp_socket(spec: VMSpec) -> Path:
    return spec.folder / home.QMP_SOCK


def qmp_pipe(spec: VMSpec) -> str:
    """Windows: the monitor's pipe, named for this user and instance (names are global)."""
    return endpoints.windows_pipe(spec.name, "qmp")


def install_hint(os_name: str, arch: str) -> str:
    """How to install QEMU on `os_name`, for a message naming the missing program."""
    if os_name == "darwin":
        return "install it with Homebrew (brew install qemu), then start Cove again"
    if os_name == "windows":
        return ("install QEMU (winget install SoftwareFreedomConservancy.QEMU, or "
                "https://qemu.weilnetz.de/w64/) into %ProgramFiles%\\qemu or a folder "
                "on PATH, then start Cove again")
    pkg = {"amd64": "qemu-system-x86", "arm64": "qemu-system-arm"}[arch]
    return f"install it (Debian: apt-get install {pkg})"


class QemuDriver:
    name = "qemu"

    def __init__(self, arch: str = "amd64", os_name: str | None = None,
                 accel_cache: Path | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.arch = arch
        self.os_name = os_name or host_os()
        self.qemu = QEMU_BINARIES[arch]
        self.accel_cache = accel_cache
        self.accel = ""
        self.accel_notes: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.spec: VMSpec | None = None
        self.forwards = Forwards()  # this boot's, picked at each start()
        self._forwards_picked = False  # by private_host_ports(), for the next start()
        self.extra_args = list(extra_args or [])  # QEMU arguments after Cove's own
        self.helpers: list[subprocess.Popen] = []  # virtiofsd, one per virtiofs share
        self.on_resume: Callable[[], None] | None = None
        self._virtiofsd: Virtiofsd | None = None
        self._virtiofsd_looked = False
        self.session: qmp.Session | None = None  # Windows: QEMU's one monitor connection
        self.launched: list[str] = []  # the running QEMU's command (without -incoming)
        self._restore: dict[str, Any] | None = None  # the saved state the next start loads

    @staticmethod
    def is_root() -> bool:
        return hasattr(os, "geteuid") and os.geteuid() == 0

    def virtiofsd(self) -> Virtiofsd | None:
        if not self._virtiofsd_looked:
            self._virtiofsd = find_virtiofsd() if self.os_name == "linux" else None
            self._virtiofsd_looked = True
        return self._virtiofsd

    def resolve_shares(self, shares: list[tuple[str, str]]) -> tuple[list[SharedFolder],
                                                                     list[str]]:
        return resolve_shares(shares, self.os_name,
                              self.virtiofsd() if shares else None, self.is_root())

    def _start_virtiofsd(self, spec: VMSpec) -> None:
        """One virtiofsd per virtiofs share, each listening before QEMU connects."""
        self._stop_helpers()
        needed = any(sh.transport == "virtiofs" for sh in spec.shares)
        start_helpers(spec, self.virtiofsd() if needed else None, self.is_root(),
                      self.helpers)

    def _stop_helpers(self) -> None:
        stop_helpers(self.helpers)

    def available(self) -> tuple[bool, str]:
        if shutil.which(self.qemu) is None:
            return False, f"{self.qemu} not found; {install_hint(self.os_name, self.arch)}"
        return True, ""

    def create(self, spec: VMSpec) -> bool:
        return ensure_disk(spec.data_disk, spec.disk_gib)

    @staticmethod
    def pick_forwards() -> Forwards:
        """This boot's forwards: fresh localhost ports for the agent and SSH, and the
        extra rules in ``COVE_QEMU_HOSTFWD`` (checked when the command is built)."""
        return Forwards(link_port=free_port(), ssh_port=free_port(),
                        extra=tuple(os.environ.get(HOSTFWD_ENV, "").split()))

    def _endpoint(self, spec: VMSpec) -> Endpoint:
        if self.os_name == "windows":
            return Endpoint(pipe=qmp_pipe(spec))
        return Endpoint(path=qmp_socket(spec))

    def command(self, spec: VMSpec) -> list[str]:
        qemu = shutil.which(self.qemu) or self.qemu
        # Windows: no second monitor; the driver's one session carries the events too.
        events = None if self.os_name == "windows" else \
            Endpoint(path=spec.folder / home.QMP_EVENTS_SOCK)
        return build_command(spec, self.accel or "tcg", self.os_name, qemu,
                             self._endpoint(spec), self.forwards,
                             is_root=self.is_root(), extra_args=self.extra_args,
                             events=events, tb_mib=tcg_tb_mib())

    def start(self, spec: VMSpec) -> None:
        qemu = shutil.which(self.qemu)
        if qemu is None:
            raise DriverError(self.available()[1])
        old = too_old_for_hvf(self.os_name, spec.arch, qemu_version(qemu)) \
            if self.os_name == "darwin" else None
        if old:
            raise DriverError(old)
        self.spec = spec
        self._probe(spec, qemu)
        restoring, self._restore = self._restore is not None, None
        if not self._forwards_picked:
            self.forwards = self.pick_forwards()
        self._forwards_picked = False
        monitor = qmp_socket(spec)
        monitor.unlink(missing_ok=True)
        if spec.serial_log.exists():  # the previous boot's, kept for a post-mortem
            spec.serial_log.replace(spec.serial_log.with_name(home.SERIAL_PREV_LOG))
        cmd = self.launched = self.command(spec)
        if restoring:  # paused until the state is in and its files are gone
            cmd = [*cmd, "-S", "-incoming", "defer"]
        self._start_virtiofsd(spec)
        errlog = (spec.folder / home.QEMU_LOG).open("wb")
        log.info("starting QEMU: %s", " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=errlog,
                                     stderr=errlog, **processes.detached(self.os_name))
        errlog.close()
        self._wait_monitor(spec)
        orphan.record(spec.folder, self.proc.pid, self.forwards.link_port,
                      None if self.os_name == "windows" else monitor,
                      [h.pid for h in self.helpers])
        if self.on_resume is not None and self.os_name != "windows":
            qmp.watch_events(spec.folder / home.QMP_EVENTS_SOCK, {"RESUME": self._resumed})
        if restoring:
            self._load_state(spec)

    def _probe(self, spec: VMSpec, qemu: str) -> None:
        if not self.accel:
            cache = self.accel_cache or spec.folder.parent / "accel.json"
            self.accel, self.accel_notes = probe_accel(spec, qemu, cache, self.os_name)

    # -- a saved state (savedstate): `cove stop` saves, the next start restores -----------

    def saved(self, spec: VMSpec) -> tuple[dict[str, Any] | None, str]:
        """The host's part of a saved state the next `start` restores, once the state is
        found to be exactly this VM's (its command line, its files); (None, why it was
        deleted) otherwise ("" when there was none)."""
        self._restore = None
        manifest, why = savedstate.read(spec.folder)
        qemu = shutil.which(self.qemu)
        if manifest is None or qemu is None:
            if manifest is not None:
                why = f"{self.qemu} is not found"
            savedstate.discard(spec.folder, why)
            return None, why
        try:
            fwd = manifest["forwards"]
            forwards = Forwards(int(fwd["link_port"]), int(fwd["ssh_port"]),
                                tuple(os.environ.get(HOSTFWD_ENV, "").split()))
        except (KeyError, TypeError, ValueError):
            why = "its manifest names no forwarded ports"
            savedstate.discard(spec.folder, why)
            return None, why
        self._probe(spec, qemu)
        before, self.forwards = self.forwards, forwards
        why = savedstate.mismatch(manifest, self.command(spec),
                                  savedstate.watched_files(spec, qemu))
        if why:
            self.forwards = before
            savedstate.discard(spec.folder, why)
            return None, why
        self._forwards_picked = True  # the guest's firewall knows these ports
        self._restore = manifest
        return manifest["host"], ""

    def _load_state(self, spec: VMSpec) -> None:
        """Load the saved state into the paused QEMU just started, delete it, run the
        vCPUs. RestoreError (QEMU ended, the state deleted) when it cannot be loaded."""
        assert self.proc is not None
        t0 = time.monotonic()
        try:
            with (spec.folder / savedstate.STATE).open("rb") as f:
                r = qmp.command_with_fd(qmp_socket(spec), f.fileno(), "migrate-incoming",
                                        {"uri": "fd:cove"})
            if r is None or "error" in r:
                raise RestoreError(f"QEMU refused the saved state: {_qmp_error(r)}")
            self._wait_migration(LOAD_TIMEOUT, "loading")
        except (OSError, RestoreError) as e:
            self.kill()
            savedstate.discard(spec.folder, str(e))
            raise RestoreError(str(e)) from e
        # Before any vCPU runs: a state is never loaded over a disk it has changed.
        savedstate.discard(spec.folder)
        r = self.qmp("cont")
        if r is None or "error" in r:
            self.kill()
            raise RestoreError(f"the restored VM did not run: {_qmp_error(r)}")
        log.info("the VM's saved state was restored in %.1f s", time.monotonic() - t0)

    def _wait_migration(self, timeout: float, doing: str) -> None:
        """Until QEMU's migration (either way) completes; RestoreError when it fails,
        QEMU ends or `timeout` passes."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                err = self._qemu_log_tail()
                raise RestoreError(f"QEMU ended while {doing} the VM's state: {err}")
            r = self.qmp("query-migrate")
            info = r.get("return", {}) if isinstance(r, dict) else {}
            status = info.get("status") if isinstance(info, dict) else None
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise RestoreError(f"QEMU's migration {status} while {doing} the VM's "
                                   f"state: {info.get('error-desc', 'no reason given')}")
            if time.monotonic() > deadline:
                raise RestoreError(f"{doing} the VM's state took over {timeout:.0f} s")
            time.sleep(0.05)

    def _qemu_log_tail(self) -> str:
        if self.spec is None:
            return ""
        try:
            return (self.spec.folder / home.QEMU_LOG).read_text(errors="replace").strip()[-300:]
        except OSError:
            return "(no QEMU log)"

    def save(self, host: dict[str, Any]) -> str:
        """Save the running VM's whole state in its folder and end QEMU, keeping `host`
        with it for the restore; "" when saved, else why not (the VM then runs on)."""
        spec = self.spec
        if spec is None or self.status() == "stopped":
            return "the VM is not running"
        why = savedstate.blocked(spec, self.os_name)
        if why:
            return why
        savedstate.discard(spec.folder)
        t0 = time.monotonic()
        r = self.qmp("stop")
        if r is None or "error" in r:
            return f"QEMU did not pause the VM for the save: {_qmp_error(r)}"
        try:
            part = spec.folder / savedstate.PARTIAL
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                r = qmp.command_with_fd(qmp_socket(spec), fd, "migrate", {"uri": "fd:cove"})
            finally:
                os.close(fd)
            if r is None or "error" in r:
                raise RestoreError(f"QEMU cannot save this VM: {_qmp_error(r)}")
            self._wait_migration(SAVE_TIMEOUT, "saving")
        except (OSError, RestoreError) as e:
            self.qmp("migrate_cancel")
            savedstate.discard(spec.folder)
            self.qmp("cont")
            return str(e)
        size = part.stat().st_size
        self.qmp("quit")
        if not self.wait(15):
            self.kill()
        qemu = self.launched[0] if self.launched else self.qemu
        savedstate.write(spec.folder, self.launched,
                         {"link_port": self.forwards.link_port,
                          "ssh_port": self.forwards.ssh_port}, host,
                         savedstate.watched_files(spec, qemu))
        log.info("the VM's state was saved (%d MiB) in %.1f s", size >> 20,
                 time.monotonic() - t0)
        return ""

    def _wait_monitor(self, spec: VMSpec) -> None:
        """Wait until QEMU serves its monitor (or fails: DriverError with its log)."""
        assert self.proc is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._stop_helpers()
                err = (spec.folder / home.QEMU_LOG).read_text(errors="replace").strip()
                raise DriverError(f"QEMU exited at once (status {self.proc.returncode}): "
                                  f"{err[-500:]}{exit_hint(err, spec, self.forwards)}")
            if self._monitor_ready(spec):
                return
            time.sleep(0.02)
        self.kill()
        raise DriverError("QEMU did not open its QMP monitor within 10 s")

    def _monitor_ready(self, spec: VMSpec) -> bool:
        """POSIX: the socket file is there. Windows: the pipe is connectable, and then
        connected: QEMU created it and waits for this one client before it boots."""
        if self.os_name != "windows":
            return qmp_socket(spec).exists()
        assert self.proc is not None
        name = qmp_pipe(spec)
        try:
            conn = endpoints.connect_windows_pipe(name, 2, server_pid=self.proc.pid)
        except FileNotFoundError:
            return False  # not created yet
        except OSError as e:  # another server (PipeTakenError), or its one instance taken
            self.kill()
            raise DriverError(f"QEMU's monitor {name} could not be reached: {e}") from e
        mon = qmp.Qmp(conn)
        try:
            mon.handshake(5)
        except OSError as e:
            mon.close()
            self.kill()
            raise DriverError(f"QEMU's monitor {name} did not speak QMP: {e}") from e
        self.session = qmp.Session(mon, {"RESUME": self._resumed})
        return True

    def _resumed(self) -> None:
        if self.on_resume is not None:
            self.on_resume()

    def _close_session(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    def watch(self, on_resume: Callable[[], None]) -> None:
        self.on_resume = on_resume

    def find_orphan(self, folder: Path) -> int | None:
        o = orphan.find(folder)
        return o.pid if o is not None else None

    def stop_orphan(self, folder: Path) -> str | None:
        o = orphan.find(folder)
        return orphan.stop(folder, o) if o is not None else None

    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def status(self) -> str:
        if self.proc is None or self.proc.poll() is not None:
            return "stopped"
        return "running"

    def qmp(self, command: str, timeout: float = 5,
            arguments: dict[str, Any] | None = None) -> dict | None:
        """Send one QMP command; None when QMP cannot be reached."""
        if self.session is not None:
            return self.session.execute(command, timeout, arguments)
        if self.spec is None or self.os_name == "windows":
            return None  # Windows: no session, no monitor (QEMU serves one client only)
        return qmp.command(qmp_socket(self.spec), command, timeout, arguments)

    def pause(self) -> None:
        self._vcpus("stop")

    def resume(self) -> None:
        self._vcpus("cont")

    def _vcpus(self, command: str) -> None:
        """QMP `stop` or `cont`; the RESUME event after `cont` sets the guest's clock."""
        r = self.qmp(command)
        if r is None:
            raise DriverError(f"QEMU's monitor could not be reached for {command!r}")
        if "error" in r:
            raise DriverError(f"QEMU refused {command!r}: "
                              f"{r['error'].get('desc', r['error'])}")

    def wait(self, timeout: float | None) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        self._stop_helpers()  # they end with QEMU's connection; reap them
        self._close_session()
        if self.spec is not None:
            orphan.forget(self.spec.folder)  # ended under our watch: no orphan
        return True

    def stop(self, timeout: float = 30) -> None:
        """ACPI powerdown, then QMP quit, then SIGKILL; each step waits its share."""
        if self.status() == "stopped":
            return
        self.qmp("system_powerdown")
        if self.wait(timeout):
            return
        log.warning("the VM did not power off in %.0f s; quitting QEMU", timeout)
        self.qmp("quit")
        if self.wait(5):
            return
        self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL) if self.os_name != "windows" \
                else self.proc.kill()
            self.proc.wait()
        self._stop_helpers()
        self._close_session()
        if self.spec is not None:
            orphan.forget(self.spec.folder)

    def delete(self, spec: VMSpec) -> None:
        self.kill()
        savedstate.discard(spec.folder)
        for p in (spec.data_disk, spec.serial_log, qmp_socket(spec)):
            p.unlink(missing_ok=True)

    def link_address(self) -> tuple[str, int]:
        assert self.spec is not None
        return "127.0.0.1", self.forwards.link_port

    def ssh_address(self) -> tuple[str, int] | None:
        """The localhost port user networking forwards to the guest's port 22."""
        return ("127.0.0.1", self.forwards.ssh_port) if self.forwards.ssh_port else None

    def private_host_ports(self) -> list[int]:
        if not self._forwards_picked:
            self.forwards = self.pick_forwards()
            self._forwards_picked = True
        return [p for p in (self.forwards.link_port, self.forwards.ssh_port) if p]

    def make_link(self, token: str) -> TcpLink:
        return TcpLink(*self.link_address(), token)


def _qmp_error(reply: dict | None) -> str:
    if reply is None:
        return "its monitor did not answer"
    err = reply.get("error")
    return str(err.get("desc", err)) if isinstance(err, dict) else str(err)


def exit_hint(err: str, spec: VMSpec, forwards: Forwards) -> str:
    """The fix for what QEMU's log says made it exit at once ("" when none is known)."""
    low = err.lower()
    if "could not set up host forwarding rule" in low:
        ports = ", ".join(str(p) for p in (forwards.link_port, forwards.ssh_port) if p)
        return (f"; another program took a localhost port Cove had picked for the VM "
                f"({ports}) before QEMU could open it. Start Cove again: it picks new "
                "ports at each start")
    if "failed createnamedpipe" in low:
        return (f"; another program holds the pipe {qmp_pipe(spec)} that QEMU's monitor "
                "needs. End it (or sign out and in again) and start Cove again")
    return ""


@register(priority=10)
def _factory(arch: str = "amd64", accel_cache: Path | None = None) -> QemuDriver:
    return QemuDriver(arch, accel_cache=accel_cache)
