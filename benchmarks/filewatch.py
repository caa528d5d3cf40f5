"""Host file watching on a large tree: what a watched repository costs the host.

A tree of `FILES` files in `FOLDERS` folders (a `node_modules` or a monorepo's size) is
watched by each implementation in turn, in this process. Per run:
* idle CPU: this process's CPU time over `WINDOW` seconds with nothing changing, as % of
  one core (the watcher's thread is the only thing running);
* latency: from one file's write to its change being reported;
* set-up: the `watch()` call on the whole tree.
Each inotify and watchdog figure has the polling fallback (1 s interval, what macOS and
Windows had before watchdog) measured in the same run as its baseline. No VM is involved.
watchdog runs on its inotify backend here; its FSEvents and ReadDirectoryChangesW
backends, the ones Cove uses, can only be measured on macOS and Windows.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import Figure
from desktop.services import filewatch

FOLDERS = 1000
FILES = 100_000
WINDOW = 5.0


def _tree(root: Path) -> None:
    per = FILES // FOLDERS
    for d in range(FOLDERS):
        folder = root / f"pkg{d // 50}" / f"mod{d}"
        folder.mkdir(parents=True)
        for f in range(per):
            (folder / f"f{f}.js").write_bytes(b"x")


def _measure(kind: str, root: Path) -> tuple[float, float, float]:
    """(idle CPU % of a core, change latency ms, watch() set-up s) for one watcher."""
    reported = threading.Event()
    target = str(root / "pkg3" / "mod170" / "f7.js")

    def on_changes(batch: list[filewatch.Change]) -> None:
        if any(c.path == target for c in batch):
            reported.set()

    w: filewatch.Watcher
    if kind == "inotify":
        w = filewatch.InotifyWatcher(on_changes, max_watches=FOLDERS * 2)
    elif kind == "watchdog":
        w = filewatch.WatchdogWatcher(on_changes, max_watches=FOLDERS * 2)
    else:
        w = filewatch.PollingWatcher(on_changes, max_watches=FOLDERS * 2, interval=1.0)
    try:
        t0 = time.perf_counter()
        w.watch(str(root))
        setup = time.perf_counter() - t0
        time.sleep(1.0)  # past the first scan or the first events
        c0, t0 = time.process_time(), time.perf_counter()
        time.sleep(WINDOW)
        idle = (time.process_time() - c0) / (time.perf_counter() - t0) * 100
        reported.clear()
        t0 = time.perf_counter()
        with open(target, "ab") as f:
            f.write(b"y")
        if not reported.wait(10):
            raise RuntimeError(f"{kind}: the change was not reported in 10 s")
        latency = (time.perf_counter() - t0) * 1000
    finally:
        w.close()
    return idle, latency, setup


def run(runs: int) -> tuple[list[Figure], str]:
    if not sys.platform.startswith("linux"):
        raise SystemExit("the filewatch benchmark compares inotify with polling: Linux only")
    base = Path(tempfile.mkdtemp(prefix="cove-bench-watch-"))
    try:
        _tree(base)
        got: dict[str, list[tuple[float, float, float]]] = {
            "inotify": [], "polling": [], "watchdog": []}
        for _ in range(runs):
            for kind in got:
                got[kind].append(_measure(kind, base))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    ino, poll, wd = got["inotify"], got["polling"], got["watchdog"]
    size = f"{FILES:,} files in {FOLDERS:,} folders".replace(",", " ")
    notes = [f"{size}; {os.cpu_count()} CPUs; idle window {WINDOW:.0f} s"]
    return [
        Figure(f"inotify: host CPU while {size} are watched, idle", "% core",
               [x[0] for x in ino], "polling, 1 s interval", [x[0] for x in poll],
               notes=notes),
        Figure("inotify: a file's write to its reported change", "ms", [x[1] for x in ino],
               "polling, 1 s interval", [x[1] for x in poll]),
        Figure(f"inotify: watch() of {size}", "s", [x[2] for x in ino],
               "polling, 1 s interval (the first scan)", [x[2] for x in poll]),
        Figure("watchdog (its inotify backend here; FSEvents, ReadDirectoryChangesW on "
               "macOS, Windows): host CPU, idle", "% core", [x[0] for x in wd],
               "polling, 1 s interval", [x[0] for x in poll]),
        Figure("watchdog: a file's write to its reported change", "ms",
               [x[1] for x in wd], "polling, 1 s interval", [x[1] for x in poll]),
    ], "none"
