"""The QEMU driver: KVM on Linux, HVF on macOS, WHPX on Windows, TCG anywhere.

The command line is built by `build_command`, a pure function of the spec, the
accelerator and the host platform, so each platform's exact command is tested here even
where it cannot run. The accelerator is probed, not assumed (`probe_accel`): a host where
/dev/kvm exists but guests hang or QEMU aborts (nested virtualisation that does not work)
falls back to TCG after one short trial boot, says why once, and remembers the verdict in
``$COVE_HOME/accel.json`` until QEMU, the kernel or the host kernel change.

Stopping is polite first (see `QemuDriver.stop`): the backend asks the agent to power
off before calling it; then ACPI powerdown over QMP, then QMP quit, then SIGKILL.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from desktop.drivers import (
    Capabilities,
    DiskError,
    DriverError,
    SharedFolder,
    VMSpec,
    link_share,
    register,
    require_folder,
)
from desktop.link import Link

log = logging.getLogger(__name__)

QEMU_BINARIES = {"amd64": "qemu-system-x86_64", "arm64": "qemu-system-aarch64"}
HOST_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
HOSTFWD_RULE = re.compile(r"(tcp|udp):127\.0\.0\.1:\d{1,5}-:\d{1,5}")
PROBE_TIMEOUT = 8.0  # a working accelerator reaches the probe's init in about 1 s
PROBE_MARKER = b"COVE-PROBE-OK"


def host_os() -> str:
    return {"linux": "linux", "darwin": "darwin", "win32": "windows"}.get(sys.platform,
                                                                          sys.platform)


def host_arch() -> str:
    return HOST_ARCH.get(platform.machine().lower(), platform.machine().lower())


def accel_candidates(os_name: str, guest_arch: str, arch: str | None = None) -> list[str]:
    """Accelerators worth trying on this host, best first; TCG is always last."""
    native = (arch or host_arch()) == guest_arch
    hw = {"linux": "kvm", "darwin": "hvf", "windows": "whpx"}.get(os_name)
    return ([hw] if hw and native else []) + ["tcg"]


@dataclass(frozen=True)
class Endpoint:
    """A socket QEMU serves: a unix path (Linux, macOS) or a localhost TCP port (Windows)."""

    path: Path | None = None
    port: int = 0

    def qemu_arg(self) -> str:
        if self.path is not None:
            return f"unix:{self.path},server=on,wait=off"
        return f"tcp:127.0.0.1:{self.port},server=on,wait=off"

    def chardev_arg(self) -> str:
        if self.path is not None:
            return f"path={self.path},server=on,wait=off"
        return f"host=127.0.0.1,port={self.port},server=on,wait=off"

    def address(self) -> str | tuple[str, int]:
        return str(self.path) if self.path is not None else ("127.0.0.1", self.port)


def opt(value: object) -> str:
    """A value inside a QEMU option string: commas are doubled (QEMU's escape)."""
    return str(value).replace(",", ",,")


# -- shared folders ---------------------------------------------------------------------

VIRTIOFSD_PATHS = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd")


@dataclass(frozen=True)
class Virtiofsd:
    """A virtiofsd binary: the Rust one (Debian 13, runs unprivileged) or QEMU's C one
    (Debian 12, QEMU <= 7.2: needs root for its sandbox)."""

    path: str
    flavour: str  # "rust" or "c"

    def usable(self, is_root: bool) -> tuple[bool, str]:
        if self.flavour == "c" and not is_root:
            return False, (f"{self.path} (QEMU's C virtiofsd) needs root; install the "
                           "virtiofsd package (Debian 13 and later) to share over virtiofs")
        return True, ""

    def command(self, socket_path: Path, folder: str, is_root: bool) -> list[str]:
        if self.flavour == "rust":
            return [self.path, f"--socket-path={socket_path}", f"--shared-dir={folder}",
                    "--cache=auto", "--announce-submounts",
                    # Unprivileged, files are created as the user who runs Cove.
                    "--sandbox=" + ("namespace" if is_root else "none")]
        return [self.path, f"--socket-path={socket_path}", "-o", f"source={folder}",
                "-o", "cache=auto", "-o", "sandbox=namespace", "-o", "announce_submounts"]


def find_virtiofsd(candidates: tuple[str, ...] = VIRTIOFSD_PATHS) -> Virtiofsd | None:
    """The first virtiofsd found (COVE_VIRTIOFSD first), with its flavour."""
    paths = [os.environ.get("COVE_VIRTIOFSD", ""), *candidates, shutil.which("virtiofsd") or ""]
    for p in paths:
        if not p or not os.access(p, os.X_OK):
            continue
        try:
            out = subprocess.run([p, "--help"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        text = out.stdout + out.stderr
        return Virtiofsd(p, "rust" if "--shared-dir" in text else "c")
    return None


def resolve_shares(shares: list[tuple[str, str]], os_name: str,
                   virtiofsd: Virtiofsd | None, is_root: bool,
                   ) -> tuple[list[SharedFolder], list[str]]:
    """(path, transport) settings as SharedFolders for QEMU on `os_name`.

    virtiofs (faster, with a shared-memory backend) needs Linux and a usable virtiofsd;
    9p is built into QEMU on Linux and macOS. "auto" takes virtiofs where it can, and
    says why not otherwise. QEMU on Windows has neither (its 9p has no Windows backend):
    there every share is served by Cove itself over the guest link ("link"), mounted
    under /mnt/host; any host may choose "link" too.
    """
    notes: list[str] = []
    vfs_ok, vfs_why = False, ""
    if os_name != "linux":
        vfs_why = "QEMU has no virtiofs on this host"
    elif virtiofsd is None:
        vfs_why = ("virtiofsd is not installed (Debian: apt-get install virtiofsd, or "
                   "qemu-system-common on Debian 12)")
    else:
        vfs_ok, vfs_why = virtiofsd.usable(is_root)
    out = []
    for i, (path, transport) in enumerate(shares):
        if os_name == "windows":
            if transport in ("virtiofs", "9p"):
                raise DriverError(f"cannot share {path} over {transport}: QEMU on Windows "
                                  "has no virtiofs or 9p device; set its transport to auto "
                                  "(Cove serves it over the guest link)")
            out.append(link_share(path, i, windows=True))
            continue
        if transport == "virtiofs" and not vfs_ok:
            raise DriverError(f"cannot share {path} over virtiofs: {vfs_why}; set its "
                              "transport to 9p or auto")
        if transport == "auto":
            transport = "virtiofs" if vfs_ok else "9p"
            if not vfs_ok and not notes:
                notes.append(f"shares use 9p: {vfs_why}")
        require_folder(path)
        out.append(SharedFolder(path, f"cove{i}", transport))
    return out, notes


def share_args(spec: VMSpec, bus: str, is_root: bool) -> list[str]:
    """QEMU arguments for the spec's shares (virtiofs needs guest RAM QEMU can share)."""
    args: list[str] = []
    for i, sh in enumerate(spec.shares):
        if sh.transport == "link":
            continue  # served over the guest link, no device
        if sh.transport == "virtiofs":
            args += ["-chardev", f"socket,id=fs{i},path={opt(virtiofs_socket(spec, i))}",
                     "-device", f"vhost-user-fs-{bus},queue-size=1024,chardev=fs{i},"
                                f"tag={sh.tag}"]
        else:
            # Unprivileged, QEMU creates files as the user and ignores chown failures
            # ("none"); as root it keeps the guest's owners, as a native engine would.
            model = "passthrough" if is_root else "none"
            args += ["-fsdev", f"local,id=fsdev{i},path={opt(sh.path)},"
                               f"security_model={model},multidevs=remap",
                     "-device", f"virtio-9p-{bus},fsdev=fsdev{i},mount_tag={sh.tag}"]
    return args


def virtiofs_socket(spec: VMSpec, index: int) -> Path:
    return spec.folder / f"virtiofs-{index}.sock"


def build_command(spec: VMSpec, accel: str, os_name: str, qemu: str,
                  qmp: Endpoint, control: Endpoint | None = None,
                  probe: bool = False, is_root: bool = False) -> list[str]:
    """The full QEMU command line for `spec` under `accel` on `os_name`."""
    x86 = spec.arch == "amd64"
    console = "ttyS0" if x86 else "ttyAMA0"
    cmd = [qemu, "-name", f"cove-{spec.name}", "-nodefaults", "-no-user-config",
           "-display", "none"]
    if x86:
        cmd += ["-machine", "q35,vmport=off" + (",hpet=off" if accel != "whpx" else "")]
    else:
        cmd += ["-machine", "virt,gic-version=max" if accel == "tcg" else "virt"]
    cmd += ["-accel", accel]
    if accel in ("kvm", "hvf"):
        cmd += ["-cpu", "host"]
    else:  # tcg, and whpx (QEMU's WHPX does not take -cpu host)
        cmd += ["-cpu", "max"]
    cmd += ["-smp", str(spec.cpus), "-m", f"{spec.memory_mib}M"]
    if not probe and any(sh.transport == "virtiofs" for sh in spec.shares):
        # vhost-user devices (virtiofsd) map guest RAM: it must be a shareable file.
        cmd += ["-object", f"memory-backend-memfd,id=mem,size={spec.memory_mib}M,share=on",
                "-machine", "memory-backend=mem"]
    append = f"console={console} panic=-1 quiet loglevel=3"
    if accel == "tcg" and x86:
        # Under emulation the timer interrupts lag, so the clocksource watchdog finds the
        # (accurate) TSC "skewed" and marks it unstable a second into boot; that flips
        # the scheduler clock's static key while other vCPUs run, and TCG occasionally
        # trips on the live code patching ("Oops: int3", kernel panic). Trusting the TSC
        # avoids both the flip and a worse clocksource.
        append += " tsc=reliable"
    if probe:
        append += " cove.probe"
    elif spec.kernel_args:
        append += " " + spec.kernel_args
    cmd += ["-kernel", str(spec.kernel), "-initrd", str(spec.initramfs),
            "-append", append, "-no-reboot"]
    cmd += ["-serial", f"file:{spec.serial_log}"]
    if probe:
        return cmd
    bus = "pci"
    cmd += [
        "-drive", f"if=none,id=root,file={spec.root_image},format=raw,readonly=on",
        "-device", f"virtio-blk-{bus},drive=root,serial=cove-root",
        "-drive", f"if=none,id=data,file={spec.data_disk},format=qcow2,discard=unmap,"
                  "detect-zeroes=unmap,cache=writeback",
        "-device", f"virtio-blk-{bus},drive=data,serial=cove-data",
    ]
    fwd = f"hostfwd=tcp:127.0.0.1:{spec.link_port}-:10811"
    if spec.ssh_port:
        fwd += f",hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22"
    for rule in spec.extra_hostfwd:
        if not HOSTFWD_RULE.fullmatch(rule):
            raise DriverError(f"bad extra forward {rule!r}: expected "
                              "tcp|udp:127.0.0.1:HOSTPORT-:GUESTPORT")
        fwd += f",hostfwd={rule}"
    cmd += ["-netdev", f"user,id=net0,{fwd}",
            "-device", f"virtio-net-{bus},netdev=net0,romfile="]
    cmd += ["-device", f"virtio-balloon-{bus},free-page-reporting=on",
            "-device", f"virtio-rng-{bus}"]
    cmd += share_args(spec, bus, is_root)
    cmd += ["-fw_cfg", f"name=opt/org.cove/boot,file={opt(spec.boot_config)}"]
    cmd += ["-qmp", qmp.qemu_arg()]
    if control is not None:
        cmd += ["-device", f"virtio-serial-{bus}",
                "-chardev", f"socket,id=ctl,{control.chardev_arg()}",
                "-device", "virtserialport,chardev=ctl,name=org.cove.control"]
    cmd += spec.extra_args
    return cmd


def qemu_version(qemu: str) -> str:
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.splitlines()[0] if out else ""


def probe_accel(spec: VMSpec, qemu: str, cache: Path, os_name: str | None = None,
                timeout: float = PROBE_TIMEOUT) -> tuple[str, list[str]]:
    """Pick the accelerator by trial boots; returns (accel, reasons others were skipped).

    Each candidate boots the real kernel and initramfs with ``cove.probe`` on the
    command line, whose init prints a marker and powers off at once. The verdict is
    cached in `cache`, keyed by QEMU's version, the kernel and the host's kernel.
    """
    os_name = os_name or host_os()
    key = json.dumps([qemu_version(qemu), str(spec.kernel), spec.kernel.stat().st_size,
                      platform.release(), spec.arch])
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["accel"], cached.get("skipped", [])
    except (OSError, ValueError):
        pass
    skipped: list[str] = []
    chosen = "tcg"
    for accel in accel_candidates(os_name, spec.arch):
        if accel == "tcg":
            break
        ok, why = _trial_boot(spec, qemu, accel, os_name, timeout)
        if ok:
            chosen = accel
            break
        skipped.append(f"{accel}: {why}")
        log.warning("%s does not boot a guest here (%s); using software emulation (TCG)",
                    accel.upper(), why)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "accel": chosen, "skipped": skipped}))
    return chosen, skipped


