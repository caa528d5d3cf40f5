"""The host's sleep and wake signal (desktop/platform/power.py).

Linux: a real D-Bus daemon on a private address, on which the test owns logind's name
and sends PrepareForSleep as logind does. macOS and Windows: fakes of IOKit/CoreFoundation
and powrprof that behave as their documented calls do (the run loop calls back on its own
thread; "will sleep" waits for IOAllowPowerChange; Windows calls back on a thread of its
own and sends both resume kinds after one sleep).
"""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jeepney.io.blocking import open_dbus_connection

from desktop.platform import power
from tests.helpers.dbus import BusDaemon, Logind, send_prepare_for_sleep


class Calls:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.changed = threading.Condition()

    def sleep(self) -> None:
        self._add("sleep")

    def wake(self) -> None:
        self._add("wake")

    def _add(self, what: str) -> None:
        with self.changed:
            self.seen.append(what)
            self.changed.notify_all()

    def wait(self, n: int, timeout: float = 5) -> list[str]:
        with self.changed:
            self.changed.wait_for(lambda: len(self.seen) >= n, timeout)
            return list(self.seen)


# -- Linux: logind on a real bus ------------------------------------------------------------

@pytest.fixture
def bus() -> Iterator[BusDaemon]:
    d = BusDaemon()
    yield d
    d.close()


@pytest.fixture
def logind(bus: BusDaemon) -> Iterator[Logind]:
    d = Logind(bus.address)
    yield d
    d.close()


def test_logind_prepare_for_sleep_true_then_false_is_a_sleep_then_a_wake(
        bus: BusDaemon, logind: Logind) -> None:
    calls = Calls()
    w = power.LogindWatch(calls.sleep, calls.wake, bus=bus.address)
    try:
        logind.prepare_for_sleep(True)
        logind.prepare_for_sleep(False)
        assert calls.wait(2) == ["sleep", "wake"]
        logind.prepare_for_sleep(False)  # said twice: one wake
        logind.prepare_for_sleep(True)
        assert calls.wait(3) == ["sleep", "wake", "sleep"]
    finally:
        w.close()


def test_a_prepare_for_sleep_from_another_process_than_logind_is_ignored(
        bus: BusDaemon, logind: Logind) -> None:
    calls = Calls()
    w = power.LogindWatch(calls.sleep, calls.wake, bus=bus.address)
    impostor = open_dbus_connection(bus.address)
    try:
        send_prepare_for_sleep(impostor, False)
        logind.prepare_for_sleep(True)  # after the impostor's, on the same daemon
        assert calls.wait(1) == ["sleep"]
        time.sleep(0.3)
        assert calls.seen == ["sleep"], "the impostor's wake was taken"
    finally:
        w.close()
        impostor.close()


def test_a_prepare_for_sleep_with_another_body_is_ignored_and_the_watch_goes_on(
        bus: BusDaemon, logind: Logind) -> None:
    calls = Calls()
    w = power.LogindWatch(calls.sleep, calls.wake, bus=bus.address)
    try:
        logind.prepare_for_sleep("yes", signature="s")
        logind.prepare_for_sleep(True)
        assert calls.wait(1) == ["sleep"]
    finally:
        w.close()


def test_a_callback_that_raises_does_not_end_the_watch(bus: BusDaemon,
                                                       logind: Logind) -> None:
    calls = Calls()

    def broken() -> None:
        raise RuntimeError("a bug")

    w = power.LogindWatch(broken, calls.wake, bus=bus.address)
    try:
        logind.prepare_for_sleep(True)
        logind.prepare_for_sleep(False)
        assert calls.wait(1) == ["wake"]
    finally:
        w.close()


def test_the_bus_going_away_ends_the_watch_with_a_warning(
        bus: BusDaemon, caplog: pytest.LogCaptureFixture) -> None:
    calls = Calls()
    w = power.LogindWatch(calls.sleep, calls.wake, bus=bus.address)
    with caplog.at_level(logging.WARNING, logger="desktop.platform.power"):
        bus.proc.kill()
        w._thread.join(5)
    assert not w._thread.is_alive()
    assert "the system bus connection ended" in caplog.text
    w.close()


