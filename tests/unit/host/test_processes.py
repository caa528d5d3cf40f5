"""Process liveness and start tokens (desktop.platform.processes), the pid file over them,
and ending a process: real processes on this host, and a fake psutil that answers as
psutil does on Windows and macOS (no signal 0, no `ps`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from desktop import pidfile
from desktop.platform import processes

LINUX = sys.platform.startswith("linux")


@pytest.fixture
def no_signal_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """os.kill(pid, 0) stops a process on Windows, and `ps` is not there: neither may be used."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"called with {args}")

    monkeypatch.setattr(os, "kill", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)


def _wait_zombie(pid: int) -> None:
    deadline = time.monotonic() + 10
    while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)


# -- real processes ----------------------------------------------------------------------


def test_a_running_process_is_alive_with_a_stable_token(sleeper: subprocess.Popen,
                                                         no_signal_probe: None) -> None:
    assert processes.is_alive(sleeper.pid)
    token = processes.start_token(sleeper.pid)
    assert token and processes.start_token(sleeper.pid) == token
    assert processes.same_process(sleeper.pid, token)
    assert processes.is_alive(os.getpid()) and processes.start_token(os.getpid())


def test_a_child_that_exited_is_gone(no_signal_probe: None) -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    token = processes.start_token(p.pid)
    p.wait()
    assert token
    assert not processes.is_alive(p.pid)
    assert processes.start_token(p.pid) == ""
    assert not processes.same_process(p.pid, token)


@pytest.mark.skipif(sys.platform == "win32", reason="Windows has no zombies")
def test_a_zombie_is_not_alive(no_signal_probe: None) -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    token = processes.start_token(p.pid)
    try:
        _wait_zombie(p.pid)  # exited, not reaped: the pid still exists
        assert not processes.is_alive(p.pid)
        assert processes.start_token(p.pid) == ""
        assert not processes.same_process(p.pid, token)
    finally:
        p.wait()


def test_a_reused_pid_is_told_apart_by_its_start(tmp_path: Path) -> None:
    """The pid file names a process that ended; the pid now belongs to another (here: the
    pid of a live process written with the token of the one before it)."""
    first = subprocess.Popen([sys.executable, "-c", "pass"])
    old_token = processes.start_token(first.pid)
    first.wait()
    time.sleep(0.05)  # a later start than the first's, past Linux's 10 ms clock tick
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        _reused(sleeper, old_token, tmp_path / "backend.pid")
    finally:
        sleeper.kill()
        sleeper.wait()


def _reused(sleeper: subprocess.Popen, old_token: str, path: Path) -> None:
    path.write_text(f"{sleeper.pid} {old_token}\n")
    assert processes.is_alive(sleeper.pid)
    assert processes.start_token(sleeper.pid) != old_token
    assert pidfile.read_live(path) is None
    pidfile.terminate(path)  # not that process: left alone
    assert sleeper.poll() is None
    pidfile.write(path, sleeper.pid)
    assert pidfile.read_live(path) == sleeper.pid


@pytest.mark.skipif(not LINUX, reason="the Linux token is /proc's clock-tick count")
def test_linux_token_is_procs_clock_ticks(sleeper: subprocess.Popen) -> None:
    """Pid files written by earlier versions (field 22 of /proc/<pid>/stat) still read."""
    stat = Path(f"/proc/{sleeper.pid}/stat").read_text()
    ticks = stat.rsplit(")", 1)[1].split()[19]
    assert processes.start_token(sleeper.pid) == ticks


