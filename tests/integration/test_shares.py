"""Host folders shared into the VM: bind mounts see the host's files, both ways.

The session's VM shares three folders (see conftest's `shares`): one over the default
transport (virtiofs on this host), one over 9p, and one over "link", Cove's own 9P server
on the guest link (`desktop.services.ninep`, what Windows hosts use); most tests run on all three.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import Cove

TRANSPORTS = ["auto", "9p", "link"]


@pytest.fixture(params=TRANSPORTS)
def share(request: pytest.FixtureRequest, shares: dict[str, Path]) -> Path:
    """A fresh folder inside one of the shares."""
    d = shares[request.param] / f"t-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    return d


def run(cove: Cove, image: str, folder: Path, script: str, *extra: str,
        check: bool = True) -> subprocess.CompletedProcess:
    return cove.docker("run", "--rm", "-v", f"{folder}:/w", *extra, image, "sh", "-c", script,
                       check=check)


def test_the_vm_mounts_each_share_with_its_transport(cove: Cove,
                                                      shares: dict[str, Path]) -> None:
    st = cove.status()
    mounted = {s["path"]: s["transport"] for s in st["shares"]}
    assert mounted == {str(shares["auto"]): "virtiofs", str(shares["9p"]): "9p",
                       str(shares["link"]): "link"}
    agent = cove.control("agent_status")
    assert isinstance(agent, dict)
    assert all(not s["error"] for s in agent["shares"]), agent["shares"]
    listed = json.loads(cove.cove("shares", "--json").stdout)
    assert {s["path"] for s in listed if s["mounted"]} == set(mounted)


def test_host_writes_are_read_in_a_container(cove: Cove, hello_image: str,
                                             share: Path) -> None:
    (share / "from-host.txt").write_text("written on the host\n")
    got = run(cove, hello_image, share, "cat /w/from-host.txt")
    assert got.stdout == "written on the host\n"


def test_container_writes_appear_on_the_host_owned_by_the_host_user(
        cove: Cove, hello_image: str, share: Path) -> None:
    run(cove, hello_image, share, "echo from-the-container > /w/out.txt && mkdir /w/sub")
    out = share / "out.txt"
    assert out.read_text() == "from-the-container\n"
    # A container running as root writes as the user who runs Cove (root in CI), never
    # as some other account; folders too.
    assert out.stat().st_uid == os.getuid()
    assert (share / "sub").is_dir() and (share / "sub").stat().st_uid == os.getuid()


def test_names_with_spaces_and_non_ascii(cove: Cove, hello_image: str, share: Path) -> None:
    name = "café déjà vu – 日本.txt"
    (share / name).write_text("host\n")
    got = cove.docker("run", "--rm", "-v", f"{share}:/w", hello_image, "sh", "-c",
                      'cat "/w/$0" && echo back > "/w/$0.reply"', name)
    assert got.stdout == "host\n"
    assert (share / f"{name}.reply").read_text() == "back\n"
    listing = run(cove, hello_image, share,
                  'for f in /w/*; do echo "${f#/w/}"; done').stdout.splitlines()
    assert name in listing and f"{name}.reply" in listing


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_a_100_mib_file_both_ways(cove: Cove, hello_image: str, share: Path) -> None:
    big = share / "host-100m.bin"
    with big.open("wb") as f:
        for i in range(100):
            f.write(hashlib.sha256(str(i).encode()).digest() * (1 << 15))  # 1 MiB each
    want = _sha256(big)
    got = run(cove, hello_image, share,
              "sha256sum /w/host-100m.bin | cut -d' ' -f1 && "
              "dd if=/dev/urandom of=/w/guest-100m.bin bs=1M count=100 2>/dev/null && "
              "sha256sum /w/guest-100m.bin | cut -d' ' -f1").stdout.split()
    assert got[0] == want
    assert (share / "guest-100m.bin").stat().st_size == 100 << 20
    assert _sha256(share / "guest-100m.bin") == got[1]


def test_every_page_of_many_written_files_reaches_the_host(cove: Cove, hello_image: str,
                                                           share: Path) -> None:
    """Forty 2 MiB files written one after another, each checked on the host at once.
    The guest's 9p writeback mode (cache=mmap) lost a 4 KiB page of about one such file
    in ten, on 9p and link shares, and the VM read the same zeros back."""
    seed = os.urandom(1 << 20)
    (share / "seed.bin").write_bytes(seed)
    run(cove, hello_image, share,
        "cat /w/seed.bin > /seed && for i in $(seq 40); do cat /seed /seed > /w/c$i; done")
    want = hashlib.sha256(seed * 2).hexdigest()
    lost = [i for i in range(1, 41) if _sha256(share / f"c{i}") != want]
    assert not lost, f"files with pages lost: {lost}"


def test_a_path_outside_the_shares_is_refused_with_the_fix(cove: Cove, hello_image: str,
                                                             shares: dict[str, Path],
                                                             tmp_path: Path) -> None:
    outside = tmp_path / "not-shared"
    outside.mkdir()
    got = cove.docker("run", "--rm", "-v", f"{outside}:/w", hello_image, "true", check=False)
    assert got.returncode != 0
    assert f"{outside} is not in a folder Cove shares" in got.stderr
    assert str(shares["auto"]) in got.stderr and "cove shares add" in got.stderr
    # --mount is checked too; the VM's engine socket may always be mounted.
    got = cove.docker("run", "--rm", "--mount", f"type=bind,src={outside},dst=/w",
                      hello_image, "true", check=False)
    assert got.returncode != 0 and "is not in a folder Cove shares" in got.stderr
    ok = cove.docker("run", "--rm", "-v", "/var/run/docker.sock:/var/run/docker.sock",
                     hello_image, "test", "-S", "/var/run/docker.sock", check=False)
    assert ok.returncode == 0, ok.stderr


def test_a_symlink_out_of_the_share_is_not_followed_to_the_host(
        cove: Cove, hello_image: str, share: Path) -> None:
    secret = share.parent.parent / f"secret-{uuid.uuid4().hex[:8]}"  # outside the shares
    secret.write_text("host-only secret\n")
    try:
        (share / "abs-link").symlink_to(secret)
        (share / "rel-link").symlink_to(os.path.relpath(secret, share))
        (share / "ok-link").symlink_to("inside.txt")
        (share / "inside.txt").write_text("inside\n")
        got = run(cove, hello_image, share,
                  "cat /w/ok-link; cat /w/abs-link; cat /w/rel-link; true")
        assert got.stdout == "inside\n"
        assert "host-only secret" not in got.stdout + got.stderr
    finally:
        secret.unlink()


WATCH_SOURCE = Path(__file__).parent / "data" / "watch.c"


@pytest.fixture(scope="module")
def watch_image(cove: Cove, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`cove-watch`: FROM scratch with a static inotify watcher (data/watch.c)."""
    d = tmp_path_factory.mktemp("watch-image")
    subprocess.run(["gcc", "-static", "-O2", "-o", str(d / "watch"), str(WATCH_SOURCE)],
                   check=True, capture_output=True)
    (d / "Dockerfile").write_text('FROM scratch\nCOPY watch /watch\nENTRYPOINT ["/watch"]\n')
    cove.docker("build", "-q", "-t", "cove-watch", str(d))
    return "cove-watch"


