"""The VM's boot duties: filesystems, modules, network, sysctls and the data disk.

Runs once, as the first thing the agent does after the initramfs hands over. Each step
logs what it did; a step that fails is logged and the boot goes on where it can, so the
host can still connect and read why (only a missing data disk or secret is fatal to the
engine, not to the agent).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import subprocess
import time
from pathlib import Path

from guest_engine import dns, protocol

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not imported at run time: boot time under emulation
    from typing import Any

log = logging.getLogger(__name__)

DATA_MOUNT = Path("/mnt/data")
LOG_DIR = DATA_MOUNT / "log"
RUN_DIR = Path("/run/cove")
# Engine state that lives on the data disk, bind-mounted where the engine expects it.
DATA_BINDS = {
    "docker": "/var/lib/docker",
    "containerd": "/var/lib/containerd",
    "etc-docker": "/etc/docker",
}
ENGINE_MODULES = (
    "ext4", "overlay", "br_netfilter", "bridge", "veth", "nf_tables", "nft_compat", "nft_chain_nat",
    "nf_nat", "nf_conntrack", "xt_conntrack", "xt_MASQUERADE", "xt_addrtype", "xt_nat",
    "ip_tables", "iptable_nat", "iptable_filter", "ip6_tables", "ip6table_nat",
    "ip6table_filter", "vxlan", "ipvlan", "macvlan", "tun",
)
SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
    "fs.inotify.max_user_watches": "524288",
    "fs.inotify.max_user_instances": "8192",
    "vm.max_map_count": "262144",
    "kernel.panic": "10",
}
EXT4_MAGIC = 0xEF53
EXT4_INCOMPAT_RECOVER = 0x4  # "needs_recovery": set while mounted, cleared on unmount


class BootInfo:
    """What the boot found and did; reported to the host in hello and status."""

    def __init__(self) -> None:
        self.config: dict = {}
        self.data_device: str | None = None
        self.disk: dict = {}
        self.network: dict = {}
        self.balloon = False
        self.resolver: dict = {}
        self.shares: list[dict] = []
        self.errors: list[str] = []
        self.vsock: socket.socket | None = None  # the link's vsock listener, if any


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
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          pass_fds=pass_fds)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}"
        )
    return proc


def _mount(fstype: str, source: str, target: str, options: str = "") -> None:
    os.makedirs(target, exist_ok=True)
    if os.path.ismount(target):
        return
    cmd = ["mount", "-t", fstype] + (["-o", options] if options else []) + [source, target]
    run(cmd)


def mount_filesystems() -> None:
    _mount("proc", "proc", "/proc")
    _mount("sysfs", "sysfs", "/sys")
    _mount("devtmpfs", "devtmpfs", "/dev")
    _mount("devpts", "devpts", "/dev/pts", "gid=5,mode=620,ptmxmode=666")
    _mount("tmpfs", "shm", "/dev/shm", "mode=1777,nosuid,nodev")
    _mount("mqueue", "mqueue", "/dev/mqueue")
    _mount("tmpfs", "run", "/run", "mode=0755,nosuid,nodev")
    _mount("tmpfs", "tmp", "/tmp", "mode=1777,nosuid,nodev")
    _mount("cgroup2", "cgroup2", "/sys/fs/cgroup", "nsdelegate")
    for fs, path in (("securityfs", "/sys/kernel/security"), ("bpf", "/sys/fs/bpf"),
                     ("fusectl", "/sys/fs/fuse/connections")):
        try:
            _mount(fs, fs, path)
        except (RuntimeError, OSError) as e:
            log.debug("optional mount %s: %s", path, e)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    # Delegate every controller to child cgroups (the engine's containers).
    try:
        controllers = Path("/sys/fs/cgroup/cgroup.controllers").read_text().split()
        Path("/sys/fs/cgroup/cgroup.subtree_control").write_text(
            " ".join("+" + c for c in controllers)
        )
    except OSError as e:
        log.warning("cgroup controllers not delegated: %s", e)
    pin_cgroup_keys()


# A child cgroup that lives as long as the VM. The kernel flips static keys (live code
# patching) when the first child cgroup of a controller appears (cpuset's is tested in
# the page allocator) and flips some back when the last one goes. Under software
# emulation with several vCPUs a vCPU can run the half-patched code and the kernel dies
# ("Oops: int3"); seen at a container's first start after boot. Made here, the flip
# happens before the agent answers, where a crash is met by the host booting again, and
# no container start or exit flips it later.
PINNED_CGROUP = Path("/sys/fs/cgroup/cove.pin")


def pin_cgroup_keys(path: Path = PINNED_CGROUP) -> bool:
    try:
        path.mkdir(exist_ok=True)
    except OSError as e:
        log.warning("cgroup %s not made: %s", path, e)
        return False
    return True


def load_modules() -> None:
    """Load the drivers for the devices present (no udev here), then the engine's."""
    aliases = set()
    for path in sysfs_glob("/sys/bus/*/devices/*/modalias"):
        try:
            aliases.add(Path(path).read_text().strip())
        except OSError:
            pass
    if aliases:
        run(["modprobe", "-a", "-q", "-b", *sorted(aliases)], check=False)
    for m in ("qemu_fw_cfg", "virtio_balloon", "virtio_rng", "button", "evdev",
              "vsock", "vmw_vsock_virtio_transport", "hv_sock"):
        run(["modprobe", "-q", m], check=False)
    proc = run(["modprobe", "-a", *ENGINE_MODULES], check=False)
    if proc.returncode != 0:
        log.warning("some engine modules did not load: %s", proc.stderr.strip())


