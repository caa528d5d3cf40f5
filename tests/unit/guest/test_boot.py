"""The guest's boot steps (guest_engine.boot): the data disk on crafted superblocks, shares,
the boot config."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from guest_engine import boot


def _superblock(magic: int = 0xEF53, incompat: int = 0x2 | 0x40 | 0x80 | 0x200) -> bytes:
    """A 1024-byte ext4 superblock: magic at 0x38, feature_incompat at 0x60.

    The default incompat flags are a freshly made ext4's: filetype, extents, 64bit,
    flex_bg (needs_recovery, 0x4, clear).
    """
    sb = bytearray(1024)
    struct.pack_into("<I", sb, 0x00, 65536)  # s_inodes_count
    struct.pack_into("<I", sb, 0x04, 262144)  # s_blocks_count_lo
    struct.pack_into("<I", sb, 0x18, 2)  # s_log_block_size: 4 KiB blocks
    struct.pack_into("<H", sb, 0x38, magic)
    struct.pack_into("<H", sb, 0x3A, 1)  # s_state: cleanly unmounted
    struct.pack_into("<I", sb, 0x5C, 0x3C)  # feature_compat
    struct.pack_into("<I", sb, 0x60, incompat)
    struct.pack_into("<I", sb, 0x64, 0x6B)  # feature_ro_compat
    sb[0x78:0x88] = b"cove-data".ljust(16, b"\0")  # s_volume_name
    return bytes(sb)


class FakeDisk:
    """Stands in for /dev/<dev>: `boot.disk._read_at` serves reads from `data`."""

    def __init__(self) -> None:
        self.data = b""
        self.reads: list[tuple[str, int, int]] = []

    def read_at(self, dev: str, offset: int, size: int) -> bytes:
        assert dev == "vdb"
        self.reads.append((dev, offset, size))
        return self.data[offset : offset + size]


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> FakeDisk:
    d = FakeDisk()
    monkeypatch.setattr(boot.disk, "_read_at", d.read_at)
    return d


def test_clean_ext4(disk: FakeDisk) -> None:
    disk.data = bytes(1024) + _superblock()
    assert boot.disk.ext4_state("vdb") == (True, False)
    # The superblock is read at byte 1024, not at the start of the disk.
    assert disk.reads == [("vdb", 1024, 1024)]


def test_ext4_needs_recovery(disk: FakeDisk) -> None:
    disk.data = bytes(1024) + _superblock(incompat=0x2 | 0x4 | 0x40 | 0x80 | 0x200)
    assert boot.disk.ext4_state("vdb") == (True, True)


def test_only_recovery_bit_counts(disk: FakeDisk) -> None:
    # Every incompat flag but needs_recovery: still clean.
    disk.data = bytes(1024) + _superblock(incompat=0xFFFFFFFF & ~0x4)
    assert boot.disk.ext4_state("vdb") == (True, False)


def test_blank_disk(disk: FakeDisk) -> None:
    disk.data = bytes(2048)
    assert boot.disk.ext4_state("vdb") == (False, False)


def test_other_filesystem(disk: FakeDisk) -> None:
    # A non-ext4 magic with the recovery bit set must not count as an unclean ext4.
    disk.data = bytes(1024) + _superblock(magic=0x5346, incompat=0x4)
    assert boot.disk.ext4_state("vdb") == (False, False)
    # The magic in the wrong byte order is not ext4 either.
    disk.data = bytes(1024) + _superblock(magic=0x53EF)
    assert boot.disk.ext4_state("vdb") == (False, False)


def test_short_device(disk: FakeDisk) -> None:
    # A device smaller than the superblock area (or a truncated read).
    disk.data = bytes(1024) + _superblock()[:0x50]
    assert boot.disk.ext4_state("vdb") == (False, False)
    disk.data = b""
    assert boot.disk.ext4_state("vdb") == (False, False)


# -- what the data disk is, and what is done to it -----------------------------------------


def _backup(group: int) -> bytes:
    sb = bytearray(_superblock())
    struct.pack_into("<H", sb, 0x5A, group)  # s_block_group_nr: the backup names its group
    return bytes(sb)


class SparseDisk:
    """A large disk of zeros with a few regions written (as a qcow2 is)."""

    def __init__(self, regions: dict[int, bytes]) -> None:
        self.regions = regions

    def read_at(self, dev: str, offset: int, size: int) -> bytes:
        out = bytearray(size)
        for at, data in self.regions.items():
            lo, hi = max(at, offset), min(at + len(data), offset + size)
            if lo < hi:
                out[lo - offset:hi - offset] = data[lo - at:hi - at]
        return bytes(out)


BACKUP_AT = 32768 * 4096  # group 1's backup superblock, 4 KiB blocks


def test_backup_superblock_found_where_mkfs_puts_it(monkeypatch: pytest.MonkeyPatch) -> None:
    d = SparseDisk({BACKUP_AT: _backup(1)})
    monkeypatch.setattr(boot.disk, "_read_at", d.read_at)
    assert boot.disk.ext4_state("vdb") == (False, False)
    assert boot.disk.backup_superblock("vdb") == (32768, 4096)
    # A superblock-like block that does not name its own group is not a backup.
    monkeypatch.setattr(boot.disk, "_read_at",
                        SparseDisk({BACKUP_AT: _backup(3)}).read_at)
    assert boot.disk.backup_superblock("vdb") is None
    monkeypatch.setattr(boot.disk, "_read_at", SparseDisk({}).read_at)
    assert boot.disk.backup_superblock("vdb") is None


@pytest.fixture
def data_disk_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[list[str]]:
    """setup_data_disk on vdb with every command recorded (and e2fsck answering 1: fixed)."""
    ran: list[list[str]] = []

    def run(cmd: list[str], check: bool = True, timeout: float = 60,
            **kw: object) -> subprocess.CompletedProcess:
        ran.append(cmd)
        return subprocess.CompletedProcess(cmd, 1 if cmd[0] == "e2fsck" else 0, "", "")

    monkeypatch.setattr(boot.system, "run", run)
    monkeypatch.setattr(boot.disk, "find_data_device", lambda: "vdb")
    monkeypatch.setattr(boot.paths, "DATA_MOUNT", tmp_path / "data")
    monkeypatch.setattr(boot.paths, "LOG_DIR", tmp_path / "data" / "log")
    monkeypatch.setattr(boot.disk, "DATA_BINDS", {"docker": str(tmp_path / "var-lib-docker")})
    return ran


def _tools(ran: list[list[str]]) -> list[str]:
    return [c[0] for c in ran]


def test_a_damaged_primary_superblock_is_repaired_from_the_backup_never_formatted(
        data_disk_host: list[list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    # The primary superblock zeroed; the filesystem's backup at group 1 is intact.
    monkeypatch.setattr(boot.disk, "_read_at", SparseDisk({BACKUP_AT: _backup(1)}).read_at)
    for blank in (False, True):  # even a host that thinks the disk is new
        data_disk_host.clear()
        dev, info = boot.disk.setup_data_disk(blank=blank)
        assert "mkfs.ext4" not in _tools(data_disk_host)
        assert data_disk_host[0] == ["e2fsck", "-p", "-f", "-b", "32768", "-B", "4096",
                                     "/dev/vdb"]
        assert info["repaired_from_backup"] == 32768 and info["formatted"] is False
        assert "mount" in _tools(data_disk_host)


def test_a_disk_with_no_superblock_is_refused_unless_the_host_made_it_blank(
        data_disk_host: list[list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boot.disk, "_read_at", SparseDisk({0: b"\x01" * 4096}).read_at)
    with pytest.raises(boot.disk.DiskRefused, match="not formatted and is left untouched"):
        boot.disk.setup_data_disk(blank=False)
    assert data_disk_host == []  # not a command: no mkfs, no fsck, no mount
    monkeypatch.setattr(boot.disk, "_read_at", SparseDisk({}).read_at)
    dev, info = boot.disk.setup_data_disk(blank=True)
    assert _tools(data_disk_host)[0] == "mkfs.ext4" and info["formatted"] is True


def test_another_filesystem_is_never_formatted(data_disk_host: list[list[str]],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    other = bytes(1024) + _superblock(magic=0x5346)
    monkeypatch.setattr(boot.disk, "_read_at", SparseDisk({0: other}).read_at)
    with pytest.raises(boot.disk.DiskRefused):
        boot.disk.setup_data_disk()
    assert "mkfs.ext4" not in _tools(data_disk_host)


def test_an_unfixable_disk_is_left_unmounted(data_disk_host: list[list[str]],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boot.disk, "_read_at", SparseDisk({1024: _superblock()}).read_at)

    def run(cmd: list[str], check: bool = True, timeout: float = 60,
            **kw: object) -> subprocess.CompletedProcess:
        data_disk_host.append(cmd)
        return subprocess.CompletedProcess(cmd, 4 if cmd[0] == "e2fsck" else 0, "", "bad")

    monkeypatch.setattr(boot.system, "run", run)
    with pytest.raises(boot.disk.DiskRefused, match="left unmounted"):
        boot.disk.setup_data_disk(blank=True)
    assert _tools(data_disk_host) == ["e2fsck"]


def test_a_grown_disk_gets_its_filesystem_grown(data_disk_host: list[list[str]],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`cove start --disk` grew the image: the filesystem follows (online resize2fs);
    a disk of the filesystem's own size is left alone."""
    monkeypatch.setattr(boot.disk, "_read_at", SparseDisk({1024: _superblock()}).read_at)
    assert boot.disk.fs_bytes("vdb") == 262144 * 4096
    monkeypatch.setattr(boot.disk, "device_bytes", lambda dev: 262144 * 4096)
    dev, info = boot.disk.setup_data_disk()
    assert "resize2fs" not in _tools(data_disk_host) and "grown" not in info
    data_disk_host.clear()
    monkeypatch.setattr(boot.disk, "device_bytes", lambda dev: 2 * 262144 * 4096)
    dev, info = boot.disk.setup_data_disk()
    tools = _tools(data_disk_host)
    assert tools.index("resize2fs") > tools.index("mount")  # online, once mounted
    assert info["grown"]["to"] == 2 * 262144 * 4096


