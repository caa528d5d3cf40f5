"""The shared folders of one boot: which the driver shares, the "link" ones the backend
serves itself (`desktop.services.ninep`), and the change notifications that let the
guest's file watchers see host edits in folders containers bind-mount."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

from desktop.drivers import Driver, DriverError
from desktop.drivers.shares import SharedFolder
from desktop.instance import Instance
from desktop.link import AgentError, Link, LinkError
from desktop.link.channel import ControlChannel
from desktop.services import filewatch, ninep
from desktop.settings import Settings, SettingsError, default_shares, parse_shares
from desktop.status import EventKind, ShareStatus

log = logging.getLogger(__name__)

Emit = Callable[..., Any]

RESTREAM_TRIES = 6  # new streams tried for a link share whose stream ended (~20 s)


class BootShares:
    def __init__(self, inst: Instance, emit: Emit) -> None:
        self.inst = inst
        self.emit = emit
        self.shares: list[SharedFolder] = []  # what this boot shares (settings may differ)
        self.errors: dict[str, str] = {}  # host path -> why it is not mounted
        self.servers: dict[str, ninep.ShareServer] = {}  # "link" shares, by host path
        self.touches = 0  # paths the agent was asked to touch (change notifications)
        self._watcher: filewatch.Watcher | None = None
        self._watch_lock = threading.Lock()
        self._closed = False
        self._streams: dict[int, socket.socket] = {}  # each link share's current stream
        self.restreams = 0  # link share streams replaced after one ended

    # -- what this boot shares ---------------------------------------------------------

    def resolve(self, driver: Driver, settings: Settings) -> list[SharedFolder]:
        """The settings' shares as this driver shares them. A folder the user chose that
        cannot be shared stops the start (DriverError); the default share where this
        host's hypervisor cannot share (Windows) is left out, with an event saying so."""
        try:
            shares, notes = driver.resolve_shares(parse_shares(settings.shares))
        except DriverError as e:
            if settings.shares != default_shares():
                raise  # folders the user chose: the start fails, naming why
            log.warning("the default shared folders are not shared: %s", e)
            self.emit(EventKind.SHARES_UNAVAILABLE, message=str(e))
            shares, notes = [], []
        for note in notes:
            log.info("%s", note)
            self.emit(EventKind.SHARES_NOTE, message=note)
        self.shares = shares
        return shares

    def serve_link_shares(self, link: Link, channel: ControlChannel,
                          announce: Callable[[], None],
                          alive: Callable[[], bool] = lambda: True) -> None:
        """Serve each "link" share on its own ``fs <n>`` stream and have the agent mount
        it (`announce` is called first when there is one). A share that fails is reported
        (event ``share_failed``, the status' shares) and the start goes on, as for a
        device share the guest could not mount. A stream that ends while the VM runs
        (`alive`) is replaced, and the agent mounts the share again on the new one
        (`_keep_serving`)."""
        self.servers = {}
        self.errors = {}
        served = [(i, sh) for i, sh in enumerate(self.shares) if sh.transport == "link"]
        if served:
            announce()
        for i, sh in served:
            server = ninep.ShareServer(sh.path)
            try:
                sock = link.open("fs", i)
                thread = ninep.serve_in_thread(server, sock, f"share-{i}")
                channel.request("mount_share", index=i, timeout=40)
            except LinkError as e:
                self.errors[sh.path] = str(e)
                log.error("share %s (in the VM at %s): %s", sh.path, sh.guest_path, e)
                self.emit(EventKind.SHARE_FAILED, path=sh.path, message=str(e))
                continue
            self.servers[sh.path] = server
            self._streams[i] = sock
            log.info("share %s served over the guest link at %s", sh.path, sh.guest_path)
            threading.Thread(target=self._keep_serving,
                             args=(i, sh, server, thread, link, channel, alive),
                             daemon=True, name=f"share-{i}-keep").start()

    def _keep_serving(self, i: int, sh: SharedFolder, server: ninep.ShareServer,
                      thread: threading.Thread, link: Link, channel: ControlChannel,
                      alive: Callable[[], bool]) -> None:
        """Wait for share `i`'s stream to end; while this boot runs, open a new one and
        have the agent mount the share on it (the agent replaces the dead mount: running
        containers that bind-mount it see I/O errors until restarted, new ones see the
        folder). Retried with a growing delay; after RESTREAM_TRIES the share is failed."""
        while True:
            thread.join()
            if self._closed or not alive():
                return
            why = "its stream to the host's file server ended"
            log.warning("share %s: %s; serving it on a new stream", sh.path, why)
            self.errors[sh.path] = f"{why}; reconnecting"
            for attempt in range(RESTREAM_TRIES):
                if self._closed or not alive():
                    return
                time.sleep(min(2.0 ** attempt, 10.0) / 2)
                try:
                    sock = link.open("fs", i)
                    thread = ninep.serve_in_thread(server, sock, f"share-{i}")
                    channel.request("mount_share", index=i, timeout=40)
                except LinkError as e:
                    why = str(e)
                    log.warning("share %s: a new stream failed (%s)", sh.path, e)
                    continue
                self._streams[i] = sock
                self.errors.pop(sh.path, None)
                self.restreams += 1
                log.info("share %s mounted again on a new stream", sh.path)
                break
            else:
                self.errors[sh.path] = f"{why} (after {RESTREAM_TRIES} tries)"
                self.emit(EventKind.SHARE_FAILED, path=sh.path, message=self.errors[sh.path])
                return

    def drop_stream(self, index: int) -> bool:
        """Tests only (the backend's COVE_TEST_OPS): end share `index`'s stream as a
        dropped connection would."""
        sock = self._streams.get(index)
        if sock is None:
            return False
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        return True

    def mounted(self) -> list[str]:
        """The host folders this boot shares, less any the VM could not mount (a bind of
        one would mount an empty folder: the guard refuses it with the fix instead)."""
        return [sh.path for sh in self.shares if sh.path not in self.errors]

    def vm_path_of(self, host: str) -> str | None:
        """Where host path `host` is in the VM (None: in no mounted share)."""
        for sh in self.shares:
            if sh.path not in self.errors:
                vm = sh.vm_path_of(host)
                if vm is not None:
                    return vm
        return None

    def pending(self) -> bool:
        """True when the saved settings share other folders than this boot does (the VM
        must restart to apply them)."""
        try:
            saved = parse_shares(self.inst.load_settings().shares)
        except SettingsError:
            return False
        booted = [(sh.path, sh.transport) for sh in self.shares]
        return [p for p, _ in saved] != [p for p, _ in booted] or any(
            t not in ("auto", bt) for (_, t), (_, bt) in zip(saved, booted, strict=False))

    def status(self) -> list[ShareStatus]:
        out: list[ShareStatus] = []
        for sh in self.shares:
            entry: ShareStatus = {"path": sh.path, "transport": sh.transport,
                                  "vm_path": sh.guest_path}
            if sh.path in self.errors:
                entry["error"] = self.errors[sh.path]
            if sh.path in self.servers:
                entry["served"] = dict(self.servers[sh.path].stats)
            out.append(entry)
        return out

    # -- change notifications ----------------------------------------------------------

    def watch_binds(self, sources: list[str], channel: Callable[[], ControlChannel | None]
                    ) -> None:
        """Watch the shared folders containers bind-mount, for the guest's watchers (on a
        thread of its own: walking a large tree must not delay the container's create)."""
        threading.Thread(target=self._watch_now, args=(sources, channel), daemon=True,
                         name="watch-binds").start()

    def _watch_now(self, sources: list[str],
                   channel: Callable[[], ControlChannel | None]) -> None:
        with self._watch_lock:
            if self._closed:
                return
            if self._watcher is None:
                self._watcher = filewatch.make_watcher(
                    lambda changes: self.send_changes(changes, channel()))
            for src in sources:
                root = src if os.path.isdir(src) else os.path.dirname(src)
                try:
                    self._watcher.watch(root)
                except (OSError, RuntimeError) as e:
                    log.info("not watching %s: %s", root, e)

    def send_changes(self, changes: list[filewatch.Change],
                     channel: ControlChannel | None) -> None:
        if channel is None or not channel.connected.is_set():
            return
        # The VM's paths: on Windows C:\\Users\\me\\x is /mnt/host/c/Users/me/x there.
        # Each with its mode and change time read now: the agent leaves a path alone
        # whose inode changed after that (a container's chmod in the meantime must not
        # be turned back to the mode read here).
        moved = []
        for c in changes:
            if (vm := self.vm_path_of(c.path)) is None:
                continue
            try:
                st = os.lstat(c.path)
            except OSError:
                continue  # gone again: its folder's change is reported
            moved.append([vm, stat.S_IMODE(st.st_mode), st.st_ctime_ns])
        if not moved:
            return
        try:
            done = channel.request("touch", changes=moved, timeout=10)
            self.touches += int(done or 0)
        except (LinkError, AgentError) as e:
            log.debug("change notification failed: %s", e)

    def close(self) -> None:
        """No more watching (the backend stops)."""
        with self._watch_lock:
            self._closed = True
            if self._watcher is not None:
                self._watcher.close()
                self._watcher = None
