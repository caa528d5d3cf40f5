"""The live screenshots' module: what it saves is what the README shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from desktop.tray import live_screenshots

ROOT = Path(__file__).resolve().parents[3]


def test_the_readme_shows_each_live_screenshot_and_each_is_in_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = set(re.findall(r"docs/screenshots/([\w-]+\.png)", readme))
    for name in live_screenshots.SHOTS:
        assert name in shown, f"README.md does not show {name}"
        png = (ROOT / "docs" / "screenshots" / name).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n"), name


def test_a_wait_that_times_out_names_what_did_not_happen() -> None:
    steps: list[int] = []
    with pytest.raises(SystemExit, match="the tray host did not happen within 0 s"):
        live_screenshots.wait("the tray host", lambda: False, 0.1, lambda: steps.append(1))
    assert steps  # it kept the event loop turning while it waited


def test_the_compose_project_it_starts_is_one_compose_reads(tmp_path: Path) -> None:
    """Compose itself reads the file (no engine needed): its three services, the port,
    and the database's `$$` left to the shell as one `$`."""
    import json
    import subprocess

    (tmp_path / "compose.yaml").write_text(live_screenshots.COMPOSE)
    got = subprocess.run(["docker", "compose", "--project-directory", str(tmp_path), "-p",
                          "shop", "config", "--format", "json"], capture_output=True,
                         text=True, check=True, timeout=60)
    services = json.loads(got.stdout)["services"]
    assert set(services) == {"web", "db", "migrate"}
    assert services["web"]["ports"][0]["published"] == "8080"
    assert "$(date)" in services["db"]["command"][2]