# -- shared folders ----------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/home/me", "/Users/me", "/root", "/tmp", "/private", "/Volumes", "/var/folders",
    "/mnt/other", "/var/lib/other", "/srv/a,b", "/run2", "/etcetera", "/lib32",
    "/home/me/with space",
])
def test_share_path_allowed(path: str) -> None:
    assert boot.shares.share_path_allowed(path)


@pytest.mark.parametrize("path", [
    "", "home/me", "./x", "/home/me/", "/home/./me", "/home//me", "/home/me/../you",
    "/", "/mnt", "/var", "/var/lib",
    "/etc", "/etc/docker", "/proc", "/sys/fs/cgroup", "/dev/shm", "/run", "/run/cove",
    "/usr/local/src", "/bin", "/sbin", "/lib", "/lib64", "/boot", "/var/run",
    "/mnt/data", "/mnt/data/docker", "/var/lib/docker", "/var/lib/docker/volumes",
    "/var/lib/containerd",
    # A leading "//" is "/" to Linux: not a way past the checks.
    "//", "//etc", "//var/lib/docker", "//home/me",
])
def test_share_path_refused(path: str) -> None:
    assert not boot.shares.share_path_allowed(path)


def test_guest_and_host_agree_on_the_vms_folders() -> None:
    from desktop import settings as instance

    assert set(boot.shares.SHARE_NOT_UNDER) == set(instance.VM_RESERVED)
    for path in ("/home/me", "/tmp", "/mnt", "/mnt/x", "/var", "/var/lib", "/var/lib/x",
                 "/etc", "/etc/x", "/run2", "/usr", "/", "//etc", "/a/../b", "/mnt/data/x"):
        try:
            instance.parse_shares([path])
            host_ok = True
        except instance.SettingsError:
            host_ok = False
        assert boot.shares.share_path_allowed(path) == host_ok, path