def read_boot_config() -> dict:
    """The host's boot config (with the per-boot secret), from QEMU's fw_cfg.

    /sys/firmware is masked in containers by the engine's default profile, so a
    container cannot read it; the kernel command line would not do (/proc/cmdline is
    readable in every container). On Hyper-V (no fw_cfg) it returns {} at once.
    """
    path = Path("/sys/firmware/qemu_fw_cfg/by_name") / protocol.FW_CFG_NAME / "raw"
    wait = vsock_transport() != "hyperv"
    for _ in range(20 if wait else 0):
        if path.exists():
            break
        time.sleep(0.05)
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        (log.error if wait else log.info)("no boot config from the host at %s: %s", path, e)
        return {}


# -- vsock: the link's transport on Hyper-V (hv_sock) and virtio-vsock hosts ---------------

VMADDR_CID_ANY = 0xFFFFFFFF
CONFIG_WAIT = 600.0  # seconds to wait for the host's boot config over vsock
MAX_CONFIG = 65536  # bytes: the boot config line (the engine config is inside it)


def vsock_transport(sys_root: str = "/sys") -> str | None:
    """Which vsock transport reaches the host: "hyperv", "virtio" or None.

    hv_sock loads only on Hyper-V (it refuses hosts older than Windows 10); the virtio
    transport's module loads anywhere, so it counts only once it has a device.
    """
    if os.path.isdir(f"{sys_root}/module/hv_sock"):
        return "hyperv"
    drv = f"{sys_root}/bus/virtio/drivers/vmw_vsock_virtio_transport"
    try:
        if any(n.startswith("virtio") for n in os.listdir(drv)):
            return "virtio"
    except OSError:
        pass
    return None


def vsock_listener(port: int = protocol.AGENT_PORT,
                   transport: str | None = None) -> socket.socket | None:
    """A listening AF_VSOCK socket on `port`, or None when there is no vsock to the host
    (QEMU without a vsock device: nothing listens, nothing is logged as an error)."""
    family = getattr(socket, "AF_VSOCK", None)
    if family is None or transport is None:
        return None
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        log.info("no vsock listener (%s transport): %s", transport, e)
        return None
    try:
        s.bind((VMADDR_CID_ANY, port))
        s.listen(128)
    except OSError as e:
        s.close()
        log.info("no vsock listener on port %d (%s transport): %s", port, transport, e)
        return None
    log.info("link listens on vsock port %d (%s)", port, transport)
    return s


def _read_line(conn: socket.socket, limit: int) -> bytes:
    buf = bytearray()
    while b"\n" not in buf and len(buf) <= limit:
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def receive_boot_config(listener: socket.socket, timeout: float = CONFIG_WAIT) -> dict:
    """Wait for the host to send the boot config over vsock (Hyper-V has no fw_cfg).

    The host opens a connection and sends the config as one JSON line; the agent answers
    ``{"ok":true}`` and closes it. Peers other than the host, and lines that are not a
    config with a token, are closed without a reply. The listener stays open for the
    link. Returns {} when nothing came within `timeout`.
    """
    deadline = time.monotonic() + timeout
    listener.settimeout(1.0)
    try:
        while time.monotonic() < deadline:
            try:
                conn, addr = listener.accept()
            except TimeoutError:
                continue
            with conn:
                if not protocol.peer_is_host(addr):
                    log.warning("boot config: refused a connection from %s", addr)
                    continue
                try:
                    conn.settimeout(5.0)
                    line = _read_line(conn, MAX_CONFIG)
                    config = json.loads(line) if line.endswith(b"\n") else None
                except (OSError, ValueError) as e:
                    log.warning("boot config: unreadable (%s)", e)
                    continue
                if not isinstance(config, dict) or not isinstance(config.get("token"), str) \
                        or not config["token"]:
                    log.warning("boot config: not a config with a token; closed")
                    continue
                try:
                    conn.sendall(protocol.encode_message({"ok": True}))
                except OSError as e:
                    log.warning("boot config: the host went away before the reply (%s)", e)
                    continue
                log.info("boot config received over vsock")
                return config
    finally:
        listener.settimeout(None)
    log.error("no boot config from the host over vsock within %.0f s", timeout)
    return {}


