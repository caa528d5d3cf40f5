"""The guest image recipe and builder (vm_image), without building an image."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guest_engine.boot import shareguard
from tests.helpers.paths import REPO
from tests.smoke import read_newc
from vm_image import builder, recipe

CPIO = shutil.which("cpio")


# -- recipe ------------------------------------------------------------------------------


def test_get_arch_known() -> None:
    amd = recipe.get_arch("amd64")
    assert (amd.kernel_package, amd.qemu_system, amd.console) == (
        "linux-image-amd64", "qemu-system-x86_64", "ttyS0")
    arm = recipe.get_arch("arm64")
    assert (arm.qemu_system, arm.console) == ("qemu-system-aarch64", "ttyAMA0")


def test_get_arch_unknown_lists_supported() -> None:
    with pytest.raises(ValueError, match="riscv64") as e:
        recipe.get_arch("riscv64")
    assert "amd64" in str(e.value) and "arm64" in str(e.value)


def test_mirror_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(recipe.MIRROR_ENV, raising=False)
    assert recipe.mirror() == recipe.DEFAULT_MIRROR
    monkeypatch.setenv(recipe.MIRROR_ENV, "http://mirror.example/debian")
    assert recipe.mirror() == "http://mirror.example/debian"


# -- cpio / initramfs --------------------------------------------------------------------


FILES = [
    ("bin/busybox", b"\x7fELF busybox" * 100, 0o755),
    ("init", b"#!/bin/busybox sh\necho hi\n", 0o755),
    ("modules/virtio_blk.ko", os.urandom(1001), 0o644),
    ("modules/deep/er/x.ko", b"x", 0o644),
    ("modules.order", b"virtio_blk.ko\n", 0o644),
]


def test_cpio_newc_layout() -> None:
    entries = read_newc(builder._cpio(FILES))
    by_name = {n: (m, d) for n, m, d in entries}
    # Parent folders come first, each once.
    dirs = [n for n, m, _ in entries if m & 0o170000 == 0o040000]
    assert dirs == ["bin", "modules", "modules/deep", "modules/deep/er"]
    assert [n for n, _, _ in entries][: len(dirs)] == dirs
    for name, data, mode in FILES:
        assert by_name[name] == (0o100000 | mode, data)
    assert len(entries) == len(FILES) + len(dirs)


def test_cpio_listed_and_extracted_by_system_cpio(tmp_path: Path) -> None:
    assert CPIO is not None, "cpio is needed for this test (apt-get install cpio)"
    archive = builder._cpio(FILES)
    listed = subprocess.run([CPIO, "-t", "--quiet"], input=archive, capture_output=True,
                            check=True).stdout.decode().split()
    assert sorted(listed) == sorted(
        [n for n, _, _ in FILES] + ["bin", "modules", "modules/deep", "modules/deep/er"])
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run([CPIO, "-i", "-d", "--quiet", "--no-absolute-filenames"], input=archive,
                   cwd=out, check=True, capture_output=True)
    for name, data, mode in FILES:
        p = out / name
        assert p.read_bytes() == data
        assert p.stat().st_mode & 0o777 == mode


@pytest.fixture
def sources_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Private copies of the sources the image key covers (the agent and the builder), so
    the key only changes when the test changes them."""
    dest = tmp_path / "src" / "guest_engine"
    shutil.copytree(builder.GUEST_ENGINE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    here = tmp_path / "src" / "vm_image"
    shutil.copytree(builder.HERE, here, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(builder, "GUEST_ENGINE", dest)
    monkeypatch.setattr(builder, "HERE", here)
    return dest


def _fake_root(tmp_path: Path, kver: str) -> Path:
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/busybox").write_bytes(b"\x7fELF busybox")
    moddir = root / "usr/lib/modules" / kver
    mods = {
        "kernel/drivers/block/virtio_blk.ko.xz": b"VIRTIO_BLK",
        "kernel/drivers/virtio/virtio_ring.ko": b"VIRTIO_RING",
        "kernel/fs/squashfs/squashfs.ko.xz": b"SQUASHFS",
        "kernel/lib/zstd/zstd_decompress.ko.xz": b"ZSTD",
        "kernel/lib/xxhash.ko": b"XXHASH",
        "kernel/fs/overlayfs/overlay.ko.xz": b"OVERLAY",
        "kernel/fs/ext4/ext4.ko.xz": b"EXT4",  # not wanted in the initramfs
        "kernel/drivers/char/hw_random/virtio-rng.ko": b"RNG",
    }
    for rel, data in mods.items():
        p = moddir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(lzma.compress(data) if rel.endswith(".xz") else data)
    (moddir / "modules.dep").write_text(
        "kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/virtio/virtio_ring.ko:\n"
        "kernel/fs/squashfs/squashfs.ko.xz: kernel/lib/zstd/zstd_decompress.ko.xz "
        "kernel/lib/xxhash.ko\n"
        "kernel/lib/zstd/zstd_decompress.ko.xz: kernel/lib/xxhash.ko\n"
        "kernel/lib/xxhash.ko:\n"
        "kernel/fs/overlayfs/overlay.ko.xz:\n"
        "kernel/fs/ext4/ext4.ko.xz:\n"
        "kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio_ring.ko\n"
    )
    return root


def test_initramfs_from_a_fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    sources_copy: Path) -> None:
    monkeypatch.setattr(recipe, "INITRAMFS_MODULES",
                        ("virtio_blk", "virtio_scsi", "squashfs", "overlay"))
    kver = "6.12.9-test-amd64"
    root = _fake_root(tmp_path, kver)
    blob = builder._initramfs(root, kver)
    assert blob == builder._initramfs(root, kver)  # reproducible (gzip mtime 0)
    entries = {n: (m, d) for n, m, d in read_newc(gzip.decompress(blob))}
    assert entries["bin/busybox"] == (0o100755, b"\x7fELF busybox")
    assert entries["init"] == (0o100755, (builder.HERE / "files/init").read_bytes())
    order = entries["modules.order"][1].decode().split()
    # Dependencies first; missing (virtio_scsi) and unwanted (ext4, virtio_rng) left out.
    assert order == ["virtio_ring.ko", "virtio_blk.ko", "xxhash.ko", "zstd_decompress.ko",
                     "squashfs.ko", "overlay.ko"]
    # Modules are stored decompressed (busybox insmod cannot read .xz).
    assert entries["modules/virtio_blk.ko"][1] == b"VIRTIO_BLK"
    assert entries["modules/squashfs.ko"][1] == b"SQUASHFS"
    assert entries["modules/virtio_ring.ko"][1] == b"VIRTIO_RING"
    assert not any("ext4" in n or "rng" in n for n in entries)


def test_initramfs_refuses_zstd_modules(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recipe, "INITRAMFS_MODULES", ("overlay",))
    kver = "6.12.9-zst"
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/busybox").write_bytes(b"bb")
    moddir = root / "usr/lib/modules" / kver
    (moddir / "kernel/fs/overlayfs").mkdir(parents=True)
    (moddir / "kernel/fs/overlayfs/overlay.ko.zst").write_bytes(b"(\xb5/\xfd")
    (moddir / "modules.dep").write_text("kernel/fs/overlayfs/overlay.ko.zst:\n")
    with pytest.raises(builder.BuildError, match="zstd"):
        builder._initramfs(root, kver)


# -- modules -----------------------------------------------------------------------------


def test_closure_dependencies_first_no_duplicates() -> None:
    deps = {
        "ext4": ["jbd2", "mbcache", "crc16"],
        "jbd2": ["crc32c"],
        "mbcache": [],
        "crc16": [],
        "crc32c": ["libcrc32c"],
        "libcrc32c": [],
        "overlay": [],
        "nft_nat": ["nf_nat", "nf_tables"],
        "nf_nat": ["nf_conntrack"],
        "nf_tables": [],
        "nf_conntrack": ["libcrc32c"],
    }
    order = builder._closure(deps, ["nft_nat", "ext4", "overlay", "jbd2"])
    assert len(order) == len(set(order))
    assert set(order) == set(deps)
    for m in order:
        for d in deps[m]:
            assert order.index(d) < order.index(m), f"{d} must come before {m}"
    assert order[-1] == "overlay"  # wanted order is kept where deps allow


def test_closure_unknown_and_cyclic() -> None:
    assert builder._closure({}, ["lonely"]) == ["lonely"]
    order = builder._closure({"a": ["b"], "b": ["a"]}, ["a"])
    assert sorted(order) == ["a", "b"]


def test_modules_to_keep(tmp_path: Path) -> None:
    moddir = tmp_path / "6.12"
    moddir.mkdir()
    (moddir / "modules.dep").write_text(
        "kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/lib/crc16.ko.xz\n"
        "kernel/fs/jbd2/jbd2.ko.xz:\n"
        "kernel/lib/crc16.ko.xz:\n"
        "kernel/sound/core/snd.ko.xz: kernel/lib/crc16.ko.xz\n"
        "kernel/drivers/gpu/drm/drm.ko.xz:\n"
    )
    keep = builder._modules_to_keep(moddir, ("fs/ext4/",))
    assert keep == {"kernel/fs/ext4/ext4.ko.xz", "kernel/fs/jbd2/jbd2.ko.xz",
                    "kernel/lib/crc16.ko.xz"}


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("kernel/fs/overlayfs/overlay.ko.xz", "overlay"),
        ("kernel/drivers/block/virtio_blk.ko", "virtio_blk"),
        ("kernel/drivers/char/hw_random/virtio-rng.ko.zst", "virtio_rng"),
        ("kernel/drivers/scsi/sd_mod.ko.gz", "sd_mod"),
        ("kernel/drivers/input/serio/hyperv-keyboard.ko.xz", "hyperv_keyboard"),
        ("x.ko", "x"),
    ],
)
def test_module_name(path: str, name: str) -> None:
    assert builder._module_name(path) == name


