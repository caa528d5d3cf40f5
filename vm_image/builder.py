"""Build Cove's guest image: kernel, initramfs, compressed root, manifest.

The build has two cached stages under ``$COVE_HOME/images``:

* ``base-<key>/``: the Debian root made by mmdebstrap from the recipe's packages, pruned
  (docs, unused kernel modules, build leftovers), with the kernel beside it. Its key covers
  the package list, suite, mirror, architecture and the recipe's prune lists.
* ``<key>/``: the bootable image: ``vmlinuz``, ``initramfs``, ``root.sqfs`` and
  ``manifest.json``. Its key adds the agent's sources (``guest_engine``) and the builder's
  own files, so changing the agent rebuilds only this stage.

Each stage is built in a temporary folder and renamed into place when complete, so a
failed or interrupted build never leaves a half image where a good one is expected, and
an image that was usable before stays usable.

Errors are `BuildError`, whose message names the problem and the fix.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import lzma
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vm_image import recipe

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
GUEST_ENGINE = HERE.parent / "guest_engine"
BUILDER_VERSION = "1"

# tool -> Debian package that provides it
REQUIRED_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "mksquashfs": "squashfs-tools",
    "depmod": "kmod",
    "dpkg-query": "dpkg",
    "clang": "clang",  # the share guard's BPF object (files/share-guard.bpf.c)
}


class BuildError(Exception):
    """The image could not be built; the message says why and what to do."""


@dataclass(frozen=True)
class Image:
    """A built guest image on disk. `source` says where it was found: "cache" (built on
    this machine into `images_dir()`) or "system" (shipped with a packaged Cove, read
    only, in `system_images_dir()`)."""

    path: Path
    key: str
    arch: str
    source: str = "cache"

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def initramfs(self) -> Path:
        return self.path / "initramfs"

    @property
    def root(self) -> Path:
        return self.path / "root.sqfs"

    @property
    def manifest(self) -> dict:
        return json.loads((self.path / "manifest.json").read_text())


def default_home() -> Path:
    return Path(os.environ.get("COVE_HOME") or Path.home() / ".cove")


def images_dir(home: Path | None = None) -> Path:
    """Where images are kept: `COVE_IMAGES`, else ``$COVE_HOME/images``."""
    if home is None and os.environ.get("COVE_IMAGES"):
        return Path(os.environ["COVE_IMAGES"])
    return (home or default_home()) / "images"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tree_digest(root: Path, h: hashlib._Hash) -> None:
    for p in sorted(root.rglob("*")):
        if "__pycache__" in p.parts or not p.is_file():
            continue
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(p.read_bytes() + b"\0")


def base_key(arch: recipe.Arch) -> str:
    data = {
        "builder": BUILDER_VERSION,
        "suite": recipe.SUITE,
        "mirror": recipe.mirror(),
        "arch": arch.name,
        "kernel": arch.kernel_package,
        "emulators": arch.emulators,
        "packages": recipe.PACKAGES,
        "excludes": recipe.DPKG_EXCLUDES,
        "prune": recipe.PRUNE,
        "modules": recipe.MODULES_KEPT,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def image_key(arch: recipe.Arch) -> str:
    h = hashlib.sha256(base_key(arch).encode())
    h.update(json.dumps([recipe.INITRAMFS_MODULES, recipe.SQUASHFS_COMPRESSION]).encode())
    _tree_digest(GUEST_ENGINE, h)
    # What shapes the image's content: the recipe, this builder and the files it copies
    # in; not the package's other modules (its CLI, the Hyper-V disk converter).
    _tree_digest(HERE / "files", h)
    for module in ("builder.py", "recipe.py"):
        h.update((HERE / module).read_bytes())
    return f"{arch.name}-{h.hexdigest()[:16]}"


def check_tools(tools: dict[str, str] = REQUIRED_TOOLS) -> None:
    missing = {t: pkg for t, pkg in tools.items() if shutil.which(t) is None}
    if missing:
        pkgs = " ".join(sorted(set(missing.values())))
        names = ", ".join(sorted(missing))
        raise BuildError(
            f"{names} not found: building the guest image needs them; "
            f"install with: apt-get install {pkgs}"
        )


# A packaged Cove (the installers' bundles) ships its guest image in a read-only folder
# beside its executable, e.g. /usr/lib/cove/images/<key>/; this variable names another.
SYSTEM_IMAGES_ENV = "COVE_SYSTEM_IMAGES"


def is_packaged() -> bool:
    """True in a bundled Cove (PyInstaller sets `sys.frozen`): no sources, no build tools."""
    return bool(getattr(sys, "frozen", False))


def system_images_dir() -> Path | None:
    """The read-only image folder of a packaged Cove (`COVE_SYSTEM_IMAGES`, else `images/`
    beside the bundle's executable, or in Cove.app's Contents/Resources on macOS), or None
    when Cove runs from source."""
    if os.environ.get(SYSTEM_IMAGES_ENV):
        return Path(os.environ[SYSTEM_IMAGES_ENV])
    if is_packaged():
        exe_dir = Path(sys.executable).resolve().parent
        app_resources = exe_dir.parent / "Resources" / "images"  # Cove.app/Contents/MacOS
        return app_resources if app_resources.is_dir() else exe_dir / "images"
    return None


def _newest(folder: Path, arch: str) -> Path | None:
    found = sorted(
        (p for p in folder.glob(f"{arch}-*") if (p / "manifest.json").is_file()),
        key=lambda p: (p / "manifest.json").stat().st_mtime,
    )
    return found[-1] if found else None


def find_image(arch: str = "amd64", home: Path | None = None) -> Image | None:
    """The image this Cove boots, or None.

    From source: the image built for the current recipe and agent (its key), in
    `images_dir()`, else in `system_images_dir()`. Packaged: the image the package ships
    in `system_images_dir()` (its agent was built from the bundle's own sources; the key
    cannot be computed there, the sources are compiled into the bundle); a packaged Cove
    never uses or builds images in `images_dir()`.
    """
    a = recipe.get_arch(arch)
    system = system_images_dir()
    if is_packaged():
        found = _newest(system, a.name) if system is not None else None
        return Image(found, found.name, a.name, "system") if found is not None else None
    key = image_key(a)
    for folder, source in ((images_dir(home), "cache"), (system, "system")):
        if folder is not None and (folder / key / "manifest.json").is_file():
            return Image(folder / key, key, a.name, source)
    return None


def missing_image_message(arch: str) -> str:
    """What to tell the user when `find_image(arch)` found nothing."""
    if is_packaged():
        where = system_images_dir()
        return (
            f"the {arch} guest image that ships with this Cove is missing from {where}; "
            "reinstall Cove (e.g. apt-get install --reinstall cove) to restore it"
        )
    return (f"no {arch} image is built for this version of Cove yet; build it once as "
            f"root: sudo cove image build --arch {arch}")


def latest_image(arch: str = "amd64", home: Path | None = None) -> Image | None:
    """The newest complete image of any key for this arch (for when a rebuild fails)."""
    found = _newest(images_dir(home), arch)
    return Image(found, found.name, arch) if found is not None else None


def build(
    arch: str = "amd64",
    home: Path | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Image:
    """Return the image for the current recipe, building what is not cached.

    Raises `BuildError` (or `ValueError` for an unsupported arch) with a message naming
    the fix; a previously built image is never touched by a failed build.
    """
    a = recipe.get_arch(arch)
    say = progress or (lambda msg: log.info("%s", msg))
    if not force:
        cached = find_image(a.name, home)
        if cached is not None:
            say(f"guest image {cached.key} is up to date")
            return cached
    if is_packaged():
        # No mmdebstrap, no sources: a packaged Cove only runs the image it ships.
        shipped = find_image(a.name, home)
        fix = (f"it boots the one it ships, {shipped.path}" if shipped is not None
               else missing_image_message(a.name))
        raise BuildError(f"this is a packaged Cove: it cannot build a guest image; {fix}")
    check_tools()
    if os.geteuid() != 0:
        raise BuildError(
            "building the guest image needs root (mmdebstrap's root mode and chroot); "
            "run `make image` or `cove image build` as root, e.g. with sudo"
        )
    idir = images_dir(home)
    idir.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(idir)
    if not (find_base(a, idir) and not force):
        enable_foreign_arch(a.name)
    base = _build_base(a, idir, force, say)
    key = image_key(a)
    final = idir / key
    tmp = idir / f".build-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        t0 = time.monotonic()
        say("assembling the root with the agent")
        root = tmp / "root"
        _run(["cp", "-a", str(base / "root"), str(root)], "copy the base root")
        _install_agent(root, key)
        say("building the initramfs")
        kver = (base / "kernel-version").read_text().strip()
        (tmp / "initramfs").write_bytes(_initramfs(root, kver))
        shutil.copy2(base / "vmlinuz", tmp / "vmlinuz")
        say("compressing the root (squashfs)")
        _run(
            [
                "mksquashfs", str(root), str(tmp / "root.sqfs"),
                "-noappend", *recipe.SQUASHFS_COMPRESSION, "-quiet", "-no-progress",
                "-no-xattrs",
            ],
            "compress the root",
        )
        shutil.rmtree(root)
        manifest = {
            "key": key,
            "arch": a.name,
            "suite": recipe.SUITE,
            "kernel_version": kver,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - t0, 1),
            "packages": json.loads((base / "packages.json").read_text()),
            "files": {
                name: {"sha256": sha256_file(tmp / name), "size": (tmp / name).stat().st_size}
                for name in ("vmlinuz", "initramfs", "root.sqfs")
            },
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune_images(idir, a.name, keep=final)
    say(f"guest image {key} built in {manifest['build_seconds']} s")
    return Image(final, key, a.name)


def _prune_images(idir: Path, arch: str, keep: Path) -> None:
    """Drop older images of `arch`, keeping `keep` and the newest other one (a running
    instance may still use it; it is also the fallback should a later build fail)."""
    others = sorted(
        (p for p in idir.glob(f"{arch}-*") if p != keep and (p / "manifest.json").is_file()),
        key=lambda p: (p / "manifest.json").stat().st_mtime,
    )
    for old in others[:-1]:
        shutil.rmtree(old, ignore_errors=True)


def _run(cmd: list[str], what: str, **kw: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise BuildError(f"could not {what} ({cmd[0]} exited {proc.returncode}):\n{tail}")
    return proc


# Debian's machine names for the user-mode emulators that run another arch's programs.
QEMU_USER = {"amd64": "x86_64", "arm64": "aarch64"}
BINFMT = Path("/proc/sys/fs/binfmt_misc")


def enable_foreign_arch(arch: str, binfmt: Path = BINFMT,
                        run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                        host: str | None = None) -> None:
    """Make sure another architecture's packages can be installed (their maintainer
    scripts run under qemu-user through binfmt_misc). Nothing to do for the host's own
    arch; otherwise mount binfmt_misc and enable the emulator when they are not, or raise
    BuildError saying what to install."""
    import platform

    machine = host or platform.machine().lower()
    native = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
    if native.get(machine) == arch:
        return
    emulator = f"qemu-{QEMU_USER[arch]}"
    if (binfmt / emulator).is_file():
        return
    if shutil.which("update-binfmts") is None or shutil.which(f"{emulator}-static") is None:
        raise BuildError(
            f"building the {arch} image on this {machine} host needs {arch} emulation: "
            "apt-get install qemu-user-static binfmt-support arch-test"
        )
    if not (binfmt / "register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)],
            capture_output=True)
    run(["update-binfmts", "--enable", emulator], capture_output=True)
    if not (binfmt / emulator).is_file():
        raise BuildError(
            f"{emulator} could not be enabled in binfmt_misc ({binfmt}); run "
            f"`update-binfmts --enable {emulator}` as root (a container may need "
            "--privileged for that)"
        )


def remove_stale_builds(idir: Path) -> list[str]:
    """Remove the work folders (`.build-<key>-<pid>`, `.base-<key>-<pid>`) of builds whose
    process is gone (killed, or the machine stopped): each can hold hundreds of MiB.
    A running build's folder is left alone. Returns the names removed."""
    removed = []
    for p in sorted(idir.glob(".build-*")) + sorted(idir.glob(".base-*")):
        pid = p.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)
        log.info("removed %s, left by an interrupted build", p)
        removed.append(p.name)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def find_base(a: recipe.Arch, idir: Path) -> Path | None:
    final = idir / f"base-{a.name}-{base_key(a)}"
    return final if (final / "packages.json").is_file() else None


