"""Work off the GUI thread, results back on it.

`Worker.submit(fn, on_done, on_error)` runs `fn` on the worker's QThreadPool and calls
`on_done(result)` or `on_error(message)` on the GUI thread, through a queued signal. The
tray never blocks its event loop on the backend or the engine.

`Follower` runs a long blocking loop (an event stream, a log that follows) on a plain
thread and hands each item to the GUI thread the same way; `stop()` ends it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from PySide6.QtCore import QObject, QThreadPool, Signal

from desktop.tray.qtcompat import emit

log = logging.getLogger(__name__)


class Worker(QObject):
    _finished = Signal(object, object)  # callback, its argument

    def __init__(self, parent: QObject | None = None, threads: int = 2) -> None:
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(threads)
        self._finished.connect(self._deliver)
        self.pending = 0
        self.closed = False

    def submit(self, fn: Callable[[], Any], on_done: Callable[[Any], Any] | None = None,
               on_error: Callable[[str], Any] | None = None) -> None:
        self.pending += 1

        def run() -> None:
            try:
                result = fn()
            except Exception as e:
                log.info("background task failed: %s", e)
                emit(self._finished, on_error, str(e) or type(e).__name__)
            else:
                emit(self._finished, on_done, result)

        self.pool.start(run)

    def _deliver(self, callback: Callable[[Any], Any] | None, arg: Any) -> None:
        self.pending -= 1
        if callback is not None and not self.closed:
            callback(arg)

    def wait(self, msecs: int = 30000) -> bool:
        return bool(self.pool.waitForDone(msecs))

    def close(self, msecs: int = 30000) -> None:
        """Let running tasks finish; their results, and any later, go nowhere (the
        windows that asked may be gone)."""
        self.pool.waitForDone(msecs)
        self.closed = True


class Follower(QObject):
    """Iterates `open_stream()` on a thread, emitting `item` per element; `ended` once
    the stream is over (with the error, if any). `stop()` closes the stream."""

    item = Signal(object)
    ended = Signal(str)

    def __init__(self, open_stream: Callable[[], Iterable[Any]],
                 parent: QObject | None = None, name: str = "follower") -> None:
        super().__init__(parent)
        self._open = open_stream
        self._stream: Any = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)

    def start(self) -> Follower:
        self._thread.start()
        return self

    def _run(self) -> None:
        error = ""
        try:
            self._stream = self._open()
            if self._stopped.is_set():
                self._close_stream()
                return
            for x in self._stream:
                if self._stopped.is_set():
                    break
                emit(self.item, x)
        except Exception as e:
            error = str(e) or type(e).__name__
        if not self._stopped.is_set():
            emit(self.ended, error)

    def _close_stream(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # closing a dead stream is fine
                pass

    def stop(self, wait: float = 2.0) -> None:
        self._stopped.set()
        self._close_stream()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(wait)