def test_no_system_bus_gives_no_watch_and_says_so(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(power.sys, "platform", "linux")
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/none")
    with caplog.at_level(logging.INFO, logger="desktop.platform.power"):
        assert power.watch(lambda: None, lambda: None) is None
    assert "no sleep and wake signal from this host" in caplog.text
    assert "clock check alone" in caplog.text


def test_watch_on_linux_listens_on_the_system_bus(
        bus: BusDaemon, logind: Logind, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(power.sys, "platform", "linux")
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
    calls = Calls()
    w = power.watch(calls.sleep, calls.wake)
    assert isinstance(w, power.LogindWatch)
    try:
        logind.prepare_for_sleep(False)
        assert calls.wait(1) == ["wake"]
    finally:
        w.close()


# -- macOS: IOKit, faked as documented ------------------------------------------------------

class _Fn:
    """A library function: callable, with argtypes and restype that can be set."""

    def __init__(self, impl: Callable[..., Any]) -> None:
        self.impl = impl
        self.argtypes: list[Any] | None = None
        self.restype: Any = "unset"

    def __call__(self, *args: Any) -> Any:
        return self.impl(*args)


class FakeMac:
    """IOKit and CoreFoundation as the watch uses them. The run loop delivers the power
    messages on the thread that runs it; a "will sleep" or "can sleep" message counts as
    answered only by IOAllowPowerChange with the root port and the message's id."""

    ROOT = 0x1203
    PORT = 0x7F00
    NOTIFIER = 0x44

    def __init__(self, register_fails: bool = False) -> None:
        self.messages: queue.Queue[tuple[int, int] | None] = queue.Queue()
        self.allowed: list[tuple[int, int]] = []
        self.calls: list[str] = []
        self.callback: Any = None
        self.loop_thread: threading.Thread | None = None
        self.delivered = threading.Event()
        fail = register_fails

        def register(refcon: Any, port_ref: Any, callback: Any, notifier_ref: Any) -> int:
            self.calls.append("IORegisterForSystemPower")
            if fail:
                return 0  # MACH_PORT_NULL
            port_ref._obj.value = self.PORT
            notifier_ref._obj.value = self.NOTIFIER
            self.callback = callback
            return self.ROOT

        def allow(root: int, notification: int) -> int:
            self.allowed.append((root, notification))
            return 0

        def source(port: Any) -> int:
            assert port.value == self.PORT, "the run loop source of another port"
            return 0x5005

        def run() -> None:
            self.loop_thread = threading.current_thread()
            while (m := self.messages.get()) is not None:
                kind, ident = m
                self.callback(None, 0x99, kind, ident)
                self.delivered.set()

        def record(name: str, result: Any = 0) -> _Fn:
            def f(*args: Any) -> Any:
                self.calls.append(name)
                return result
            return _Fn(f)

        self.iokit = type("IOKit", (), {})()
        self.iokit.IORegisterForSystemPower = _Fn(register)
        self.iokit.IOAllowPowerChange = _Fn(allow)
        self.iokit.IONotificationPortGetRunLoopSource = _Fn(source)
        self.iokit.IODeregisterForSystemPower = record("IODeregisterForSystemPower")
        self.iokit.IONotificationPortDestroy = record("IONotificationPortDestroy", None)
        self.iokit.IOServiceClose = record("IOServiceClose")
        self.cf = type("CoreFoundation", (), {})()
        self.cf.CFRunLoopGetCurrent = record("CFRunLoopGetCurrent", 0xC0FFEE)
        self.cf.CFRunLoopAddSource = record("CFRunLoopAddSource", None)
        self.cf.CFRunLoopRun = _Fn(run)
        self.cf.CFRunLoopStop = _Fn(lambda loop: self.messages.put(None))

    def api(self) -> power.IOKitApi:
        return power.IOKitApi(self.iokit, self.cf, default_mode=ctypes.c_void_p(0xD))

    def send(self, kind: int, ident: int = 0) -> None:
        self.delivered.clear()
        self.messages.put((kind, ident))
        assert self.delivered.wait(5), "the run loop did not deliver the message"


def test_iokit_will_sleep_is_a_sleep_answered_and_powered_on_a_wake() -> None:
    mac = FakeMac()
    calls = Calls()
    w = power.IOKitWatch(calls.sleep, calls.wake, api=mac.api())
    try:
        mac.send(power.kIOMessageCanSystemSleep, 11)  # asked, not yet sleeping
        assert calls.seen == [] and mac.allowed == [(FakeMac.ROOT, 11)]
        mac.send(power.kIOMessageSystemWillSleep, 12)
        assert calls.seen == ["sleep"] and mac.allowed[-1] == (FakeMac.ROOT, 12)
        mac.send(power.kIOMessageSystemWillPowerOn)
        assert calls.seen == ["sleep"], "woke before the system had powered on"
        mac.send(power.kIOMessageSystemHasPoweredOn)
        assert calls.seen == ["sleep", "wake"]
        assert mac.loop_thread is not threading.current_thread()
    finally:
        w.close()
    assert mac.calls[-3:] == ["IODeregisterForSystemPower", "IOServiceClose",
                              "IONotificationPortDestroy"]
    assert not w._thread.is_alive()


def test_iokit_will_sleep_is_answered_even_when_the_callback_raises() -> None:
    mac = FakeMac()

    def broken() -> None:
        raise RuntimeError("a bug")

    w = power.IOKitWatch(broken, lambda: None, api=mac.api())
    try:
        mac.send(power.kIOMessageSystemWillSleep, 7)
        assert mac.allowed == [(FakeMac.ROOT, 7)], "the Mac would wait 30 s to sleep"
    finally:
        w.close()


def test_iokit_registration_that_fails_is_an_error_and_no_watch() -> None:
    mac = FakeMac(register_fails=True)
    with pytest.raises(OSError, match="IORegisterForSystemPower failed"):
        power.IOKitWatch(lambda: None, lambda: None, api=mac.api())
    assert "CFRunLoopAddSource" not in mac.calls


def test_iokit_api_types_every_call_it_makes() -> None:
    mac = FakeMac()
    mac.api()
    for lib in (mac.iokit, mac.cf):
        for name, fn in vars(lib).items():
            assert fn.argtypes is not None and fn.restype != "unset", f"{name} untyped"


def test_watch_on_macos_uses_iokit(monkeypatch: pytest.MonkeyPatch) -> None:
    mac = FakeMac()
    monkeypatch.setattr(power.sys, "platform", "darwin")
    monkeypatch.setattr(power, "load_iokit", mac.api)
    w = power.watch(lambda: None, lambda: None)
    assert isinstance(w, power.IOKitWatch)
    w.close()


# -- Windows: powrprof, faked as documented -------------------------------------------------

class FakePowrprof:
    """PowerRegisterSuspendResumeNotification with DEVICE_NOTIFY_CALLBACK: the recipient
    is a DEVICE_NOTIFY_SUBSCRIBE_PARAMETERS; Windows calls its callback on a thread of its
    own with (context, PBT_*, setting) and ignores nothing it returns but the code."""

    HANDLE = 0xABC0

    def __init__(self, register_error: int = 0) -> None:
        self.params: Any = None
        self.unregistered: list[int] = []
        self.returned: list[int] = []
        err = register_error

        def register(flags: int, recipient: Any, handle_ref: Any) -> int:
            assert flags == power.DEVICE_NOTIFY_CALLBACK
            if err:
                return err
            self.params = recipient._obj
            handle_ref._obj.value = self.HANDLE
            return 0

        def unregister(handle: Any) -> int:
            self.unregistered.append(handle.value)
            return 0

        self.PowerRegisterSuspendResumeNotification = _Fn(register)
        self.PowerUnregisterSuspendResumeNotification = _Fn(unregister)

    def notify(self, kind: int) -> None:
        t = threading.Thread(target=lambda: self.returned.append(
            self.params.Callback(self.params.Context, kind, None)))
        t.start()
        t.join(5)


def test_windows_suspend_then_both_resumes_are_one_sleep_and_one_wake() -> None:
    fake = FakePowrprof()
    calls = Calls()
    w = power.WindowsPowerWatch(calls.sleep, calls.wake, api=power.WindowsPowerApi(fake))
    fake.notify(power.PBT_APMSUSPEND)
    fake.notify(power.PBT_APMRESUMEAUTOMATIC)
    fake.notify(power.PBT_APMRESUMESUSPEND)  # a user is at the machine: sent as well
    fake.notify(0x8013)  # PBT_POWERSETTINGCHANGE: not ours
    assert calls.seen == ["sleep", "wake"]
    assert fake.returned == [0, 0, 0, 0]
    w.close()
    w.close()
    assert fake.unregistered == [FakePowrprof.HANDLE]


def test_windows_registration_that_fails_names_the_error() -> None:
    fake = FakePowrprof(register_error=87)
    with pytest.raises(OSError, match=r"PowerRegisterSuspendResumeNotification failed "
                                      r"\(error 87\)"):
        power.WindowsPowerWatch(lambda: None, lambda: None, api=power.WindowsPowerApi(fake))


def test_watch_on_windows_that_cannot_register_gives_no_watch(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(power.sys, "platform", "win32")
    monkeypatch.setattr(power, "load_powrprof",
                        lambda: power.WindowsPowerApi(FakePowrprof(register_error=5)))
    with caplog.at_level(logging.INFO, logger="desktop.platform.power"):
        assert power.watch(lambda: None, lambda: None) is None
    assert "error 5" in caplog.text