# -- tools, keys, cache ------------------------------------------------------------------


def test_check_tools_names_the_package() -> None:
    with pytest.raises(builder.BuildError) as e:
        builder.check_tools({"cove-no-such-tool-xyz": "cove-tools-pkg", "sh": "dash"})
    msg = str(e.value)
    assert "cove-no-such-tool-xyz" in msg
    assert "apt-get install cove-tools-pkg" in msg
    assert "dash" not in msg  # tools that are there are not reported
    builder.check_tools({"sh": "dash"})  # all present: no error


def test_image_key_follows_the_agent_sources(sources_copy: Path) -> None:
    arch = recipe.get_arch("amd64")
    key = builder.image_key(arch)
    assert key.startswith("amd64-") and len(key) == len("amd64-") + 16
    assert builder.image_key(arch) == key  # stable
    # Byte-compiled files do not count.
    (sources_copy / "__pycache__").mkdir(exist_ok=True)
    (sources_copy / "__pycache__" / "agent.cpython-311.pyc").write_bytes(b"junk")
    assert builder.image_key(arch) == key
    # A change in the builder's own files does.
    init = builder.HERE / "files" / "init"
    init.write_text(init.read_text() + "# changed\n")
    assert builder.image_key(arch) != key
    init.write_text(init.read_text().removesuffix("# changed\n"))
    assert builder.image_key(arch) == key
    # Modules of the package that do not shape the image (a converter, the CLI) do not.
    (builder.HERE / "unrelated_tool.py").write_text("# not in the image\n")
    assert builder.image_key(arch) == key
    # A change in any agent file does.
    f = sources_copy / "protocol.py"
    original = f.read_text()
    f.write_text(original + "\n# changed\n")
    changed = builder.image_key(arch)
    assert changed != key
    f.write_text(original)
    assert builder.image_key(arch) == key
    # So does a new file, and a rename.
    (sources_copy / "extra.py").write_text("")
    assert builder.image_key(arch) not in (key, changed)
    (sources_copy / "extra.py").rename(sources_copy / "extra2.py")
    assert builder.image_key(arch) != key


