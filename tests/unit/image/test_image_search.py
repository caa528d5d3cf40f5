"""Where Cove finds its guest image: the build cache from source, the read-only folder a
packaged Cove ships (vm_image.builder.find_image), and what a packaged Cove says and
refuses when that image is missing."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from desktop import cli
from vm_image import builder


def _image(folder: Path, name: str, age: float = 0) -> Path:
    d = folder / name
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"key": name}))
    if age:
        t = time.time() - age
        os.utime(d / "manifest.json", (t, t))
    return d


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(builder, "image_key", lambda a: f"{a.name}-1111222233334444")
    monkeypatch.delenv("COVE_IMAGES", raising=False)
    monkeypatch.delenv(builder.SYSTEM_IMAGES_ENV, raising=False)
    monkeypatch.delattr(sys, "frozen", raising=False)
    return "amd64-1111222233334444"


def test_from_source_cache_first_then_system_folder(tmp_path: Path, key: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    home, system = tmp_path / "home", tmp_path / "system"
    assert builder.system_images_dir() is None  # from source, no system folder by default
    monkeypatch.setenv(builder.SYSTEM_IMAGES_ENV, str(system))
    assert builder.find_image("amd64", home) is None
    # Another key in the system folder is another version's image: not used from source.
    _image(system, "amd64-9999999999999999")
    assert builder.find_image("amd64", home) is None
    _image(system, key)
    img = builder.find_image("amd64", home)
    assert img is not None and img.source == "system" and img.path == system / key
    _image(home / "images", key)
    img = builder.find_image("amd64", home)
    assert img is not None and img.source == "cache" and img.path == home / "images" / key


def test_packaged_uses_only_its_own_folder(tmp_path: Path, key: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    app = tmp_path / "usr/lib/cove"
    app.mkdir(parents=True)
    (app / "cove").write_text("")
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(app / "cove"))
    home = tmp_path / "home"
    _image(home / "images", key)  # built from source once: a packaged Cove ignores it
    assert builder.system_images_dir() == app / "images"
    assert builder.find_image("amd64", home) is None
    # Any key: the bundle cannot compute one, and ships exactly the image it was built with.
    _image(app / "images", "amd64-aaaa000000000000", age=60)
    _image(app / "images", "amd64-bbbb000000000000")
    _image(app / "images", "arm64-cccc000000000000")
    img = builder.find_image("amd64", home)
    assert img is not None and img.key == "amd64-bbbb000000000000" and img.source == "system"
    assert builder.find_image("arm64", home).key == "arm64-cccc000000000000"  # type: ignore[union-attr]


def test_packaged_never_builds(tmp_path: Path, key: str,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "cove"))
    monkeypatch.setattr(builder, "check_tools",
                        lambda *a: pytest.fail("a packaged Cove looked for build tools"))
    with pytest.raises(builder.BuildError, match=r"packaged Cove.*reinstall") as e:
        builder.build("amd64", tmp_path / "home", force=True)
    assert str(tmp_path / "images") in str(e.value)
    assert not (tmp_path / "home").exists()
    shipped = _image(tmp_path / "images", "amd64-eeee000000000000")
    with pytest.raises(builder.BuildError, match=f"boots the one it ships, {shipped}$"):
        builder.build("amd64", tmp_path / "home", force=True)


def test_version_names_the_image_and_where_it_comes_from(
        tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COVE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("desktop.settings.default_arch", lambda: "amd64")
    assert cli.main(["version"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("guest image: none: no amd64 image is built for this version")
    _image(tmp_path / "system", key)
    monkeypatch.setenv(builder.SYSTEM_IMAGES_ENV, str(tmp_path / "system"))
    assert cli.main(["version"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == (f"guest image: {key}, shipped with this Cove (read-only system "
                      f"folder): {tmp_path / 'system' / key}")


def test_image_path_says_where(tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COVE_HOME", str(tmp_path / "home"))
    _image(tmp_path / "home" / "images", key)
    assert cli.main(["image", "path"]) == 0
    cap = capsys.readouterr()
    assert cap.out.strip() == str(tmp_path / "home" / "images" / key)
    assert "built on this machine" in cap.err


def test_packaged_macos_app_resources(tmp_path: Path, key: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    contents = tmp_path / "Cove.app" / "Contents"
    (contents / "MacOS").mkdir(parents=True)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(contents / "MacOS" / "cove"))
    assert builder.system_images_dir() == contents / "MacOS" / "images"
    _image(contents / "Resources" / "images", "arm64-dddd000000000000")
    assert builder.system_images_dir() == contents / "Resources" / "images"
    assert builder.find_image("arm64").path.parent == contents / "Resources" / "images"  # type: ignore[union-attr]