def set_sysctls() -> None:
    for key, value in SYSCTLS.items():
        p = Path("/proc/sys") / key.replace(".", "/")
        try:
            p.write_text(value)
        except OSError as e:
            log.warning("sysctl %s=%s: %s", key, value, e)


DHCP_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    ;;
esac
"""


def setup_network(config: dict) -> dict:
    """Bring up lo and the first ethernet link: static for QEMU user networking, else DHCP."""
    socket.sethostname("cove")
    Path("/etc/hostname").write_text("cove\n")
    Path("/etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 cove\n::1 localhost\n")
    run(["ip", "link", "set", "lo", "up"])
    ifaces = sorted(
        p.name for p in Path("/sys/class/net").iterdir()
        if p.name != "lo" and (p / "device").exists()
    )
    if not ifaces:
        raise RuntimeError("no network interface found")
    iface = ifaces[0]
    run(["ip", "link", "set", iface, "up"])
    net = config.get("network", "user")
    if net == "user":
        # QEMU user networking's fixed plan: no DHCP round trips on the boot path.
        run(["ip", "addr", "add", "10.0.2.15/24", "dev", iface])
        run(["ip", "route", "add", "default", "via", "10.0.2.2", "dev", iface])
        Path("/etc/resolv.conf").write_text("nameserver 10.0.2.3\n")
        return {"interface": iface, "mode": "static", "address": "10.0.2.15",
                "gateway": "10.0.2.2"}
    script = RUN_DIR / "udhcpc.sh"
    script.write_text(DHCP_SCRIPT)
    script.chmod(0o755)
    run(["busybox", "udhcpc", "-i", iface, "-n", "-q", "-t", "10", "-s", str(script)],
        timeout=60)
    addr = run(["ip", "-4", "-o", "addr", "show", "dev", iface]).stdout.split()
    route = run(["ip", "-4", "route", "show", "default"]).stdout.split()
    gateway = route[route.index("via") + 1] if "via" in route else ""
    return {"interface": iface, "mode": "dhcp",
            "address": addr[3].split("/")[0] if len(addr) > 3 else "", "gateway": gateway}


def setup_resolver(config: dict, network: dict) -> dict:
    """Serve DNS on the VM's address with the host's names; point resolv.conf at it.

    host.docker.internal is the host as the VM reaches it: QEMU's 10.0.2.2 (the host's
    localhost), or the gateway of a DHCP network, unless the host's boot config names
    another address. The upstreams are what the network gave the VM.
    """
    address = network.get("address", "")
    host = str(config.get("host_address") or network.get("gateway") or "")
    if not address or not host:
        raise RuntimeError("no address or gateway to serve host.docker.internal from")
    resolv = Path("/etc/resolv.conf")
    upstreams = dns.read_nameservers(resolv.read_text() if resolv.exists() else "")
    names = {"host.docker.internal": host,
             "gateway.docker.internal": str(network.get("gateway") or host)}
    fwd = dns.Forwarder(address, upstreams, names)
    fwd.start()
    resolv.write_text(f"# Cove's resolver: host.docker.internal, then {' '.join(upstreams)}\n"
                      f"nameserver {address}\n")
    return {"address": address, "upstreams": fwd.upstreams, "names": names}


def guard_port(port: int, iface: str) -> None:
    """Accept `port` only from the host's side (`iface`), never from containers.

    Containers route to the VM's own addresses through their bridge, and host-network
    containers share its loopback; both are refused here, before any secret is checked.
    """
    run(["iptables", "-w", "-I", "INPUT", "-p", "tcp", "--dport", str(port),
         "!", "-i", iface, "-j", "DROP"])


def _partitioned(dev: str) -> bool:
    """The disk carries a partition table (MBR signature or a GPT header): never the data
    disk, which is a whole-disk ext4 or blank (Hyper-V's EFI boot disk is the case)."""
    head = _read_at(dev, 0, 1024)
    return head[510:512] == b"\x55\xaa" or head[512:520] == b"EFI PART"


def _block_devices() -> list[str]:
    return sorted(
        p.name for p in Path("/sys/class/block").iterdir()
        if not (p / "partition").exists() and p.name.startswith(("vd", "sd", "xvd"))
    )


def _read_at(dev: str, offset: int, size: int) -> bytes:
    with open(f"/dev/{dev}", "rb") as f:
        f.seek(offset)
        return f.read(size)


def find_data_device() -> str | None:
    """The data disk: the one with serial `cove-data`, else the first that is not the root."""
    candidates = []
    for dev in _block_devices():
        try:
            if _read_at(dev, 0, 4) == b"hsqs":
                continue  # the root image
            serial = Path(f"/sys/class/block/{dev}/serial")
            if serial.exists() and serial.read_text().strip() == "cove-data":
                return dev
            if _partitioned(dev):
                continue  # a boot disk (Hyper-V's EFI disk): formatting it would be a loss
        except OSError:
            continue
        candidates.append(dev)
    return candidates[0] if candidates else None


def ext4_state(dev: str) -> tuple[bool, bool]:
    """(has an ext4 filesystem, was not unmounted cleanly)."""
    sb = _read_at(dev, 1024, 1024)
    if len(sb) < 0x64 or struct.unpack_from("<H", sb, 0x38)[0] != EXT4_MAGIC:
        return False, False
    incompat = struct.unpack_from("<I", sb, 0x60)[0]
    return True, bool(incompat & EXT4_INCOMPAT_RECOVER)


def setup_data_disk() -> tuple[str | None, dict]:
    """Format on first boot, check after an unclean stop, mount, bind the engine's state."""
    dev = find_data_device()
    if dev is None:
        raise RuntimeError("no data disk attached")
    info: dict = {"device": dev}
    has_fs, unclean = ext4_state(dev)
    if not has_fs:
        t0 = time.monotonic()
        run(["mkfs.ext4", "-q", "-F", "-L", "cove-data", "-m", "0",
             "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", f"/dev/{dev}"],
            timeout=300)
        info.update(formatted=True, mkfs_seconds=round(time.monotonic() - t0, 2))
    else:
        info["formatted"] = False
        info["unclean"] = unclean
        cmd = ["e2fsck", "-p"] + (["-f"] if unclean else []) + [f"/dev/{dev}"]
        t0 = time.monotonic()
        proc = run(cmd, check=False, timeout=1800)
        info["fsck"] = {
            "forced": unclean,
            "exit": proc.returncode,
            "seconds": round(time.monotonic() - t0, 2),
            "output": (proc.stdout + proc.stderr).strip()[-2000:],
        }
        if proc.returncode >= 4:
            raise RuntimeError(
                f"the data disk has errors e2fsck -p cannot fix (exit {proc.returncode}); "
                f"the disk is left unmounted so nothing is lost: "
                f"{info['fsck']['output'][-300:]}"
            )
    DATA_MOUNT.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "ext4", "-o", "noatime", f"/dev/{dev}", str(DATA_MOUNT)])
    for sub, target in DATA_BINDS.items():
        src = DATA_MOUNT / sub
        first = not src.exists()
        src.mkdir(parents=True, exist_ok=True)
        if first and sub == "etc-docker" and Path(target).is_dir():
            # Keep what the image's /etc/docker had (seeded once on a new disk).
            run(["cp", "-a", f"{target}/.", str(src)])
        os.makedirs(target, exist_ok=True)
        run(["mount", "--bind", str(src), target])
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    return dev, info