def test_a_host_edit_wakes_a_watcher_in_a_container(cove: Cove, watch_image: str,
                                                    share: Path) -> None:
    """An inotify watcher in a container waits on a file and a folder the host edits."""
    target = share / "watched.txt"
    target.write_text("v1\n")
    name = f"watch-{uuid.uuid4().hex[:6]}"
    cove.docker("run", "-d", "--name", name, "-v", f"{share}:/w", watch_image,
                "/w/watched.txt", "/w")
    try:
        deadline = time.monotonic() + 30
        while "ready" not in cove.docker("logs", name).stdout:
            assert time.monotonic() < deadline, cove.docker("logs", name).stdout
            time.sleep(0.2)
        time.sleep(1)  # the backend's watch on the host (set up on its own thread)
        before = cove.docker("logs", name).stdout
        t0 = time.monotonic()
        target.write_text("v2\n")
        (share / "new-file.txt").write_text("new\n")
        seen, latency = "", None

        def lines() -> list[list[str]]:
            out = cove.docker("logs", name).stdout[len(before):]
            return [ln.split("\t") for ln in out.splitlines()]

        # The folder's watch hears of both the edit and the new file. Over virtiofs the
        # file's own watch fires too; over 9p the guest makes a new inode for a file the
        # host modified, so a watch on the file itself is lost (folder watches, which
        # dev servers and test runners use, are not).
        virtiofs = share.parent.name == "share-auto"
        while time.monotonic() - t0 < 15:
            got = lines()
            edited = [ln for ln in got if ln[1:] == ["/w/watched.txt", ""] or
                      (not virtiofs and ln[1:] == ["/w", "watched.txt"])]
            created = [ln for ln in got if ln[1:2] == ["/w"] and
                       ln[2:] in (["new-file.txt"], [""])]
            if edited and created:
                latency = time.monotonic() - t0
                break
            time.sleep(0.2)
        seen = repr(lines())
        assert latency is not None, f"no event in the container: {seen}"
    finally:
        cove.docker("rm", "-f", name, check=False)


