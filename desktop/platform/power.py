"""The host's sleep and wake, as each platform announces them.

A laptop's sleep stops the VM's vCPUs while the host's clock runs on. The backend sees it
two ways: its wall clock jumping against its monotonic one (`desktop.backend.clock`), and
here, the platform's own signal, which also comes for a sleep too short to see as a jump:

* Linux: logind's `PrepareForSleep(b)` signal on the system bus, true before the sleep and
  false after it. Only the bus owner of `org.freedesktop.login1` is listened to (the bus
  daemon matches the well-known name to logind's unique one), so no other process on the
  bus can fake a wake.
* macOS: IOKit's system power notifications (`IORegisterForSystemPower`), on a thread that
  runs a CoreFoundation run loop. "Will sleep" and "can sleep" must be answered with
  `IOAllowPowerChange`, or the Mac waits 30 s before it sleeps.
* Windows: `PowerRegisterSuspendResumeNotification` with a callback, which needs no window:
  PBT_APMSUSPEND before, PBT_APMRESUMEAUTOMATIC (always) and PBT_APMRESUMESUSPEND (when a
  user is there) after.

`watch()` gives None where the platform has no such signal to give (a Linux host with no
system bus, as in a container): the clock check alone is then what sees a sleep. The
callbacks run on the watcher's thread (or the OS's), once per sleep and once per wake.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Callback = Callable[[], None]

LOGIND = "org.freedesktop.login1"
LOGIND_PATH = "/org/freedesktop/login1"
LOGIND_MANAGER = "org.freedesktop.login1.Manager"

# IOKit (IOMessage.h): iokit_common_msg(n) = sys_iokit | sub_iokit_common | n.
kIOMessageCanSystemSleep = 0xE0000270
kIOMessageSystemWillSleep = 0xE0000280
kIOMessageSystemWillNotSleep = 0xE0000290
kIOMessageSystemHasPoweredOn = 0xE0000300
kIOMessageSystemWillPowerOn = 0xE0000320

# Windows (winuser.h, powrprof.h).
DEVICE_NOTIFY_CALLBACK = 2
PBT_APMSUSPEND = 0x4
PBT_APMRESUMESUSPEND = 0x7
PBT_APMRESUMEAUTOMATIC = 0x12
ERROR_SUCCESS = 0


class PowerWatch:
    """Calls `on_sleep` and `on_wake` once each per sleep: a platform that says "awake"
    twice (Windows sends both resume kinds) or "asleep" twice calls them once."""

    def __init__(self, on_sleep: Callback, on_wake: Callback) -> None:
        self._on_sleep = on_sleep
        self._on_wake = on_wake
        self._asleep: bool | None = None
        self._lock = threading.Lock()

    def _slept(self) -> None:
        self._say(True, self._on_sleep)

    def _woke(self) -> None:
        self._say(False, self._on_wake)

    def _say(self, asleep: bool, callback: Callback) -> None:
        with self._lock:
            if self._asleep is asleep:
                return
            self._asleep = asleep
        log.info("the host %s", "goes to sleep" if asleep else "woke up")
        try:
            callback()
        except Exception:  # a callback's bug must not end the watch (nor reach the OS)
            log.exception("the host %s callback failed", "sleep" if asleep else "wake")

    def close(self) -> None:
        raise NotImplementedError


# -- Linux: logind on the system bus --------------------------------------------------------

class LogindWatch(PowerWatch):
    """logind's PrepareForSleep on the D-Bus system bus (or on `bus`, an address)."""

    def __init__(self, on_sleep: Callback, on_wake: Callback, bus: str = "SYSTEM") -> None:
        super().__init__(on_sleep, on_wake)
        from jeepney import MatchRule, message_bus
        from jeepney.io.blocking import Proxy, open_dbus_connection

        self._conn = open_dbus_connection(bus)
        try:
            # The bus daemon resolves the sender's well-known name: only logind's signal
            # is sent to us. jeepney's own filter compares sender names literally (a
            # signal carries logind's unique name), so it leaves the sender out.
            bus_rule = MatchRule(type="signal", sender=LOGIND, path=LOGIND_PATH,
                                 interface=LOGIND_MANAGER, member="PrepareForSleep")
            Proxy(message_bus, self._conn, timeout=5).AddMatch(bus_rule)
        except BaseException:
            self._conn.close()
            raise
        self._rule = MatchRule(type="signal", path=LOGIND_PATH, interface=LOGIND_MANAGER,
                               member="PrepareForSleep")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="power-watch")
        self._thread.start()

    def _loop(self) -> None:
        with self._conn.filter(self._rule, bufsize=16) as queue:
            while not self._stop.is_set():
                try:
                    msg = self._conn.recv_until_filtered(queue, timeout=1.0)
                except TimeoutError:
                    continue
                except (OSError, ValueError) as e:  # the bus went away, or sent garbage
                    if not self._stop.is_set():
                        log.warning("the system bus connection ended (%s): host sleep is "
                                    "seen by the clock check alone from now on", e)
                    return
                body = msg.body
                if not (isinstance(body, tuple) and len(body) == 1
                        and isinstance(body[0], bool)):
                    log.debug("PrepareForSleep with an unexpected body ignored: %r", body)
                    continue
                if body[0]:
                    self._slept()
                else:
                    self._woke()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3)
        self._conn.close()


