"""One tray per user (and instance): a second launch hands over to the first.

The first tray listens on a local server whose name holds the user and the instance
(a 0600-like socket on Unix, a named pipe on Windows, both restricted to the user). A
second launch connects, says "show", and exits; the first brings its dashboard forward
(`activated`). A lock file makes two launches at the same moment agree on who is first.
"""

from __future__ import annotations

import getpass
import os
import re
import tempfile
from pathlib import Path

from PySide6.QtCore import QLockFile, QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

from desktop.tray.qtcompat import emit

CONNECT_TIMEOUT_MS = 1000


def server_name(instance: str, user: str | None = None) -> str:
    if user is None:
        getuid = getattr(os, "getuid", None)
        user = str(getuid()) if getuid is not None else getpass.getuser()
    return "cove-tray-" + re.sub(r"[^A-Za-z0-9_.-]", "_", f"{user}-{instance}")


class SingleInstance(QObject):
    activated = Signal(str)  # the message a later launch sent ("show")

    def __init__(self, name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self.server: QLocalServer | None = None
        self._conns: list[QLocalSocket] = []
        self._lock = QLockFile(str(Path(tempfile.gettempdir()) / f"{name}.lock"))
        self._lock.setStaleLockTime(0)

    def claim(self, message: str = "show") -> bool:
        """True if this is the first tray (it now listens); False if another answered
        (it was sent `message`)."""
        if not self._lock.tryLock(5000):
            return self._send(message)
        try:
            if self._send(message):
                return False
            QLocalServer.removeServer(self.name)  # a crashed tray's leftover socket
            server = QLocalServer(self)
            server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
            if not server.listen(self.name):
                raise OSError(f"cannot listen on {self.name}: {server.errorString()}")
            server.newConnection.connect(self._on_connection)
            self.server = server
            return True
        finally:
            self._lock.unlock()

    def _send(self, message: str) -> bool:
        sock = QLocalSocket()
        sock.connectToServer(self.name)
        if not sock.waitForConnected(CONNECT_TIMEOUT_MS):
            return False
        sock.write(message.encode() + b"\n")
        sock.waitForBytesWritten(CONNECT_TIMEOUT_MS)
        sock.disconnectFromServer()
        if sock.state() != QLocalSocket.LocalSocketState.UnconnectedState:
            sock.waitForDisconnected(CONNECT_TIMEOUT_MS)
        return True

    def _on_connection(self) -> None:
        assert self.server is not None
        while (conn := self.server.nextPendingConnection()) is not None:
            self._conns.append(conn)
            conn.readyRead.connect(self._read_all)
            conn.disconnected.connect(self._read_all)
        self._read_all()

    def _read_all(self) -> None:
        for conn in list(self._conns):
            while conn.canReadLine():
                line = bytes(conn.readLine().data()).decode(errors="replace").strip()
                if line:
                    emit(self.activated, line)
            if conn.state() == QLocalSocket.LocalSocketState.UnconnectedState:
                self._conns.remove(conn)
                conn.deleteLater()

    def close(self) -> None:
        for conn in self._conns:
            conn.abort()
        self._conns.clear()
        if self.server is not None:
            self.server.close()
            self.server = None