# File operations a build or a package manager does in a bind mount, with the outcome a
# local disk gives; every transport must give the same.
WORKLOAD = r"""
set -e
cd /w
mkdir -p a/b/c
echo one > a/b/c/f
echo two >> a/b/c/f
cat a/b/c/f
mv a/b/c/f a/g
ls a/b/c | wc -l
ln a/g a/hard
stat -c %h a/g
ln -s g a/soft
readlink a/soft
cat a/soft
chmod 640 a/g
stat -c %a a/g
touch -d '2020-01-02 03:04:05' a/g
date -r a/g +%Y
printf abcdef > s
printf XY | dd of=s bs=1 seek=2 conv=notrunc 2>/dev/null
cat s; echo
truncate -s 3 s
wc -c < s
i=0; while [ $i -lt 300 ]; do echo $i > a/b/n$i; i=$((i+1)); done
ls a/b | wc -l
echo x > over; echo y > new; mv new over; cat over
mkdir full; touch full/f; rmdir full 2>/dev/null || echo not-empty
rm -r a/b
ls a
if mkfifo a/fifo 2>/dev/null; then stat -c %F a/fifo; else echo no-fifo; fi
mkdir t; tar cf /tmp/etc.tar -C /etc .; tar xf /tmp/etc.tar -C t
test "$(ls t | wc -l)" = "$(ls /etc | wc -l)" && echo tar-ok
mv t t2; ls -d t2
"""
WORKLOAD_OUT = ("one\ntwo\n0\n2\ng\none\ntwo\n640\n2020\nabXYef\n3\n301\ny\nnot-empty\n"
                "g\nhard\nsoft\n{fifo}\ntar-ok\nt2\n")


def test_a_workload_of_file_operations(cove: Cove, hello_image: str, share: Path) -> None:
    got = run(cove, hello_image, share, WORKLOAD, check=False)
    # QEMU's 9p device makes no fifo (ENXIO); virtiofs and Cove's own server do.
    fifo = "no-fifo" if share.parent.name == "share-9p" else "fifo"
    assert (got.returncode, got.stdout) == (0, WORKLOAD_OUT.format(fifo=fifo)), got.stderr
    g = share / "a" / "g"
    st = g.stat()
    assert (st.st_mode & 0o777, st.st_nlink, time.gmtime(st.st_mtime).tm_year) == \
        (0o640, 2, 2020)
    assert os.readlink(share / "a" / "soft") == "g"
    assert (share / "s").read_bytes() == b"abX"
    assert not (share / "a" / "b").exists() and (share / "t2").is_dir()


def test_parallel_writers_and_readers(cove: Cove, hello_image: str, share: Path) -> None:
    """Four processes write and read back at once (the kernel pipelines their requests
    on one connection; replies must reach the right process)."""
    (share / "seed.bin").write_bytes(os.urandom(1 << 20))
    script = ("for i in 1 2 3 4; do "
              "(dd if=/dev/urandom of=/w/p$i bs=64k count=32 2>/dev/null && "
              " cat /w/seed.bin /w/seed.bin > /w/c$i) & done; wait; "
              "sha256sum /w/p1 /w/p2 /w/p3 /w/p4 /w/c1 /w/c2 /w/c3 /w/c4")
    got = run(cove, hello_image, share, script).stdout.split()
    sums = dict(zip(got[1::2], got[0::2], strict=True))
    for name, want in sums.items():
        assert _sha256(share / name.removeprefix("/w/")) == want, name
    assert (share / "p3").stat().st_size == 32 * 65536
    seed2 = (share / "seed.bin").read_bytes() * 2
    assert all((share / f"c{i}").read_bytes() == seed2 for i in range(1, 5))


SUID_SCRIPT = (
    "chmod 6755 /w/prog; echo chmod=$?; chmod u+s /w/prog; echo u+s=$?; "
    "chmod g+s /w/prog; echo g+s=$?; "
    # A create that asks for the bits (cp makes the copy with its source's mode).
    "cp /bin/busybox /s && chmod 4755 /s && cp /s /w/copied; echo cp=$?; "
    # A folder keeps set-gid (group inheritance; never run as a program).
    "mkdir /w/d && chmod g+s /w/d; echo dir=$?; ls -ld /w/d")


