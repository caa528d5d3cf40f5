"""Host file changes, relayed so that file watchers in containers see them.

Folders shared into the VM over virtiofs or 9p do not raise inotify events in the guest
when the host changes them, yet dev servers and test runners in containers wait for those
events. So the backend watches, on the host, the folders that containers bind-mount, and
tells the guest agent which paths changed and their host mode; the agent chmods each path
to that same mode, which raises ``IN_ATTRIB`` for the watchers in the VM and changes
nothing on the host.

A `Change` names the path the guest should touch. The guest can only chmod something
that exists, so for ``created``, ``deleted`` and ``moved`` it is the *parent directory*;
for ``modified`` (content or attributes) it is the path itself. The mode is the
permission bits (``stat.S_IMODE``), which is what chmod takes. A symlink is never
reported as itself (the guest's chmod would follow it, possibly out of the share): its
directory is reported instead.

Changes are collected for ``batch_seconds``, deduplicated by path (one `Change` per path,
the latest kind) and handed to ``on_changes`` in one call, from the watcher's own thread.

The guest's chmod reaches the host file as well and raises ``IN_ATTRIB`` here. To keep
that from echoing back forever, an ``IN_ATTRIB`` or ``IN_CLOSE_WRITE`` whose (mode,
mtime, size) equals what was last reported for that path is dropped.

`make_watcher` picks the implementation once: `InotifyWatcher` on Linux,
`WatchdogWatcher` (FSEvents, ReadDirectoryChangesW) on macOS and Windows, and
`PollingWatcher`, which stats the watched trees every second, where neither can be had.
"""

from __future__ import annotations

import abc
import ctypes
import errno
import logging
import os
import select
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Self

log = logging.getLogger(__name__)

MODIFIED = "modified"
CREATED = "created"
DELETED = "deleted"
MOVED = "moved"

# Paths whose last reported stat is remembered, to recognise the guest's chmod echo.
SEEN_LIMIT = 4096
CLOSE_TIMEOUT = 5.0


class Change(NamedTuple):
    path: str
    mode: int
    kind: str