class FakeRun:
    """Records `boot.system.run` calls; mounts of the paths in `fail` exit 32."""

    def __init__(self, fail: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[list[str], bool]] = []
        self.fail = fail

    def __call__(self, cmd: list[str], check: bool = True, timeout: float = 60,
                 pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess:
        self.calls.append((list(cmd), check))
        self.pass_fds = pass_fds
        if cmd[0] == "mount" and cmd[-1] in self.fail:
            raise RuntimeError(f"{' '.join(cmd)} exited 32: mount: bad tag {cmd[-2]}")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    def commands(self, name: str) -> list[list[str]]:
        return [c for c, _ in self.calls if c[0] == name]


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch) -> FakeRun:
    r = FakeRun()
    monkeypatch.setattr(boot.system, "run", r)
    return r


def _share(path: Path | str, i: int, transport: str) -> dict[str, str]:
    return {"path": str(path), "tag": f"cove{i}", "transport": transport}


def test_mount_shares_both_transports(tmp_path: Path, fake_run: FakeRun) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c" / "deep"
    a.mkdir()
    b.mkdir()
    shares = [_share(a, 0, "9p"), _share(b, 1, "virtiofs"), _share(c, 2, "9p")]
    out = boot.shares.mount_shares(shares)
    assert out == [{**s, "error": ""} for s in shares]
    # Each module once, and a module that fails to load does not stop the boot.
    assert fake_run.commands("modprobe") == [["modprobe", "9pnet_virtio"], ["modprobe", "9p"],
                                             ["modprobe", "virtiofs"]]
    assert all(not check for cmd, check in fake_run.calls if cmd[0] == "modprobe")
    assert fake_run.commands("mount") == [
        ["mount", "-t", "9p", "-o", boot.shares.NINEP_OPTIONS, "cove0", str(a)],
        ["mount", "-t", "virtiofs", "cove1", str(b)],
        ["mount", "-t", "9p", "-o", boot.shares.NINEP_OPTIONS, "cove2", str(c)],
    ]
    assert c.is_dir()  # the mount point is made at the host's path
    # Modules are loaded before the first mount that needs them.
    cmds = [cmd for cmd, _ in fake_run.calls]
    assert cmds.index(["modprobe", "virtiofs"]) < cmds.index(fake_run.commands("mount")[1])


