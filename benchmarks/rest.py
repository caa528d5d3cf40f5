"""Resource Saver: what an idle VM costs awake and resting, and what the wake costs.

Per run, on one instance with no container running:
* QEMU's CPU over `WINDOW` seconds awake (the saver off), then resting (its vCPUs
  paused after `IDLE_MINUTES`), as % of one core;
* QEMU's resident memory on the host awake (after the same window), then resting: the
  guest dropped its clean page cache and free page reporting handed it back first. Twice:
  as the idle VM is, and after `CACHED_MIB` of a file on the data disk was read (the
  page cache a pull or a build leaves);
* `docker ps` on the resting VM (the wake included) against `docker ps` on the VM
  awake, in the same run.
"""

from __future__ import annotations

import json
import subprocess
import time

from benchmarks.common import BenchVM, Figure, cpu_seconds, rss_mib

IDLE_MINUTES = 0.1
CACHED_MIB = 512
CACHE_FILE = "/mnt/data/bench-rest-cache"
WINDOW = 10.0


def _cpu(pid: int) -> float:
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(WINDOW)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 100


def _state(vm: BenchVM) -> str:
    return str(json.loads(vm.cli("status", "--json").stdout)["state"])


def _docker_ps(vm: BenchVM) -> float:
    t0 = time.perf_counter()
    subprocess.run([*vm.docker, "ps"], env=vm.env, check=True, capture_output=True)
    return (time.perf_counter() - t0) * 1000


def _rest(vm: BenchVM) -> None:
    deadline = time.monotonic() + 120
    while _state(vm) != "resting":
        if time.monotonic() > deadline:
            raise RuntimeError("the idle VM did not rest in 120 s")
        time.sleep(0.5)


def run(runs: int) -> tuple[list[Figure], str]:
    awake_cpu, rest_cpu, wake_ms, awake_ms = [], [], [], []
    awake_rss, rest_rss, cached_rss, cached_rest_rss = [], [], [], []
    with BenchVM() as vm:
        st = vm.start("--resource-saver", "0")
        qemu = st["qemu_pid"]
        for _ in range(runs):
            vm.cli("start", "--no-activate", "--resource-saver", "0")
            _docker_ps(vm)
            awake_ms.append(_docker_ps(vm))
            awake_cpu.append(_cpu(qemu))
            awake_rss.append(rss_mib(qemu))
            vm.cli("start", "--no-activate", "--resource-saver", str(IDLE_MINUTES))
            _rest(vm)
            rest_cpu.append(_cpu(qemu))
            rest_rss.append(rss_mib(qemu))
            wake_ms.append(_docker_ps(vm))
            vm.cli("start", "--no-activate", "--resource-saver", "0")
            vm.cli("shell", "sh", "-c", f"dd if=/dev/urandom of={CACHE_FILE} bs=1M "
                   f"count={CACHED_MIB} 2>/dev/null && sync && cat {CACHE_FILE} >/dev/null")
            cached_rss.append(rss_mib(qemu))
            vm.cli("start", "--no-activate", "--resource-saver", str(IDLE_MINUTES))
            _rest(vm)
            time.sleep(1)
            cached_rest_rss.append(rss_mib(qemu))
            vm.cli("shell", "rm", "-f", CACHE_FILE)
        vm.cli("start", "--no-activate", "--resource-saver", "0")
    return [
        Figure("resting: QEMU CPU with the VM idle", "% core", rest_cpu,
               "awake, idle (no container)", awake_cpu, target="at most 0.5 % of a core"),
        Figure("resting: QEMU resident memory", "MiB", rest_rss,
               "awake, idle, before it rested", awake_rss),
        Figure(f"resting after {CACHED_MIB} MiB was read: QEMU resident memory", "MiB",
               cached_rest_rss, f"awake, {CACHED_MIB} MiB in the page cache, before it "
               "rested", cached_rss),
        Figure("wake: docker ps on a resting VM", "ms", wake_ms,
               "docker ps on the VM awake", awake_ms, target="at most 1 s over awake"),
    ], st["accel"]
