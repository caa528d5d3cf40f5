"""Run the benchmarks: `python -m benchmarks [boot ...] [--runs N]`."""

from __future__ import annotations

import argparse
import sys

from benchmarks import (
    api,
    boot,
    bulk,
    common,
    dashboard,
    faults,
    filewatch,
    footprint,
    idle,
    ports,
    rest,
    shares,
    tcg,
    tray,
)

SUITES = {"boot": boot.run, "api": api.run, "bulk": bulk.run, "footprint": footprint.run,
          "ports": ports.run, "faults": faults.run, "filewatch": filewatch.run,
          "rest": rest.run, "dashboard": dashboard.run, "idle": idle.run,
          "shares": shares.run, "tray": tray.run, "tcg": tcg.run}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks")
    p.add_argument("names", nargs="*", choices=[*SUITES, []], help="default: all")
    p.add_argument("--runs", type=int, default=5, help="samples per figure (default 5)")
    args = p.parse_args()
    for name in args.names or list(SUITES):
        print(f"running {name} ({args.runs} runs each)...", file=sys.stderr, flush=True)
        figs, accel = SUITES[name](args.runs)
        common.save_suite(name, figs, accel)
    print(common.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
