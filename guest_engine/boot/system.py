"""The two helpers every boot step uses: run a tool, list sysfs paths.

Steps call them as `system.run(...)`, so a test that replaces `system.run` sees every
command any step runs."""

from __future__ import annotations

import os
import subprocess


def sysfs_glob(pattern: str) -> list[str]:
    """`glob.glob` for the fixed-depth sysfs patterns used here (one `*` per level),
    without importing glob (its imports cost boot time under emulation)."""
    paths = [""]
    for part in pattern.strip("/").split("/"):
        nxt = []
        for base in paths:
            if part == "*":
                try:
                    nxt += [f"{base}/{n}" for n in sorted(os.listdir(base or "/"))]
                except OSError:
                    pass
            elif os.path.lexists(f"{base}/{part}"):
                nxt.append(f"{base}/{part}")
        paths = nxt
    return paths


def run(cmd: list[str], check: bool = True, timeout: float = 60,
        pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess:
    """Run `cmd` capturing its output; with `check`, a non-zero exit raises RuntimeError
    carrying the command and what it printed."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          pass_fds=pass_fds)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}"
        )
    return proc
