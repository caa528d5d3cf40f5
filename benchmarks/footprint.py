"""Footprint: the image on disk, the guest's memory after boot, and memory given back.

* the compressed root image's size;
* guest memory in use after boot (MemTotal - MemAvailable, from the agent), against the
  VM's memory size;
* QEMU's RSS on the host 30 s after a container that filled 1 GiB (a tmpfs) exits,
  against QEMU's RSS while the container held it: free page reporting (virtio-balloon)
  gives freed guest pages back to the host.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from benchmarks.common import BenchVM, Figure, rss_mib

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20




def run(runs: int) -> tuple[list[Figure], str]:
    import vm_image

    image = vm_image.find_image("amd64")
    if image is None:
        raise RuntimeError("no guest image: run `make image` first")
    used, peak, after, total = [], [], [], 0.0
    with BenchVM() as vm:
        docker, env = vm.docker, vm.env
        st = vm.start("--memory", "2G")
        from desktop.control import ControlClient
        from desktop.demo import build_hello_image

        ctl = ControlClient(vm.folder / "control.sock")
        time.sleep(10)  # the boot's tail settles
        for _ in range(runs):
            mem = ctl.request("agent_status")["memory"]
            total = mem["total"] / MIB  # the agent reports bytes
            used.append((mem["total"] - mem["available"]) / MIB)
            time.sleep(2)
        build_hello_image(docker, "cove-hello", env=env)
        qemu = int(st["qemu_pid"])
        for i in range(runs):
            name = f"fill{i}"
            subprocess.run([*docker, "run", "-d", "--name", name, "--tmpfs",
                            "/m:size=1100m", "cove-hello", "sh", "-c",
                            "dd if=/dev/zero of=/m/x bs=1M count=1024 && touch /m/done && "
                            "sleep 3600"], env=env, check=True, capture_output=True)
            deadline = time.monotonic() + 300
            while subprocess.run([*docker, "exec", name, "test", "-e", "/m/done"], env=env,
                                 capture_output=True).returncode != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("the container did not fill its 1 GiB")
                time.sleep(1)
            peak.append(rss_mib(qemu))
            subprocess.run([*docker, "rm", "-f", name], env=env, check=True,
                           capture_output=True)
            time.sleep(30)
            after.append(rss_mib(qemu))
        accel = st["accel"]
    root_mib = image.root.stat().st_size / MIB
    return [
        Figure("compressed root image", "MiB", [root_mib], "(no baseline: absolute)",
               [root_mib], target="<= 150 MiB"),
        Figure("guest memory in use after boot", "MiB", used, "the VM's memory", [total]),
        Figure("QEMU RSS 30 s after a 1 GiB container exits", "MiB", after,
               "QEMU RSS while it held 1 GiB", peak, target="memory given back"),
    ], accel
