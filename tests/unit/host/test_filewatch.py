"""Host file watching: the three implementations against real files in tmp_path
(watchdog with its inotify backend here; FSEvents and ReadDirectoryChangesW only on
macOS and Windows).

Reports arrive on the watcher's thread; `Recorder.wait_for` waits for one with a deadline.
Where a test needs to show that something is *not* reported, it makes a later change
("sentinel") and waits for that instead of sleeping: reports come in order, so anything
the first change raised has arrived by then.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from desktop.services import filewatch
from desktop.services.filewatch import Change

# watchdog's inotify backend (what runs its kind here) warns from its own thread when a
# new folder's watch is added twice ("Callback with id ... already exists"): its own
# bookkeeping, harmless, and not the backend Cove uses on macOS or Windows. With every
# warning an error, that warning would end its thread.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Callback with id .* already exists:RuntimeWarning")

WAIT = 5.0
POLL_INTERVAL = 0.05

KINDS = ["inotify", "polling", "watchdog"]


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[Change]] = []
        self.cond = threading.Condition()
        self.threads: set[threading.Thread] = set()

    def __call__(self, batch: list[Change]) -> None:
        with self.cond:
            self.batches.append(batch)
            self.threads.add(threading.current_thread())
            self.cond.notify_all()

    @property
    def changes(self) -> list[Change]:
        with self.cond:
            return [c for b in self.batches for c in b]

    def wait_for(self, pred: Callable[[Change], bool], timeout: float = WAIT,
                 since: int = 0) -> Change:
        """The first change (from the `since`-th on) that matches `pred`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for c in [c for b in self.batches for c in b][since:]:
                    if pred(c):
                        return c
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching change within {timeout}s; got "
                                         f"{self.batches}")
                self.cond.wait(left)

    def wait_change(self, path: Path | str, kind: str, since: int = 0) -> Change:
        return self.wait_for(lambda c: c.path == str(path) and c.kind == kind, since=since)

    def clear(self) -> None:
        with self.cond:
            self.batches.clear()


Factory = Callable[..., tuple[filewatch.Watcher, Recorder]]


@pytest.fixture(params=KINDS)
def make(request: pytest.FixtureRequest) -> Iterator[Factory]:
    kind = request.param
    if kind == "inotify" and not sys.platform.startswith("linux"):
        pytest.skip("inotify is Linux only")
    made: list[filewatch.Watcher] = []

    def factory(**kw: Any) -> tuple[filewatch.Watcher, Recorder]:
        rec = Recorder()
        w: filewatch.Watcher
        if kind == "inotify":
            w = filewatch.InotifyWatcher(rec, **kw)
        elif kind == "watchdog":
            w = filewatch.WatchdogWatcher(rec, **kw)
        else:
            w = filewatch.PollingWatcher(rec, interval=POLL_INTERVAL, **kw)
        made.append(w)
        return w, rec

    yield factory
    for w in made:
        w.close()


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def _settle(rec: Recorder, root: Path) -> None:
    """Make a change and wait for it, so that earlier changes have been reported."""
    since = len(rec.changes)
    (root / f"sentinel{since}").write_text("x")
    rec.wait_change(root, "created", since=since)


# -- the kinds of change ----------------------------------------------------------------

def test_write_reports_modified_with_the_files_mode(make: Factory, tmp_path: Path) -> None:
    f = tmp_path / "app.py"
    f.write_text("a")
    f.chmod(0o640)
    w, rec = make()
    w.watch(str(tmp_path))
    f.write_text("print('hi')")
    assert rec.wait_change(f, "modified") == Change(str(f), 0o640, "modified")


def test_created_file_reports_its_folder(make: Factory, tmp_path: Path) -> None:
    d = tmp_path / "src"
    d.mkdir()
    d.chmod(0o750)
    w, rec = make()
    w.watch(str(tmp_path))
    (d / "new.py").write_text("x")
    assert rec.wait_change(d, "created") == Change(str(d), 0o750, "created")