def test_ninep_options() -> None:
    opts = dict(o.partition("=")[::2] for o in boot.shares.NINEP_OPTIONS.split(","))
    assert opts["trans"] == "virtio" and opts["version"] == "9p2000.L"
    assert int(opts["msize"]) >= 262144
    # Never the kernel's writeback modes: they lost pages of files containers wrote.
    assert opts["cache"] == "none"
    link = dict(o.partition("=")[::2] for o in boot.shares.LINK_NINEP_OPTIONS.split(","))
    assert link["cache"] == "none" and link["trans"] == "fd"


def test_mount_shares_only_virtiofs_loads_no_9p(tmp_path: Path, fake_run: FakeRun) -> None:
    boot.shares.mount_shares([_share(tmp_path, 0, "virtiofs")])
    assert fake_run.commands("modprobe") == [["modprobe", "virtiofs"]]


def test_mount_shares_refused_paths_are_reported_not_mounted(tmp_path: Path,
                                                             fake_run: FakeRun) -> None:
    ok = tmp_path / "ok"
    ok.mkdir()
    unnormal = f"{tmp_path}/made/../x"
    shares = [_share("/etc", 0, "9p"), _share(unnormal, 1, "virtiofs"),
              _share("relative", 2, "9p"), {"tag": "cove3"}, _share(f"/{tmp_path}/dbl", 4, "9p"),
              _share(ok, 5, "9p")]
    out = boot.shares.mount_shares(shares)
    refused = "refused: not a folder Cove mounts shares on"
    assert [e["error"] for e in out] == [refused] * 5 + [""]
    assert out[3] == {"path": "", "tag": "cove3", "transport": "", "error": refused}
    assert fake_run.commands("mount") == [
        ["mount", "-t", "9p", "-o", boot.shares.NINEP_OPTIONS, "cove5", str(ok)]]
    assert ["modprobe", "virtiofs"] not in fake_run.commands("modprobe")
    # Nothing made for them (each is a harmless place under tmp_path, were it made).
    assert not (tmp_path / "made").exists() and not (tmp_path / "x").exists()
    assert not (tmp_path / "dbl").exists()


