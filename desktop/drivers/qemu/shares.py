"""Which transport each shared folder takes under QEMU: virtiofs, 9p or the guest link.

The settings name a transport per folder ("auto", "virtiofs", "9p", "link");
`resolve_shares` turns them into `SharedFolder`s for this host, or refuses one QEMU
cannot share here with a DriverError naming the fix. `command.share_args` then adds the
devices, and `virtiofsd` starts the helpers.
"""

from __future__ import annotations

from desktop.drivers import DriverError
from desktop.drivers.qemu.virtiofsd import Virtiofsd
from desktop.drivers.shares import SharedFolder, link_share, require_folder


def _virtiofs_usable(os_name: str, virtiofsd: Virtiofsd | None,
                     is_root: bool) -> tuple[bool, str]:
    """(virtiofs can be used here, why not)."""
    if os_name != "linux":
        return False, "QEMU has no virtiofs on this host"
    if virtiofsd is None:
        return False, ("virtiofsd is not installed (Debian: apt-get install virtiofsd, or "
                       "qemu-system-common on Debian 12)")
    return virtiofsd.usable(is_root)


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
    vfs_ok, vfs_why = _virtiofs_usable(os_name, virtiofsd, is_root)
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
    # virtiofsd and QEMU's 9p apply the guest's chmod as it is, set-uid bits too (owned by
    # root when Cove runs as root): the guest's share guard refuses those
    # (`guest_engine.boot.shareguard`), and Cove's own link server drops them.
    return out, notes
