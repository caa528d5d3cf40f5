"""Which accelerator QEMU uses here: probed by a trial boot, not assumed.

A host where /dev/kvm exists but guests hang or QEMU aborts (nested virtualisation that
does not work) falls back to TCG after one short trial boot, says why once, and
remembers the verdict in ``$COVE_HOME/accel.json`` until QEMU, the kernel or the host
kernel change. The driver calls `probe_accel` at its first start.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import re
import subprocess
import time
from pathlib import Path

from desktop import home
from desktop.drivers import VMSpec
from desktop.drivers.qemu.command import Endpoint, build_command
from desktop.platform.hostinfo import host_arch, host_os

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 8.0  # a working accelerator reaches the probe's init in about 1 s
PROBE_MARKER = b"COVE-PROBE-OK"


def accel_candidates(os_name: str, guest_arch: str, arch: str | None = None) -> list[str]:
    """Accelerators worth trying on this host, best first; TCG is always last."""
    native = (arch or host_arch()) == guest_arch
    hw = {"linux": "kvm", "darwin": "hvf", "windows": "whpx"}.get(os_name)
    return ([hw] if hw and native else []) + ["tcg"]


def qemu_version(qemu: str) -> str:
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.splitlines()[0] if out else ""


# Apple silicon gives a guest 36 bits of physical address (M1, M2); QEMU before 7.0 lays
# out the virt machine's high memory regions past them, and HVF refuses the VM ("VCPU
# supports less PA bits (36) than requested by the memory map (40)"). The way round it
# there, highmem=off, keeps all the guest's memory under 4 GiB (3 GiB at most with the
# devices). QEMU 7.0 and later fit the layout to the host's limit, and need nothing.
HVF_ARM64_MIN_QEMU = (7, 0)


def version_tuple(line: str) -> tuple[int, int] | None:
    """(major, minor) of `qemu --version`'s first line ("QEMU emulator version 6.2.0")."""
    m = re.search(r"version (\d+)\.(\d+)", line)
    return (int(m.group(1)), int(m.group(2))) if m else None


def too_old_for_hvf(os_name: str, guest_arch: str, version_line: str) -> str | None:
    """Why this QEMU cannot run the arm64 guest under HVF on a Mac, or None."""
    got = version_tuple(version_line)
    if os_name != "darwin" or guest_arch != "arm64" or got is None \
            or got >= HVF_ARM64_MIN_QEMU:
        return None
    need = ".".join(map(str, HVF_ARM64_MIN_QEMU))
    return (f"{version_line.strip()} is older than {need}: on Apple silicon it lays out "
            "the VM's memory past the 36 address bits the chip gives a guest, so HVF "
            f"refuses it; upgrade it (brew upgrade qemu) to {need} or later, then start "
            "Cove again")


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
    probe_spec = dataclasses.replace(spec, memory_mib=256, cpus=1)
    serial = spec.folder / home.probe_log(accel)
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
    return False, ("QEMU failed: " + (err[0] if err else f"exit status {proc.returncode}")
                   + ACCEL_FIXES.get(accel, ""))


# How to make each hardware accelerator usable, for the note a fallback to TCG leaves.
ACCEL_FIXES = {
    "whpx": ("; enable the Windows Hypervisor Platform (elevated PowerShell: "
             "Enable-WindowsOptionalFeature -Online -FeatureName HypervisorPlatform), "
             f"restart Windows, and delete {home.ACCEL_CACHE} in COVE_HOME to try again"),
    "hvf": ("; macOS refused QEMU the Hypervisor framework: use Homebrew's QEMU (signed "
            "with the com.apple.security.hypervisor entitlement) on a Mac or VM that "
            f"allows virtualization, and delete {home.ACCEL_CACHE} in COVE_HOME to try "
            "again"),
}