def test_mount_shares_failures_recorded_and_the_rest_mounted(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             ) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for p in (a, c):
        p.mkdir()
    b.write_text("a file where the mount point should be")
    run = FakeRun(fail=(str(a),))
    monkeypatch.setattr(boot.system, "run", run)
    out = boot.shares.mount_shares([_share(a, 0, "virtiofs"), _share(b, 1, "9p"),
                             _share(c, 2, "9p")])
    assert out[0]["error"] == (f"mount -t virtiofs cove0 {a} exited 32: mount: bad tag cove0")
    assert "File exists" in out[1]["error"] or "Not a directory" in out[1]["error"]
    assert out[2]["error"] == ""
    mounted = [cmd[-1] for cmd in run.commands("mount")]
    assert mounted == [str(a), str(c)]  # b: no mount point, no mount attempt


def test_link_shares_wait_for_the_host(tmp_path: Path, fake_run: FakeRun) -> None:
    """A share the host serves over the link is mounted later (`mount_link_share`): at
    boot it is only marked pending, and nothing is loaded or mounted for it."""
    out = boot.shares.mount_shares([_share(tmp_path / "w", 0, "link")])
    assert out == [{**_share(tmp_path / "w", 0, "link"), "pending": True,
                    "error": "waiting for the host's file server"}]
    assert fake_run.calls == []


def test_mount_link_share_gives_the_socket_to_the_kernel(tmp_path: Path,
                                                         fake_run: FakeRun) -> None:
    where = tmp_path / "mnt" / "host" / "c" / "Users" / "me"
    boot.shares.mount_link_share({"path": str(where), "tag": "cove3"}, 17)
    assert fake_run.commands("modprobe") == [["modprobe", "9pnet_fd"], ["modprobe", "9p"]]
    mount = fake_run.commands("mount")
    assert mount == [["mount", "-t", "9p", "-o", boot.shares.LINK_NINEP_OPTIONS.format(fd=17),
                      "cove3", str(where)]]
    opts = dict(o.partition("=")[::2] for o in mount[0][4].split(","))
    assert (opts["trans"], opts["rfdno"], opts["wfdno"], opts["version"]) == \
        ("fd", "17", "17", "9p2000.L")
    assert fake_run.pass_fds == (17,)  # the descriptor is open in mount's process
    assert where.is_dir()


def test_mount_shares_nothing(fake_run: FakeRun) -> None:
    assert boot.shares.mount_shares([]) == []
    assert fake_run.calls == []


def test_early_mounts_the_configs_shares_and_reports_errors(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            fake_run: FakeRun) -> None:
    ok = tmp_path / "ok"
    ok.mkdir()
    config = {"token": "t", "shares": [_share(ok, 0, "9p"), _share("/etc", 1, "9p")],
              "data_disk_blank": True}
    order: list[str] = []
    monkeypatch.setattr(boot.kernel, "load_modules", lambda: order.append("modules"))
    monkeypatch.setattr(boot.config, "read_boot_config", lambda: config)
    monkeypatch.setattr(boot.kernel, "set_sysctls", lambda: None)

    def relocate() -> None:
        order.append("home")
        raise PermissionError("[Errno 13] Permission denied: '/etc/passwd'")

    def data_disk(blank: bool = False) -> tuple[str, dict]:
        order.append(f"disk blank={blank}")
        return "vdb", {"device": "vdb"}

    def guard() -> list[str]:
        order.append("guard")
        return list(boot.shareguard.PROGRAMS)

    monkeypatch.setattr(boot.shares, "relocate_root_home", relocate)
    monkeypatch.setattr(boot.shareguard, "load", guard)
    monkeypatch.setattr(boot.disk, "setup_data_disk", data_disk)
    info = boot.BootInfo()
    boot.early(info)
    # The guard is in place before any share is mounted.
    assert order == ["modules", "home", "guard", "disk blank=True"]  # as the host said
    assert info.share_guard == list(boot.shareguard.PROGRAMS)
    assert [s["path"] for s in info.shares] == [str(ok), "/etc"]
    assert info.shares[0]["error"] == ""
    assert info.errors == [
        "root home: [Errno 13] Permission denied: '/etc/passwd'",
        "share /etc: refused: not a folder Cove mounts shares on",
    ]
    assert info.data_device == "vdb"


