"""One tray per user and instance: a second launch hands over to the first.

Everything lives where only the user reaches it, never in the shared temporary folder
(where another user could make the names first and so turn the user's tray away):

* The lock file, in the instance folder (0700 and the user's own:
  `Instance.ensure_folder`), is held for the tray's whole life. It alone says who is
  first: a second launch finds it held and exits. The lock is the OS's as well as Qt's
  (the holder's pid is in the file), so a crashed tray leaves no lock that counts.
* The local server only carries a later launch's message ("show": the first brings its
  dashboard forward, `activated`). Its name is the platform's
  (`endpoints.local_server_name`): a socket in the instance folder on Unix; on Windows a
  named pipe holding the user's SID, that only the user may connect to. If the name
  cannot be served (on Windows another program may hold a pipe name first), the tray
  still runs; a later launch then exits without bringing it forward.
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QLockFile, QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

from desktop import home
from desktop.platform import endpoints
from desktop.tray.qtcompat import emit

CONNECT_TIMEOUT_MS = 1000
SEND_PATIENCE = 5.0  # s: the first tray may hold the lock and not listen yet


class SingleInstance(QObject):
    activated = Signal(str)  # the message a later launch sent ("show")

    def __init__(self, folder: Path, key: str, parent: QObject | None = None) -> None:
        """`folder`: the instance folder (private, existing); `key`: what names this
        instance among the user's (its name and its COVE_HOME's)."""
        super().__init__(parent)
        self.name = endpoints.local_server_name(folder / home.TRAY_SOCK, key)
        self.server: QLocalServer | None = None
        self.listen_error = ""  # why no server listens, when none does
        self.delivered = False  # a later launch: the first tray got its message
        self._conns: list[QLocalSocket] = []
        self._lock = QLockFile(str(folder / home.TRAY_LOCK))
        self._lock.setStaleLockTime(0)  # stale only when its holder is gone, not by age

    def claim(self, message: str = "show", patience: float = SEND_PATIENCE) -> bool:
        """True if this is the first tray: it holds the lock until `close` and listens
        (unless `listen_error` says why not). False if another tray holds the lock; it
        was sent `message` if it answered within `patience` seconds (`delivered`)."""
        if not self._lock.tryLock(0):
            self.delivered = self._send(message, patience)
            return False
        QLocalServer.removeServer(self.name)  # a crashed tray's leftover socket
        server = QLocalServer(self)
        server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        if server.listen(self.name):
            server.newConnection.connect(self._on_connection)
            self.server = server
        else:
            self.listen_error = f"cannot listen on {self.name}: {server.errorString()}"
            server.deleteLater()
        return True

    def _send(self, message: str, patience: float) -> bool:
        deadline = time.monotonic() + patience
        while True:
            sock = QLocalSocket()
            sock.connectToServer(self.name)
            if sock.waitForConnected(CONNECT_TIMEOUT_MS):
                break
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
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
        if self._lock.isLocked():
            self._lock.unlock()