def test_image_key_per_arch_and_base_key(sources_copy: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    amd, arm = recipe.get_arch("amd64"), recipe.get_arch("arm64")
    assert builder.image_key(arm).startswith("arm64-")
    assert builder.image_key(amd)[6:] != builder.image_key(arm)[6:]
    monkeypatch.delenv(recipe.MIRROR_ENV, raising=False)
    base = builder.base_key(amd)
    assert builder.base_key(amd) == base
    monkeypatch.setenv(recipe.MIRROR_ENV, "http://mirror.example/debian")
    assert builder.base_key(amd) != base  # another mirror is another base


def test_images_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COVE_IMAGES", raising=False)
    monkeypatch.setenv("COVE_HOME", str(tmp_path / "home"))
    assert builder.images_dir() == tmp_path / "home" / "images"
    assert builder.images_dir(tmp_path / "h2") == tmp_path / "h2" / "images"
    monkeypatch.setenv("COVE_IMAGES", str(tmp_path / "imgs"))
    assert builder.images_dir() == tmp_path / "imgs"


def test_find_and_latest_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               sources_copy: Path) -> None:
    monkeypatch.delenv("COVE_IMAGES", raising=False)
    assert builder.find_image("amd64", tmp_path) is None
    assert builder.latest_image("amd64", tmp_path) is None
    key = builder.image_key(recipe.get_arch("amd64"))
    idir = tmp_path / "images"
    # An interrupted build (no manifest) is not an image.
    (idir / key).mkdir(parents=True)
    assert builder.find_image("amd64", tmp_path) is None
    (idir / key / "manifest.json").write_text('{"files": {}}')
    img = builder.find_image("amd64", tmp_path)
    assert img is not None and img.key == key and img.path == idir / key
    assert img.kernel == idir / key / "vmlinuz"
    assert img.manifest == {"files": {}}
    # latest_image: the newest complete image of any key, for that arch only.
    old = idir / "amd64-0000000000000000"
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    past = time.time() - 3600
    os.utime(old / "manifest.json", (past, past))
    arm = idir / "arm64-ffffffffffffffff"
    arm.mkdir()
    (arm / "manifest.json").write_text("{}")
    latest = builder.latest_image("amd64", tmp_path)
    assert latest is not None and latest.path == idir / key
    with pytest.raises(ValueError, match="riscv64"):
        builder.find_image("riscv64", tmp_path)


