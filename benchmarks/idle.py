"""An idle VM awake: what it costs the host, and how often the guest wakes.

Per run, on one instance with Resource Saver off, over `WINDOW` seconds each:
* no container running: the agent reads the guest's listeners every `SLOW_SCAN`
  seconds (published ports come with the engine's events);
* baseline, same run: one `--network host` container idling (`sleep`), which makes the
  agent read them every `FAST_SCAN` seconds, as it did for every idle VM before.

Figures: QEMU's CPU (% of one core, read on the host), and the guest's interrupts and
context switches per second (its /proc/stat, read at both ends of the window over
`cove shell`, which costs the same in both).

Each idle window starts once no client has asked the engine for the backend's
`health.IDLE_AFTER` (the engine checks slow down then, as they do for a VM nobody
uses); the baseline's window follows its `docker run` at once.
"""

from __future__ import annotations

import subprocess
import time

from benchmarks.common import BenchVM, Figure, cpu_seconds
from desktop.backend import health

WINDOW = 30.0  # health.IDLE_INTERVAL: about one engine check in each


def _guest_counters(vm: BenchVM) -> tuple[int, int]:
    """(interrupts, context switches) since the guest booted."""
    intr = ctxt = 0
    for line in vm.cli("shell", "cat", "/proc/stat").stdout.splitlines():
        if line.startswith("intr "):
            intr = int(line.split()[1])
        elif line.startswith("ctxt "):
            ctxt = int(line.split()[1])
    return intr, ctxt


def _window(vm: BenchVM, qemu: int) -> tuple[float, float, float]:
    """(QEMU CPU %, guest interrupts/s, guest context switches/s) over WINDOW."""
    i0, x0 = _guest_counters(vm)
    c0, t0 = cpu_seconds(qemu), time.monotonic()
    time.sleep(WINDOW)
    c1, t1 = cpu_seconds(qemu), time.monotonic()
    i1, x1 = _guest_counters(vm)
    dt = t1 - t0
    return (c1 - c0) / dt * 100, (i1 - i0) / dt, (x1 - x0) / dt


def run(runs: int) -> tuple[list[Figure], str]:
    from desktop.demo import build_hello_image

    idle: list[tuple[float, float, float]] = []
    host: list[tuple[float, float, float]] = []
    with BenchVM() as vm:
        st = vm.start("--resource-saver", "0")
        qemu = st["qemu_pid"]
        build_hello_image(vm.docker, "cove-hello", env=vm.env)
        for i in range(runs):
            time.sleep(health.IDLE_AFTER + 5)  # the last docker command's checks slow down
            idle.append(_window(vm, qemu))
            name = f"idle-host-{i}"
            subprocess.run([*vm.docker, "run", "-d", "--name", name, "--network", "host",
                            "cove-hello", "sleep", "3600"], env=vm.env, check=True,
                           capture_output=True)
            time.sleep(3)
            host.append(_window(vm, qemu))
            subprocess.run([*vm.docker, "rm", "-f", name], env=vm.env, check=True,
                           capture_output=True)
            time.sleep(3)
    base = "idle with a host-network container (the 0.25 s listener scan)"
    return [
        Figure("idle awake: QEMU CPU, no container", "% core", [x[0] for x in idle], base,
               [x[0] for x in host]),
        Figure("idle awake: guest interrupts", "/s", [x[1] for x in idle], base,
               [x[1] for x in host]),
        Figure("idle awake: guest context switches", "/s", [x[2] for x in idle], base,
               [x[2] for x in host]),
    ], st["accel"]
