"""Start: power-on to engine ready through Cove's socket, against the bare kernel.

Baseline: the same kernel and initramfs under the same accelerator booting to a trivial
init (the initramfs's probe mode prints a marker and powers off), timed from QEMU's
start to its exit. Cove: `cove start` on a new data disk (cold: mkfs included) and on
the existing one (warm), timed from the backend's "booting the VM" event to the
engine answering `/_ping` through docker.sock, and as the whole `cove start` command.
Restore: `cove start` after a `cove stop` that saved the VM's state (an instance with no
shared folders), from the backend's "restoring" event to the same answer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import BenchVM, Figure

ROOT = Path(__file__).resolve().parents[1]


def bare_boot(runs: int) -> tuple[list[float], str]:
    import vm_image
    from desktop.drivers import VMSpec
    from desktop.drivers.qemu.accel import probe_accel
    from desktop.drivers.qemu.command import Endpoint, build_command
    from desktop.platform.hostinfo import host_os

    img = vm_image.find_image("amd64")
    if img is None:
        raise SystemExit("no guest image: run `make image` first")
    d = Path(tempfile.mkdtemp(prefix="cove-bench-"))
    try:
        spec = VMSpec("bench", d, img.kernel, img.initramfs, img.root, d / "data.qcow2",
                      d / "boot.json", cpus=2, memory_mib=2048)
        qemu = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
        accel, _ = probe_accel(spec, qemu, Path(os.environ.get("COVE_HOME", Path.home() /
                                                               ".cove")) / "accel.json")
        cmd = build_command(spec, accel, host_os(), qemu, Endpoint(), probe=True)
        times: list[float] = []
        crashes = 0
        while len(times) < runs:
            spec.serial_log.unlink(missing_ok=True)
            t0 = time.monotonic()
            subprocess.run(cmd, check=True, timeout=120, capture_output=True)
            elapsed = time.monotonic() - t0
            if b"COVE-PROBE-OK" in spec.serial_log.read_bytes():
                times.append(elapsed)
                continue
            # The guest kernel crashed (rare under emulation): not a sample; retry.
            crashes += 1
            print("bare boot: the guest kernel crashed:",
                  spec.serial_log.read_text(errors="replace")[-300:], file=sys.stderr)
            if crashes > runs:
                raise SystemExit("the bare kernel keeps crashing; see the log above")
        return times, accel
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _ping(sock: Path) -> bool:
    from guest_engine import dockerapi

    return dockerapi.ping(str(sock), timeout=2)


def cove_boots(runs: int, cold: bool) -> tuple[list[float], list[float],
                                               dict[str, list[float]]]:
    """(power-on -> engine ready via the socket, whole `cove start`, the guest's own
    timeline: kernel start -> agent running, agent -> dockerd answering) per run."""
    ready, whole = [], []
    phases: dict[str, list[float]] = {"agent": [], "engine": []}
    with BenchVM() as vm:
        if not cold:  # the first boot makes the disk; the warm runs reuse it
            vm.start()
            vm.cli("stop", "--power-off")
        for _ in range(runs):
            r, w = _timed_start(vm, "vm")  # from power-on
            ready.append(r)
            whole.append(w)
            st = json.loads(vm.cli("status", "--json").stdout)
            # Seconds since the guest kernel started, as the agent measured them.
            phases["agent"].append(st["agent_start"])
            phases["engine"].append(st["engine_ready_at"] - st["agent_start"])
            vm.cli("delete", "--force") if cold else vm.cli("stop", "--power-off")
    return ready, whole, phases


def _timed_start(vm: BenchVM, step: str) -> tuple[float, float]:
    """(the `step` event to the engine's first answer through docker.sock, the whole
    `cove start`) of one start."""
    inst = vm.folder
    (inst / "events.log").unlink(missing_ok=True)
    t0 = time.monotonic()
    p = subprocess.Popen([*vm.cove, "start", "-i", vm.name, "--no-activate"],
                         env=vm.env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, cwd=ROOT)
    # Poll the socket ourselves: the engine's first answer through Cove.
    while not _ping(inst / "docker.sock"):
        if p.poll() not in (None, 0):
            raise SystemExit("cove start failed; see " + str(inst / "backend.log"))
        time.sleep(0.05)
    t_ready = time.time()
    p.wait()
    whole = time.monotonic() - t0
    events = [json.loads(ln) for ln in (inst / "events.log").read_text().splitlines()]
    began = next(e["time"] for e in events if e.get("step") == step)
    return t_ready - began, whole


def cove_restores(runs: int) -> tuple[list[float], list[float], list[float], list[float]]:
    """(restore's event -> engine ready, whole `cove start`, `cove stop` with its save,
    the state file's MiB) per run, on an instance with no shared folder and one
    container running."""
    ready, whole, stops, sizes = [], [], [], []
    with BenchVM() as vm:
        for path in (str(Path.home()), tempfile.gettempdir()):
            vm.cli("shares", "remove", path, check=False)
        vm.start("--resource-saver", "0")
        from desktop.demo import build_hello_image

        build_hello_image(vm.docker, "cove-hello", env=vm.env)
        subprocess.run([*vm.docker, "run", "-d", "cove-hello", "sleep", "100000"],
                       env=vm.env, check=True, capture_output=True)
        for _ in range(runs):
            t0 = time.monotonic()
            out = vm.cli("stop").stdout
            stops.append(time.monotonic() - t0)
            if "state is saved" not in out:
                raise SystemExit(f"cove stop did not save the VM's state: {out}")
            sizes.append((vm.folder / "saved.state").stat().st_size / 2**20)
            r, w = _timed_start(vm, "restore")
            if not json.loads(vm.cli("status", "--json").stdout).get("restored"):
                raise SystemExit("cove start booted instead of restoring; see "
                                 + str(vm.folder / "backend.log"))
            ready.append(r)
            whole.append(w)
        vm.cli("stop", "--power-off")
    return ready, whole, stops, sizes


def run(runs: int) -> tuple[list[Figure], str]:
    bare, accel = bare_boot(runs)
    cold_ready, cold_whole, _ = cove_boots(runs, cold=True)
    bare2, _ = bare_boot(runs)  # again after the long runs: the machine's drift shows
    warm_ready, warm_whole, phases = cove_boots(runs, cold=False)
    restore_ready, restore_whole, save_stops, state_mib = cove_restores(runs)
    baseline = bare + bare2
    return [
        Figure("start, cold (new disk): power-on to engine ready", "s", cold_ready,
               "bare kernel to trivial init", baseline),
        Figure("start, warm: power-on to engine ready", "s", warm_ready,
               "bare kernel to trivial init", baseline, target="<= 4x"),
        Figure("`cove start`, cold, whole command", "s", cold_whole,
               "bare kernel to trivial init", baseline),
        Figure("`cove start`, warm, whole command", "s", warm_whole,
               "bare kernel to trivial init", baseline),
        Figure("start, restored from a saved state: restore to engine ready", "s",
               restore_ready, "bare kernel to trivial init", baseline, target="<= 2x"),
        Figure("`cove start`, restored, whole command", "s", restore_whole,
               "bare kernel to trivial init", baseline),
        Figure("`cove stop` that saves the state (one container running)", "s",
               save_stops, "bare kernel to trivial init", baseline),
        Figure("the saved state's size (2 GiB VM, one container)", "MiB", state_mib,
               "the VM's memory", [2048.0] * len(state_mib)),
        # Where a warm start's time goes (what bounds the ratio above):
        Figure("warm start, in the guest: kernel start to agent running", "s",
               phases["agent"], "bare kernel to trivial init", baseline),
        Figure("warm start, in the guest: agent running to dockerd answering", "s",
               phases["engine"], "bare kernel to trivial init", baseline),
    ], accel
