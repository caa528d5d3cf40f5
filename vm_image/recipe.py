"""What goes into Cove's guest image: the one place that names the package source.

The builder (`vm_image.builder`) reads everything it installs from here, and the image's
cache key is derived from this file's data, so a change here rebuilds the image.

Kernel choice: Debian's generic kernel (`linux-image-<arch>`), not the cloud kernel. Both
boot to init in about 3 s under TCG on the build machine (measured: 3.0 s cloud, 3.3 s
generic), and the vmlinuz files differ by 0.3 MiB, but only the generic kernel carries 9p
(`9p`, `9pnet_virtio`), which macOS hosts need for file sharing, and the Hyper-V guest
drivers Windows hosts need. The generic kernel's 100+ MiB of modules are pruned to the
allow-list below (plus what those modules depend on), so the image pays for neither.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

SUITE = "trixie"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
MIRROR_ENV = "COVE_DEBIAN_MIRROR"


def mirror() -> str:
    """The Debian mirror to build from; `COVE_DEBIAN_MIRROR` overrides the default."""
    return os.environ.get(MIRROR_ENV, DEFAULT_MIRROR)


@dataclass(frozen=True)
class Arch:
    name: str  # Debian's name: amd64, arm64
    kernel_package: str
    qemu_system: str  # the qemu-system-* binary that boots it
    console: str  # the serial console the kernel writes to
    # QEMU's user-mode emulators kept for the other architectures' containers
    # (`docker run --platform ...`), by QEMU's names; the rest of qemu-user is pruned.
    emulators: tuple[str, ...] = ()


ARCHES: dict[str, Arch] = {
    "amd64": Arch("amd64", "linux-image-amd64", "qemu-system-x86_64", "ttyS0",
                  emulators=("aarch64", "arm")),
    # arm too: Apple silicon has no AArch32, so linux/arm/v7 needs emulation there as well
    "arm64": Arch("arm64", "linux-image-arm64", "qemu-system-aarch64", "ttyAMA0",
                  emulators=("x86_64", "arm")),
}


def get_arch(name: str) -> Arch:
    try:
        return ARCHES[name]
    except KeyError:
        supported = ", ".join(sorted(ARCHES))
        raise ValueError(
            f"unsupported architecture {name!r}; supported: {supported}"
        ) from None


# Installed with mmdebstrap's "essential" variant (Essential: yes packages plus these).
PACKAGES = (
    "docker.io",  # dockerd 26
    "docker-cli",  # `docker` inside the VM, for `cove shell docker ...` and diagnostics
    "containerd",
    "runc",
    "tini",
    "iptables",
    "e2fsprogs",
    "python3",  # the agent's interpreter (standard library only)
    "busybox-static",  # the initramfs's only binary; udhcpc in the root
    "iproute2",
    "kmod",
    "mount",  # mount/umount (not Essential in trixie)
    "procps",  # `docker top` runs ps in the VM
    "xz-utils",  # the engine shells out to xz for .xz image layers
    "ca-certificates",  # registries over TLS
    "dropbear-bin",  # `cove shell` / ssh into the VM
    "bpftool",  # loads the share guard (`guest_engine.boot.shareguard`) at boot
    # Containers of another architecture: QEMU's static user-mode emulators and their
    # binfmt_misc entries (/usr/lib/binfmt.d), registered by the agent at boot
    # (`guest_engine.boot.binfmt`); all but `Arch.emulators` are pruned.
    "qemu-user",
    "qemu-user-binfmt",
    # The kernel package needs some initramfs generator; tiny-initramfs satisfies that
    # without pulling in udev and systemd (Cove ships its own initramfs).
    "tiny-initramfs",
)

# mksquashfs compression for the root. zstd decompresses several times faster than xz,
# which matters under software emulation where the engine's binaries are paged in at
# boot; level 15 measured 108 MiB in 35 s here (level 6: 118 MiB in 4 s; level 19:
# 107 MiB in 90 s; xz: 99 MiB in 55 s).
SQUASHFS_COMPRESSION = ("-comp", "zstd", "-Xcompression-level", "15", "-b", "256K")

# Paths dpkg never unpacks.
DPKG_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
    "/usr/share/bash-completion/*",
    "/usr/share/zsh/*",
    "/usr/share/fish/*",
)

# Removed from the root after installation: not needed at run time in the VM.
PRUNE = (
    "boot",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/cache/debconf/templates.dat-old",
    "usr/bin/ctr",  # containerd's debugging CLI
    "usr/bin/containerd-shim",  # v1 shims: dockerd 26 uses io.containerd.runc.v2
    "usr/bin/containerd-shim-runc-v1",
    "usr/share/initramfs-tools",
    "etc/initramfs-tools",
    "usr/lib/python3.13/ensurepip",
    "usr/lib/python3.13/idlelib",
    "usr/lib/python3.13/pydoc_data",
    "usr/lib/python3.13/lib2to3",
    "usr/lib/python3.13/tkinter",
    "usr/lib/python3.13/turtledemo",
)

# Kernel modules kept in the root (paths under lib/modules/<version>/kernel/, matched as
# prefixes); their dependencies are kept too.
MODULES_KEPT = (
    "fs/ext4/",
    "fs/binfmt_misc",
    "fs/jbd2/",
    "fs/mbcache",
    "fs/overlayfs/",
    "fs/squashfs/",
    "fs/erofs/",
    "fs/9p/",
    "fs/fuse/",
    "fs/netfs/",
    "fs/nfs_common/",
    "net/9p/",
    "net/bridge/",
    "net/netfilter/",
    "net/ipv4/",
    "net/ipv6/",
    "net/sched/",
    "net/vmw_vsock/",
    "net/802/",
    "net/8021q/",
    "net/llc/",
    "net/core/",
    "net/packet/",
    "net/unix/",
    "net/xfrm/",
    "net/key/",
    "drivers/virtio/",
    "drivers/block/virtio_blk",
    "drivers/block/loop",
    "drivers/block/nbd",
    "drivers/scsi/virtio_scsi",
    "drivers/scsi/hv_storvsc",
    "drivers/scsi/sd_mod",
    "drivers/net/virtio_net",
    "drivers/net/net_failover",
    "drivers/net/veth",
    "drivers/net/vxlan/",
    "drivers/net/macvlan",
    "drivers/net/ipvlan/",
    "drivers/net/tun",
    "drivers/net/dummy",
    "drivers/net/wireguard/",
    "drivers/net/hyperv/",
    "drivers/hv/",
    "drivers/char/hw_random/virtio-rng",
    "drivers/char/virtio_console",
    "drivers/firmware/qemu_fw_cfg",
    "drivers/input/evdev",
    "drivers/input/serio/hyperv-keyboard",
    "drivers/hid/hid-hyperv",
    "drivers/acpi/button",
    "drivers/md/dm-mod",
    "drivers/pci/controller/pci-hyperv",
    "drivers/vhost/",
    "crypto/",
    "lib/",
    "arch/x86/crypto/",
    "arch/arm64/crypto/",
)

# Modules the initramfs loads (with their dependencies, in order) to mount the root.
INITRAMFS_MODULES = (
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "hv_storvsc",
    "squashfs",
    "overlay",
)

