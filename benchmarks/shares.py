"""Shared folders: virtiofs, 9p and "link" against the VM's own disk, on one instance.

The instance shares three host folders: over virtiofs, over 9p, and over "link" (Cove's
own 9P server on the guest link, what Windows hosts use). One Python
script runs in the VM (over `cove shell`) against each share and against a folder on
the VM's data disk (ext4 on virtio-blk: where named volumes live), alternating run by
run; the same script also runs on the host against the host folder directly, for
reference. Operations:

* sequential write of 128 MiB (1 MiB writes, then fsync);
* sequential read of that file (after dropping the VM's page cache);
* a tree of 10 000 small files (100 folders of 100 files, 1 KiB each; written on the
  host for the shares, as a package manager on the host would): walk it, stat and read
  every file.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from benchmarks.common import BenchVM, Figure

ROOT = Path(__file__).resolve().parents[1]
SEQ_MIB = 128

SCRIPT = r"""
import json, os, sys, time
op, folder, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
f = os.path.join(folder, "seq.bin")
def drop():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as d:
            d.write("3")
    except OSError:
        pass
t = time.perf_counter()
if op == "write":
    buf = os.urandom(1 << 20)
    with open(f, "wb") as out:
        for _ in range(mib):
            out.write(buf)
        out.flush()
        os.fsync(out.fileno())
    r = mib / (time.perf_counter() - t)
elif op == "read":
    drop()
    t = time.perf_counter()
    n = 0
    with open(f, "rb", buffering=0) as src:
        while True:
            b = src.read(1 << 20)
            if not b:
                break
            n += len(b)
    r = n / (1 << 20) / (time.perf_counter() - t)
elif op == "mktree":
    for d in range(100):
        p = os.path.join(folder, "tree", f"d{d}")
        os.makedirs(p, exist_ok=True)
        for i in range(100):
            with open(os.path.join(p, f"f{i}.js"), "wb") as out:
                out.write(b"x" * 1024)
    r = 0.0
elif op == "tree":
    drop()
    t = time.perf_counter()
    n = 0
    for base, dirs, files in os.walk(os.path.join(folder, "tree")):
        for name in files:
            p = os.path.join(base, name)
            os.stat(p)
            with open(p, "rb") as src:
                n += len(src.read())
    assert n == 10000 * 1024, n
    r = time.perf_counter() - t
print(json.dumps(r))
"""


def run(runs: int) -> tuple[list[Figure], str]:
    with (tempfile.TemporaryDirectory(prefix="cove-bench-shares-") as tmp,
          BenchVM() as bench):
        return _run(runs, bench, Path(tmp))


def _run(runs: int, bench: BenchVM, host: Path) -> tuple[list[Figure], str]:
    vfs, p9, lnk = host / "vfs", host / "p9", host / "link"
    for d in (vfs, p9, lnk):
        d.mkdir()
    local = "/mnt/data/bench-local"

    cli = bench.cli

    def vm(op: str, folder: str) -> float:
        out = cli("shell", "python3", "-c", SCRIPT, op, folder, str(SEQ_MIB)).stdout
        return float(json.loads(out.strip().splitlines()[-1]))

    def on_host(op: str, folder: Path) -> float:
        out = subprocess.run(["python3", "-c", SCRIPT, op, str(folder), str(SEQ_MIB)],
                             check=True, capture_output=True, text=True).stdout
        return float(json.loads(out))

    figures: dict[str, dict[str, list[float]]] = {}
    cli("shares", "remove", str(Path.home()), "--no-restart")
    cli("shares", "remove", tempfile.gettempdir(), "--no-restart")
    cli("shares", "add", str(vfs), "--transport", "virtiofs", "--no-restart")
    cli("shares", "add", str(p9), "--transport", "9p", "--no-restart")
    cli("shares", "add", str(lnk), "--transport", "link", "--no-restart")
    st = bench.start()
    cli("shell", "mkdir", "-p", local)
    targets = {"virtiofs": str(vfs), "9p": str(p9), "link": str(lnk), "VM disk": local}
    for shared in (vfs, p9, lnk):
        on_host("mktree", shared)
    vm("mktree", local)
    for _ in range(runs):
        for name, folder in targets.items():
            for op in ("write", "read", "tree"):
                figures.setdefault(op, {}).setdefault(name, []).append(vm(op, folder))
        for op in ("write", "read", "tree"):
            figures[op].setdefault("host", []).append(on_host(op, vfs))
    accel = st["accel"]
    out = []
    for op, unit, better_high, label in (
            ("write", "MiB/s", True, f"sequential write {SEQ_MIB} MiB (+fsync)"),
            ("read", "MiB/s", True, f"sequential read {SEQ_MIB} MiB (cold VM cache)"),
            ("tree", "s", False, "walk + stat + read 10 000 files of 1 KiB")):
        f = figures[op]
        for transport in ("virtiofs", "9p", "link"):
            out.append(Figure(f"{label} via {transport}", unit, f[transport],
                              "the same on the VM's own disk", f["VM disk"],
                              lower_is_better=not better_high,
                              notes=[f"host filesystem directly (reference): "
                                     f"{statistics.median(f['host']):.3g} {unit}"]))
    return out, accel

