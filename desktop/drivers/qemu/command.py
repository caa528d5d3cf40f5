"""QEMU's command line, as a pure function of the spec, the accelerator and the host.

`build_command` does no I/O and starts nothing, so each platform's exact command is
tested on any host (tests/unit/host/test_qemu_driver.py) even where it cannot run; the driver
(`desktop.drivers.qemu.driver`) supplies what it chose at start: the accelerator, the
QMP endpoint and the host ports it forwards (`Forwards`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from desktop import home
from desktop.drivers import DriverError, VMSpec
from desktop.platform.winpipe import PIPE_PREFIX
from guest_engine.protocol import AGENT_PORT

SSH_PORT = 22  # dropbear's, in the guest
HOSTFWD_RULE = re.compile(r"(tcp|udp):127\.0\.0\.1:\d{1,5}-:\d{1,5}")


@dataclass(frozen=True)
class Endpoint:
    """A QMP monitor QEMU serves: a unix socket (Linux, macOS) or a Windows named pipe
    (`pipe`, the full ``\\\\.\\pipe\\NAME``). Never TCP: a localhost port is open to
    every local user and to containers (through the user network's gateway), and QMP
    has no authentication (``migrate exec:`` runs a command)."""

    path: Path | None = None
    pipe: str = ""

    def qemu_args(self, chardev: str) -> list[str]:
        """The options that serve this monitor; `chardev` names it on the command line."""
        if self.pipe:
            # QEMU on Windows creates \\.\pipe\<path> itself, and waits for one client.
            name = self.pipe.removeprefix(PIPE_PREFIX)
            return ["-chardev", f"pipe,id={chardev},path={opt(name)}",
                    "-mon", f"chardev={chardev},mode=control"]
        return ["-qmp", f"unix:{self.path},server=on,wait=off"]


@dataclass(frozen=True)
class Forwards:
    """The host ports QEMU user networking forwards into the guest, all on 127.0.0.1:
    the agent's (`link_port`), SSH's (0: none), and `extra` rules
    "tcp|udp:127.0.0.1:HOST-:GUEST" (benchmarks use one as the bare path that published
    ports are measured against)."""

    link_port: int = 0
    ssh_port: int = 0
    extra: tuple[str, ...] = ()

    def netdev_arg(self) -> str:
        """The ``-netdev user`` option's forwards; DriverError for a malformed extra rule
        (one for all interfaces, or smuggling another option)."""
        fwd = f"hostfwd=tcp:127.0.0.1:{self.link_port}-:{AGENT_PORT}"
        if self.ssh_port:
            fwd += f",hostfwd=tcp:127.0.0.1:{self.ssh_port}-:{SSH_PORT}"
        for rule in self.extra:
            if not HOSTFWD_RULE.fullmatch(rule):
                raise DriverError(f"bad extra forward {rule!r}: expected "
                                  "tcp|udp:127.0.0.1:HOSTPORT-:GUESTPORT")
            fwd += f",hostfwd={rule}"
        return fwd


def opt(value: object) -> str:
    """A value inside a QEMU option string: commas are doubled (QEMU's escape)."""
    return str(value).replace(",", ",,")


def virtiofs_socket(spec: VMSpec, index: int) -> Path:
    """Where share `index`'s virtiofsd listens and QEMU connects."""
    return spec.folder / home.virtiofs_socket(index)


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


# Under TCG QEMU keeps the guest code it has translated in one buffer sized at start:
# 1 GiB by default (QEMU 5.0 and later, on a 64-bit host with the memory), and each page
# of it once used stays resident. COVE_QEMU_TB_MIB asks for another size. Measured on the
# build machine (`benchmarks tcg`, same instance, alternating): 256 MiB left QEMU holding
# 0.55x the memory after a workload, but the workload took 1.25x as long (a fuller
# buffer is flushed and translated again), and one boot with 512 MiB died in the guest
# kernel (a register state TCG corrupted, seen once). So QEMU's default stays; the
# variable is for a user who would trade time for memory.
TB_ENV = "COVE_QEMU_TB_MIB"
TB_RANGE = (16, 4096)


def tcg_tb_mib(environ: dict[str, str] | None = None) -> int | None:
    """The TCG translation buffer's size in MiB from COVE_QEMU_TB_MIB, or None (QEMU's
    default)."""
    raw = (os.environ if environ is None else environ).get(TB_ENV, "").strip()
    if not raw:
        return None
    lo, hi = TB_RANGE
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise DriverError(f"{TB_ENV}={raw!r} is not a size in MiB from {lo} to {hi} (QEMU's "
                          "translation buffer under TCG): set one, or unset it for QEMU's "
                          "default")
    return int(raw)


def _cpu_args(arch: str, accel: str, tb_mib: int | None = None) -> list[str]:
    """-machine, -accel and -cpu for the guest `arch` under `accel`."""
    if arch == "amd64":
        args = ["-machine", "q35,vmport=off" + (",hpet=off" if accel != "whpx" else "")]
    else:
        args = ["-machine", "virt,gic-version=max" if accel == "tcg" else "virt"]
    args += ["-accel", f"tcg,tb-size={tb_mib}" if accel == "tcg" and tb_mib else accel]
    if accel in ("kvm", "hvf"):
        args += ["-cpu", "host"]
    else:  # tcg, and whpx (QEMU's WHPX does not take -cpu host)
        args += ["-cpu", "max"]
    return args


def _kernel_append(spec: VMSpec, accel: str, probe: bool) -> str:
    x86 = spec.arch == "amd64"
    append = f"console={'ttyS0' if x86 else 'ttyAMA0'} panic=-1 quiet loglevel=3"
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
    return append


def build_command(spec: VMSpec, accel: str, os_name: str, qemu: str, qmp: Endpoint,
                  forwards: Forwards | None = None, probe: bool = False,
                  is_root: bool = False, extra_args: tuple[str, ...] | list[str] = (),
                  events: Endpoint | None = None, tb_mib: int | None = None) -> list[str]:
    """The full QEMU command line for `spec` under `accel` on `os_name`.

    A `probe` boot (the accelerator's trial, `desktop.drivers.qemu.accel`) has the
    kernel and the serial console only: no disks, network, shares nor QMP. `extra_args`
    come last.
    """
    cmd = [qemu, "-name", f"cove-{spec.name}", "-nodefaults", "-no-user-config",
           "-display", "none"]
    cmd += _cpu_args(spec.arch, accel, tb_mib)
    cmd += ["-smp", str(spec.cpus), "-m", f"{spec.memory_mib}M"]
    if not probe and any(sh.transport == "virtiofs" for sh in spec.shares):
        # vhost-user devices (virtiofsd) map guest RAM: it must be a shareable file.
        cmd += ["-object", f"memory-backend-memfd,id=mem,size={spec.memory_mib}M,share=on",
                "-machine", "memory-backend=mem"]
    cmd += ["-kernel", str(spec.kernel), "-initrd", str(spec.initramfs),
            "-append", _kernel_append(spec, accel, probe), "-no-reboot"]
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
    cmd += ["-netdev", f"user,id=net0,{(forwards or Forwards()).netdev_arg()}",
            "-device", f"virtio-net-{bus},netdev=net0,romfile="]
    cmd += ["-device", f"virtio-balloon-{bus},free-page-reporting=on",
            "-device", f"virtio-rng-{bus}"]
    cmd += share_args(spec, bus, is_root)
    cmd += ["-fw_cfg", f"name=opt/org.cove/boot,file={opt(spec.boot_config)}"]
    cmd += qmp.qemu_args("qmp")
    if events is not None:
        # A second monitor only the backend holds, for QEMU's events (RESUME after a
        # stop): the first stays free for the driver's commands and a user's tools.
        cmd += events.qemu_args("qmp-events")
    cmd += list(extra_args)
    return cmd