def _build_base(a: recipe.Arch, idir: Path, force: bool, say: Callable[[str], None]) -> Path:
    final = idir / f"base-{a.name}-{base_key(a)}"
    key = base_key(a)
    if find_base(a, idir) and not force:
        return final
    tmp = idir / f".base-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        root = tmp / "root"
        mirror = recipe.mirror()
        say(f"installing Debian {recipe.SUITE} packages from {mirror} (mmdebstrap)")
        cmd = [
            "mmdebstrap",
            "--mode=root",
            "--variant=essential",
            f"--architectures={a.name}",
            "--aptopt=APT::Install-Recommends \"false\"",
            "--include=" + ",".join((a.kernel_package, *recipe.PACKAGES)),
            # No initramfs-tools initrd: Cove ships its own initramfs.
            "--essential-hook=mkdir -p \"$1/etc/kernel\" && "
            "echo 'do_initrd = no' > \"$1/etc/kernel-img.conf\"",
        ]
        cmd += [f"--dpkgopt=path-exclude={p}" for p in recipe.DPKG_EXCLUDES]
        cmd += [recipe.SUITE, str(root), mirror]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ,
                              "INITRD": "No"})
        if proc.returncode != 0:
            out = proc.stderr + proc.stdout
            tail = "\n".join(out.strip().splitlines()[-10:])
            if any(s in out for s in ("Could not resolve", "Failed to fetch",
                                      "Connection failed", "Temporary failure",
                                      "Unable to connect", "Release file")):
                raise BuildError(
                    f"the Debian package mirror {mirror} could not be reached; check the "
                    f"network or set {recipe.MIRROR_ENV} to a mirror that can be. "
                    f"Images built before are unchanged.\n{tail}"
                )
            raise BuildError(f"mmdebstrap failed (exit {proc.returncode}):\n{tail}")
        kver = _prune(root, tmp)
        prune_emulators(root, a.emulators)
        q = subprocess.run(
            ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f",
             "${Package}\t${Version}\n"],
            capture_output=True, text=True, check=True,
        )
        packages = dict(line.split("\t", 1) for line in q.stdout.splitlines() if line)
        (tmp / "packages.json").write_text(json.dumps(packages, indent=1, sort_keys=True))
        (tmp / "kernel-version").write_text(kver + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Older bases of this arch are not needed once a new one exists.
    for old in idir.glob(f"base-{a.name}-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _prune(root: Path, out: Path) -> str:
    """Move the kernel out, drop what the VM never uses; return the kernel version."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise BuildError("the kernel package installed no /boot/vmlinuz-*")
    kver = kernels[-1].name.removeprefix("vmlinuz-")
    shutil.copy2(kernels[-1], out / "vmlinuz")
    for rel in recipe.PRUNE:
        p = root / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    moddir = root / "usr/lib/modules" / kver
    keep = _modules_to_keep(moddir, recipe.MODULES_KEPT)
    for ko in list((moddir / "kernel").rglob("*.ko*")):
        if str(ko.relative_to(moddir)) not in keep:
            ko.unlink()
    _run(["depmod", "-b", str(root), kver], "index the kernel modules (depmod)")
    return kver


def prune_emulators(root: Path, keep: tuple[str, ...]) -> None:
    """Remove qemu-user's emulators (and their binfmt_misc entries) for every
    architecture but `keep` (QEMU's names: aarch64, arm, x86_64)."""
    for p in (root / "usr/bin").glob("qemu-*"):
        if p.name.removeprefix("qemu-").removesuffix("-static") not in keep:
            p.unlink()
    for p in (root / "usr/libexec/qemu-binfmt").glob("*-binfmt-P"):
        if p.name.removesuffix("-binfmt-P") not in keep:
            p.unlink()
    for p in (root / "usr/lib/binfmt.d").glob("qemu-*.conf"):
        if p.name.removeprefix("qemu-").removesuffix(".conf") not in keep:
            p.unlink()


def _read_deps(moddir: Path) -> dict[str, list[str]]:
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    return deps


def _closure(deps: dict[str, list[str]], wanted: Iterable[str]) -> list[str]:
    """`wanted` and everything they depend on, dependencies first."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(m: str) -> None:
        if m in seen:
            return
        seen.add(m)
        for d in deps.get(m, []):
            visit(d)
        order.append(m)

    for m in wanted:
        visit(m)
    return order


def _modules_to_keep(moddir: Path, prefixes: Iterable[str]) -> set[str]:
    deps = _read_deps(moddir)
    roots = [m for m in deps if any(m.startswith("kernel/" + p) for p in prefixes)]
    return set(_closure(deps, roots))


def _module_name(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    for suffix in (".xz", ".zst", ".gz"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".ko").replace("-", "_")


def _install_agent(root: Path, key: str) -> None:
    dest = root / "usr/lib/python3/dist-packages/guest_engine"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(GUEST_ENGINE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    init = root / "sbin/init"
    if init.exists() or init.is_symlink():
        init.unlink()
    shutil.copy2(HERE / "files/sbin-init", init)
    init.chmod(0o755)
    poweroff = root / "sbin/poweroff"
    if poweroff.exists() or poweroff.is_symlink():
        poweroff.unlink()
    shutil.copy2(HERE / "files/poweroff", poweroff)
    poweroff.chmod(0o755)
    _build_share_guard(root)
    (root / "etc/containerd").mkdir(parents=True, exist_ok=True)
    shutil.copy2(HERE / "files/containerd.toml", root / "etc/containerd/config.toml")
    (root / "etc/cove").mkdir(parents=True, exist_ok=True)
    (root / "etc/cove/image.json").write_text(json.dumps({"key": key}))
    (root / "etc/hostname").write_text("cove\n")
    # The legacy iptables backend: the engine runs dozens of iptables commands at start,
    # and each legacy one is a fraction of the nft backend's cost under emulation.
    for tool in ("iptables", "ip6tables"):
        _run(["chroot", str(root), "update-alternatives", "--quiet", "--set", tool,
              f"/usr/sbin/{tool}-legacy"], f"select {tool}-legacy")
    # Byte-compile the agent now so each boot does not (the root is read-only).
    _run(["chroot", str(root), "python3", "-m", "compileall", "-q",
          "/usr/lib/python3/dist-packages/guest_engine"], "byte-compile the agent")


def _build_share_guard(root: Path) -> None:
    """Compile the share guard (`guest_engine.boot.shareguard`) into the root. BPF code
    is the same for every little-endian guest; CO-RE relocates it to the kernel at load."""
    out = root / "usr/lib/cove/share-guard.bpf.o"
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(["clang", "-O2", "-g", "-target", "bpfel", "-Wall", "-Werror", "-c",
          str(HERE / "files/share-guard.bpf.c"), "-o", str(out)],
         "compile the share guard (BPF)")


def _initramfs(root: Path, kver: str) -> bytes:
    """A gzip'd newc cpio: busybox, /init and the modules that reach the root image."""
    moddir = root / "usr/lib/modules" / kver
    deps = _read_deps(moddir)
    by_name = {_module_name(m): m for m in deps}
    wanted = [by_name[n] for n in recipe.INITRAMFS_MODULES if n in by_name]
    files: list[tuple[str, bytes, int]] = [
        ("bin/busybox", (root / "usr/bin/busybox").read_bytes(), 0o755),
        ("init", (HERE / "files/init").read_bytes(), 0o755),
    ]
    order = []
    for m in _closure(deps, wanted):
        data = (moddir / m).read_bytes()
        if m.endswith(".xz"):
            data = lzma.decompress(data)
        elif m.endswith(".zst"):
            raise BuildError(f"zstd-compressed module {m}: not supported by the builder")
        name = _module_name(m) + ".ko"
        files.append((f"modules/{name}", data, 0o644))
        order.append(name)
    files.append(("modules.order", ("\n".join(order) + "\n").encode(), 0o644))
    return gzip.compress(_cpio(files), compresslevel=9, mtime=0)


def _cpio(files: list[tuple[str, bytes, int]]) -> bytes:
    """A newc-format cpio archive with the given files (and their parent folders)."""
    out = io.BytesIO()
    ino = 1

    def entry(name: str, mode: int, data: bytes = b"") -> None:
        nonlocal ino
        namez = name.encode() + b"\0"
        hdr = "070701" + "".join(
            f"{v:08X}"
            for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(namez), 0)
        )
        ino += 1
        out.write(hdr.encode() + namez)
        out.write(b"\0" * (-(110 + len(namez)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))

    dirs: set[str] = set()
    for name, _, _ in files:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    for d in sorted(dirs):
        entry(d, 0o040755)
    for name, data, mode in files:
        entry(name, 0o100000 | mode, data)
    entry("TRAILER!!!", 0)
    return out.getvalue()