NINEP_OPTIONS = "trans=virtio,version=9p2000.L,msize=524288,cache=mmap"
# A share the host serves itself over a link stream (`desktop.ninep`): the kernel's 9p
# client reads and writes the stream's socket (descriptor N in the mount process).
LINK_NINEP_OPTIONS = "trans=fd,rfdno={fd},wfdno={fd},version=9p2000.L,msize=1048576,cache=mmap"
LINK_TRANSPORT = "link"
VM_ROOT_HOME = RUN_DIR / "root"
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
    VM_ROOT_HOME.mkdir(mode=0o700, parents=True, exist_ok=True)
    passwd = Path("/etc/passwd")
    lines = passwd.read_text().splitlines()
    for i, line in enumerate(lines):
        f = line.split(":")
        if len(f) == 7 and f[0] == "root":
            f[5] = str(VM_ROOT_HOME)
            lines[i] = ":".join(f)
    passwd.write_text("\n".join(lines) + "\n")
    os.environ["HOME"] = str(VM_ROOT_HOME)


def mount_shares(shares: list) -> list[dict]:
    """Mount each host folder at its own path; [{path, transport, tag, error}]."""
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
        modules = ["virtiofs"] if transport == "virtiofs" else ["9pnet_virtio", "9p"]
        for m in modules:
            if m not in loaded:
                run(["modprobe", m], check=False)
                loaded.add(m)
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
            if transport == "virtiofs":
                run(["mount", "-t", "virtiofs", tag, path])
            else:
                run(["mount", "-t", "9p", "-o", NINEP_OPTIONS, tag, path])
        except (OSError, RuntimeError) as e:
            entry["error"] = str(e)
            log.error("share %s (%s over %s): %s", path, tag, transport, e)
    return out


