"""A D-Bus daemon of the test's own, and logind's part on it.

`BusDaemon` runs `dbus-daemon` with the session configuration on a private socket: the
tests point Cove at it as the system bus (DBUS_SYSTEM_BUS_ADDRESS), so a developer's real
logind never reaches a test and a test never needs one. `Logind` owns logind's bus name
on it and sends PrepareForSleep as logind does before and after a sleep.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from jeepney import DBusAddress, new_signal
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import DBusConnection, Proxy, open_dbus_connection

LOGIND = "org.freedesktop.login1"
LOGIND_PATH = "/org/freedesktop/login1"
LOGIND_MANAGER = "org.freedesktop.login1.Manager"
DO_NOT_QUEUE = 4
PRIMARY_OWNER = 1


class BusDaemon:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cove-bus-", dir="/tmp"))
        self.address = f"unix:path={self.dir}/bus"
        self.proc = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", "--nopidfile",
             f"--address={self.address}", "--print-address=1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        if not self.proc.stdout.readline():  # printed once it listens
            self.close()
            raise RuntimeError("dbus-daemon did not start")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Logind:
    """A connection that owns logind's name, as logind's own does."""

    def __init__(self, address: str) -> None:
        self.conn: DBusConnection = open_dbus_connection(address)
        reply = Proxy(message_bus, self.conn, timeout=5).RequestName(LOGIND, DO_NOT_QUEUE)
        if reply != (PRIMARY_OWNER,):
            self.conn.close()
            raise RuntimeError(f"could not own {LOGIND}: {reply}")

    def prepare_for_sleep(self, body: Any, signature: str = "b") -> None:
        send_prepare_for_sleep(self.conn, body, signature)

    def close(self) -> None:
        self.conn.close()


def send_prepare_for_sleep(conn: DBusConnection, body: Any, signature: str = "b") -> None:
    where = DBusAddress(LOGIND_PATH, interface=LOGIND_MANAGER)
    conn.send(new_signal(where, "PrepareForSleep", signature, (body,)))
