"""A smoke test of an installed or checked-out Cove on any host: `python -m tests.smoke`.

Starts an instance (its own COVE_HOME and DOCKER_CONFIG unless given), checks the engine
answers through Cove's socket with the docker CLI, builds a container image from the
guest image's own static busybox (no registry needed), runs it, bind-mounts a folder of
the home folder (the default share: on Windows served by Cove's own file server, its
path translated) both ways, builds with BuildKit (the buildx plugin, a cache mount the
legacy builder refuses), runs a container of the other 64-bit architecture when that
guest image is here, and deletes the instance. Used by the platform workflows
(macOS, Windows) where the unit tests cannot boot anything, and runnable here.

    python -m tests.smoke [--arch amd64|arm64] [--cove "cove"] [--keep]

Exit status 0 when every step passed; each failure names the step and prints the
instance's log tail.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ELF_MACHINE = {"amd64": 0x3E, "arm64": 0xB7}
UNAME = {"amd64": "x86_64", "arm64": "aarch64"}


def read_newc(data: bytes) -> list[tuple[str, int, bytes]]:
    """(name, mode, data) of each entry of a newc cpio archive (what Cove's initramfs is,
    gzip'd): a 110-byte ASCII header, the name, the data, each padded to 4 bytes.
    ValueError when the layout is wrong or anything follows the trailer."""
    out = []
    pos = 0
    while True:
        if data[pos : pos + 6] != b"070701":
            raise ValueError(f"not a newc cpio archive: bad magic at byte {pos}")
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = data[name_start : name_start + namesize]
        if not name.endswith(b"\0"):
            raise ValueError(f"entry name at byte {name_start} is not NUL-terminated")
        body = name_start + namesize
        body += -body % 4
        content = data[body : body + size]
        pos = body + size
        pos += -pos % 4
        if name[:-1] == b"TRAILER!!!":
            if pos != len(data):
                raise ValueError(f"{len(data) - pos} bytes after the archive's trailer")
            return out
        out.append((name[:-1].decode(), mode, content))


def busybox_from_initramfs(initramfs: Path) -> bytes:
    """bin/busybox out of Cove's initramfs, with no cpio tool."""
    entries = {name: body for name, _, body in read_newc(gzip.decompress(
        initramfs.read_bytes()))}
    if "bin/busybox" not in entries:
        raise ValueError(f"{initramfs}: no bin/busybox in it")
    return entries["bin/busybox"]


class Smoke:
    def __init__(self, cove: list[str], env: dict[str, str], instance: str) -> None:
        self.cove_cmd, self.env, self.instance = cove, env, instance
        self.context = "cove" if instance == "default" else f"cove-{instance}"

    def run(self, step: str, argv: list[str], timeout: float = 900) -> str:
        print(f"-- {step}: {shlex.join(argv)}", flush=True)
        t0 = time.monotonic()
        p = subprocess.run(argv, env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        if p.returncode != 0:
            raise SystemExit(f"FAILED: {step} (exit {p.returncode}, "
                             f"{time.monotonic() - t0:.1f} s)\n{p.stdout}\n{p.stderr}")
        print(f"   ok ({time.monotonic() - t0:.1f} s)", flush=True)
        return p.stdout

    def cove(self, step: str, *args: str, timeout: float = 900) -> str:
        return self.run(step, [*self.cove_cmd, args[0], "-i", self.instance, *args[1:]],
                        timeout)

    def docker(self, step: str, *args: str, timeout: float = 600) -> str:
        return self.run(step, ["docker", "--context", self.context, *args], timeout)


def bind_both_ways(s: Smoke) -> None:
    """A container reads a file the host wrote in a folder of the default share (the
    home folder) and writes one back."""
    folder = Path.home() / f".cove-smoke-{os.getpid()}"
    folder.mkdir()
    try:
        (folder / "from-host.txt").write_text("written on the host\n")
        out = s.docker("bind-mount a folder of the home folder", "run", "--rm", "-v",
                       f"{folder}:/w", "cove-smoke", "sh", "-c",
                       "cat /w/from-host.txt && echo from-the-container > /w/back.txt")
        if out != "written on the host\n":
            raise SystemExit(f"FAILED: the container read {out!r} from the bind mount")
        back = folder / "back.txt"
        if not back.exists() or back.read_text() != "from-the-container\n":
            raise SystemExit("FAILED: the container's file did not reach the host")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def buildkit(s: Smoke, ctx: Path) -> None:
    """A build through BuildKit (the buildx plugin): a cache mount, which the legacy
    builder refuses ("the --mount option requires BuildKit")."""
    s.run("the buildx plugin", ["docker", "buildx", "version"])
    (ctx / "Dockerfile.bk").write_text(
        "FROM cove-smoke\n"
        "RUN --mount=type=cache,target=/cache echo built-with-buildkit > /bk\n")
    s.docker("build with BuildKit", "buildx", "build", "--load", "-q", "-t", "cove-smoke-bk",
             "-f", str(ctx / "Dockerfile.bk"), str(ctx))
    out = s.docker("run the BuildKit image", "run", "--rm", "cove-smoke-bk", "cat", "/bk")
    if out != "built-with-buildkit\n":
        raise SystemExit(f"FAILED: the BuildKit image holds {out!r}")


def other_arch(s: Smoke, arch: str, tmp: Path) -> None:
    """A container of the other 64-bit architecture (`docker run --platform`), from that
    architecture's guest image's busybox, when that image is here (`make images`)."""
    import vm_image

    other = "arm64" if arch == "amd64" else "amd64"
    image = vm_image.find_image(other) or vm_image.latest_image(other)
    if image is None:
        print(f"-- a container of linux/{other}: not run (no {other} guest image here to "
              "take its busybox from; `make images` builds it)")
        return
    root = tmp / f"rootfs-{other}"
    (root / "bin").mkdir(parents=True)
    (root / "bin/busybox").write_bytes(busybox_from_initramfs(image.initramfs))
    (root / "bin/busybox").chmod(0o755)
    subprocess.run(["tar", "-C", str(root), "-cf", str(tmp / f"{other}.tar"), "."],
                   check=True)
    s.docker(f"import a linux/{other} image", "import", "--platform", f"linux/{other}",
             str(tmp / f"{other}.tar"), f"cove-smoke-{other}")
    out = s.docker(f"run a linux/{other} container", "run", "--rm", "--platform",
                   f"linux/{other}", f"cove-smoke-{other}", "/bin/busybox", "uname",
                   "-m").strip()
    if out != UNAME[other]:
        raise SystemExit(f"FAILED: the linux/{other} container says {out!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.smoke")
    p.add_argument("--arch", choices=sorted(ELF_MACHINE), default=None)
    p.add_argument("--cove", default=f"{shlex.quote(sys.executable)} -m desktop",
                   help="how to run cove (default: this checkout)")
    p.add_argument("--instance", default="smoke")
    p.add_argument("--keep", action="store_true", help="leave the instance running")
    args = p.parse_args(argv)

    from desktop.settings import default_arch

    arch = args.arch or default_arch()
    tmp = Path(tempfile.mkdtemp(prefix="cove-smoke-"))
    env = {**os.environ}
    env.setdefault("COVE_HOME", str(tmp / "home"))
    env.setdefault("DOCKER_CONFIG", str(tmp / "docker"))
    env.pop("DOCKER_HOST", None)
    env.pop("DOCKER_CONTEXT", None)
    s = Smoke(shlex.split(args.cove), env, args.instance)
    print(s.run("version", [*s.cove_cmd, "version"]).strip())
    try:
        s.cove("start", "start", "--arch", arch, "--no-activate")
        print(s.cove("status", "status").strip())
        server = s.docker("engine through Cove's socket", "version", "--format",
                          "{{.Server.Os}}/{{.Server.Arch}}").strip()
        if server != f"linux/{arch}":
            raise SystemExit(f"FAILED: the engine reports {server}, expected linux/{arch}")
        import vm_image

        os.environ["COVE_HOME"] = env["COVE_HOME"]
        image = vm_image.find_image(arch) or vm_image.latest_image(arch)
        if image is None:
            raise SystemExit(f"FAILED: no {arch} guest image found after a start")
        busybox = busybox_from_initramfs(image.initramfs)
        if busybox[18] != ELF_MACHINE[arch]:
            raise SystemExit(f"FAILED: the initramfs's busybox is not {arch}")
        ctx = tmp / "ctx"
        ctx.mkdir()
        (ctx / "busybox").write_bytes(busybox)
        (ctx / "busybox").chmod(0o755)
        (ctx / "Dockerfile").write_text(
            "FROM scratch\nCOPY busybox /bin/busybox\n"
            'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n')
        s.docker("build an image", "build", "-q", "-t", "cove-smoke", str(ctx))
        out = s.docker("run a container", "run", "--rm", "cove-smoke", "uname", "-m").strip()
        if out != UNAME[arch]:
            raise SystemExit(f"FAILED: the container says {out!r}, expected {UNAME[arch]}")
        bind_both_ways(s)
        buildkit(s, ctx)
        other_arch(s, arch, tmp)
        print(f"smoke test passed: an {arch} container ran through Cove's socket and "
              "read and wrote a folder of the host")
        return 0
    finally:
        if not args.keep:
            subprocess.run([*s.cove_cmd, "delete", "-i", args.instance, "--force"], env=env,
                           capture_output=True, timeout=600)
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
