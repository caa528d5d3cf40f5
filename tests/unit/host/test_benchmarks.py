"""The benchmarks' own arithmetic: figures, ratios and the profile summary (no VM)."""

from __future__ import annotations

import math

from benchmarks.common import Figure
from benchmarks.profile import summarize


def test_figure_ratio_is_of_the_medians() -> None:
    f = Figure("x", "ms", [10, 30, 20, 1000, 15], "base", [5, 10, 100])
    row = f.row()
    assert row["value"] == {"min": 10, "median": 20, "max": 1000}
    assert row["base"]["median"] == 10
    assert row["ratio"] == 2.0


def test_figure_ratio_with_a_zero_baseline_is_nan() -> None:
    assert math.isnan(Figure("x", "s", [1.0], "base", [0.0]).row()["ratio"])


def test_profile_summary_counts_own_and_total_once_per_stack() -> None:
    raw = ("main (a.py:1);relay (r.py:5);recv (r.py:9) 6\n"
           "main (a.py:1);relay (r.py:5) 3\n"
           "main (a.py:1);guard (g.py:2);relay (r.py:5) 1\n"
           "garbage line\n")
    own, total, n = summarize(raw)
    assert n == 10
    assert dict(own) == {"recv (r.py:9)": 6, "relay (r.py:5)": 4}
    assert dict(total)["main (a.py:1)"] == 10
    assert dict(total)["relay (r.py:5)"] == 10  # counted once even when on the stack twice
    assert dict(total)["guard (g.py:2)"] == 1


def test_render_skips_results_that_are_not_a_suite(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from benchmarks import common

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    common.save_suite("api", [Figure("ping", "ms", [2.0], "echo", [1.0])], "tcg")
    (tmp_path / "package.json").write_text('{"deb_bytes": 1}')
    md = common.render()
    assert "### api" in md and "| ping | 2 ms" in md and "2.00x" in md
    assert "package" not in md


def test_every_suite_in_latest_md_keeps_its_figures_in_the_repository() -> None:
    """latest.md is rendered from each suite's results/<suite>.json: a suite whose JSON
    is not in the repository drops out of latest.md at the next run on a new clone (as
    the dashboard's did once)."""
    import subprocess

    from benchmarks import common

    tracked = subprocess.run(["git", "ls-files", "benchmarks/results"], capture_output=True,
                             text=True, check=True, cwd=common.ROOT).stdout.split()
    suites = [line.split()[1] for line in (common.RESULTS / "latest.md").read_text()
              .splitlines() if line.startswith("### ")]
    assert suites
    for suite in suites:
        assert f"benchmarks/results/{suite}.json" in tracked, \
            f"benchmarks/results/{suite}.json is not in git: add it beside latest.md"
