"""Figures, statistics and the results table shared by the benchmarks."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def rss_mib(pid: int) -> float:
    """A process's resident memory (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BenchVM:
    """One throw-away instance ("bench") for a suite, deleted with its folder on exit.

    Its own COVE_HOME and DOCKER_CONFIG (so the user's instance and docker context are
    never touched) sharing the image cache. `hostfwd` adds a QEMU user-networking forward
    "tcp:127.0.0.1:HOST-:GUEST": the bare path that some figures are measured against.
    """

    name = "bench"

    def __init__(self, hostfwd: str | None = None) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="cove-bench-"))
        self.folder = self.base / "h" / self.name
        self.env = {**os.environ, "COVE_HOME": str(self.base / "h"),
                    "DOCKER_CONFIG": str(self.base / "d"),
                    "COVE_IMAGES": os.environ.get("COVE_IMAGES",
                                                  str(Path.home() / ".cove" / "images"))}
        if hostfwd:
            self.env["COVE_QEMU_HOSTFWD"] = hostfwd
        self.cove = [sys.executable, "-m", "desktop"]
        self.docker = ["docker", "--context", f"cove-{self.name}"]
        self.status: dict = {}

    def cli(self, command: str, *args: str, check: bool = True
            ) -> subprocess.CompletedProcess:
        """`cove COMMAND -i bench ARGS...`, output captured; RuntimeError with cove's
        output and the backend log's tail when it fails and `check` is set."""
        proc = subprocess.run([*self.cove, command, "-i", self.name, *args], env=self.env,
                              capture_output=True, text=True, cwd=ROOT)
        if check and proc.returncode != 0:
            log = self.folder / "backend.log"
            tail = log.read_text().splitlines()[-15:] if log.exists() else []
            raise RuntimeError(f"cove {command} failed ({proc.returncode}):\n{proc.stdout}"
                               f"{proc.stderr}" + "\n".join(tail))
        return proc

    def start(self, *args: str) -> dict:
        """Start (without making the context current); returns `cove status --json`."""
        self.cli("start", "--no-activate", *args)
        self.status = json.loads(self.cli("status", "--json").stdout)
        return self.status

    def bare_relay(self, host_port: int, guest_port: int) -> dict[str, str]:
        """Start a TCP-to-docker.sock relay in the VM (the agent's relay code, no host
        side, no link, no authentication) on `guest_port`, reached through this VM's
        `hostfwd` on `host_port`; returns the environment that makes `docker` use it."""
        from desktop.demo import build_hello_image

        build_hello_image(self.docker, "cove-hello", env=self.env)
        subprocess.run([*self.docker, "run", "-d", "--name", "bare-relay", "--privileged",
                        "--pid", "host", "cove-hello", "nsenter", "-t", "1", "-m", "-n",
                        "python3", "-c", GUEST_RELAY.replace("GUEST_PORT", str(guest_port))],
                       env=self.env, check=True, capture_output=True)
        bare = {**self.env, "DOCKER_HOST": f"tcp://127.0.0.1:{host_port}"}
        bare.pop("DOCKER_CONTEXT", None)
        deadline = time.monotonic() + 120
        while subprocess.run(["docker", "version"], env=bare,
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the bare path's relay in the VM did not answer")
            time.sleep(0.5)
        return bare

    def keep_logs(self, where: Path = Path("/tmp/cove-bench-logs")) -> None:
        where.mkdir(exist_ok=True)
        for log in ("backend.log", "serial.log", "events.log"):
            if (self.folder / log).exists():
                shutil.copy2(self.folder / log, where / log)

    def delete(self) -> None:
        self.cli("delete", "--force", check=False)

    def __enter__(self) -> BenchVM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()
        shutil.rmtree(self.base, ignore_errors=True)


# Runs in the VM (its own python3 and guest_engine, through nsenter into PID 1's
# namespaces): accept on GUEST_PORT, relay each connection to the engine's socket.
GUEST_RELAY = """
import socket, threading
from guest_engine import relay
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", GUEST_PORT))
s.listen(64)
while True:
    c, _ = s.accept()
    u = socket.socket(socket.AF_UNIX)
    u.connect("/var/run/docker.sock")
    threading.Thread(target=relay.pipe, args=(c, u), daemon=True).start()
"""


@dataclass
class Figure:
    """One measured quantity and its baseline, each sampled several times."""

    name: str
    unit: str
    samples: list[float]
    baseline_name: str
    baseline: list[float]
    lower_is_better: bool = True
    target: str = ""
    notes: list[str] = field(default_factory=list)

    @staticmethod
    def _stats(xs: list[float]) -> dict[str, float]:
        return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}

    def row(self) -> dict:
        s, b = self._stats(self.samples), self._stats(self.baseline)
        return {**asdict(self), "value": s, "base": b,
                "ratio": s["median"] / b["median"] if b["median"] else float("nan")}


def machine() -> dict[str, str]:
    return {"host": platform.node(), "kernel": platform.release(),
            "python": platform.python_version(), "cpus": str(os.cpu_count()),
            "date": time.strftime("%Y-%m-%d")}


def fmt(x: float, unit: str) -> str:
    return f"{x:.3g} {unit}"


def save_suite(suite: str, figures: list[Figure], accel: str) -> None:
    """Keep one suite's figures (results/<suite>.json); other suites' stay as they are."""
    RESULTS.mkdir(exist_ok=True)
    meta = {**machine(), "accel": accel}
    (RESULTS / f"{suite}.json").write_text(json.dumps(
        {"machine": meta, "figures": [f.row() for f in figures]}, indent=2))


def render() -> str:
    """results/latest.md from every suite's latest figures; returns it."""
    lines = [
        "Each suite's latest run. Median (min-max) of each figure, and its ratio to the "
        "baseline's median measured in the same run.",
    ]
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or "figures" not in data:
            continue  # another tool's results (the package test's figures)
        meta = data["machine"]
        lines += [
            "",
            f"### {path.stem} ({meta['date']}, {meta['cpus']} CPUs, Linux {meta['kernel']}, "
            f"accelerator {meta['accel']})",
            "",
            "| figure | Cove | baseline | ratio | target |",
            "|---|---|---|---|---|",
        ]
        for r in data["figures"]:
            v, b = r["value"], r["base"]
            lines.append(
                f"| {r['name']} | {fmt(v['median'], r['unit'])} ({v['min']:.3g}-"
                f"{v['max']:.3g}) | {r['baseline_name']}: {fmt(b['median'], r['unit'])} "
                f"({b['min']:.3g}-{b['max']:.3g}) | {r['ratio']:.2f}x | {r['target']} |"
            )
            for note in r.get("notes") or []:
                lines.append(f"| &nbsp;&nbsp;{note} | | | | |")
    md = "\n".join(lines) + "\n"
    (RESULTS / "latest.md").write_text(md)
    return md
