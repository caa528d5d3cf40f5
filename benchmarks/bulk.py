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

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common import Figure, bench_instance

ROOT = Path(__file__).resolve().parents[1]
BARE_PORT = 19075
GUEST_PORT = 2375
MIB = 200

# Runs in the VM (its own python3 and guest_engine, through nsenter into PID 1's
# namespaces): accept on GUEST_PORT, relay each connection to the engine's socket.
GUEST_RELAY = f"""
import socket, threading
from guest_engine import relay
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {GUEST_PORT}))
s.listen(64)
while True:
    c, _ = s.accept()
    u = socket.socket(socket.AF_UNIX)
    u.connect("/var/run/docker.sock")
    threading.Thread(target=relay.pipe, args=(c, u), daemon=True).start()
"""


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def run(runs: int) -> tuple[list[Figure], str]:
    base, env, cove = bench_instance()
    env["COVE_QEMU_HOSTFWD"] = f"tcp:127.0.0.1:{BARE_PORT}-:{GUEST_PORT}"
    work = Path(tempfile.mkdtemp(prefix="cove-bench-bulk-"))
    ctx = work / "ctx"
    ctx.mkdir()
    with (ctx / "big").open("wb") as f:
        for _ in range(MIB):
            f.write(os.urandom(1 << 20))
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY big /big\nCMD [\"/big\"]\n")
    cove_docker = ["docker", "--context", "cove-bench"]
    bare_env = {**env, "DOCKER_HOST": f"tcp://127.0.0.1:{BARE_PORT}"}
    bare_env.pop("DOCKER_CONTEXT", None)
    paths = {"cove": (cove_docker, env), "bare": (["docker"], bare_env)}
    samples: dict[str, dict[str, list[float]]] = {}
    try:
        subprocess.run([*cove, "start", "-i", "bench", "--no-activate"], env=env, check=True,
                       capture_output=True, cwd=ROOT)
        st = json.loads(subprocess.run([*cove, "status", "-i", "bench", "--json"], env=env,
                                       check=True, capture_output=True, cwd=ROOT).stdout)
        from desktop.demo import build_hello_image

        build_hello_image(cove_docker, "cove-hello", env=env)
        subprocess.run([*cove_docker, "run", "-d", "--name", "bare-relay", "--privileged",
                        "--pid", "host", "cove-hello", "nsenter", "-t", "1", "-m", "-n",
                        "python3", "-c", GUEST_RELAY],
                       env=env, check=True, capture_output=True)
        deadline = time.monotonic() + 120
        while subprocess.run(["docker", "version"], env=bare_env,
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the bare path's relay did not answer")
            time.sleep(0.5)
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
    finally:
        subprocess.run([*cove, "delete", "-i", "bench", "--force"], env=env,
                       capture_output=True, cwd=ROOT)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

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