# The VM's root gives a file cap_setuid (a v2 capability set, permitted and effective).
SETCAP = ("import os\ntry:\n    os.setxattr({path!r}, 'security.capability', bytes.fromhex("
          "'0100000280000000800000000000000000000000'))\n    print('set')\n"
          "except OSError as e:\n    print('refused', e)\n")


def test_no_set_uid_bit_a_container_sets_reaches_the_host_over_any_transport(
        cove: Cove, hello_image: str, shares: dict[str, Path]) -> None:
    """Over 9p and virtiofs QEMU and virtiofsd apply a guest's chmod as it is, so the
    guest's share guard (a BPF LSM program) refuses set-uid and set-gid bits on files in
    shares with EPERM, for a container and for VM root; the link server also drops them
    on the host. Without the guard, run as root, the bits reach the host over 9p and
    virtiofs (this test's last form recorded exactly that)."""
    assert cove.status()["share_guard"] == ["cove_share_chmod", "cove_share_mknod"]
    for transport in TRANSPORTS:
        d = shares[transport] / f"suid-{uuid.uuid4().hex[:8]}"
        d.mkdir()
        (d / "prog").write_text("#!/bin/sh\n")
        (d / "prog").chmod(0o755)
        got = run(cove, hello_image, d, SUID_SCRIPT).stdout
        assert "chmod=1\nu+s=1\ng+s=1\n" in got, (transport, got)
        # A folder may keep set-gid over 9p and virtiofs; the link server drops it too.
        folder_mode = 0o755 if transport == "link" else 0o2755
        assert "dir=0" in got, (transport, got)
        assert (d / "prog").stat().st_mode & 0o7777 == 0o755, transport
        copied = d / "copied"
        assert not copied.exists() or copied.stat().st_mode & 0o6000 == 0, (transport, got)
        assert (d / "d").stat().st_mode & 0o7777 == folder_mode, transport
        # VM root is refused too: the guard sits in the guest's kernel, not in Docker.
        in_vm = f"/mnt/host{d}" if transport == "link" else str(d)
        vm = cove.cove("shell", "sh", "-c", f"chmod u+s {in_vm}/prog; echo rc=$?",
                       check=False)
        assert "rc=1" in vm.stdout, (transport, vm.stdout, vm.stderr)
        assert (d / "prog").stat().st_mode & 0o7777 == 0o755, transport
        # Nor file capabilities, the set-uid bit's other form (a container holds
        # CAP_SETFCAP by default): no transport carries security.* attributes to the host.
        vm = cove.cove("shell", "python3", "-c", SETCAP.format(path=f"{in_vm}/prog"),
                       check=False)
        assert "refused" in vm.stdout, (transport, vm.stdout, vm.stderr)
        assert "security.capability" not in os.listxattr(d / "prog"), transport
    # Outside the shares nothing changes: images keep their set-uid programs.
    got = run(cove, hello_image, shares["9p"], "cp /bin/busybox /s && chmod 4755 /s && "
              "ls -l /s").stdout
    assert got.startswith("-rwsr-xr-x"), got


def test_a_link_share_whose_stream_drops_is_mounted_again(
        cove: Cove, hello_image: str, shares: dict[str, Path]) -> None:
    """The stream of a link share ends (the test op shuts the host's end as a dropped
    connection would): the backend opens a new one, the agent mounts the share again,
    files written before are intact and the next container reads and writes it."""
    index = [s["transport"] for s in cove.status()["shares"]].index("link")
    d = shares["link"] / f"drop-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    run(cove, hello_image, d, "dd if=/dev/urandom of=/w/before bs=64k count=16 2>/dev/null "
        "&& sync")
    before = _sha256(d / "before")
    assert cove.control("drop_share_stream", index=index) is True
    deadline = time.monotonic() + 60
    while True:
        got = run(cove, hello_image, d, "sha256sum /w/before && echo after > /w/after",
                  check=False)
        if got.returncode == 0:
            break
        assert time.monotonic() < deadline, got.stderr
        time.sleep(1)
    assert got.stdout.split()[0] == before == _sha256(d / "before")
    assert (d / "after").read_text() == "after\n"
    shared = [s for s in cove.status()["shares"] if s["transport"] == "link"]
    assert not shared[0].get("error"), shared
