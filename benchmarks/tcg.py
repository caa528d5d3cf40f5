"""TCG's translation buffer: what a smaller one (COVE_QEMU_TB_MIB) saves and costs.

Under TCG QEMU keeps translated guest code in one buffer sized at start (QEMU's default
1 GiB, which Cove keeps), and each page of it once used stays resident. Per run, on
one instance started twice (the order of the two sizes alternating from run to run), with
QEMU's default (COVE_QEMU_TB_MIB=1024) as the baseline:
* the warm start to engine ready;
* QEMU's resident memory on the host 5 s after the start;
* a workload's time: `WORKLOAD_RUNS` containers that each run a little shell work, an
  image build that runs a step, and the CLI's listings (the engine's code and the
  containers' both translated);
* QEMU's resident memory after it.
Only meaningful where the VM runs under TCG (this build machine): elsewhere it refuses.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common import BenchVM, Figure, rss_mib
from desktop.drivers.qemu.command import TB_ENV

QEMU_DEFAULT_MIB = 1024
TCG_TB_MIB = 256  # the smaller size measured (COVE_QEMU_TB_MIB)
WORKLOAD_RUNS = 5


def _workload(vm: BenchVM) -> float:
    docker, env = vm.docker, vm.env
    t0 = time.monotonic()
    for i in range(WORKLOAD_RUNS):
        subprocess.run([*docker, "run", "--rm", "cove-hello", "sh", "-c",
                        f"seq 1 {2000 + i} | md5sum; ls -R /bin | wc -l"], env=env,
                       check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "Dockerfile").write_text(
            "FROM cove-hello\nRUN seq 1 5000 | md5sum > /sum && ls -R / > /dev/null 2>&1; "
            "true\n")
        subprocess.run([*docker, "build", "-q", "--no-cache", "-t", "cove-bench-tcg", d],
                       env=env, check=True, capture_output=True)
    for listing in (["ps", "-a"], ["images"], ["volume", "ls"], ["info"]):
        subprocess.run([*docker, *listing], env=env, check=True, capture_output=True)
    return time.monotonic() - t0


def run(runs: int) -> tuple[list[Figure], str]:
    from desktop.demo import build_hello_image

    sizes = (TCG_TB_MIB, QEMU_DEFAULT_MIB)
    start: dict[int, list[float]] = {k: [] for k in sizes}
    booted: dict[int, list[float]] = {k: [] for k in sizes}
    work: dict[int, list[float]] = {k: [] for k in sizes}
    after: dict[int, list[float]] = {k: [] for k in sizes}
    with BenchVM() as vm:
        st = vm.start("--resource-saver", "0")
        if st.get("accel") != "tcg":
            raise RuntimeError(f"the VM runs on {st.get('accel')}, not TCG: the "
                               "translation buffer does not apply")
        build_hello_image(vm.docker, "cove-hello", env=vm.env)
        for i in range(runs):
            for size in sizes if i % 2 == 0 else sizes[::-1]:
                vm.cli("stop", "--power-off")  # each start a boot
                vm.env[TB_ENV] = str(size)  # the backend `start` spawns reads it
                t0 = time.monotonic()
                st = vm.start("--resource-saver", "0")
                start[size].append(time.monotonic() - t0)
                time.sleep(5)
                qemu = int(st["qemu_pid"])
                booted[size].append(rss_mib(qemu))
                work[size].append(_workload(vm))
                after[size].append(rss_mib(qemu))
    ours, base = TCG_TB_MIB, QEMU_DEFAULT_MIB
    label = f"tb-size={ours} MiB"
    baseline = f"QEMU's default {base} MiB"
    return [
        Figure(f"TCG {label}: QEMU resident memory after the start", "MiB", booted[ours],
               baseline, booted[base]),
        Figure(f"TCG {label}: QEMU resident memory after the workload", "MiB", after[ours],
               baseline, after[base]),
        Figure(f"TCG {label}: workload ({WORKLOAD_RUNS} runs, a build, listings)", "s",
               work[ours], baseline, work[base]),
        Figure(f"TCG {label}: warm start to engine ready", "s", start[ours], baseline,
               start[base]),
    ], "tcg"
