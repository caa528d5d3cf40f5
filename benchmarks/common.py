"""Figures, statistics and the results table shared by the benchmarks."""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def bench_instance() -> tuple[Path, dict[str, str], list[str]]:
    """A throw-away COVE_HOME and DOCKER_CONFIG sharing the image cache: (folder, the
    environment for `cove`, the `cove` command)."""
    import os
    import sys
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="cove-bench-"))
    env = {**os.environ, "COVE_HOME": str(base / "h"), "DOCKER_CONFIG": str(base / "d"),
           "COVE_IMAGES": os.environ.get("COVE_IMAGES",
                                         str(Path.home() / ".cove" / "images"))}
    return base, env, [sys.executable, "-m", "desktop"]


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
            "python": platform.python_version(), "cpus": str(__import__("os").cpu_count()),
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
        if path.name == "latest.json":
            continue
        data = json.loads(path.read_text())
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
