"""Bulk API transfers through Cove's socket against a bare path, on one booted instance.

Bare path (a benchmark-only configuration): a QEMU user-networking forward into the VM,
straight to a TCP-to-docker.sock relay running in the VM (the agent's own relay code,
with no host side, no link and no authentication), used as DOCKER_HOST=tcp://.
Cove's path: the docker context (the host relay, the guest link, the agent's relay).
Both paths alternate run by run. Operations on 200 MiB:

* `docker build` with a 200 MiB context (`FROM scratch`, `COPY`);
* `docker save` (download) and `docker load` (upload) of that 200 MiB image;
* `docker cp` of a 200 MiB file into a container and back out.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common import BenchVM, Figure

ROOT = Path(__file__).resolve().parents[1]
BARE_PORT = 19075
GUEST_PORT = 2375
MIB = 200

def _timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def run(runs: int) -> tuple[list[Figure], str]:
    samples: dict[str, dict[str, list[float]]] = {}
    with (tempfile.TemporaryDirectory(prefix="cove-bench-bulk-") as tmp,
          BenchVM(hostfwd=f"tcp:127.0.0.1:{BARE_PORT}-:{GUEST_PORT}") as vm):
        work = Path(tmp)
        ctx = work / "ctx"
        ctx.mkdir()
        with (ctx / "big").open("wb") as f:
            for _ in range(MIB):
                f.write(os.urandom(1 << 20))
        (ctx / "Dockerfile").write_text("FROM scratch\nCOPY big /big\nCMD [\"/big\"]\n")
        st = vm.start()
        paths = {"cove": (vm.docker, vm.env),
                 "bare": (["docker"], vm.bare_relay(BARE_PORT, GUEST_PORT))}
        tar = work / "img.tar"
        for _ in range(runs):
            for name, (docker, denv) in paths.items():
                s = samples.setdefault(name, {})
                tag = f"bulk-{name}"
                s.setdefault("build", []).append(
                    _timed([*docker, "build", "-q", "-t", tag, str(ctx)], denv))
                tar.unlink(missing_ok=True)
                s.setdefault("save", []).append(
                    _timed([*docker, "save", "-o", str(tar), tag], denv))
                subprocess.run([*docker, "rmi", "-f", tag], env=denv, check=True,
                               capture_output=True)
                s.setdefault("load", []).append(
                    _timed([*docker, "load", "-q", "-i", str(tar)], denv))
                subprocess.run([*docker, "create", "--name", f"cp-{name}", "cove-hello",
                                "true"], env=denv, check=True, capture_output=True)
                s.setdefault("cp_in", []).append(
                    _timed([*docker, "cp", str(ctx / "big"), f"cp-{name}:/big"], denv))
                out = work / "big.out"
                out.unlink(missing_ok=True)
                s.setdefault("cp_out", []).append(
                    _timed([*docker, "cp", f"cp-{name}:/big", str(out)], denv))
                if out.stat().st_size != MIB << 20:
                    raise RuntimeError("docker cp brought back a different size")
                subprocess.run([*docker, "rm", "-f", f"cp-{name}"], env=denv, check=True,
                               capture_output=True)
                subprocess.run([*docker, "rmi", "-f", tag], env=denv, capture_output=True)
        accel = st["accel"]

    def mibs(xs: list[float]) -> list[float]:
        return [MIB / x for x in xs]

    labels = {"build": f"docker build, {MIB} MiB context",
              "save": f"docker save, {MIB} MiB image (download)",
              "load": f"docker load, {MIB} MiB image (upload)",
              "cp_in": f"docker cp {MIB} MiB into a container",
              "cp_out": f"docker cp {MIB} MiB out of a container"}
    return [Figure(label + " via Cove's socket", "MiB/s", mibs(samples["cove"][op]),
                   "bare hostfwd to a relay in the VM", mibs(samples["bare"][op]),
                   lower_is_better=False, target=">= 0.8x")
            for op, label in labels.items()], accel