# -- command line ------------------------------------------------------------------------


def test_cli_unsupported_arch_exits_2(tmp_path: Path) -> None:
    env = {**os.environ, "COVE_HOME": str(tmp_path), "HOME": str(tmp_path)}
    env.pop("COVE_IMAGES", None)
    proc = subprocess.run([sys.executable, "-m", "vm_image", "build", "--arch", "riscv64"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "riscv64" in proc.stderr
    assert "amd64" in proc.stderr and "arm64" in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "images").exists()  # nothing was started


def test_cli_path_without_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    from vm_image import cli

    monkeypatch.setenv("COVE_HOME", str(tmp_path))
    monkeypatch.delenv("COVE_IMAGES", raising=False)
    assert cli.main(["path", "--arch", "arm64"]) == 1
    err = capsys.readouterr().err
    assert "no arm64 image" in err and "cove image build" in err


# -- building another architecture's image ---------------------------------------------


def test_foreign_arch_nothing_to_do_for_the_hosts_own(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    builder.enable_foreign_arch("amd64", tmp_path, lambda c, **k: calls.append(c),
                                host="x86_64")
    builder.enable_foreign_arch("arm64", tmp_path, lambda c, **k: calls.append(c),
                                host="aarch64")
    assert calls == []


def test_foreign_arch_already_enabled(tmp_path: Path) -> None:
    (tmp_path / "qemu-aarch64").write_text("enabled\n")
    calls: list[list[str]] = []
    builder.enable_foreign_arch("arm64", tmp_path, lambda c, **k: calls.append(c),
                                host="x86_64")
    assert calls == []


def test_foreign_arch_mounts_and_enables(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builder.shutil, "which", lambda name: f"/usr/bin/{name}")
    calls: list[list[str]] = []

    def run(cmd: list[str], **kw: object) -> None:
        calls.append(cmd)
        if cmd[0] == "mount":
            (tmp_path / "register").write_text("")
        if cmd[0] == "update-binfmts":
            (tmp_path / "qemu-aarch64").write_text("enabled\n")

    builder.enable_foreign_arch("arm64", tmp_path, run, host="x86_64")  # type: ignore[arg-type]
    assert calls == [["mount", "-t", "binfmt_misc", "binfmt_misc", str(tmp_path)],
                     ["update-binfmts", "--enable", "qemu-aarch64"]]


def test_foreign_arch_without_the_emulator_says_what_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builder.shutil, "which", lambda name: None)
    with pytest.raises(builder.BuildError, match="apt-get install qemu-user-static "
                                                 "binfmt-support arch-test"):
        builder.enable_foreign_arch("arm64", tmp_path, host="x86_64")


def test_foreign_arch_that_cannot_be_enabled_says_how(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builder.shutil, "which", lambda name: f"/usr/bin/{name}")
    (tmp_path / "register").write_text("")
    with pytest.raises(builder.BuildError, match="update-binfmts --enable qemu-aarch64"):
        builder.enable_foreign_arch("arm64", tmp_path, lambda c, **k: None,
                                    host="x86_64")  # type: ignore[arg-type,return-value]


def test_install_agent_puts_init_poweroff_and_the_agent_in_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chrooted: list[list[str]] = []
    monkeypatch.setattr(builder, "_run", lambda cmd, what: chrooted.append(cmd))
    root = tmp_path / "root"
    (root / "sbin").mkdir(parents=True)
    (root / "usr/lib/python3/dist-packages").mkdir(parents=True)
    (root / "sbin/init").symlink_to("/lib/systemd/systemd")  # what a package left there
    builder._install_agent(root, "amd64-test")
    init, poweroff = root / "sbin/init", root / "sbin/poweroff"
    assert not init.is_symlink() and init.read_bytes() == (
        builder.HERE / "files/sbin-init").read_bytes()
    assert poweroff.stat().st_mode & 0o777 == 0o755
    # The kernel's orderly power-off goes to the agent (its pid file), not a hard stop.
    text = poweroff.read_text()
    assert "/run/cove/agent.pid" in text and "kill -PWR" in text
    assert (root / "usr/lib/python3/dist-packages/guest_engine/agent.py").is_file()
    assert json.loads((root / "etc/cove/image.json").read_text()) == {"key": "amd64-test"}
    assert [c[:2] for c in chrooted if c[0] != "clang"] == [["chroot", str(root)]] * 3
    assert [c[-1] for c in chrooted if c[0] == "clang"] == [
        str(root / "usr/lib/cove/share-guard.bpf.o")]


def test_the_share_guard_compiles_to_an_object_the_kernel_takes(tmp_path: Path) -> None:
    """The real clang: the object has both LSM hooks, the BTF that CO-RE relocates
    against the guest's kernel, and a licence the kernel accepts for an LSM program."""
    root = tmp_path / "root"
    builder._build_share_guard(root)
    obj = root / "usr/lib/cove/share-guard.bpf.o"
    sections = subprocess.run(["readelf", "-SW", str(obj)], capture_output=True, text=True,
                              check=True).stdout
    for name in ("lsm/path_chmod", "lsm/path_mknod", "license", ".BTF", ".BTF.ext"):
        assert f" {name} " in sections, name
    lic = subprocess.run(["readelf", "-x", "license", str(obj)], capture_output=True,
                         text=True, check=True).stdout
    assert "GPL." in lic
    symbols = subprocess.run(["readelf", "-sW", str(obj)], capture_output=True, text=True,
                             check=True).stdout
    assert all(f" {p}" in symbols for p in shareguard.PROGRAMS)


def test_stale_build_folders_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is free now (reused only after the pid space wraps)
    for name in (f".build-amd64-abc-{dead.pid}", f".base-abc-{dead.pid}",
                 f".build-amd64-abc-{os.getpid()}", "amd64-abc", ".build-odd-name-x"):
        (tmp_path / name / "root").mkdir(parents=True)
    removed = builder.remove_stale_builds(tmp_path)
    assert sorted(removed) == sorted([f".build-amd64-abc-{dead.pid}", f".base-abc-{dead.pid}"])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([f".build-amd64-abc-{os.getpid()}", ".build-odd-name-x", "amd64-abc"])


def test_only_the_other_architectures_emulators_are_kept(tmp_path: Path) -> None:
    """qemu-user ships some 30 emulators (465 MB): the image keeps its `Arch.emulators`,
    with their binfmt_misc entries and wrappers, and nothing of the rest."""
    root = tmp_path / "root"
    bindir, wrappers, confs = (root / "usr/bin", root / "usr/libexec/qemu-binfmt",
                               root / "usr/lib/binfmt.d")
    for d in (bindir, wrappers, confs):
        d.mkdir(parents=True)
    for name in ("aarch64", "aarch64_be", "arm", "armeb", "riscv64", "x86_64", "mips"):
        (bindir / f"qemu-{name}").write_text("elf")
        (wrappers / f"{name}-binfmt-P").symlink_to(f"../../bin/qemu-{name}")
        (confs / f"qemu-{name}.conf").write_text(f":qemu-{name}:M::x::/y:F\n")
    (bindir / "qemu-arm-static").write_text("elf")
    (bindir / "python3").write_text("")
    keep = recipe.get_arch("amd64").emulators
    assert keep == ("aarch64", "arm")
    builder.prune_emulators(root, keep)
    assert sorted(p.name for p in bindir.iterdir()) == [
        "python3", "qemu-aarch64", "qemu-arm", "qemu-arm-static"]
    assert sorted(p.name for p in wrappers.iterdir()) == ["aarch64-binfmt-P", "arm-binfmt-P"]
    assert sorted(p.name for p in confs.iterdir()) == ["qemu-aarch64.conf", "qemu-arm.conf"]
    assert recipe.get_arch("arm64").emulators == ("x86_64", "arm")


def test_containerd_runs_without_kubernetes_cri_plugin() -> None:
    """The guest's containerd config (installed over Debian's) turns the CRI plugin off:
    dockerd is its only client; the CRI plugin cost start time and idle wakeups."""
    import tomllib

    from vm_image import builder

    conf = tomllib.loads((builder.HERE / "files/containerd.toml").read_text())
    assert conf["version"] == 2
    assert conf["disabled_plugins"] == ["io.containerd.grpc.v1.cri"]


def test_containerds_garbage_collector_does_not_look_every_third_of_a_second() -> None:
    """The collector's looks are 1000 of its runs apart, not 50 (the default 0.02 woke
    an idle containerd every 0.3 s under emulation), and a deletion collects at once
    instead of at the next look (space freed by `docker rmi` on the containerd store)."""
    import tomllib

    from vm_image import builder

    conf = tomllib.loads((builder.HERE / "files/containerd.toml").read_text())
    gc = conf["plugins"]["io.containerd.gc.v1.scheduler"]
    assert gc["pause_threshold"] <= 0.001
    assert gc["deletion_threshold"] == 1 and gc["schedule_delay"] == "100ms"