def test_deleted_file_reports_its_folder(make: Factory, tmp_path: Path) -> None:
    f = tmp_path / "old.txt"
    f.write_text("x")
    w, rec = make()
    w.watch(str(tmp_path))
    f.unlink()
    c = rec.wait_change(tmp_path, "deleted")
    assert c.mode == _mode(tmp_path)
    assert all(c.path != str(f) for c in rec.changes)


def test_rename_reports_both_folders_as_moved(make: Factory, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f.txt").write_text("x")
    w, rec = make()
    w.watch(str(tmp_path))
    (a / "f.txt").rename(b / "g.txt")
    rec.wait_change(a, "moved")
    rec.wait_change(b, "moved")


def test_new_subfolder_is_watched(make: Factory, tmp_path: Path) -> None:
    w, rec = make()
    w.watch(str(tmp_path))
    before = w.watch_count
    sub = tmp_path / "sub" / "deeper"
    sub.mkdir(parents=True)
    rec.wait_change(tmp_path, "created")
    f = sub / "f.txt"
    f.write_text("1")
    rec.wait_change(sub, "created")
    assert w.watch_count == before + 2
    with f.open("a") as fh:
        fh.write("2")
    rec.wait_change(f, "modified")


def test_renamed_folder_is_watched_under_its_new_name(make: Factory, tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    w, rec = make()
    w.watch(str(tmp_path))
    count = w.watch_count
    new = tmp_path / "new"
    old.rename(new)
    rec.wait_change(tmp_path, "moved")
    (new / "f.txt").write_text("x")
    rec.wait_change(new, "created")
    assert w.watch_count == count
    assert all(not c.path.startswith(str(old)) for c in rec.changes)


def test_deleted_folder_stops_being_watched(make: Factory, tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    w, rec = make()
    w.watch(str(tmp_path))
    assert w.watch_count == 2
    sub.rmdir()
    rec.wait_change(tmp_path, "deleted")
    deadline = time.monotonic() + WAIT
    while w.watch_count != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert w.watch_count == 1


# -- batching ----------------------------------------------------------------------------

def test_many_writes_coalesce_into_one_change(make: Factory, tmp_path: Path) -> None:
    f = tmp_path / "log.txt"
    f.write_text("")
    w, rec = make(batch_seconds=0.5)
    w.watch(str(tmp_path))
    for i in range(50):
        with f.open("a") as fh:
            fh.write(f"{i}\n")
    rec.wait_change(f, "modified")
    _settle(rec, tmp_path)
    reports = [c for c in rec.changes if c.path == str(f)]
    if isinstance(w, filewatch.InotifyWatcher):
        assert len(reports) == 1
    else:
        assert len(reports) <= 2  # a scan may fall in the middle of the writes
    assert reports[-1].mode == _mode(f)
    for batch in rec.batches:
        assert len({c.path for c in batch}) == len(batch)


def test_changes_in_one_folder_are_one_change_with_the_latest_kind(
        make: Factory, tmp_path: Path) -> None:
    keep = tmp_path / "keep.txt"
    keep.write_text("x")
    w, rec = make(batch_seconds=0.5)
    w.watch(str(tmp_path))
    for i in range(5):
        (tmp_path / f"n{i}.txt").write_text("x")
    keep.unlink()
    c = rec.wait_for(lambda c: c.path == str(tmp_path))
    if isinstance(w, filewatch.InotifyWatcher):
        assert c.kind == "deleted"  # polling cannot tell which came last
    _settle(rec, tmp_path)
    assert [x.path for x in rec.changes].count(str(tmp_path)) == 2  # that one, and _settle's
    assert len(rec.batches) == 2


# -- watch / unwatch ---------------------------------------------------------------------

def test_watch_is_idempotent_and_nested_roots_are_noops(make: Factory, tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    w, _ = make()
    w.watch(str(tmp_path))
    count = w.watch_count
    w.watch(str(tmp_path))
    w.watch(str(tmp_path / "a"))
    assert w.roots == {str(tmp_path)}
    assert w.watch_count == count == 3


def test_watching_a_parent_takes_over_its_watched_children(
        make: Factory, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    w, rec = make()
    w.watch(str(tmp_path / "a"))
    w.watch(str(tmp_path))
    assert w.roots == {str(tmp_path)}
    assert w.watch_count == 2
    (tmp_path / "a" / "f").write_text("x")
    rec.wait_change(tmp_path / "a", "created")


def test_a_single_file_can_be_watched(make: Factory, tmp_path: Path) -> None:
    f = tmp_path / "config.yml"
    f.write_text("a: 1")
    w, rec = make()
    w.watch(str(f))
    assert w.roots == {str(f)}
    f.write_text("a: 2")
    assert rec.wait_change(f, "modified").mode == _mode(f)


def test_watching_a_missing_folder_raises(make: Factory, tmp_path: Path) -> None:
    w, _ = make()
    with pytest.raises(FileNotFoundError):
        w.watch(str(tmp_path / "nope"))
    assert w.roots == set()


def test_unwatch_stops_reports(make: Factory, tmp_path: Path) -> None:
    gone, kept = tmp_path / "gone", tmp_path / "kept"
    gone.mkdir()
    kept.mkdir()
    w, rec = make()
    w.watch(str(gone))
    w.watch(str(kept))
    w.unwatch(str(gone))
    w.unwatch(str(gone))  # twice is fine
    assert w.roots == {str(kept)}
    assert w.watch_count == 1
    (gone / "f").write_text("x")
    (kept / "f").write_text("x")
    rec.wait_change(kept, "created")
    assert all(not c.path.startswith(str(gone)) for c in rec.changes)


def test_max_watches_caps_with_one_warning(make: Factory, tmp_path: Path) -> None:
    for i in range(10):
        (tmp_path / "big" / f"d{i}").mkdir(parents=True)
    (tmp_path / "other" / "x").mkdir(parents=True)
    w, rec = make(max_watches=3)
    w.watch(str(tmp_path / "big"))
    w.watch(str(tmp_path / "other"))
    assert w.watch_count == 3
    assert len(w.warnings) == 1
    assert "max_watches" in w.warnings[0]
    (tmp_path / "big" / "d10").mkdir()  # a new folder past the cap: no crash, no watch
    rec.wait_change(tmp_path / "big", "created")
    assert w.watch_count == 3
    assert len(w.warnings) == 1


def test_symlinked_folders_are_not_followed(make: Factory, tmp_path: Path) -> None:
    outside, root = tmp_path / "outside", tmp_path / "root"
    outside.mkdir()
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    w, rec = make()
    w.watch(str(root))
    assert w.watch_count == 1
    (outside / "f").write_text("x")
    _settle(rec, root)
    assert all(not c.path.startswith(str(outside)) for c in rec.changes)
    assert all(c.path != str(root / "link") for c in rec.changes)


# -- our own chmod coming back -----------------------------------------------------------

def test_chmod_to_the_same_mode_is_not_reported(make: Factory, tmp_path: Path) -> None:
    f, other = tmp_path / "f.txt", tmp_path / "other.txt"
    f.write_text("x")
    other.write_text("x")
    w, rec = make()
    w.watch(str(tmp_path))
    f.write_text("y")
    (tmp_path / "new.txt").write_text("x")
    reported = rec.wait_change(f, "modified")
    folder = rec.wait_change(tmp_path, "created")
    since = len(rec.changes)

    # What the guest's chmod does to the host file and folder it was told about.
    os.chmod(f, reported.mode)
    os.chmod(tmp_path, folder.mode)
    with other.open("a") as fh:
        fh.write("y")
    rec.wait_change(other, "modified", since=since)
    assert {c.path for c in rec.changes[since:]} == {str(other)}

    os.chmod(f, 0o600)
    assert rec.wait_change(f, "modified", since=since).mode == 0o600


# -- lifecycle ---------------------------------------------------------------------------

def test_reports_come_from_the_watchers_thread(make: Factory, tmp_path: Path) -> None:
    w, rec = make()
    w.watch(str(tmp_path))
    (tmp_path / "f").write_text("x")
    rec.wait_change(tmp_path, "created")
    assert threading.current_thread() not in rec.threads


def test_close_is_prompt_and_stops_the_thread(make: Factory, tmp_path: Path) -> None:
    w, rec = make()
    w.watch(str(tmp_path))
    started = time.monotonic()
    w.close()
    assert time.monotonic() - started < 1.0
    thread = w._thread  # type: ignore[attr-defined]
    assert not thread.is_alive()
    w.close()
    with pytest.raises(RuntimeError, match="closed"):
        w.watch(str(tmp_path))
    (tmp_path / "f").write_text("x")
    time.sleep(0.2)  # nothing to wait for: the thread is gone
    assert rec.changes == []


def test_close_from_the_handler(make: Factory, tmp_path: Path) -> None:
    done = threading.Event()
    holder: list[filewatch.Watcher] = []

    def handler(batch: list[Change]) -> None:
        holder[0].close()
        done.set()

    w, _ = make()
    w._on_changes = handler
    holder.append(w)
    w.watch(str(tmp_path))
    (tmp_path / "f").write_text("x")
    assert done.wait(WAIT)
    w._thread.join(WAIT)  # type: ignore[attr-defined]
    assert not w._thread.is_alive()  # type: ignore[attr-defined]


def test_a_failing_handler_does_not_stop_watching(make: Factory, tmp_path: Path) -> None:
    calls: list[list[Change]] = []

    def handler(batch: list[Change]) -> None:
        calls.append(batch)
        if len(calls) == 1:
            raise ValueError("boom")

    w, _ = make()
    w._on_changes = handler
    w.watch(str(tmp_path))
    (tmp_path / "a").write_text("x")
    deadline = time.monotonic() + WAIT
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "a").write_text("y")
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(calls) >= 2


# -- inotify specifics -------------------------------------------------------------------

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")


def test_parse_events() -> None:
    name = b"f.txt\0\0\0"
    buf = (filewatch.EVENT.pack(3, filewatch.IN_CREATE, 0, len(name)) + name
           + filewatch.EVENT.pack(-1, filewatch.IN_Q_OVERFLOW, 0, 0))
    assert list(filewatch.parse_events(buf)) == [
        (3, filewatch.IN_CREATE, 0, "f.txt"), (-1, filewatch.IN_Q_OVERFLOW, 0, "")]


@linux_only
def test_queue_overflow_reports_the_roots(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    rec = Recorder()
    with filewatch.InotifyWatcher(rec) as w:
        w.watch(str(tmp_path))
        w._handle(-1, filewatch.IN_Q_OVERFLOW, "")
        (tmp_path / "sub" / "f").write_text("x")  # wakes the reader, which delivers both
        assert rec.wait_change(tmp_path, "modified").mode == _mode(tmp_path)


@linux_only
def test_events_for_removed_watches_are_ignored(tmp_path: Path) -> None:
    rec = Recorder()
    with filewatch.InotifyWatcher(rec) as w:
        w.watch(str(tmp_path))
        w._handle(12345, filewatch.IN_MODIFY, "x")
        w._handle(12345, filewatch.IN_IGNORED, "")
        assert w.watch_count == 1


@linux_only
def test_make_watcher_uses_inotify_on_linux() -> None:
    with filewatch.make_watcher(lambda batch: None, interval=0.5) as w:
        assert isinstance(w, filewatch.InotifyWatcher)


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_make_watcher_uses_the_platforms_notifications_on_macos_and_windows(
        monkeypatch: pytest.MonkeyPatch, platform: str) -> None:
    monkeypatch.setattr(filewatch.sys, "platform", platform)
    with filewatch.make_watcher(lambda batch: None, interval=0.5) as w:
        assert isinstance(w, filewatch.WatchdogWatcher)


def test_make_watcher_falls_back_to_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    """watchdog missing (a bundle built without it): polling, said in the log."""
    import builtins

    real_import = builtins.__import__

    def no_watchdog(name: str, *a: Any, **kw: Any) -> Any:
        if name.startswith("watchdog"):
            raise ImportError("No module named 'watchdog'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_watchdog)
    monkeypatch.setattr(filewatch.sys, "platform", "darwin")
    with filewatch.make_watcher(lambda batch: None, interval=0.5) as w:
        assert isinstance(w, filewatch.PollingWatcher)
        assert w.interval == 0.5