# -- macOS: IOKit system power notifications ------------------------------------------------

IOKIT = "/System/Library/Frameworks/IOKit.framework/IOKit"
COREFOUNDATION = "/System/Library/Frameworks/CoreFoundation.framework/CoreFoundation"

# void (*IOServiceInterestCallback)(void *refcon, io_service_t service,
#                                   uint32_t messageType, void *messageArgument)
IOServiceInterestCallback = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32,
                                             ctypes.c_uint32, ctypes.c_void_p)


class IOKitApi:
    """The IOKit and CoreFoundation calls the watch makes, typed once. Takes the two
    library objects, so tests hand it fakes that behave as the documented calls do."""

    def __init__(self, iokit: Any, cf: Any, default_mode: Any = None) -> None:
        vp, u32 = ctypes.c_void_p, ctypes.c_uint32
        self.iokit, self.cf = iokit, cf
        # io_connect_t IORegisterForSystemPower(void *refcon, IONotificationPortRef *port,
        #     IOServiceInterestCallback callback, io_object_t *notifier); 0 on failure.
        iokit.IORegisterForSystemPower.argtypes = [vp, ctypes.POINTER(vp),
                                                   IOServiceInterestCallback,
                                                   ctypes.POINTER(u32)]
        iokit.IORegisterForSystemPower.restype = u32
        iokit.IOAllowPowerChange.argtypes = [u32, ctypes.c_long]
        iokit.IOAllowPowerChange.restype = ctypes.c_int
        iokit.IONotificationPortGetRunLoopSource.argtypes = [vp]
        iokit.IONotificationPortGetRunLoopSource.restype = vp
        iokit.IODeregisterForSystemPower.argtypes = [ctypes.POINTER(u32)]
        iokit.IODeregisterForSystemPower.restype = ctypes.c_int
        iokit.IONotificationPortDestroy.argtypes = [vp]
        iokit.IONotificationPortDestroy.restype = None
        iokit.IOServiceClose.argtypes = [u32]
        iokit.IOServiceClose.restype = ctypes.c_int
        cf.CFRunLoopGetCurrent.argtypes = []
        cf.CFRunLoopGetCurrent.restype = vp
        cf.CFRunLoopAddSource.argtypes = [vp, vp, vp]
        cf.CFRunLoopAddSource.restype = None
        cf.CFRunLoopRun.argtypes = []
        cf.CFRunLoopRun.restype = None
        cf.CFRunLoopStop.argtypes = [vp]
        cf.CFRunLoopStop.restype = None
        # A CFStringRef constant exported by CoreFoundation (a test passes its own).
        self.default_mode = default_mode if default_mode is not None else \
            vp.in_dll(cf, "kCFRunLoopDefaultMode")


def load_iokit() -> IOKitApi:
    return IOKitApi(ctypes.CDLL(IOKIT), ctypes.CDLL(COREFOUNDATION))


class IOKitWatch(PowerWatch):
    """The system power notifications, on a thread running its own CFRunLoop."""

    def __init__(self, on_sleep: Callback, on_wake: Callback,
                 api: IOKitApi | None = None) -> None:
        super().__init__(on_sleep, on_wake)
        self._api = api if api is not None else load_iokit()
        self._callback = IOServiceInterestCallback(self._message)  # kept: the OS calls it
        self._root = 0
        self._loop: Any = None
        self._error = ""
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="power-watch")
        self._thread.start()
        if not self._ready.wait(5) or self._error:
            self.close()
            raise OSError(self._error or "the IOKit power watch did not start in 5 s")

    def _run(self) -> None:
        io, cf = self._api.iokit, self._api.cf
        port = ctypes.c_void_p()
        notifier = ctypes.c_uint32()
        self._root = io.IORegisterForSystemPower(None, ctypes.byref(port), self._callback,
                                                 ctypes.byref(notifier))
        if not self._root:
            self._error = "IORegisterForSystemPower failed"
            self._ready.set()
            return
        try:
            source = io.IONotificationPortGetRunLoopSource(port)
            self._loop = cf.CFRunLoopGetCurrent()
            cf.CFRunLoopAddSource(self._loop, source, self._api.default_mode)
            self._ready.set()
            cf.CFRunLoopRun()  # until close() stops it
        finally:
            io.IODeregisterForSystemPower(ctypes.byref(notifier))
            io.IOServiceClose(self._root)
            io.IONotificationPortDestroy(port)

    def _message(self, refcon: Any, service: int, kind: int, argument: Any) -> None:
        if kind in (kIOMessageCanSystemSleep, kIOMessageSystemWillSleep):
            if kind == kIOMessageSystemWillSleep:
                self._slept()
            # The notification's id is the message argument; unanswered, the Mac waits
            # 30 s before it sleeps.
            self._api.iokit.IOAllowPowerChange(self._root, argument or 0)
        elif kind == kIOMessageSystemHasPoweredOn:
            self._woke()

    def close(self) -> None:
        if self._loop is not None:
            self._api.cf.CFRunLoopStop(self._loop)
        self._thread.join(timeout=3)


