"""virtiofsd, the helper behind each virtiofs share: finding it, starting, stopping.

QEMU's vhost-user-fs device only moves requests; a virtiofsd process per share serves
the folder and must listen before QEMU connects. The driver starts them just before
QEMU (`start_helpers`) and stops them whenever QEMU ends (`stop_helpers`).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from desktop import home
from desktop.drivers import DriverError, VMSpec
from desktop.drivers.qemu.command import virtiofs_socket

log = logging.getLogger(__name__)

VIRTIOFSD_PATHS = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd")
START_TIMEOUT = 10.0  # seconds for a virtiofsd to open its socket


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


def start_helpers(spec: VMSpec, vfs: Virtiofsd | None, is_root: bool,
                  helpers: list[subprocess.Popen]) -> None:
    """One virtiofsd per virtiofs share of `spec`, each listening before this returns,
    added to `helpers` as it starts. DriverError when one cannot start (those started
    are stopped again) or when there is no `vfs` to run."""
    for i, sh in enumerate(spec.shares):
        if sh.transport != "virtiofs":
            continue
        if vfs is None:
            raise DriverError(f"cannot share {sh.path} over virtiofs: virtiofsd is "
                              "not installed")
        sock = virtiofs_socket(spec, i)
        sock.unlink(missing_ok=True)
        log_path = spec.folder / home.virtiofsd_log(i)
        logf = log_path.open("wb")
        cmd = vfs.command(sock, sh.path, is_root)
        log.info("starting virtiofsd: %s", " ".join(cmd))
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                             start_new_session=True)
        logf.close()
        helpers.append(p)
        if not _wait_listening(p, sock):
            err = log_path.read_text(errors="replace").strip()
            stop_helpers(helpers)
            raise DriverError(f"virtiofsd for {sh.path} did not start (its log: "
                              f"{log_path}): {err[-400:] or 'no socket in 10 s'}")


def _wait_listening(p: subprocess.Popen, sock: Path) -> bool:
    """True once `sock` exists; False if `p` ends or START_TIMEOUT passes first."""
    deadline = time.monotonic() + START_TIMEOUT
    while not sock.exists():
        if p.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def stop_helpers(helpers: list[subprocess.Popen]) -> None:
    """Terminate each helper still running (kill after 3 s); empties `helpers`."""
    for p in helpers:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    helpers.clear()
