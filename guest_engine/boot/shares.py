"""The host's folders at their own paths in the VM: virtiofs and 9p shares at boot,
"link" shares (served by the host over a link stream) once the host sends their
stream; and the VM's root home moved out of /root, which a host may share."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from guest_engine.boot import paths, system

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not imported at run time: boot time under emulation
    from typing import Any

log = logging.getLogger(__name__)

# cache=none: the kernel's 9p client (6.12) with cache=mmap, its writeback mode, lost
# whole 4 KiB pages of files containers wrote (read back as zeros, on the host and in the
# VM), about one 2 MiB file in ten, on QEMU's 9p and on link shares alike; with cache=none
# every write goes to the server as it is made and none was lost (docs/architecture.md,
# "Shares"). The price: no shared writable mmap on these shares (EINVAL).
NINEP_OPTIONS = "trans=virtio,version=9p2000.L,msize=524288,cache=none"
# A share the host serves itself over a link stream (`desktop.ninep`): the kernel's 9p
# client reads and writes the stream's socket (descriptor N in the mount process).
LINK_NINEP_OPTIONS = "trans=fd,rfdno={fd},wfdno={fd},version=9p2000.L,msize=1048576,cache=none"
LINK_TRANSPORT = "link"
# Never mounted on or under: the VM's own folders (the host validates this too).
SHARE_NOT_ON = ("/", "/mnt", "/var", "/var/lib")
SHARE_NOT_UNDER = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/mnt/data", "/proc",
                   "/run", "/sbin", "/sys", "/usr", "/var/lib/containerd", "/var/lib/docker",
                   "/var/run")


def share_path_allowed(path: str) -> bool:
    if not path.startswith("/") or os.path.normpath(path) != path or path in SHARE_NOT_ON:
        return False
    if path.startswith("//"):  # normpath keeps it, Linux reads it as "/" ("//etc" is /etc)
        return False
    return not any(path == p or path.startswith(p + "/") for p in SHARE_NOT_UNDER)


def relocate_root_home() -> None:
    """Move the VM's root home out of /root: a Linux host run as root shares /root."""
    paths.VM_ROOT_HOME.mkdir(mode=0o700, parents=True, exist_ok=True)
    passwd = Path("/etc/passwd")
    lines = passwd.read_text().splitlines()
    for i, line in enumerate(lines):
        f = line.split(":")
        if len(f) == 7 and f[0] == "root":
            f[5] = str(paths.VM_ROOT_HOME)
            lines[i] = ":".join(f)
    passwd.write_text("\n".join(lines) + "\n")
    os.environ["HOME"] = str(paths.VM_ROOT_HOME)


def mount_shares(shares: list, guard_error: str = "") -> list[dict]:
    """Mount each host folder at its own path; [{path, transport, tag, error}].

    With `guard_error` (the share guard did not load) no virtiofs or 9p share is mounted:
    over those a container's set-uid bit would reach the host. Link shares still are
    (the host's own server drops those bits)."""
    out = []
    loaded: set[str] = set()
    for sh in shares:
        path, tag, transport = str(sh.get("path", "")), str(sh.get("tag", "")), \
            str(sh.get("transport", ""))
        entry: dict[str, Any] = {"path": path, "tag": tag, "transport": transport,
                                 "error": ""}
        out.append(entry)
        if not share_path_allowed(path):
            entry["error"] = "refused: not a folder Cove mounts shares on"
            continue
        if transport == LINK_TRANSPORT:
            entry["error"] = "waiting for the host's file server"
            entry["pending"] = True
            continue  # mounted once the link is up (`mount_link_share`)
        if guard_error:
            entry["error"] = (f"not mounted: {guard_error}; share it over the link "
                              "transport (cove shares add PATH --transport link)")
            continue
        modules = ["virtiofs"] if transport == "virtiofs" else ["9pnet_virtio", "9p"]
        for m in modules:
            if m not in loaded:
                system.run(["modprobe", m], check=False)
                loaded.add(m)
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
            if transport == "virtiofs":
                system.run(["mount", "-t", "virtiofs", tag, path])
            else:
                system.run(["mount", "-t", "9p", "-o", NINEP_OPTIONS, tag, path])
        except (OSError, RuntimeError) as e:
            entry["error"] = str(e)
            log.error("share %s (%s over %s): %s", path, tag, transport, e)
    return out


MOUNTINFO = "/proc/self/mountinfo"


def is_mounted(path: str) -> bool:
    """True when a filesystem is mounted at `path`, read from the kernel's mount table:
    `os.path.ismount` stats the folder, which a 9p mount whose stream ended answers
    with EIO (so it would read as not mounted)."""
    try:
        with open(MOUNTINFO) as f:
            lines = f.read().splitlines()
    except OSError:
        return os.path.ismount(path)
    for line in lines:
        fields = line.split(" ")
        # Field 5 is the mount point, with space, tab, newline and backslash octal-escaped.
        if len(fields) > 4 and _unescape(fields[4]) == path:
            return True
    return False


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape").encode("latin-1").decode(
        "utf-8", "surrogateescape") if "\\" in field else field


def mount_answers(path: str, timeout: float = 5.0) -> bool:
    """True when the share mounted at `path` answers (a statfs, on a thread: a mount
    whose stream hangs must not hang the agent); False on an error (a 9p mount whose
    stream ended answers EIO at once) or no answer in `timeout` seconds."""
    answer: list[bool] = []

    def probe() -> None:
        try:
            os.statvfs(path)
            answer.append(True)
        except OSError:
            answer.append(False)

    t = threading.Thread(target=probe, daemon=True, name="share-probe")
    t.start()
    t.join(timeout)
    return bool(answer and answer[0])


def detach(path: str) -> None:
    """Lazily unmount `path` (umount -l): gone from the VM's tree now, freed once no
    container holds it. RuntimeError with umount's message."""
    system.run(["umount", "-l", path])


def mount_link_share(entry: dict, fd: int) -> None:
    """Mount a host-served share: the kernel's 9p client on the link socket `fd`.

    The kernel takes its own reference to the socket, so the caller may close `fd`
    afterwards. Raises RuntimeError with mount's message."""
    path = entry["path"]
    for m in ("9pnet_fd", "9p"):
        system.run(["modprobe", m], check=False)
    Path(path).mkdir(parents=True, exist_ok=True)
    if is_mounted(path):
        raise RuntimeError(f"{path} is mounted already")
    options = LINK_NINEP_OPTIONS.format(fd=fd)
    system.run(["mount", "-t", "9p", "-o", options, entry["tag"], path], pass_fds=(fd,))
