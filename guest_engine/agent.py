"""The agent's main program: boot, serve the link, supervise the engine, power off.

Started by tini as the first real process of the guest (`/sbin/init`). It never returns:
whatever happens, the VM ends powered off, after a clean unmount when it can.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from guest_engine import __version__, boot, dockerapi, engine, protocol, server
from guest_engine.diskwatch import DiskWatcher
from guest_engine.ports import PortWatcher

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not imported at run time: boot time under emulation
    from collections.abc import Callable
    from typing import Any

log = logging.getLogger("guest_engine")

RB_POWER_OFF = 0x4321FEDC
KEY_POWER = 116
EV_KEY = 1
TIME_DRIFT_NS = 100_000_000  # correct the clock when it is off by more than 100 ms
TRIM_INTERVAL = 24 * 3600
SSH_PORT = 22
LOGS = ("dockerd", "containerd", "agent")  # what the ``logs`` op reads


class OpError(Exception):
    """A control op refused or failed: the host gets ``{"ok": false, "error": <message>}``."""


def start_ssh(authorized_key: str) -> None:
    """dropbear for `cove shell` and IDEs: key login only, host keys made per boot."""
    ssh = boot.paths.VM_ROOT_HOME / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    (ssh / "authorized_keys").write_text(authorized_key.strip() + "\n")
    (ssh / "authorized_keys").chmod(0o600)
    Path("/etc/dropbear").mkdir(exist_ok=True)
    subprocess.Popen(["dropbear", "-R", "-E", "-s", "-p", str(SSH_PORT)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=open(boot.paths.RUN_DIR / "dropbear.log", "ab"))  # noqa: SIM115


class Agent:
    def __init__(self, info: boot.BootInfo) -> None:
        self.info = info
        self.started = time.monotonic()
        self.agent_start = engine.uptime()
        self.shutdown_requested = threading.Event()
        self.shutdown_reason = ""
        self.link = server.LinkServer("", self)
        self.engine = engine.Engine(self.link.broadcast)
        self.ports = PortWatcher(self.link.broadcast, own_ports={protocol.AGENT_PORT, SSH_PORT})
        self.disk = DiskWatcher(str(boot.paths.DATA_MOUNT), self.link.broadcast,
                                boot.disk.fstrim)
        self.time_adjustments = 0
        self._time_lock = threading.Lock()
        self._time_mono: int | None = None  # the host's monotonic ns of the last push
        # The control channel's ops (docs/protocol.md): op name -> handler. A handler
        # returns the reply's result or raises OpError; `handle` frames both.
        self.ops: dict[str, Callable[[dict[str, Any]], Any]] = {
            "hello": self._op_hello, "ping": self._op_ping, "status": self._op_status,
            "set_time": self._op_set_time, "engine_config": self._op_engine_config,
            "logs": self._op_logs, "ports": self._op_ports, "touch": self._op_touch,
            "mount_share": self._op_mount_share, "shutdown": self._op_shutdown,
            "trim": lambda req: self.disk.trim_now(),
            "release_memory": lambda req: release_memory(),
        }
        self._share_streams: dict[int, socket.socket] = {}
        self._share_cv = threading.Condition()
        # Set once no share waits for the host's file server: dockerd starts then.
        self.shares_ready = threading.Event()
        self._check_shares_ready()

    # -- Controller ------------------------------------------------------------------

    def hello_events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = [{"event": "hello", **self.hello()}]
        if self.engine.state == "running":
            events.append({"event": "engine", "state": "running",
                           "version": self.engine.version, "ready_at": self.engine.ready_at})
        if self.disk.last:
            events.append({"event": "disk", **self.disk.last})
        # Always, even empty: after a reconnect the host drops what the guest no longer has.
        events.append({"event": "ports", "added": self.ports.snapshot(), "removed": [],
                       "snapshot": True})
        return events

    def hello(self) -> dict[str, Any]:
        return {
            "agent_version": __version__,
            "engine_version": self.engine.version,
            "engine_state": self.engine.state,
            "engine_error": self.engine.error,
            "kernel": os.uname().release,
            "arch": os.uname().machine,
            "image": _read_json("/etc/cove/image.json").get("key", ""),
            "boot_id": _read("/proc/sys/kernel/random/boot_id"),
            "agent_start": self.agent_start,
            "engine_ready_at": self.engine.ready_at,
            "errors": self.info.errors,
            "share_guard": self.info.share_guard,
        }

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        """Answer one control request: ``{"ok": true, "result": ...}`` from its op's
        handler, or ``{"ok": false, "error": ...}`` for an unknown op or an `OpError`.
        Any other exception is the session's to report (`server.ControlSession`)."""
        op = req.get("op")
        handler = self.ops.get(op) if isinstance(op, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown op {op!r}"}
        try:
            return {"ok": True, "result": handler(req)}
        except OpError as e:
            return {"ok": False, "error": str(e)}

    # -- control ops: each takes the request and returns the reply's result --------------

    def _op_hello(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.hello()

    def _op_ping(self, req: dict[str, Any]) -> str:
        return "pong"

    def _op_status(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.status()

    def _op_set_time(self, req: dict[str, Any]) -> dict[str, Any]:
        mono = req.get("mono")
        return self.set_time(int(req["ns"]), int(mono) if mono is not None else None)

    def _op_engine_config(self, req: dict[str, Any]) -> str:
        ok, message = self.engine.apply_config(req.get("config"))
        if not ok:
            raise OpError(message)
        return message

    def _op_logs(self, req: dict[str, Any]) -> str:
        name = req.get("name", "dockerd")
        if name not in LOGS:
            raise OpError(f"unknown log {name!r}: {', '.join(LOGS)}")
        return engine.tail_log(name, int(req.get("lines", 200)))

    def _op_ports(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        return self.ports.snapshot()

    def _op_touch(self, req: dict[str, Any]) -> int:
        return self.touch(req.get("changes") or [])

    def _op_mount_share(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.mount_share(req.get("index"), float(req.get("wait", 10)))

    def _op_shutdown(self, req: dict[str, Any]) -> str:
        self.request_shutdown("requested by the host")
        return "shutting down"

    def status(self) -> dict[str, Any]:
        mem = _meminfo()
        st: dict[str, Any] = {
            **self.hello(),
            "uptime": engine.uptime(),
            "load": _read("/proc/loadavg").split()[:3],
            "memory": {"total": mem.get("MemTotal", 0), "available": mem.get("MemAvailable", 0)},
            "disk": self.info.disk,
            "network": self.info.network,
            "shares": self.info.shares,
            "resolver": self.info.resolver,
            "balloon": self.info.balloon,
            "restarts": {"dockerd": self.engine.dockerd.restarts,
                         "containerd": self.engine.containerd.restarts},
            "time_adjustments": self.time_adjustments,
            "time_ns": time.time_ns(),
            "agent_rss": _rss_kib(),
        }
        try:
            vfs = os.statvfs(boot.paths.DATA_MOUNT)
            st["disk_usage"] = {"size": vfs.f_blocks * vfs.f_frsize,
                                "free": vfs.f_bavail * vfs.f_frsize}
        except OSError:
            pass
        return st

    def touch(self, changes: list) -> int:
        """Raise inotify events for host-side changes: chmod each path to the mode the
        host reported (a no-op on the host, an IN_ATTRIB for watchers in the VM).
        Only paths inside a mounted share are touched; returns how many were.

        An item may carry the change time the host read with the mode ([path, mode,
        ctime_ns]): a path whose inode changed since (a container's chmod meanwhile)
        is left alone, so the host's older mode never undoes it."""
        roots = [sh["path"] for sh in self.info.shares if not sh.get("error")]
        done = 0
        for item in changes:
            try:
                path, mode = str(item[0]), int(item[1])
                extra = item[2] if len(item) > 2 else None  # else ignored, as before
                ctime = extra if isinstance(extra, int) and not isinstance(extra, bool) \
                    else None
            except (TypeError, ValueError, LookupError):  # LookupError: a dict item
                continue
            root = next((r for r in roots if _inside(path, [r])), None)
            if root is None or os.path.normpath(path) != path:
                continue
            try:
                done += _chmod_beneath(root, path[len(root):].strip("/"), mode & 0o7777,
                                       ctime)
            except OSError:
                pass  # gone again, or not a folder on the way
        return done

    def share_stream(self, index: int, conn: socket.socket) -> None:
        """Keep the host's ``fs <index>`` stream until `mount_share` gives it to the kernel
        (a newer stream for the same share replaces an unused one)."""
        with self._share_cv:
            old = self._share_streams.pop(index, None)
            self._share_streams[index] = conn
            self._share_cv.notify_all()
        if old is not None:
            old.close()

    def mount_share(self, index: Any, wait: float) -> dict[str, Any]:
        """Mount host-served share `index` on its stream and return its entry; raises
        OpError with mount's message (recorded in the entry too)."""
        shares = self.info.shares
        if not isinstance(index, int) or not 0 <= index < len(shares) or \
                shares[index].get("transport") != boot.shares.LINK_TRANSPORT:
            raise OpError(f"no share {index!r} is served by the host")
        entry = shares[index]
        deadline = time.monotonic() + max(0.0, min(wait, 60.0))
        with self._share_cv:
            while index not in self._share_streams:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._share_failed(entry, f"no fs {index} stream came from the host")
                self._share_cv.wait(left)
            conn = self._share_streams.pop(index)
        if not entry.get("pending") and not entry["error"] and \
                boot.shares.is_mounted(entry["path"]):
            if boot.shares.mount_answers(entry["path"]):
                conn.close()  # mounted on an earlier stream, which still serves it
                return entry
            # The earlier stream ended: its mount gives only I/O errors. Detached, so
            # new containers bind the new mount (running ones keep the dead one).
            log.warning("share %s: its stream ended; mounting it on the new one",
                        entry["path"])
            try:
                boot.shares.detach(entry["path"])
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
                conn.close()
                raise self._share_failed(entry, str(e)) from None
        try:
            boot.shares.mount_link_share(entry, conn.fileno())
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
            raise self._share_failed(entry, str(e)) from None
        finally:
            conn.close()  # the mount keeps its own reference
        entry["error"] = ""
        entry.pop("pending", None)
        self._check_shares_ready()
        log.info("share %s mounted over the link", entry["path"])
        return entry

    def _share_failed(self, entry: dict[str, Any], error: str) -> OpError:
        """Record a failed mount in its entry; returns the error to raise."""
        entry["error"] = error
        entry.pop("pending", None)
        log.error("share %s over the link: %s", entry["path"], error)
        self._check_shares_ready()
        return OpError(error)

    def _check_shares_ready(self) -> None:
        if not any(sh.get("pending") for sh in self.info.shares):
            self.shares_ready.set()

    def set_time(self, ns: int, mono: int | None = None) -> dict[str, Any]:
        """Set the clock to the host's `ns`, taken at the host's monotonic `mono`.

        Requests are handled on threads of their own, and after a pause of the VM the
        pushes queued meanwhile arrive together: one taken earlier than one already
        applied (a smaller `mono`) is stale and ignored, or it would step the clock
        back. Reading and setting the clock happen under one lock for the same reason.
        """
        with self._time_lock:
            if mono is not None and self._time_mono is not None and mono <= self._time_mono:
                return {"adjusted": False, "stale": True, "drift_ms": 0.0}
            if mono is not None:
                self._time_mono = mono
            drift = ns - time.clock_gettime_ns(time.CLOCK_REALTIME)
            adjusted = abs(drift) > TIME_DRIFT_NS
            if adjusted:
                time.clock_settime_ns(time.CLOCK_REALTIME, ns)
                self.time_adjustments += 1
                log.info("clock corrected by %.3f s", drift / 1e9)
        return {"adjusted": adjusted, "drift_ms": round(drift / 1e6, 3)}

    # -- lifecycle -------------------------------------------------------------------

    def request_shutdown(self, reason: str) -> None:
        if not self.shutdown_requested.is_set():
            self.shutdown_reason = reason
            self.shutdown_requested.set()

    def start_engine(self) -> None:
        """Start the engine as early as the data disk allows; the rest boots meanwhile."""
        if self.info.data_device:
            if not self.shares_ready.is_set():
                self.engine.gate = self.shares_ready
            self.engine.start(self.info.config.get("engine_config"))
        else:
            # Never on an empty folder in the data disk's place: the host says why.
            why = [e for e in self.info.errors if e.startswith("data disk: ")]
            self.engine.state = "failed"
            self.engine.error = why[0] if why else "no data disk"

    def _close_host_ports(self) -> None:
        gateway = str(self.info.network.get("gateway") or "")
        ports = [p for p in self.info.config.get("private_host_ports", [])
                 if isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536]
        loopback_open = self.info.config.get("containers_reach_host_loopback", True) is not False
        if not gateway or (not ports and loopback_open):
            return
        try:
            boot.network.close_host_ports(gateway, ports, loopback_open)
        except (RuntimeError, OSError) as e:
            self.info.errors.append(f"firewall: {e}")

    def run(self) -> None:
        self.link.token = str(self.info.config.get("token", ""))
        if self.link.token:
            iface = self.info.network.get("interface")
            if iface:
                for port in (protocol.AGENT_PORT, SSH_PORT):
                    try:
                        boot.network.guard_port(port, iface)
                    except (RuntimeError, OSError) as e:
                        self.info.errors.append(f"firewall: {e}")
            self._close_host_ports()
            key = str(self.info.config.get("ssh_authorized_key", ""))
            if key:
                try:
                    start_ssh(key)
                except (RuntimeError, OSError) as e:
                    self.info.errors.append(f"ssh: {e}")
            self.link.start()
            # Beside TCP, vsock where the host has it (Hyper-V's hv_sock, a virtio-vsock
            # device); on Hyper-V it already carried the boot config (`boot.early`).
            listener = self.info.vsock or boot.vsock.vsock_listener(
                transport=boot.vsock.vsock_transport())
            if listener is not None:
                self.link.add_listener(listener)
        else:
            log.error("no token: the link stays closed")
        if self.info.data_device:
            self.ports.start()
            threading.Thread(target=self._trim_daily, daemon=True, name="fstrim").start()
            threading.Thread(target=self.disk.run, args=(self.shutdown_requested,),
                             daemon=True, name="disk-watch").start()
        threading.Thread(target=self._watch_power_button, daemon=True,
                         name="power-button").start()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGPWR):
            signal.signal(sig, lambda *_: self.request_shutdown("signal"))
        # /sbin/poweroff (run by the kernel for a power-off asked from outside, e.g.
        # Hyper-V's shutdown service) signals this pid for the clean stop.
        try:
            boot.paths.RUN_DIR.mkdir(parents=True, exist_ok=True)
            (boot.paths.RUN_DIR / "agent.pid").write_text(f"{os.getpid()}\n")
        except OSError as e:
            log.warning("cannot write the agent's pid file: %s", e)
        log.info("agent ready in %.2f s after kernel start", engine.uptime())
        self.shutdown_requested.wait()
        self.shutdown()

    def shutdown(self) -> None:
        log.info("shutting down: %s", self.shutdown_reason)
        self.link.broadcast({"event": "shutdown", "reason": self.shutdown_reason})
        self.ports.stop()
        try:
            self.engine.stop()
        except Exception:  # noqa: BLE001 - keep going to a clean unmount
            log.exception("engine stop failed")
        _kill_all_but_me()
        if self.info.data_device:
            log.info("trim: %s", boot.disk.fstrim())
            boot.disk.unmount_data_disk()
        log.info("powering off")
        power_off()

    def _trim_daily(self) -> None:
        while not self.shutdown_requested.wait(TRIM_INTERVAL):
            log.info("daily trim: %s", boot.disk.fstrim())

    def _watch_power_button(self) -> None:
        """The ACPI power button (QMP system_powerdown) starts a clean shutdown."""
        device = _power_button_device()
        if device is None:
            log.info("no power button device")
            return
        fmt = "llHHi"
        size = struct.calcsize(fmt)
        with open(device, "rb") as f:
            while True:
                data = f.read(size)
                if len(data) < size:
                    return
                _, _, etype, code, value = struct.unpack(fmt, data)
                if etype == EV_KEY and code == KEY_POWER and value == 1:
                    self.request_shutdown("ACPI power button")


def _inside(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r + "/") for r in roots)


def _chmod_beneath(root: str, rel: str, mode: int, ctime: int | None = None) -> int:
    """chmod `rel` under `root` without following a symlink anywhere on the way: each
    folder is opened from the one before with O_NOFOLLOW, so a container that swaps a
    folder for a symlink meanwhile gets ENOTDIR, never a chmod outside the share. A
    symlink at the end is left alone (Linux has no lchmod), and so is an inode changed
    after `ctime` (ns), when given. 1 if done, else 0."""
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root, flags | os.O_DIRECTORY)
    try:
        parts = rel.split("/") if rel else []
        for name in parts[:-1]:
            nxt = os.open(name, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        if parts:
            nxt = os.open(parts[-1], flags, dir_fd=fd)
            os.close(fd)
            fd = nxt
        st = os.fstat(fd)
        if stat.S_ISLNK(st.st_mode):
            return 0
        if ctime is not None and st.st_ctime_ns > ctime:
            return 0  # changed since the host read its mode: that mode is older
        os.chmod(f"/proc/self/fd/{fd}", mode)  # the very inode opened above
        return 1
    finally:
        os.close(fd)


def _power_button_device() -> str | None:
    try:
        text = Path("/proc/bus/input/devices").read_text()
    except OSError:
        return None
    for block in text.split("\n\n"):
        if 'Name="Power Button"' in block:
            for line in block.splitlines():
                if line.startswith("H: Handlers="):
                    for h in line.split("=", 1)[1].split():
                        if h.startswith("event"):
                            return f"/dev/input/{h}"
    return None


def _kill_all_but_me() -> None:
    # Spare our ancestors (tini, the init shell): if they went, the kernel would panic.
    spared = {1, os.getpid(), os.getppid()}
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    targets = [p for p in pids if p not in spared and _read(f"/proc/{p}/cmdline")]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in targets:
            try:
                os.kill(p, sig)
            except OSError:
                pass
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(_alive(p) for p in targets):
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return False


def power_off() -> None:
    import ctypes

    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.reboot(RB_POWER_OFF)
    # Only reached without CAP_SYS_BOOT (tests): exit instead.
    os._exit(0)


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip().rstrip("\0")
    except OSError:
        return ""


def _read_json(path: str) -> dict:
    import json

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


# The guest kernel reports freed pages to the hypervisor 2 s after they were freed
# (page_reporting_delay), in blocks of a pageblock (2 MiB on x86-64, 512 MiB on arm64 with
# 64 KiB pages; 2 MiB with Debian's 4 KiB ones).
REPORTING_SETTLE = 3.0


def release_memory(vm: str = "/proc/sys/vm", settle: float = REPORTING_SETTLE,
                   sleep: Callable[[float], None] = time.sleep) -> dict[str, int]:
    """Before the VM rests: give the page cache back and compact what is free, so free
    page reporting hands it to the host (whose QEMU then discards those pages). Clean
    cache only: nothing is lost, the engine's mapped programs stay, and files are read
    again from the disk when next used. {"free_before", "free_after"} in bytes."""
    before = _meminfo().get("MemFree", 0)
    os.sync()
    for name, value in (("drop_caches", "1"), ("compact_memory", "1")):
        try:
            Path(vm, name).write_text(value)
        except OSError as e:  # a kernel without compaction: the cache alone
            log.warning("release memory: %s: %s", name, e)
    sleep(settle)
    after = _meminfo().get("MemFree", 0)
    log.info("released memory before resting: free %d MiB -> %d MiB", before >> 20,
             after >> 20)
    return {"free_before": before, "free_after": after}


def _meminfo() -> dict[str, int]:
    out = {}
    for line in _read("/proc/meminfo").splitlines():
        k, _, v = line.partition(":")
        parts = v.split()
        if parts:
            out[k] = int(parts[0]) * 1024
    return out


def _rss_kib() -> int:
    for line in _read("/proc/self/status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def setup_logging() -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    try:
        boot.paths.RUN_DIR.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(boot.paths.RUN_DIR / "agent.log"))
    except OSError:
        pass
    logging.basicConfig(level=logging.INFO, handlers=handlers,
                        format="%(asctime)s cove-agent %(levelname)s %(message)s")


def main() -> int:
    if not Path("/etc/cove/image.json").exists():
        print("guest_engine runs as the VM's init; it is not meant to be started by hand",
              file=sys.stderr)
        return 2
    try:
        boot.mount_filesystems()
        setup_logging()
        log.info("cove agent %s starting %.2f s after kernel start", __version__,
                 engine.uptime())
        engine.page_in()  # while the boot's first steps run
        info = boot.BootInfo()
        boot.early(info)
        agent = Agent(info)
        agent.start_engine()
        boot.late(info)
        for err in info.errors:
            log.error("boot: %s", err)
        agent.run()
    except BaseException:  # noqa: BLE001 - PID 1's child must never just exit
        log.exception("agent failed")
        try:
            _ = subprocess.run(["sync"], timeout=5)
        finally:
            power_off()
    return 0


__all__ = ["Agent", "OpError", "main", "dockerapi"]
