"""Fixtures shared by the whole test tree.

* `fixed_host`: the host has 8 CPUs and 16 GiB, whatever machine runs the tests
  (`desktop.settings` validates and defaults the VM's size against it).
* `docker_config`: a temp DOCKER_CONFIG, so docker contexts are written there and never
  into the developer's ~/.docker.
* `cove_home`: a temp COVE_HOME (returned) with `docker_config`, `fixed_host`, a temp
  HOME, and COVE_INSTANCE / COVE_IMAGES unset.
* `copy_mode`: parametrizes a test over the relay's splice(2) and its portable
  user-space copy.
* `sleeper`: a child process that runs until the test ends (killed then).

tests/integration/conftest.py defines its own (a booted VM); these are for tests that
boot none.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The packages under test are imported in the fixtures that patch them, so that the
# integration and package tests, which use none of these, do not import them here.


@pytest.fixture
def fixed_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host with 8 CPUs and 16 GiB, whatever machine runs the tests."""
    from desktop import settings

    monkeypatch.setattr(settings, "host_cpus", lambda: 8)
    monkeypatch.setattr(settings, "host_memory", lambda: 16 * settings.GIB)


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp DOCKER_CONFIG (tmp_path/docker, not created)."""
    d = tmp_path / "docker"
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    return d


@pytest.fixture
def cove_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_config: Path,
              fixed_host: None) -> Path:
    """A temp COVE_HOME (tmp_path/cove, not created), a temp HOME (tmp_path/home), the
    temp DOCKER_CONFIG, no COVE_INSTANCE or COVE_IMAGES from the environment, and the
    fixed host."""
    home = tmp_path / "cove"
    monkeypatch.setenv("COVE_HOME", str(home))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("COVE_INSTANCE", raising=False)
    monkeypatch.delenv("COVE_IMAGES", raising=False)
    return home


@pytest.fixture(params=["splice", "copy"])
def copy_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The relay (guest_engine.relay, also the host's API guard's) with splice(2) where
    Python has os.splice, and with the portable user-space copy."""
    from guest_engine import relay

    if request.param == "copy":
        monkeypatch.setattr(relay, "SPLICE", False)
    return str(request.param)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    """A process that runs until it is told to end (stands in for QEMU, a backend)."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield p
    p.kill()
    p.wait()
