"""Where an API round trip's time goes on the host: py-spy on the backend under load.

`python -m benchmarks.profile [--seconds 20]` boots a throw-away instance, sends
`GET /_ping` through docker.sock in a loop, and samples the backend with py-spy
(`pip install py-spy`; it needs ptrace, so root or a relaxed ptrace_scope). It writes

* results/profile-api.svg: a flame graph (idle threads left out);
* results/profile-api.txt: the functions holding the most samples, own and total,
  with the request rate reached, so the share of the host's Python is read at a glance.

The guest half (the agent's relay under emulation, dockerd) is not sampled here: py-spy
is not in the guest image. The api suite's figures split the round trip instead (host
relay vs. link stream vs. bare relay in the VM).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.api import _via_unix
from benchmarks.common import RESULTS, BenchVM

RATE = 250  # samples per second


def summarize(raw: str, top: int = 25) -> tuple[list[tuple[str, int]], list[tuple[str, int]],
                                                int]:
    """(own samples per function, total samples per function, all samples) from py-spy's
    raw format: one `frame;frame;...;leaf count` line per distinct stack, root first."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    n = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = stack.split(";")
        n += c
        own[frames[-1]] += c
        for f in set(frames):
            total[f] += c
    return own.most_common(top), total.most_common(top), n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    p.add_argument("--seconds", type=int, default=20)
    args = p.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 1
    RESULTS.mkdir(exist_ok=True)
    with BenchVM() as vm:
        st = vm.start()
        sock = vm.folder / "docker.sock"
        stop = threading.Event()
        done = [0]

        def load() -> None:
            while not stop.is_set():
                _via_unix(sock, "/_ping")
                done[0] += 1

        t = threading.Thread(target=load, daemon=True)
        t.start()
        time.sleep(2)
        n0, t0 = done[0], time.monotonic()
        raw = RESULTS / "profile-api.raw"
        for fmt, out in (("raw", raw), ("flamegraph", RESULTS / "profile-api.svg")):
            subprocess.run([spy, "record", "--pid", str(st["pid"]), "--duration",
                            str(args.seconds // 2), "--rate", str(RATE), "--format", fmt,
                            "--output", str(out), "--nonblocking"],
                           check=True, capture_output=True)
            if fmt == "raw":
                n_raw = done[0] - n0
        rate = (done[0] - n0) / (time.monotonic() - t0)
        stop.set()
        t.join(10)
    own, total, n = summarize(raw.read_text())
    raw.unlink()
    busy_ms = n / RATE * 1000 / max(n_raw, 1)
    lines = [f"py-spy on the backend (pid {st['pid']}, accelerator {st['accel']}) while "
             f"GET /_ping ran back to back through docker.sock: {rate:.1f} requests/s "
             f"({1000 / rate:.1f} ms each), {n} samples of threads that were not idle, "
             f"that is {busy_ms:.2f} ms of the host's Python per request.", "",
             "own samples (the function itself):"]
    lines += [f"  {c:6d} {100 * c / max(n, 1):5.1f}%  {f}" for f, c in own]
    lines += ["", "total samples (the function and what it called):"]
    lines += [f"  {c:6d} {100 * c / max(n, 1):5.1f}%  {f}" for f, c in total]
    text = "\n".join(lines) + "\n"
    (RESULTS / "profile-api.txt").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