OnChanges = Callable[[list[Change]], None]


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class Watcher(abc.ABC):
    """Watches folder trees and reports batches of `Change`.

    ``watch(root)`` is recursive and idempotent; a root inside an already watched root is
    a no-op, and a root that contains watched roots takes them over. Folders created
    later are watched too, up to ``max_watches`` folders in all: past that a warning is
    logged once and kept in ``warnings``, and the rest goes unwatched. A root may also be
    a single file (a file bind mount). ``unwatch`` takes a path in ``roots``; anything
    else is a no-op. ``close()`` stops the thread and frees what was opened; a closed
    watcher refuses ``watch``. ``watch`` raises FileNotFoundError for a missing path.
    """

    def __init__(self, on_changes: OnChanges, batch_seconds: float = 0.1,
                 max_watches: int = 20000) -> None:
        self._on_changes = on_changes
        self.batch_seconds = batch_seconds
        self.max_watches = max_watches
        self.warnings: list[str] = []
        self._warned: set[str] = set()
        self._lock = threading.RLock()
        self._roots: set[str] = set()
        self._pending: dict[str, Change] = {}
        self._deadline: float | None = None
        self._seen: dict[str, tuple[int, int, int]] = {}
        self._closed = False

    @property
    def roots(self) -> set[str]:
        with self._lock:
            return set(self._roots)

    @property
    @abc.abstractmethod
    def watch_count(self) -> int: ...

    @abc.abstractmethod
    def watch(self, root: str) -> None: ...

    def unwatch(self, root: str) -> None:
        root = os.path.abspath(root)
        with self._lock:
            if root not in self._roots:
                return
            self._roots.discard(root)
            self._drop_root(root)
            self._forget_under(root)

    @abc.abstractmethod
    def _drop_root(self, root: str) -> None:
        """Stop watching what `root` covered (under the lock)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- shared by the implementations --------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed; make a new one to watch")

    def _new_root(self, root: str) -> str | None:
        """The normalised root if it needs watching, None if already covered. Roots that
        lie inside the new one are dropped from ``_roots`` (it covers them now)."""
        root = os.path.abspath(root)
        if not os.path.exists(root):
            raise FileNotFoundError(errno.ENOENT, "cannot watch a folder that does not exist",
                                    root)
        if any(_is_under(root, r) for r in self._roots):
            return None
        self._roots -= {r for r in self._roots if _is_under(r, root)}
        self._roots.add(root)
        return root

    def _forget_under(self, root: str) -> None:
        for table in (self._pending, self._seen):
            for p in [p for p in table if _is_under(p, root)]:
                del table[p]
        if not self._pending:
            self._deadline = None

    def _warn_max_watches(self, where: str) -> None:
        self._warn_once("max_watches", (
            f"file watching stopped at {self.max_watches} folders (max_watches); changes "
            f"in further folders, from {where} on, are not relayed to containers, so "
            "their file watchers miss them. Bind-mount a smaller folder, or raise "
            "max_watches."))

    def _warn_once(self, key: str, message: str) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
            self.warnings.append(message)
        log.warning("%s", message)

    def _report_event(self, path: str, kind: str, *, unless_unchanged: bool = False) -> None:
        """Note that `path` was modified, or was created/deleted/moved in its folder."""
        target = path if kind == MODIFIED else os.path.dirname(path)
        self._report(target, kind, unless_unchanged=unless_unchanged)

    def _report(self, target: str, kind: str, *, unless_unchanged: bool = False) -> None:
        """Add a Change for `target` to the batch. Skipped when the target is gone (its
        disappearance is reported on its parent) and, with `unless_unchanged`, when its
        (mode, mtime, size) is what was last reported: that is our own chmod coming back."""
        with self._lock:
            is_root = target in self._roots
        try:
            st = os.stat(target) if is_root else os.lstat(target)
        except OSError:
            return
        if stat.S_ISLNK(st.st_mode):
            self._report(os.path.dirname(target), kind, unless_unchanged=unless_unchanged)
            return
        key = (st.st_mode, st.st_mtime_ns, st.st_size)
        with self._lock:
            if unless_unchanged and self._seen.get(target) == key:
                return
            self._seen.pop(target, None)
            self._seen[target] = key
            if len(self._seen) > SEEN_LIMIT:
                del self._seen[next(iter(self._seen))]
            self._pending[target] = Change(target, stat.S_IMODE(st.st_mode), kind)
            if self._deadline is None:
                self._deadline = time.monotonic() + self.batch_seconds

    def _take_batch(self, *, due_only: bool = True) -> list[Change]:
        with self._lock:
            if not self._pending:
                return []
            if due_only and self._deadline is not None and time.monotonic() < self._deadline:
                return []
            batch = list(self._pending.values())
            self._pending.clear()
            self._deadline = None
            return batch

    def _deliver(self, batch: list[Change]) -> None:
        if not batch:
            return
        try:
            self._on_changes(batch)
        except Exception:
            log.exception("file change handler failed on %d changes", len(batch))


# -- inotify (Linux) ---------------------------------------------------------------------

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = getattr(os, "O_CLOEXEC", 0o2000000)

WATCH_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO
              | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_EXCL_UNLINK)

EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then name[len]
READ_SIZE = 64 * 1024


def parse_events(buf: bytes) -> Iterator[tuple[int, int, int, str]]:
    """(wd, mask, cookie, name) for each struct inotify_event in `buf`."""
    offset = 0
    while offset + EVENT.size <= len(buf):
        wd, mask, cookie, length = EVENT.unpack_from(buf, offset)
        offset += EVENT.size
        raw = buf[offset:offset + length]
        offset += length
        yield wd, mask, cookie, os.fsdecode(raw.split(b"\0", 1)[0])


class _Libc:
    """The three inotify calls, from the C library already loaded in this process."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(None, use_errno=True)
        if not hasattr(lib, "inotify_init1"):
            raise OSError(errno.ENOSYS, "this C library has no inotify")
        self.init1 = lib.inotify_init1
        self.init1.argtypes = [ctypes.c_int]
        self.init1.restype = ctypes.c_int
        self.add_watch = lib.inotify_add_watch
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.add_watch.restype = ctypes.c_int
        self.rm_watch = lib.inotify_rm_watch
        self.rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        self.rm_watch.restype = ctypes.c_int