@pytest.mark.skipif(not LINUX, reason="the boot time is read from /proc/stat")
def test_linux_token_ignores_a_wall_clock_step(sleeper: subprocess.Popen,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """NTP moves the boot time psutil's create_time is computed from; the token stays."""
    token = processes.start_token(sleeper.pid)
    real = psutil.boot_time()
    monkeypatch.setattr(psutil, "boot_time", lambda: real + 3600)
    stepped = psutil.Process.create_time
    monkeypatch.setattr(psutil.Process, "create_time",
                        lambda self: stepped(self) + 3600)
    assert processes.start_token(sleeper.pid) == token


def test_end_terminates_then_kills_only_that_process() -> None:
    stubborn = subprocess.Popen([sys.executable, "-c",
                                 "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print(1, flush=True); time.sleep(600)"],
                                stdout=subprocess.PIPE)
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline()
        token = processes.start_token(stubborn.pid)
        assert processes.end(stubborn.pid, "1", force=True)  # that one is gone already:
        assert stubborn.poll() is None  # this process, of another token, is left alone
        assert stubborn.poll() is None
        assert not processes.end(stubborn.pid, token, timeout=0.3)  # SIGTERM ignored
        assert processes.end(stubborn.pid, token, force=True, timeout=5)
        assert stubborn.wait(5) is not None
    finally:
        stubborn.kill()
        stubborn.communicate()


def test_pid_zero_and_negative_are_never_alive() -> None:
    for pid in (0, -1):
        assert not processes.is_alive(pid)
        assert processes.start_token(pid) == ""


# -- psutil as it answers on other hosts -------------------------------------------------


class FakeProcess:
    table: dict[int, Any] = {}

    def __init__(self, pid: int) -> None:
        entry = self.table.get(pid)
        if entry is None:
            raise psutil.NoSuchProcess(pid)
        self.pid = pid
        self.entry = entry

    def status(self) -> str:
        if self.entry == "denied":
            raise psutil.AccessDenied(self.pid)
        return str(self.entry[0])

    def create_time(self) -> float:
        return float(self.entry[1])

    def terminate(self) -> None:
        self.table[self.pid] = None

    kill = terminate


class FakePsutil:
    STATUS_ZOMBIE = psutil.STATUS_ZOMBIE
    STATUS_DEAD = psutil.STATUS_DEAD
    Error = psutil.Error
    NoSuchProcess = psutil.NoSuchProcess
    ZombieProcess = psutil.ZombieProcess
    AccessDenied = psutil.AccessDenied
    Process = FakeProcess

    @staticmethod
    def boot_time() -> float:
        raise AssertionError("the boot time is Linux's part of the token only")


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch, no_signal_probe: None) -> type[FakeProcess]:
    FakeProcess.table = {
        4242: (psutil.STATUS_RUNNING, 1754000000.1234567),  # FILETIME-precise
        4243: (psutil.STATUS_STOPPED, 1754000001.5),  # suspended: still alive
        4: "denied",  # a service's process: exists, not readable
    }
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(processes, "psutil", FakePsutil)
    return FakeProcess


def test_windows_answers_from_psutil(windows: type[FakeProcess]) -> None:
    assert processes.is_alive(4242) and processes.is_alive(4243)
    assert processes.start_token(4242) == "1754000000.123"
    assert processes.is_alive(4)  # another user's: alive, but no token of ours matches
    assert processes.start_token(4) == "" and not processes.same_process(4, "")
    assert not processes.is_alive(9999) and processes.start_token(9999) == ""


def test_windows_end_checks_the_token_first(windows: type[FakeProcess]) -> None:
    assert processes.end(4242, "1754000000.999")  # ours is gone; the pid's new owner
    assert processes.is_alive(4242)
    assert processes.end(4242, "1754000000.123", timeout=1)
    assert not processes.is_alive(4242)


def test_windows_pidfile(windows: type[FakeProcess], tmp_path: Path) -> None:
    path = tmp_path / "backend.pid"
    pidfile.write(path, 4242)
    assert path.read_text() == "4242 1754000000.123\n"
    assert pidfile.read_live(path) == 4242
    path.write_text("4242 1754000000.124\n")
    assert pidfile.read_live(path) is None


def test_detached_options_per_host() -> None:
    assert processes.detached("linux") == {"start_new_session": True}
    assert processes.detached("darwin") == {"start_new_session": True}
    # Windows ignores start_new_session: a process group and a console with no window.
    assert processes.detached("windows") == {"creationflags": 0x00000200 | 0x08000000}


# -- other host facts Windows answers differently -----------------------------------------


def test_host_memory_without_sysconf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows has no os.sysconf: the memory is psutil's, not an 8 GiB guess."""
    from desktop.platform import hostinfo

    monkeypatch.delattr(os, "sysconf")
    monkeypatch.setattr(hostinfo.psutil, "virtual_memory",
                        lambda: type("Mem", (), {"total": 3 * hostinfo.GIB})())
    assert hostinfo.host_memory() == 3 * hostinfo.GIB


def test_a_missing_image_without_geteuid_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """From source on Windows (no os.geteuid): the missing image is explained, not an
    AttributeError."""
    from desktop import lifecycle

    monkeypatch.delattr(os, "geteuid")
    monkeypatch.setattr(lifecycle.vm_image, "find_image", lambda arch: None)
    monkeypatch.setattr(lifecycle.builder, "is_packaged", lambda: False)
    with pytest.raises(lifecycle.LifecycleError):
        lifecycle.ensure_image("amd64")
