"""The start of one instance, step by step, from the image to a running engine.

Each step is one method of `Boot`, run in the order of `Boot.STEPS`; each announces
itself as a `starting` event with its `Step` where the user should see it. A step that
cannot be done raises (`StartError`, `DriverError`, `SettingsError`...): the backend
reports the error and stops. A stop asked for while booting ends the start between
steps, and is not an error.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import threading
import time
from typing import TYPE_CHECKING, Any

import vm_image
from desktop import context, drivers, home, ssh, windows_engine
from desktop.backend import timeouts
from desktop.drivers import VMSpec
from desktop.link.channel import ControlChannel
from desktop.platform import endpoints, winpipe
from desktop.platform.files import atomic_write
from desktop.platform.sockets import remove_socket
from desktop.services.portfwd import PortForwarder
from desktop.status import EventKind, State, Step

if TYPE_CHECKING:
    from desktop.backend.core import Backend

log = logging.getLogger(__name__)


class StartError(Exception):
    """The VM or the engine did not come up; the message says why."""


def kernel_crashed(serial: str) -> bool:
    """Whether the guest's console shows a kernel crash (not a failure of Cove's own)."""
    return any(s in serial for s in ("Kernel panic", "Oops:", "BUG:", "general protection"))


class Boot:
    STEPS = ("reclaim_orphan", "check_image", "prepare_vm", "create_disk",
             "write_boot_config", "boot_vm", "serve_link_shares", "wait_for_engine",
             "serve_engine", "forward_ports", "activate_context")

    def __init__(self, backend: Backend) -> None:
        self.b = backend
        self.image: vm_image.Image | None = None
        self.token = ""
        self.disk_blank = False
        self.boot_config: dict[str, Any] = {}
        self.restoring = False  # the driver has a saved state for this VM

    def run(self) -> None:
        """Every step in order; returns early (no error) when a stop was asked for."""
        for name in self.STEPS:
            if self.b.stop_requested():
                return
            getattr(self, name)()
        b = self.b
        b.running_at = time.time()
        b.health.answered_at = b.running_at
        b.set_state(State.RUNNING, engine_version=b.engine_version,
                    seconds=round(b.running_at - (b.started_at or 0), 1))
        b.health.start()
        b.saver.enable(True)

    def reclaim_orphan(self) -> None:
        """A VM of this instance that outlived its backend (killed) is stopped politely
        before anything touches a socket or the disk; the new boot follows."""
        b = self.b
        if b.driver is None:
            b.driver = drivers.pick(arch=b.settings.arch, accel_cache=b.inst.accel_cache)
        pid = b.driver.find_orphan(b.inst.folder)
        if pid is None:
            return
        b.set_state(State.STARTING, step=Step.ORPHAN, pid=pid)
        how = b.driver.stop_orphan(b.inst.folder)
        b.events.emit(EventKind.ORPHAN_STOPPED, pid=pid, message=f"the VM (pid {pid}) "
                      f"left running by a backend that died {how}")

    def check_image(self) -> None:
        b = self.b
        b.set_state(State.STARTING, step=Step.IMAGE)
        # Before anything boots: a stale socket goes, anything else there stays (and stops
        # the start with a message naming it).
        remove_socket(b.inst.docker_socket)
        self.image = b.image or vm_image.find_image(b.settings.arch)
        if self.image is None:
            raise StartError(vm_image.builder.missing_image_message(b.settings.arch))

    def prepare_vm(self) -> None:
        """The driver, the shares it can make, the VM's spec."""
        b, inst, s, image = self.b, self.b.inst, self.b.settings, self.image
        assert image is not None
        assert b.driver is not None
        shares = b.boot_shares.resolve(b.driver, s)
        b.spec = VMSpec(
            name=inst.name, folder=inst.folder, kernel=image.kernel,
            initramfs=image.initramfs, root_image=image.root, data_disk=inst.data_disk,
            boot_config=inst.boot_config, cpus=s.cpus, memory_mib=s.memory_mib,
            disk_gib=s.disk_gib, arch=s.arch, shares=shares,
        )

    def create_disk(self) -> None:
        b = self.b
        assert b.driver is not None and b.spec is not None
        b.set_state(State.STARTING, step=Step.DISK)
        self.disk_blank = bool(b.driver.create(b.spec))

    def write_boot_config(self) -> None:
        """What the guest needs from the host: the link's secret, the engine's config, the
        shares, whether the data disk is provably blank (only then may it be formatted).
        A VM restored from a saved state read its config at its boot: that one again."""
        b, inst = self.b, self.b.inst
        assert b.spec is not None and b.driver is not None
        saved, why = b.driver.saved(b.spec) if not self.restoring else (None, "")
        if why:
            self._not_restored(why)
        config = saved.get("boot_config") if isinstance(saved, dict) else None
        if isinstance(config, dict) and isinstance(config.get("token"), str):
            self.restoring, self.token, self.boot_config = True, config["token"], config
            self._save_boot_config()
            return
        self.restoring = False
        self.token = secrets.token_hex(32)
        self.boot_config = {
            "token": self.token, "network": "user",
            "engine_config": b.settings.engine_config,
            "ssh_authorized_key": ssh.ensure_key(inst.folder),
            "shares": [sh.boot_entry() for sh in b.spec.shares],
            "data_disk_blank": self.disk_blank,
            "containers_reach_host_loopback": b.settings.containers_reach_host_loopback}
        self._save_boot_config()

    def _save_boot_config(self) -> None:
        """The file the guest reads, with this boot's private host ports (each attempt
        picks its own)."""
        b = self.b
        assert b.driver is not None
        self.boot_config["private_host_ports"] = b.driver.private_host_ports()
        b.boot_config = self.boot_config
        atomic_write(b.inst.boot_config, json.dumps(self.boot_config), 0o600)  # token: 0600

    def boot_vm(self) -> None:
        """Power on and wait for the agent's hello; a guest kernel that crashed while
        booting (it happens under emulation) is booted once more. A saved state is
        restored instead where there is one; if that fails, the VM boots."""
        if self.restoring and not self._restore():
            if self.b.stop_requested():
                return
            self.restoring = False
            self.write_boot_config()  # a boot: a new token, newly picked ports
        if not self.restoring:
            for attempt in (1, 2):
                if self._boot_once(attempt):
                    break
                if self.b.stop_requested():
                    return
        threading.Thread(target=self.b.watch_vm, daemon=True, name="vm-watch").start()

    def _restore(self) -> bool:
        """Load the saved state and reach its agent (True); False when the VM must boot
        (the state is gone by then: a state is loaded once)."""
        b = self.b
        assert b.driver is not None and b.spec is not None
        b.set_state(State.STARTING, step=Step.RESTORE)
        b.driver.watch(b.on_resume)
        try:
            b.driver.start(b.spec)
        except drivers.RestoreError as e:
            self._not_restored(str(e))
            return False
        if self._connect(timeouts.RESTORE_AGENT_TIMEOUT):
            b.restored = True
            b.events.emit(EventKind.SAVED_STATE, action="restored",
                          message="the VM's saved state was restored")
            return True
        b.driver.kill()  # the state is already deleted: the disk is as at a power cut
        if not b.stop_requested():
            self._not_restored("the restored guest's agent did not answer")
        return False

    def _not_restored(self, why: str) -> None:
        log.warning("the saved VM state was not restored (%s); booting instead", why)
        self.b.events.emit(EventKind.SAVED_STATE, action="not_restored",
                           message=f"the saved VM state was not restored: {why}; "
                                   "the VM boots instead")

    def _connect(self, timeout: float) -> bool:
        """The link and control channel to the VM just started; whether its agent said
        hello within `timeout`."""
        b, inst = self.b, self.b.inst
        assert b.driver is not None
        if (ssh_at := b.driver.ssh_address()) is not None:
            ssh.write_config(inst.folder, inst.context_name, ssh_at[1])
        b.link = b.driver.make_link(self.token)
        b.channel = ControlChannel(b.link, b.on_agent_event, b.on_link_state)
        b.set_state(State.STARTING, step=Step.AGENT, accel=b.driver.accel,
                    accel_notes=b.driver.accel_notes)
        return b.channel.wait_connect(timeout,
                                      alive=lambda: b.vm_alive() and not b.stop_requested())

    def _boot_once(self, attempt: int) -> bool:
        b, inst = self.b, self.b.inst
        assert b.driver is not None and b.spec is not None and self.image is not None
        b.set_state(State.STARTING, step=Step.VM, image=self.image.key, attempt=attempt)
        b.driver.watch(b.on_resume)
        if attempt > 1:
            self._save_boot_config()
        b.driver.start(b.spec)
        if self._connect(timeouts.AGENT_TIMEOUT):
            return True
        if b.stop_requested():
            return False
        if attempt == 1 and not b.vm_alive() and kernel_crashed(b.serial_tail(400)):
            # Software emulation on SMP guests occasionally trips the kernel's live
            # code patching early in boot ("Oops: int3"); a second boot gets past it.
            log.warning("the guest kernel crashed while booting; booting it again")
            # Moved, not copied: the next boot would keep the crashed one's console as
            # the previous boot's and lose the one before, which tells why the VM last
            # stopped (the agent's exit, a power-off).
            crash = inst.path(home.SERIAL_CRASH_LOG)
            try:
                inst.serial_log.replace(crash)
            except OSError:  # still held open (a Windows pipe reader): a copy then
                shutil.copyfile(inst.serial_log, crash)
            return False
        raise StartError("the guest agent did not answer " + b.why_not_up())

    def serve_link_shares(self) -> None:
        b = self.b
        assert b.link is not None and b.channel is not None
        b.boot_shares.serve_link_shares(
            b.link, b.channel, lambda: b.set_state(State.STARTING, step=Step.SHARES),
            alive=lambda: b.vm_alive() and not b.stop_requested())

    def wait_for_engine(self) -> None:
        b = self.b
        b.set_state(State.STARTING, step=Step.ENGINE,
                    agent_version=b.agent_hello.get("agent_version"))
        deadline = time.monotonic() + timeouts.ENGINE_TIMEOUT
        while not b.engine_up.wait(0.2):
            if b.stop_requested():
                return  # asked to stop while booting: not an error
            if b.agent_hello.get("engine_state") == "failed":
                raise StartError("the engine cannot start: "
                                 + str(b.agent_hello.get("engine_error") or "unknown error"))
            if not b.vm_alive() or time.monotonic() > deadline:
                raise StartError("the engine did not start " + b.why_not_up())
        b.clock.push(b.channel)

    def serve_engine(self) -> None:
        """docker.sock (or Cove's pipe, and docker_engine when free) to the engine."""
        b = self.b

        def skipped(note: str) -> None:  # docker_engine held by Docker Desktop, say
            b.events.emit(EventKind.ENDPOINT_SKIPPED, message=note)

        try:
            listeners = endpoints.listen_engine(b.inst, b.settings.docker_engine_pipe, skipped)
        except OSError as e:
            raise StartError(f"cannot serve the engine API: {e}") from e
        for listener in listeners:
            if getattr(listener, "name", None) == winpipe.DOCKER_ENGINE:
                b.engine_socket.docker_engine_served = True
                b.serve(listener, b.engine_socket.forward_docker_engine, "docker_engine")
            else:
                b.serve(listener, b.engine_socket.forward_docker, "docker")

    def forward_ports(self) -> None:
        b = self.b
        link = b.link
        assert link is not None

        def open_stream(op: str, port: int) -> Any:
            return link.open(op, port)

        b.forwarder = PortForwarder(open_stream, b.events.emit,
                                    expose_all=b.settings.expose_ports_on_all_interfaces,
                                    use=b.saver.use)
        b.forwarder.reset(b.guest_ports)

    def activate_context(self) -> None:
        """The instance's docker context, made current unless the user said not to."""
        inst = self.b.inst
        try:
            mode = windows_engine.load_mode(inst.home)
        except windows_engine.EngineStateError as e:
            log.warning("%s; the Linux engine is assumed", e)
            mode = "linux"
        if mode == "windows":
            # Switched to Windows containers: the context stays on that engine (the VM
            # still runs, for `cove engine use linux` to switch back at once).
            log.info("Windows containers are active: the %s context is left on them",
                     inst.context_name)
            return
        try:
            context.create(inst.context_name, endpoints.docker_host(inst),
                           f"Cove ({inst.name})")
            if not inst.no_activate_marker.exists():
                context.use(inst.context_name, remember=inst.previous_context)
        except context.ContextError as e:
            # The engine runs; only the docker CLI's default is left as the user had it.
            log.warning("the docker context is not made current: %s", e)
            self.b.events.emit(EventKind.CONTEXT_NOT_SET, message=str(e))