def test_early_without_shares_in_the_config(monkeypatch: pytest.MonkeyPatch,
                                            fake_run: FakeRun) -> None:
    monkeypatch.setattr(boot.kernel, "load_modules", lambda: None)
    monkeypatch.setattr(boot.config, "read_boot_config", lambda: {"token": "t", "shares": None})
    monkeypatch.setattr(boot.kernel, "set_sysctls", lambda: None)
    monkeypatch.setattr(boot.shares, "relocate_root_home", lambda: None)
    monkeypatch.setattr(boot.shareguard, "load", lambda: list(boot.shareguard.PROGRAMS))
    monkeypatch.setattr(boot.disk, "setup_data_disk", lambda blank=False: ("vdb", {}))
    info = boot.BootInfo()
    boot.early(info)
    assert info.shares == [] and info.errors == []
    assert fake_run.calls == []


def test_early_without_the_share_guard_mounts_no_9p_or_virtiofs_share(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_run: FakeRun) -> None:
    """The guard did not load: over 9p and virtiofs a container's set-uid bit would reach
    the host, so those shares stay unmounted with an error naming the way out; a link
    share (the host's server drops the bits) still waits for its stream."""
    for name in "abc":
        (tmp_path / name).mkdir()
    shares = [_share(tmp_path / "a", 0, "9p"), _share(tmp_path / "b", 1, "virtiofs"),
              _share(tmp_path / "c", 2, "link")]
    monkeypatch.setattr(boot.kernel, "load_modules", lambda: None)
    monkeypatch.setattr(boot.config, "read_boot_config", lambda: {"token": "t", "shares": shares})
    monkeypatch.setattr(boot.kernel, "set_sysctls", lambda: None)
    monkeypatch.setattr(boot.shares, "relocate_root_home", lambda: None)
    monkeypatch.setattr(boot.disk, "setup_data_disk", lambda blank=False: ("vdb", {}))

    def guard() -> list[str]:
        raise RuntimeError("the kernel's BPF LSM is not active (active: capability)")

    monkeypatch.setattr(boot.shareguard, "load", guard)
    info = boot.BootInfo()
    boot.early(info)
    assert fake_run.commands("mount") == []
    why = ("the share guard (no set-uid bits in shares) did not load: the kernel's BPF LSM "
           "is not active (active: capability)")
    assert info.errors[0] == why and info.share_guard == []
    for sh in info.shares[:2]:
        assert sh["error"] == (f"not mounted: {why}; share it over the link transport "
                               "(cove shares add PATH --transport link)")
    assert info.shares[2]["pending"] is True
    assert [e for e in info.errors if e.startswith("share ")] == [
        f"share {sh['path']}: {sh['error']}" for sh in info.shares[:2]]


PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
rooty:x:1000:1000:not root:/root:/bin/sh
root:broken
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin"""


@pytest.fixture
def passwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """/etc/passwd and /run/cove/root, both under tmp_path."""
    f = tmp_path / "etc" / "passwd"
    f.parent.mkdir()
    f.write_text(PASSWD + "\n")
    real_path = boot.shares.Path

    def path(*parts: str) -> Path:
        return f if parts == ("/etc/passwd",) else real_path(*parts)

    monkeypatch.setattr(boot.shares, "Path", path)
    monkeypatch.setattr(boot.paths, "VM_ROOT_HOME", tmp_path / "run" / "cove" / "root")
    monkeypatch.setenv("HOME", "/root")
    return f


def test_relocate_root_home(passwd: Path, tmp_path: Path) -> None:
    home = tmp_path / "run" / "cove" / "root"
    boot.shares.relocate_root_home()
    lines = passwd.read_text().split("\n")
    assert lines[0] == f"root:x:0:0:root:{home}:/bin/sh"
    # Only root's entry changes (not a user whose home is /root, nor a broken line).
    assert lines[1:] == PASSWD.split("\n")[1:] + [""]
    assert home.is_dir() and stat.S_IMODE(home.stat().st_mode) == 0o700
    assert os.environ["HOME"] == str(home)
    # Again (the agent restarting): the same file.
    before = passwd.read_text()
    boot.shares.relocate_root_home()
    assert passwd.read_text() == before


def test_relocate_root_home_without_a_root_entry(passwd: Path) -> None:
    passwd.write_text("daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    boot.shares.relocate_root_home()
    assert passwd.read_text() == "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"


def test_relocate_root_home_missing_passwd_raises_oserror(passwd: Path) -> None:
    # early() records an OSError as a boot error and goes on.
    passwd.unlink()
    with pytest.raises(OSError):
        boot.shares.relocate_root_home()


def test_pinned_cgroup_is_made_once_and_kept(tmp_path: Path) -> None:
    pin = tmp_path / "cove.pin"
    assert boot.filesystems.pin_cgroup_keys(pin) is True
    assert boot.filesystems.pin_cgroup_keys(pin) is True  # a second boot step finds it: no error
    assert pin.is_dir()
    assert boot.filesystems.pin_cgroup_keys(tmp_path / "missing-parent" / "cove.pin") is False


def test_the_boot_loads_its_modules_with_three_modprobes(
        fake_run: FakeRun, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The devices' drivers by modalias, the ones no modalias names, then the engine's:
    one program run each (each costs a tenth of a second under emulation; the named
    drivers took eight runs before). None may stop the boot."""
    alias = tmp_path / "modalias"
    alias.write_text("virtio:d00000001v00001AF4\n")
    monkeypatch.setattr(boot.system, "sysfs_glob", lambda pattern: [str(alias)])
    boot.kernel.load_modules()
    assert fake_run.commands("modprobe") == [
        ["modprobe", "-a", "-q", "-b", "virtio:d00000001v00001AF4"],
        ["modprobe", "-a", "-q", *boot.kernel.DEVICE_MODULES],
        ["modprobe", "-a", *boot.kernel.ENGINE_MODULES]]
    assert "hv_sock" in boot.kernel.DEVICE_MODULES and "qemu_fw_cfg" in \
        boot.kernel.DEVICE_MODULES
    assert all(not check for cmd, check in fake_run.calls if cmd[0] == "modprobe")


def test_the_boot_sets_the_idle_vms_timers_down(tmp_path: Path) -> None:
    """The sysctls go where the kernel reads them, the engine's and those that stop an
    idle VM's own timers (memory counters every 10 s, no proactive compaction, no lockup
    detector); one that cannot be written is logged and the rest still set."""
    from guest_engine.boot import kernel

    for key in kernel.SYSCTLS:
        p = tmp_path / key.replace(".", "/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("old\n")
    (tmp_path / "kernel/panic").unlink()
    (tmp_path / "kernel/panic").mkdir()  # a write to it fails
    kernel.set_sysctls(tmp_path)
    got = {k: (tmp_path / k.replace(".", "/")).read_text() for k in kernel.SYSCTLS
           if k != "kernel.panic"}
    assert got["vm.stat_interval"] == "10"
    assert got["vm.compaction_proactiveness"] == "0"
    assert got["kernel.watchdog"] == "0"
    assert got["net.ipv4.ip_forward"] == "1"
