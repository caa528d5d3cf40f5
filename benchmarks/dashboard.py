"""The Dashboard with many containers: how long a refresh takes, and how much of it holds
the GUI thread.

In-process, Qt's offscreen platform: the real Dashboard and TrayController, the real
Docker SDK, against the tests' fake backend and fake engine (the Docker API on a unix
socket), which answer at once, so what is measured is Cove's side: the SDK calls, the
rows made from them, and `show_rows` (the only part on the GUI thread).

Load: 200 containers (two in three running, half of them in 20 Compose projects, each
with two published ports) and 500 images. Baseline, same run: the same refresh with 3
containers and 2 images.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Figure

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _load(engine: Any, n_containers: int, n_images: int) -> None:
    from tests.helpers.tray_fakes import container

    engine.images = [{"Id": f"sha256:{i:064x}", "RepoTags": [f"app{i}:latest"],
                      "Size": 50_000_000 + i, "Created": 1_780_000_000 + i}
                     for i in range(n_images)]
    engine.containers = [
        container(f"{i + 1:064x}", f"c{i:03d}", f"app{i % n_images}:latest",
                  state="running" if i % 3 else "exited",
                  image_id=f"sha256:{i % n_images:064x}",
                  labels={"com.docker.compose.project": f"p{i % 20}"} if i % 2 else None,
                  ports=[{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 20000 + i,
                          "Type": "tcp"},
                         {"IP": "0.0.0.0", "PrivatePort": 53, "PublicPort": 30000 + i,
                          "Type": "udp"}])
        for i in range(n_containers)]


def measure(n_containers: int, n_images: int, runs: int) -> tuple[list[float], list[float]]:
    """(seconds from refresh() to the rows shown, seconds of that in show_rows) per run."""
    from PySide6.QtWidgets import QApplication

    from desktop.instance import Instance
    from desktop.tray.controller import TrayController
    from desktop.tray.dashboard import Dashboard
    from tests.helpers.tray_fakes import FakeBackend, FakeDockerAPI

    app = QApplication.instance() or QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory(prefix="cove-bench-dash-") as d:
        inst = Instance("bench", home=Path(d) / "h")
        backend = FakeBackend(inst)
        engine = FakeDockerAPI(inst.docker_socket)
        _load(engine, n_containers, n_images)
        controller = TrayController(inst, spawn=lambda i: None)
        dash = Dashboard(controller)
        shown: list[tuple[float, float]] = []
        real = dash.show_rows

        def timed(*args: Any) -> None:
            t0 = time.perf_counter()
            real(*args)
            shown.append((time.perf_counter(), time.perf_counter() - t0))

        dash.show_rows = timed  # type: ignore[method-assign,assignment]
        try:
            dash.show()
            controller.start_following()
            deadline = time.monotonic() + 60
            while len(dash.all_containers) != n_containers:
                app.processEvents()
                assert time.monotonic() < deadline, "the dashboard never filled"
                time.sleep(0.005)
            total, gui = [], []
            for _ in range(runs):
                shown.clear()
                t0 = time.perf_counter()
                dash.refresh()
                while not shown:
                    app.processEvents()
                    time.sleep(0.001)
                total.append(shown[0][0] - t0)
                gui.append(shown[0][1])
            return total, gui
        finally:
            dash.close()
            controller.close()
            engine.close()
            backend.close()


def run(runs: int) -> tuple[list[Figure], str]:
    big_total, big_gui = measure(200, 500, runs)
    small_total, small_gui = measure(3, 2, runs)
    def ms(xs: list[float]) -> list[float]:
        return [x * 1000 for x in xs]

    return [
        Figure("dashboard: refresh, 200 containers and 500 images", "ms", ms(big_total),
               "the same, 3 containers and 2 images", ms(small_total), target="<= 1000 ms",
               notes=["fake engine (answers at once): Cove's side only"]),
        Figure("dashboard: GUI thread held by that refresh", "ms", ms(big_gui),
               "the same, 3 containers and 2 images", ms(small_gui), target="<= 200 ms"),
    ], "n/a"


if __name__ == "__main__":
    for f in run(int(sys.argv[1]) if len(sys.argv) > 1 else 3)[0]:
        r = f.row()
        print(f"{f.name}: {r['value']['median']:.1f} {f.unit}; {f.baseline_name}: "
              f"{r['base']['median']:.1f} {f.unit}; ratio {r['ratio']:.1f}x")