def mount_link_share(entry: dict, fd: int) -> None:
    """Mount a host-served share: the kernel's 9p client on the link socket `fd`.

    The kernel takes its own reference to the socket, so the caller may close `fd`
    afterwards. Raises RuntimeError with mount's message."""
    path = entry["path"]
    for m in ("9pnet_fd", "9p"):
        run(["modprobe", m], check=False)
    Path(path).mkdir(parents=True, exist_ok=True)
    if os.path.ismount(path):
        raise RuntimeError(f"{path} is mounted already")
    run(["mount", "-t", "9p", "-o", LINK_NINEP_OPTIONS.format(fd=fd), entry["tag"], path],
        pass_fds=(fd,))


def balloon_present() -> bool:
    return any(
        Path(p).resolve().name == "virtio_balloon"
        for p in sysfs_glob("/sys/bus/virtio/devices/*/driver")
    )


def early(info: BootInfo) -> None:
    """What the engine needs before it can start: modules, sysctls, the data disk, and
    the host's boot config (it may carry the engine's config)."""
    load_modules()
    info.config = read_boot_config()
    if not info.config:
        # No fw_cfg (Hyper-V): the host sends the config over the link's first vsock
        # connection; the listener then serves the link (`Agent.run`).
        info.vsock = vsock_listener(transport=vsock_transport())
        if info.vsock is not None:
            info.config = receive_boot_config(info.vsock)
    if not info.config:
        info.errors.append("no boot config (secret) from the host")
    set_sysctls()
    try:
        relocate_root_home()
    except OSError as e:
        info.errors.append(f"root home: {e}")
    info.shares = mount_shares(info.config.get("shares") or [])
    for sh in info.shares:
        if sh["error"] and not sh.get("pending"):
            info.errors.append(f"share {sh['path']}: {sh['error']}")
    try:
        info.data_device, info.disk = setup_data_disk()
    except Exception as e:  # noqa: BLE001 - reported to the host, boot goes on
        info.errors.append(f"data disk: {e}")
        log.exception("data disk setup failed")


def late(info: BootInfo) -> None:
    """What the link needs (runs while the engine starts): the network."""
    try:
        info.network = setup_network(info.config)
    except Exception as e:  # noqa: BLE001
        info.errors.append(f"network: {e}")
        log.exception("network setup failed")
    else:
        try:
            info.resolver = setup_resolver(info.config, info.network)
        except (RuntimeError, OSError) as e:
            info.errors.append(f"resolver (host.docker.internal): {e}")
            log.exception("resolver setup failed")
    info.balloon = balloon_present()


def fstrim() -> str:
    proc = run(["fstrim", "-v", str(DATA_MOUNT)], check=False, timeout=600)
    return (proc.stdout + proc.stderr).strip()


def unmount_data_disk() -> None:
    """Sync and unmount the data disk (binds first), leaving the filesystem clean."""
    os.sync()
    for target in DATA_BINDS.values():
        run(["umount", target], check=False)
    proc = run(["umount", str(DATA_MOUNT)], check=False)
    if proc.returncode != 0:
        run(["umount", "-l", str(DATA_MOUNT)], check=False)
        # The lazy unmount may still be pending: remount read-only so the journal is clean.
        run(["mount", "-o", "remount,ro", str(DATA_MOUNT)], check=False)
    os.sync()