def _trial_boot(spec: VMSpec, qemu: str, accel: str, os_name: str,
                timeout: float) -> tuple[bool, str]:
    if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible (add yourself to the kvm group)"
    probe_spec = VMSpec(**{**spec.__dict__, "memory_mib": 256, "cpus": 1,
                           "folder": spec.folder})
    serial = spec.folder / f"probe-{accel}.log"
    cmd = build_command(probe_spec, accel, os_name, qemu, Endpoint(), probe=True)
    cmd[cmd.index("-serial") + 1] = f"file:{serial}"
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"a trial boot did not finish in {timeout:.0f} s"
    except OSError as e:
        return False, str(e)
    finally:
        out = serial.read_bytes() if serial.exists() else b""
        serial.unlink(missing_ok=True)
    if PROBE_MARKER in out:
        log.info("%s boots a guest (%.1f s)", accel, time.monotonic() - t0)
        return True, ""
    err = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
    return False, "QEMU failed: " + (err[0] if err else f"exit status {proc.returncode}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def qemu_img(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("qemu-img")
    if exe is None:
        raise DriverError("qemu-img not found; install QEMU (Debian: apt-get install qemu-utils)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def ensure_disk(path: Path, size_gib: int) -> None:
    """Create the sparse qcow2 data disk, or check the existing one.

    Refuses a disk with a backing file (its data would live elsewhere) and a corrupt
    one (leaves it untouched and says how to repair or reset).
    """
    if not path.exists():
        proc = qemu_img("create", "-q", "-f", "qcow2", str(path), f"{size_gib}G")
        if proc.returncode != 0:
            raise DiskError(f"could not create the data disk {path}: {proc.stderr.strip()}")
        return
    proc = qemu_img("info", "--output=json", "-U", str(path))
    if proc.returncode != 0:
        raise DiskError(
            f"the data disk {path} is not a readable disk image ({proc.stderr.strip()}); "
            "move it aside to keep it, or run `cove reset` to start with a new one"
        )
    info = json.loads(proc.stdout)
    if info.get("format") != "qcow2":
        raise DiskError(f"the data disk {path} is {info.get('format')}, not qcow2; "
                        "move it aside or run `cove reset`")
    if info.get("backing-filename"):
        raise DiskError(
            f"the data disk {path} has a backing file ({info['backing-filename']}); Cove "
            "refuses such disks. Convert it with `qemu-img convert -O qcow2` or `cove reset`"
        )
    if info.get("dirty-flag"):
        # Left open by a VM that did not stop (lazy refcounts): QEMU itself repairs such an
        # image when it opens it; do it first so the check below sees the repaired one.
        qemu_img("check", "-q", "-r", "all", str(path))
    check = qemu_img("check", "-q", "-U", str(path))
    if check.returncode == 3:
        # Leaked clusters only (an unclean stop with lazy refcounts): no harm to data;
        # give the space back.
        qemu_img("check", "-q", "-r", "leaks", str(path))
    elif check.returncode != 0:
        msg = (check.stderr or check.stdout).strip().splitlines()
        raise DiskError(
            f"the data disk {path} is damaged ({msg[0] if msg else 'qemu-img check failed'}); "
            f"try `qemu-img check -r all {path}` (after a backup), or `cove reset`"
        )
    size = int(info.get("virtual-size", 0))
    if size < size_gib * 2**30:
        proc = qemu_img("resize", str(path), f"{size_gib}G")
        if proc.returncode != 0:
            raise DiskError(f"could not grow the data disk to {size_gib} GiB: "
                            f"{proc.stderr.strip()}")


class QemuDriver:
    name = "qemu"
    capabilities = Capabilities(vsock=False, virtiofs=True, ninep=True, balloon=True,
                                hostfwd=True, virtio_serial=True)

    def __init__(self, arch: str = "amd64", os_name: str | None = None,
                 accel_cache: Path | None = None) -> None:
        self.arch = arch
        self.os_name = os_name or host_os()
        self.qemu = QEMU_BINARIES[arch]
        self.accel_cache = accel_cache
        self.accel = ""
        self.accel_notes: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.spec: VMSpec | None = None
        self.helpers: list[subprocess.Popen] = []  # virtiofsd, one per virtiofs share
        self._virtiofsd: Virtiofsd | None = None
        self._virtiofsd_looked = False

    @staticmethod
    def is_root() -> bool:
        return hasattr(os, "geteuid") and os.geteuid() == 0

    def virtiofsd(self) -> Virtiofsd | None:
        if not self._virtiofsd_looked:
            self._virtiofsd = find_virtiofsd() if self.os_name == "linux" else None
            self._virtiofsd_looked = True
        return self._virtiofsd

    def resolve_shares(self, shares: list[tuple[str, str]]) -> tuple[list[SharedFolder],
                                                                     list[str]]:
        return resolve_shares(shares, self.os_name,
                              self.virtiofsd() if shares else None, self.is_root())

    def _start_virtiofsd(self, spec: VMSpec) -> None:
        """One virtiofsd per virtiofs share, each listening before QEMU connects."""
        self._stop_helpers()
        for i, sh in enumerate(spec.shares):
            if sh.transport != "virtiofs":
                continue
            vfs = self.virtiofsd()
            if vfs is None:
                raise DriverError(f"cannot share {sh.path} over virtiofs: virtiofsd is "
                                  "not installed")
            sock = virtiofs_socket(spec, i)
            sock.unlink(missing_ok=True)
            logf = (spec.folder / f"virtiofsd-{i}.log").open("wb")
            cmd = vfs.command(sock, sh.path, self.is_root())
            log.info("starting virtiofsd: %s", " ".join(cmd))
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                 start_new_session=True)
            logf.close()
            self.helpers.append(p)
            deadline = time.monotonic() + 10
            while not sock.exists():
                if p.poll() is not None or time.monotonic() > deadline:
                    err = (spec.folder / f"virtiofsd-{i}.log").read_text(
                        errors="replace").strip()
                    self._stop_helpers()
                    raise DriverError(f"virtiofsd for {sh.path} did not start (its log: "
                                      f"{spec.folder / f'virtiofsd-{i}.log'}): "
                                      f"{err[-400:] or 'no socket in 10 s'}")
                time.sleep(0.02)

    def _stop_helpers(self) -> None:
        for p in self.helpers:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(3)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.helpers = []

    def available(self) -> tuple[bool, str]:
        if shutil.which(self.qemu) is None:
            pkg = {"amd64": "qemu-system-x86", "arm64": "qemu-system-arm"}[self.arch]
            return False, f"{self.qemu} not found; install it (Debian: apt-get install {pkg})"
        return True, ""

    def create(self, spec: VMSpec) -> None:
        ensure_disk(spec.data_disk, spec.disk_gib)

    def _endpoint(self, path: Path) -> Endpoint:
        if self.os_name == "windows":
            return Endpoint(port=free_port())
        return Endpoint(path=path)

    def command(self, spec: VMSpec) -> list[str]:
        qemu = shutil.which(self.qemu) or self.qemu
        return build_command(spec, self.accel or "tcg", self.os_name, qemu,
                             self._endpoint(spec.qmp_socket),
                             control=self._endpoint(spec.control_socket),
                             is_root=self.is_root())

    def start(self, spec: VMSpec) -> None:
        qemu = shutil.which(self.qemu)
        if qemu is None:
            raise DriverError(self.available()[1])
        self.spec = spec
        if not self.accel:
            cache = self.accel_cache or spec.folder.parent / "accel.json"
            self.accel, self.accel_notes = probe_accel(spec, qemu, cache, self.os_name)
        spec.qmp_socket.unlink(missing_ok=True)
        spec.control_socket.unlink(missing_ok=True)
        if spec.serial_log.exists():  # the previous boot's, kept for a post-mortem
            spec.serial_log.replace(spec.serial_log.with_name("serial.prev.log"))
        cmd = self.command(spec)
        self._start_virtiofsd(spec)
        errlog = (spec.folder / "qemu.log").open("wb")
        log.info("starting QEMU: %s", " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=errlog,
                                     stderr=errlog, start_new_session=True)
        errlog.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._stop_helpers()
                err = (spec.folder / "qemu.log").read_text(errors="replace").strip()
                raise DriverError(f"QEMU exited at once (status {self.proc.returncode}): "
                                  f"{err[-500:]}")
            if spec.qmp_socket.exists():
                return
            time.sleep(0.02)
        raise DriverError("QEMU did not open its QMP socket within 10 s")

    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def status(self) -> str:
        if self.proc is None or self.proc.poll() is not None:
            return "stopped"
        return "running"

    def qmp(self, command: str, timeout: float = 5) -> dict | None:
        """Send one QMP command; None when QMP cannot be reached."""
        if self.spec is None:
            return None
        from qemu.qmp.legacy import QEMUMonitorProtocol

        mon = QEMUMonitorProtocol(str(self.spec.qmp_socket))
        try:
            mon.connect()
            mon.settimeout(timeout)
            return mon.cmd_raw(command)
        except (OSError, Exception) as e:  # noqa: BLE001 - qemu.qmp raises its own types
            log.debug("QMP %s failed: %s", command, e)
            return None
        finally:
            try:
                mon.close()
            except Exception:  # noqa: BLE001
                pass

    def wait(self, timeout: float | None) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        self._stop_helpers()  # they end with QEMU's connection; reap them
        return True

    def stop(self, timeout: float = 30) -> None:
        """ACPI powerdown, then QMP quit, then SIGKILL; each step waits its share."""
        if self.status() == "stopped":
            return
        self.qmp("system_powerdown")
        if self.wait(timeout):
            return
        log.warning("the VM did not power off in %.0f s; quitting QEMU", timeout)
        self.qmp("quit")
        if self.wait(5):
            return
        self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL) if self.os_name != "windows" \
                else self.proc.kill()
            self.proc.wait()
        self._stop_helpers()

    def delete(self, spec: VMSpec) -> None:
        self.kill()
        for p in (spec.data_disk, spec.serial_log, spec.qmp_socket):
            p.unlink(missing_ok=True)

    def link_address(self) -> tuple[str, int]:
        assert self.spec is not None
        return "127.0.0.1", self.spec.link_port

    def make_link(self, token: str) -> Link:
        return Link(*self.link_address(), token)


@register(priority=10)
def _factory(arch: str = "amd64", accel_cache: Path | None = None) -> QemuDriver:
    return QemuDriver(arch, accel_cache=accel_cache)
