"""The backend's event log: every state change and event, appended to ``events.log``
(JSON lines) and handed live to each control client that asked for the ``events``
stream. A client that stops reading is dropped, never waited for."""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any

from desktop.platform.endpoints import Stream

log = logging.getLogger(__name__)


class _Subscriber:
    """One events client, fed by its own thread from a bounded queue, so a client that
    stops reading is dropped instead of stalling the backend."""

    MAX_QUEUED = 1000

    def __init__(self, sock: Stream, on_gone: Any) -> None:
        self.sock = sock
        self.queue: queue.Queue[bytes | None] = queue.Queue(self.MAX_QUEUED)
        self.on_gone = on_gone
        threading.Thread(target=self._write, daemon=True, name="events-writer").start()

    def put(self, data: bytes) -> None:
        try:
            self.queue.put_nowait(data)
        except queue.Full:
            log.warning("an events client stopped reading; dropping it")
            self._shutdown()

    def close(self) -> None:
        """End the stream once what is queued has been sent."""
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            self._shutdown()

    def _shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _write(self) -> None:
        while (data := self.queue.get()) is not None:
            try:
                self.sock.sendall(data)
            except OSError:
                break
        self._shutdown()
        self.on_gone(self)


class EventLog:
    """Appends events to events.log and hands them to live subscribers. The file is
    bounded: past `max_bytes` it becomes events.log.1 (replacing the one before) and a
    new one starts."""

    def __init__(self, path: Path, max_bytes: int = 10 * 2**20) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.history: list[dict[str, Any]] = []
        self._subs: list[_Subscriber] = []
        self._lock = threading.Lock()

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        ev = {"time": round(time.time(), 3), "event": kind, **fields}
        line = json.dumps(ev)
        with self._lock:
            # On disk first: whoever sees an event in history finds it in the file.
            with self.path.open("a") as f:
                f.write(line + "\n")
                full = f.tell() > self.max_bytes
            if full:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self.history.append(ev)
            del self.history[:-500]
            for sub in self._subs:
                sub.put(line.encode() + b"\n")
        log.info("event %s", line)
        return ev

    def subscribe(self, s: Stream, history: bool) -> _Subscriber:
        with self._lock:
            sub = _Subscriber(s, self._drop)
            if history:
                for ev in self.history:
                    sub.put(json.dumps(ev).encode() + b"\n")
            self._subs.append(sub)
        return sub

    def _drop(self, sub: _Subscriber) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def close(self) -> None:
        with self._lock:
            subs, self._subs = self._subs, []
        for sub in subs:
            sub.close()