# -- Windows: suspend and resume notifications ---------------------------------------------

# ULONG CALLBACK DeviceNotifyCallbackRoutine(PVOID Context, ULONG Type, PVOID Setting)
_WINFUNCTYPE = getattr(ctypes, "WINFUNCTYPE", ctypes.CFUNCTYPE)  # stdcall on Windows
DeviceNotifyCallback = _WINFUNCTYPE(ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong,
                                    ctypes.c_void_p)


class DEVICE_NOTIFY_SUBSCRIBE_PARAMETERS(ctypes.Structure):
    _fields_ = [("Callback", DeviceNotifyCallback), ("Context", ctypes.c_void_p)]


class WindowsPowerApi:
    """powrprof's suspend/resume registration, typed once (Windows 8 and later)."""

    def __init__(self, powrprof: Any) -> None:
        vp = ctypes.c_void_p
        self.powrprof = powrprof
        # DWORD PowerRegisterSuspendResumeNotification(DWORD Flags, HANDLE Recipient,
        #     PHPOWERNOTIFY RegistrationHandle)
        powrprof.PowerRegisterSuspendResumeNotification.argtypes = [
            ctypes.c_ulong, ctypes.POINTER(DEVICE_NOTIFY_SUBSCRIBE_PARAMETERS),
            ctypes.POINTER(vp)]
        powrprof.PowerRegisterSuspendResumeNotification.restype = ctypes.c_ulong
        powrprof.PowerUnregisterSuspendResumeNotification.argtypes = [vp]
        powrprof.PowerUnregisterSuspendResumeNotification.restype = ctypes.c_ulong


def load_powrprof() -> WindowsPowerApi:
    return WindowsPowerApi(ctypes.WinDLL("powrprof"))  # type: ignore[attr-defined]


class WindowsPowerWatch(PowerWatch):
    def __init__(self, on_sleep: Callback, on_wake: Callback,
                 api: WindowsPowerApi | None = None) -> None:
        super().__init__(on_sleep, on_wake)
        self._api = api if api is not None else load_powrprof()
        self._callback = DeviceNotifyCallback(self._notified)  # kept: the OS calls it
        self._params = DEVICE_NOTIFY_SUBSCRIBE_PARAMETERS(self._callback, None)
        self._handle = ctypes.c_void_p()
        err = self._api.powrprof.PowerRegisterSuspendResumeNotification(
            DEVICE_NOTIFY_CALLBACK, ctypes.byref(self._params), ctypes.byref(self._handle))
        if err != ERROR_SUCCESS:
            raise OSError(f"PowerRegisterSuspendResumeNotification failed (error {err})")

    def _notified(self, context: Any, kind: int, setting: Any) -> int:
        if kind == PBT_APMSUSPEND:
            self._slept()
        elif kind in (PBT_APMRESUMEAUTOMATIC, PBT_APMRESUMESUSPEND):
            self._woke()
        return ERROR_SUCCESS

    def close(self) -> None:
        if self._handle.value:
            self._api.powrprof.PowerUnregisterSuspendResumeNotification(self._handle)
            self._handle = ctypes.c_void_p()


def watch(on_sleep: Callback, on_wake: Callback) -> PowerWatch | None:
    """This host's sleep and wake signal, or None (logged) where it gives none."""
    try:
        if sys.platform == "win32":
            return WindowsPowerWatch(on_sleep, on_wake)
        if sys.platform == "darwin":
            return IOKitWatch(on_sleep, on_wake)
        return LogindWatch(on_sleep, on_wake)
    except Exception as e:  # no system bus, no library: the clock check still sees a sleep
        log.info("no sleep and wake signal from this host (%s: %s); a sleep is seen by "
                 "the clock check alone", type(e).__name__, e)
        return None
