"""The installers' own logic, without building anything big: the bundle's entry point,
the version stamp, the .deb's layout and control file, the chroot helpers."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from tests.package.chroot import depends_of

REPO = Path(__file__).resolve().parents[2]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


entry = _load(REPO / "installers/bundle/entry.py", "cove_bundle_entry")
bundle = _load(REPO / "installers/bundle/build.py", "cove_bundle_build")
deb = _load(REPO / "installers/linux/deb.py", "cove_deb")


@pytest.mark.parametrize(("argv", "expected"), [
    (["cove", "version"], ("cli", ["version"])),
    # How the CLI starts the backend: sys.executable -m desktop backend ...
    (["/usr/lib/cove/cove", "-m", "desktop", "backend", "--instance", "x"],
     ("cli", ["backend", "--instance", "x"])),
    (["/usr/bin/cove-desktop", "--no-start"], ("tray", ["--no-start"])),
    (["cove-desktop.exe"], ("tray", [])),
    # How autostart launches the tray when no cove-desktop is found.
    (["cove", "-m", "desktop.tray", "-i", "w"], ("tray", ["-i", "w"])),
])
def test_entry_dispatch(argv: list[str], expected: tuple[str, list[str]],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(entry, "_cli", lambda a: calls.append(("cli", a)) or 0)
    monkeypatch.setattr(entry, "_tray", lambda a: calls.append(("tray", a)) or 0)
    entry.MODULES.update({"desktop": entry._cli, "desktop.tray": entry._tray})
    monkeypatch.setattr(sys, "argv", argv)
    assert entry.main() == 0
    assert calls == [expected]


def test_entry_refuses_other_modules(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["cove", "-m", "pip", "install", "x"])
    assert entry.main() == 2
    assert "'pip'" in capsys.readouterr().err


def test_stage_sources_stamps_the_version(tmp_path: Path) -> None:
    bundle.stage_sources(tmp_path / "src", "9.8.7+1")
    init = (tmp_path / "src/desktop/__init__.py").read_text()
    assert '__version__ = "9.8.7+1"' in init
    assert bundle.source_version() in (REPO / "desktop/__init__.py").read_text()
    assert (tmp_path / "src/assets/cove.svg").is_file()
    assert not list((tmp_path / "src").rglob("__pycache__"))
    with pytest.raises(bundle.BundleError, match="not a Debian"):
        bundle.stage_sources(tmp_path / "src2", "1.0; rm -rf /")


def test_copy_image_checks_sha256(tmp_path: Path) -> None:
    img = tmp_path / "amd64-0123456789abcdef"
    img.mkdir()
    files = {}
    for name in ("vmlinuz", "initramfs", "root.sqfs"):
        (img / name).write_bytes(name.encode())
        files[name] = {"sha256": bundle.sha256(img / name), "size": len(name)}
    (img / "manifest.json").write_text(json.dumps({"arch": "amd64", "files": files}))
    got = bundle.copy_image(img, tmp_path / "out1")
    assert got == {"key": img.name, "arch": "amd64", "bytes": 7 + 9 + 9}
    assert (tmp_path / "out1" / img.name / "root.sqfs").read_bytes() == b"root.sqfs"
    (img / "root.sqfs").write_bytes(b"tampered")
    with pytest.raises(bundle.BundleError, match="sha256"):
        bundle.copy_image(img, tmp_path / "out2")


def test_deb_layout_and_control(tmp_path: Path) -> None:
    app = tmp_path / "bundle"
    (app / "_internal").mkdir(parents=True)
    for exe in ("cove", "cove-desktop"):
        (app / exe).write_text("#!/bin/sh\n")
        (app / exe).chmod(0o700)
    (app / "_internal" / "lib.so").write_bytes(b"x" * 5000)
    root = tmp_path / "root"
    deb.stage(app, root, "1.2.3", "arm64")
    assert (root / "usr/bin/cove").readlink() == Path("../lib/cove/cove")
    assert (root / "usr/bin/cove-desktop").resolve() == root / "usr/lib/cove/cove-desktop"
    assert (root / "usr/lib/cove/cove").stat().st_mode & 0o777 == 0o755
    assert (root / "usr/lib/cove/_internal/lib.so").stat().st_mode & 0o777 == 0o644
    desktop = (root / "usr/share/applications/cove.desktop").read_text()
    assert "Exec=cove-desktop\n" in desktop and "Icon=cove\n" in desktop
    assert (root / "usr/share/icons/hicolor/scalable/apps/cove.svg").is_file()
    control = (root / "DEBIAN/control").read_text()
    assert "Version: 1.2.3\n" in control and "Architecture: arm64\n" in control
    assert depends_of(control)[:2] == ["qemu-system-arm", "qemu-utils"]
    assert "@VERSION@" not in control and "@QEMU@" not in control
    assert sorted(p.name for p in (root / "DEBIAN").iterdir()) == ["control"]
    with pytest.raises(deb.DebError, match="not a Cove bundle"):
        deb.stage(tmp_path / "root", tmp_path / "root2", "1", "amd64")


def test_depends_of() -> None:
    assert depends_of("Package: x\nDepends: a (>= 1), b | c, d\n") == ["a", "b", "d"]
    assert depends_of("Package: x\n") == []


def test_extend_path_adds_existing_qemu_folders(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    brew = tmp_path / "homebrew" / "bin"
    brew.mkdir(parents=True)
    monkeypatch.setitem(entry.QEMU_PATHS, "darwin", [str(brew), str(tmp_path / "absent")])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    entry.extend_path("darwin")
    assert os.environ["PATH"] == f"/usr/bin:/bin:{brew}"
    entry.extend_path("darwin")  # once only
    assert os.environ["PATH"].count(str(brew)) == 1
    entry.extend_path("linux")
    assert os.environ["PATH"] == f"/usr/bin:/bin:{brew}"
