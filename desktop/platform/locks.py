"""Advisory file locks, held by an open file: the OS lets go of them when the process
ends, however it ends (kill -9 included), so a lock is never stale.

POSIX hosts use flock(2); Windows locks the file's first byte (msvcrt.locking), which
another process's open of the same file cannot take while it is held.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO


class LockHeld(OSError):
    """Another process holds the lock."""


class FileLock:
    """`with FileLock(path):` waits up to `timeout` seconds (0: not at all) for the lock;
    LockHeld when another process keeps it longer."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._file: IO[bytes] | None = None

    def acquire(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+b")  # noqa: SIM115 - held open for as long as the lock
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                _lock(f)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    f.close()
                    raise LockHeld(f"{self.path} is locked by another process") from None
                time.sleep(0.05)
        self._file = f
        return self

    def release(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            try:
                _unlock(f)
            finally:
                f.close()

    @property
    def held(self) -> bool:
        return self._file is not None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


if sys.platform == "win32":
    import msvcrt

    def _lock(f: IO[bytes]) -> None:
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)

    def _unlock(f: IO[bytes]) -> None:
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock(f: IO[bytes]) -> None:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(f: IO[bytes]) -> None:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


__all__ = ["FileLock", "LockHeld"]