_libc: _Libc | None = None


def _get_libc() -> _Libc:
    global _libc
    if _libc is None:
        _libc = _Libc()
    return _libc


class InotifyWatcher(Watcher):
    """One inotify watch per folder; one reader thread waiting in poll() on the inotify
    descriptor and on a wakeup pipe that close() writes to.

    A renamed folder loses its watches and the new name is watched afresh (inotify
    watches follow the inode, so the old paths would otherwise be wrong). The kernel's
    own limit (fs.inotify.max_user_watches) is reported like ``max_watches``.
    """

    def __init__(self, on_changes: OnChanges, batch_seconds: float = 0.1,
                 max_watches: int = 20000) -> None:
        super().__init__(on_changes, batch_seconds, max_watches)
        self._libc = _get_libc()
        fd = self._libc.init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            if err == errno.EMFILE:
                raise OSError(err, "no inotify instance left for this user; raise "
                                   "fs.inotify.max_user_instances")
            raise OSError(err, f"inotify_init1 failed: {os.strerror(err)}")
        self._fd = fd
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._wd_path: dict[int, str] = {}
        self._path_wd: dict[str, int] = {}
        self._released = False
        self._thread = threading.Thread(target=self._run, name="cove-filewatch", daemon=True)
        self._thread.start()

    @property
    def watch_count(self) -> int:
        with self._lock:
            return len(self._wd_path)

    def watch(self, root: str) -> None:
        with self._lock:
            self._check_open()
            new = self._new_root(root)
            if new is not None:
                self._add_tree(new, announce=False)

    def _drop_root(self, root: str) -> None:
        self._remove_tree(root)

    def close(self) -> None:
        """Stops the reader thread (within CLOSE_TIMEOUT unless on_changes is stuck) and
        closes the inotify descriptor. Safe to call twice, and from on_changes."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self._released:
                try:
                    os.write(self._wake_w, b"x")
                except OSError:
                    pass
        if threading.current_thread() is self._thread:
            return  # the thread frees everything as it leaves
        self._thread.join(CLOSE_TIMEOUT)
        if self._thread.is_alive():
            log.warning("file watcher thread did not stop within %.0fs (on_changes is busy); "
                        "it stops when the handler returns", CLOSE_TIMEOUT)
            return
        self._release()

    # -- watches ---------------------------------------------------------------------------

    def _add_watch(self, path: str, is_root: bool) -> bool:
        """Watch one folder (or a root file). False when no more watches may be added."""
        if len(self._wd_path) >= self.max_watches:
            self._warn_max_watches(path)
            return False
        mask = WATCH_MASK
        if not is_root:
            mask |= IN_ONLYDIR | IN_DONT_FOLLOW
        wd = self._libc.add_watch(self._fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            if err == errno.ENOSPC:
                self._warn_once("max_user_watches", (
                    f"the system's inotify watch limit is reached at {path}; changes in "
                    "further folders are not relayed to containers. Raise "
                    "fs.inotify.max_user_watches (sysctl), or bind-mount a smaller folder."))
                return False
            log.debug("not watching %s: %s", path, os.strerror(err))
            return True
        old = self._wd_path.get(wd)
        if old is not None and self._path_wd.get(old) == wd:
            del self._path_wd[old]  # same folder reached by another path (renamed, bind)
        self._wd_path[wd] = path
        self._path_wd[path] = wd
        return True

    def _add_tree(self, top: str, announce: bool) -> None:
        """Watch `top` and the folders below it, not following symlinks. With `announce`
        (a folder that appeared while we watched), folders that already hold entries are
        reported as created: those entries may have been made before the watch was."""
        is_root = top in self._roots
        if not os.path.isdir(top):
            if is_root:
                self._add_watch(top, is_root=True)
            return
        for dirpath, dirnames, filenames in os.walk(top, followlinks=False,
                                                     onerror=self._walk_error):
            if dirpath not in self._path_wd and not self._add_watch(
                    dirpath, is_root=is_root and dirpath == top):
                break
            if announce and (dirnames or filenames):
                self._report(dirpath, CREATED)

    @staticmethod
    def _walk_error(err: OSError) -> None:
        log.debug("not watching %s: %s", err.filename, err.strerror)

    def _remove_tree(self, top: str) -> None:
        for path in [p for p in self._path_wd if _is_under(p, top)]:
            wd = self._path_wd.pop(path)
            self._wd_path.pop(wd, None)
            self._libc.rm_watch(self._fd, wd)  # EINVAL if the kernel dropped it already

    def _forget_wd(self, wd: int) -> None:
        path = self._wd_path.pop(wd, None)
        if path is None:
            return
        if self._path_wd.get(path) == wd:
            del self._path_wd[path]
        if path in self._roots:
            self._roots.discard(path)
            log.info("watched folder %s is gone; no longer watching it", path)

    # -- reader thread ---------------------------------------------------------------------

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while not self._closed:
                with self._lock:
                    deadline = self._deadline
                timeout = None
                if deadline is not None:
                    timeout = max(0, int((deadline - time.monotonic()) * 1000) + 1)
                ready = poller.poll(timeout)
                if self._closed:
                    break
                if any(fd == self._fd for fd, _ in ready):
                    self._read()
                self._deliver(self._take_batch())
        except Exception:
            log.exception("file watcher stopped; host changes are no longer relayed")
        finally:
            self._release()

    def _read(self) -> None:
        while True:
            try:
                buf = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                return
            if not buf:
                return
            for wd, mask, _cookie, name in parse_events(buf):
                self._handle(wd, mask, name)

    def _handle(self, wd: int, mask: int, name: str) -> None:
        if mask & IN_Q_OVERFLOW:
            log.info("inotify queue overflowed; reporting every watched folder as modified")
            for root in self.roots:
                self._report(root, MODIFIED)
            return
        with self._lock:
            if mask & (IN_IGNORED | IN_UNMOUNT):
                self._forget_wd(wd)
                return
            base = self._wd_path.get(wd)
            if base is None:
                return  # a watch we removed; its queued events are stale
            path = os.path.join(base, name) if name else base
            is_dir = bool(mask & IN_ISDIR)
            if mask & IN_MOVED_FROM and is_dir:
                self._remove_tree(path)
            if mask & (IN_CREATE | IN_MOVED_TO) and is_dir:
                self._add_tree(path, announce=True)
        if mask & IN_CREATE:
            self._report_event(path, CREATED)
        if mask & (IN_MOVED_FROM | IN_MOVED_TO):
            self._report_event(path, MOVED)
        if mask & IN_DELETE:
            self._report_event(path, DELETED)
        if mask & IN_MODIFY:
            self._report_event(path, MODIFIED)
        if mask & (IN_ATTRIB | IN_CLOSE_WRITE):
            self._report_event(path, MODIFIED, unless_unchanged=True)

    def _release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
            self._closed = True
            for fd in (self._fd, self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._wd_path.clear()
            self._path_wd.clear()


# -- polling (everywhere) ----------------------------------------------------------------

class _Entry(NamedTuple):
    mode: int
    mtime_ns: int
    size: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> _Entry:
        return cls(st.st_mode, st.st_mtime_ns, st.st_size, st.st_ino)


class PollingWatcher(Watcher):
    """Stats every entry of the watched trees every `interval` seconds and compares.

    The fallback where neither inotify nor the platform's notifications can be had
    (watchdog missing, inotify's instances used up): it costs CPU in proportion to the
    tree, every interval (benchmarks/filewatch.py).
    The changes found by one scan are delivered together (a scan is its own batch).
    ``max_watches`` caps the folders scanned. A rename shows as a deleted and a created
    entry with the same inode, reported as ``moved``. Change time is not compared, so
    the guest's chmod to the same mode does not echo back.
    """

    def __init__(self, on_changes: OnChanges, batch_seconds: float = 0.1,
                 max_watches: int = 20000, interval: float = 1.0) -> None:
        super().__init__(on_changes, batch_seconds, max_watches)
        self.interval = interval
        self._snapshots: dict[str, dict[str, _Entry]] = {}
        self._dirs: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cove-filewatch-poll",
                                        daemon=True)
        self._thread.start()

    @property
    def watch_count(self) -> int:
        with self._lock:
            return sum(self._dirs.values())

    def watch(self, root: str) -> None:
        with self._lock:
            self._check_open()
            new = self._new_root(root)
            if new is None:
                return
            for gone in [r for r in self._snapshots if r not in self._roots]:
                del self._snapshots[gone], self._dirs[gone]
            budget = self.max_watches - sum(self._dirs.values())
            self._snapshots[new], self._dirs[new] = self._scan(new, budget)

    def _drop_root(self, root: str) -> None:
        self._snapshots.pop(root, None)
        self._dirs.pop(root, None)

    def close(self) -> None:
        """Stops the scanning thread; returns once it has (within CLOSE_TIMEOUT unless
        on_changes is stuck). Safe to call twice, and from on_changes."""
        self._stop.set()  # first: a scan in progress stops early and lets go of the lock
        with self._lock:
            self._closed = True
        if threading.current_thread() is not self._thread:
            self._thread.join(CLOSE_TIMEOUT)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self._scan_all()
                self._deliver(self._take_batch(due_only=False))
        except Exception:
            log.exception("file watcher stopped; host changes are no longer relayed")

    def _scan_all(self) -> None:
        with self._lock:
            budget = self.max_watches
            for root in sorted(self._roots):
                if self._stop.is_set():
                    return
                new, dirs = self._scan(root, budget)
                budget -= dirs
                self._compare(root, self._snapshots.get(root, {}), new)
                self._snapshots[root], self._dirs[root] = new, dirs

    def _scan(self, root: str, budget: int) -> tuple[dict[str, _Entry], int]:
        """Every entry under `root` (symlinks not followed) and the folders scanned."""
        out: dict[str, _Entry] = {}
        try:
            st = os.stat(root)
        except OSError:
            return out, 0
        out[root] = _Entry.of(st)
        if not stat.S_ISDIR(st.st_mode):
            return out, 0
        stack, dirs = [root], 0
        while stack and not self._stop.is_set():
            if dirs >= budget:
                self._warn_max_watches(stack[-1])
                break
            folder = stack.pop()
            dirs += 1
            try:
                with os.scandir(folder) as it:
                    entries = list(it)
            except OSError as e:
                log.debug("not scanning %s: %s", folder, e.strerror)
                continue
            for entry in entries:
                try:
                    est = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                out[entry.path] = _Entry.of(est)
                if stat.S_ISDIR(est.st_mode):
                    stack.append(entry.path)
        return out, dirs

    def _compare(self, root: str, old: dict[str, _Entry], new: dict[str, _Entry]) -> None:
        created = new.keys() - old.keys() - {root}
        deleted = old.keys() - new.keys() - {root}
        created_inos = {new[p].ino for p in created}
        deleted_inos = {old[p].ino for p in deleted}
        for p in sorted(deleted):
            self._report_event(p, MOVED if old[p].ino in created_inos else DELETED)
        for p in sorted(created):
            self._report_event(p, MOVED if new[p].ino in deleted_inos else CREATED)
        for p in sorted(old.keys() & new.keys()):
            o, n = old[p], new[p]
            # For a folder, entries coming and going are reported above: compare the mode.
            if (o.mode != n.mode) if stat.S_ISDIR(n.mode) else (o != n):
                self._report_event(p, MODIFIED)


# -- watchdog: FSEvents (macOS), ReadDirectoryChangesW (Windows) ---------------------------

class WatchdogWatcher(Watcher):
    """The platform's own recursive change notifications, through watchdog: FSEvents on
    macOS and ReadDirectoryChangesW on Windows (inotify on Linux, where the tests run it;
    Linux itself uses `InotifyWatcher`). One native watch per root, recursive; a root
    that is a file is watched through its folder, keeping that file's events only.

    The native calls watch whole trees at no cost per folder, so the folders are counted
    here instead (a walk at ``watch``, then the created, moved and deleted folders):
    ``watch_count`` and ``max_watches`` mean what they mean for the other two, and the
    events of a folder past the cap are dropped. Modifications and attribute changes are
    all checked against the last report (``unless_unchanged``): FSEvents and
    ReadDirectoryChangesW report our own chmod as a modification. Batches are handed
    over from a thread of this watcher's own (watchdog's threads only queue).
    """

    def __init__(self, on_changes: OnChanges, batch_seconds: float = 0.1,
                 max_watches: int = 20000, observer: Any = None) -> None:
        super().__init__(on_changes, batch_seconds, max_watches)
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        owner = self

        class Handler(FileSystemEventHandler):
            def dispatch(self, event: Any) -> None:
                try:
                    owner._on_event(event)
                except Exception:
                    log.exception("file watcher: an event could not be handled")

        self._handler = Handler()
        self._observer = observer if observer is not None else Observer(timeout=0.2)
        self._watches: dict[str, Any] = {}  # root: watchdog's ObservedWatch
        self._dirs: set[str] = set()  # the folders under watch (the roots' trees)
        self._file_roots: set[str] = set()
        self._wake = threading.Condition(self._lock)
        self._observer.start()
        self._thread = threading.Thread(target=self._run, name="cove-filewatch",
                                        daemon=True)
        self._thread.start()

    @property
    def watch_count(self) -> int:
        with self._lock:
            return len(self._dirs) + len(self._file_roots)

    def watch(self, root: str) -> None:
        with self._lock:
            self._check_open()
            before = set(self._roots)
            new = self._new_root(root)
            if new is None:
                return
            for taken in before - self._roots:  # inside the new root: it covers them
                self._unschedule(taken)
            self._dirs -= {d for d in self._dirs if _is_under(d, new)}
            if os.path.isdir(new):
                self._add_tree(new)
                self._watches[new] = self._observer.schedule(self._handler, new,
                                                             recursive=True)
            else:
                self._file_roots.add(new)
                self._watches[new] = self._observer.schedule(
                    self._handler, os.path.dirname(new), recursive=False)

    def _drop_root(self, root: str) -> None:
        self._unschedule(root)

    def _unschedule(self, root: str) -> None:
        w = self._watches.pop(root, None)
        if w is not None:
            try:
                self._observer.unschedule(w)
            except KeyError:
                pass  # watchdog dropped it already (its folder went)
        self._dirs -= {d for d in self._dirs if _is_under(d, root)}
        self._file_roots.discard(root)

    def close(self) -> None:
        """Stops watchdog's threads and this watcher's own; safe twice and from
        on_changes."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake.notify_all()
        self._observer.stop()
        me = threading.current_thread()
        if me is not self._observer:
            self._observer.join(CLOSE_TIMEOUT)
        if me is not self._thread:
            self._thread.join(CLOSE_TIMEOUT)

    # -- the folders counted --------------------------------------------------------------

    def _add_tree(self, top: str) -> None:
        for dirpath, _dirnames, _files in os.walk(top, followlinks=False):
            if len(self._dirs) + len(self._file_roots) >= self.max_watches:
                self._warn_max_watches(dirpath)
                return
            self._dirs.add(dirpath)

    def _watched(self, path: str) -> bool:
        """Whether an event for `path` is ours: a file root itself, a root folder itself,
        or an entry of a folder under watch."""
        if path in self._file_roots or path in self._dirs:
            return True
        return os.path.dirname(path) in self._dirs

    # -- watchdog's events (on its thread) ----------------------------------------------

    def _on_event(self, event: Any) -> None:
        kind = event.event_type
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path) if event.dest_path else ""
        with self._lock:
            if self._closed:
                return
            src_ours, dest_ours = self._watched(src), bool(dest) and self._watched(dest)
            if event.is_directory and not self._track_folders(kind, src, dest, dest_ours
                                                              if kind == "moved" else src_ours):
                return
        if kind in ("created", "deleted") and src_ours:
            self._report_event(src, CREATED if kind == "created" else DELETED)
        elif kind == "moved" and (src_ours or dest_ours):
            for path, ours in ((src, src_ours), (dest, dest_ours)):
                if ours:
                    self._report_event(path, MOVED)
        elif kind in ("modified", "attrib", "closed") and src_ours and not (
                event.is_directory and src not in self._dirs):
            self._report_event(src, MODIFIED, unless_unchanged=True)
        else:
            return
        with self._lock:
            self._wake.notify_all()

    def _track_folders(self, kind: str, src: str, dest: str, new_ours: bool) -> bool:
        """Keep the folder count right for a folder's event; False when the event needs
        no report (a root folder that went away)."""
        if kind == "deleted" and src in self._roots:
            self._roots.discard(src)
            self._unschedule(src)
            log.info("watched folder %s is gone; no longer watching it", src)
            return False
        if kind in ("deleted", "moved"):
            self._dirs -= {d for d in self._dirs if _is_under(d, src)}
        new = dest if kind == "moved" else src
        if kind in ("created", "moved") and new_ours and os.path.isdir(new) \
                and not os.path.islink(new):
            self._add_tree(new)
        return True

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._closed and (
                            self._deadline is None or time.monotonic() < self._deadline):
                        wait = None if self._deadline is None else \
                            max(0.0, self._deadline - time.monotonic())
                        self._wake.wait(wait)
                    if self._closed:
                        return
                    batch = self._take_batch()
                self._deliver(batch)
        except Exception:
            log.exception("file watcher stopped; host changes are no longer relayed")


def make_watcher(on_changes: OnChanges, **kw: Any) -> Watcher:
    """The best watcher for this host: inotify on Linux, the platform's own notifications
    through watchdog on macOS and Windows, else polling. ``interval`` is the polling
    period and is ignored by the others. Falls back to polling (with a logged warning)
    when those cannot be had: inotify's instances used up, watchdog missing."""
    interval = kw.pop("interval", None)
    if sys.platform.startswith("linux"):
        try:
            return InotifyWatcher(on_changes, **kw)
        except OSError as e:
            log.warning("inotify unavailable (%s); watching host folders by polling, "
                        "which is slower", e.strerror or e)
    elif sys.platform in ("darwin", "win32"):
        try:
            return WatchdogWatcher(on_changes, **kw)
        except (ImportError, OSError) as e:
            log.warning("the platform's change notifications are unavailable (%s); "
                        "watching host folders by polling, which is slower", e)
    if interval is not None:
        kw["interval"] = interval
    return PollingWatcher(on_changes, **kw)
