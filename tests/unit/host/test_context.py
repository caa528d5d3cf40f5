"""The `cove` docker context in docker's own store (desktop.context)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from desktop import context

URL = "unix:///home/me/.cove/default/docker.sock"


@pytest.fixture
def docker_config(docker_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shared temp DOCKER_CONFIG (tests/conftest.py) and a temp HOME, for the
    fallback to ~/.docker."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return docker_config


def _config(d: Path) -> dict:
    return json.loads((d / "config.json").read_text())


def test_docker_config_dir(docker_config: Path, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert context.docker_config_dir() == docker_config
    monkeypatch.delenv("DOCKER_CONFIG")
    assert context.docker_config_dir() == tmp_path / "home" / ".docker"


def test_create_writes_meta(docker_config: Path) -> None:
    context.create("cove", URL, "Cove (default)")
    digest = hashlib.sha256(b"cove").hexdigest()
    meta_file = docker_config / "contexts" / "meta" / digest / "meta.json"
    meta = json.loads(meta_file.read_text())
    assert meta["Name"] == "cove"
    assert meta["Endpoints"]["docker"]["Host"] == URL
    assert meta["Endpoints"]["docker"]["SkipTLSVerify"] is False
    assert meta["Metadata"]["Description"] == "Cove (default)"
    assert context.exists("cove")
    assert not context.exists("cove-work")
    # Creating does not make it current.
    assert context.current() == "default"


def test_create_again_updates(docker_config: Path) -> None:
    context.create("cove", URL, "old")
    context.create("cove", "unix:///elsewhere.sock", "new")
    meta_dirs = list((docker_config / "contexts" / "meta").iterdir())
    assert len(meta_dirs) == 1
    meta = json.loads((meta_dirs[0] / "meta.json").read_text())
    assert meta["Endpoints"]["docker"]["Host"] == "unix:///elsewhere.sock"


def test_current_without_a_config(docker_config: Path) -> None:
    assert context.current() == "default"


CREDENTIALS = b'{"auths": {"registry.example": {"auth": "dXNlcjpwYXNz"}}, "currentContext": "x"'


@pytest.mark.parametrize("content", [
    CREDENTIALS,  # a hand edit that lost its closing brace
    b"\xef\xbb\xbf" + CREDENTIALS + b"}",  # a BOM (an editor on Windows)
    b"[]",  # not docker's object
    b"\xff\xfe{}",  # not UTF-8
], ids=["truncated", "bom", "list", "not-utf8"])
def test_a_config_json_that_does_not_parse_is_never_rewritten(docker_config: Path,
                                                              tmp_path: Path,
                                                              content: bytes) -> None:
    docker_config.mkdir()
    cfg = docker_config / "config.json"
    cfg.write_bytes(content)
    remember = tmp_path / "previous-context"
    with pytest.raises(context.ContextError, match="Cove left it as it is") as e:
        context.use("cove", remember=remember)
    assert str(cfg) in str(e.value)
    with pytest.raises(context.ContextError):
        context.remove("cove", remember)
    with pytest.raises(context.ContextError):
        context.current()
    assert cfg.read_bytes() == content  # byte for byte
    assert sorted(p.name for p in docker_config.iterdir()) == ["config.json"]
    assert not remember.exists()


def test_a_config_json_that_cannot_be_read_is_never_rewritten(
        docker_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docker_config.mkdir()
    cfg = docker_config / "config.json"
    cfg.write_bytes(CREDENTIALS + b"}")
    real = Path.read_bytes

    def denied(self: Path) -> bytes:
        if self.name == "config.json":  # as after `sudo docker login` (root-owned, 0600)
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(context.ContextError, match="cannot read .*chown"):
        context.use("cove")
    monkeypatch.undo()
    assert cfg.read_bytes() == CREDENTIALS + b"}"


def test_use_keeps_every_other_entry_of_config_json(docker_config: Path) -> None:
    docker_config.mkdir()
    cfg = docker_config / "config.json"
    cfg.write_text(json.dumps({"auths": {"r": {"auth": "x"}}, "credHelpers": {"r": "pass"},
                               "proxies": {"default": {"httpProxy": "http://p:3128"}}}))
    context.use("cove")
    assert _config(docker_config) == {
        "auths": {"r": {"auth": "x"}}, "credHelpers": {"r": "pass"},
        "proxies": {"default": {"httpProxy": "http://p:3128"}}, "currentContext": "cove"}


def test_use_sets_current_and_remembers_previous(docker_config: Path, tmp_path: Path) -> None:
    docker_config.mkdir()
    (docker_config / "config.json").write_text(json.dumps(
        {"auths": {"registry.example": {"auth": "dXNlcjpwYXNz"}}, "currentContext": "colima"}))
    remember = tmp_path / "previous-context"
    context.create("cove", URL, "Cove")
    context.use("cove", remember)
    cfg = _config(docker_config)
    assert cfg["currentContext"] == "cove"
    assert cfg["auths"] == {"registry.example": {"auth": "dXNlcjpwYXNz"}}
    assert remember.read_text().strip() == "colima"
    # Using it again (or another cove instance) does not overwrite what was remembered.
    context.use("cove", remember)
    context.use("cove-work", remember)
    assert remember.read_text().strip() == "colima"
    assert not list(docker_config.glob("*.cove-tmp"))


def test_use_default_removes_the_key(docker_config: Path) -> None:
    context.use("cove")
    assert _config(docker_config)["currentContext"] == "cove"
    context.use("default")
    assert "currentContext" not in _config(docker_config)
    assert context.current() == "default"


def test_remove_restores_the_previous_context(docker_config: Path, tmp_path: Path) -> None:
    docker_config.mkdir()
    (docker_config / "config.json").write_text(json.dumps(
        {"auths": {"ghcr.io": {}}, "credsStore": "desktop", "currentContext": "colima"}))
    context.create("colima", "unix:///colima.sock", "colima")
    context.create("cove", URL, "Cove")
    remember = tmp_path / "previous-context"
    context.use("cove", remember)
    context.remove("cove", remember)
    cfg = _config(docker_config)
    assert cfg["currentContext"] == "colima"
    assert cfg["auths"] == {"ghcr.io": {}} and cfg["credsStore"] == "desktop"
    assert not context.exists("cove")
    digest = hashlib.sha256(b"cove").hexdigest()
    assert not (docker_config / "contexts" / "meta" / digest).exists()
    assert context.exists("colima")  # other contexts are untouched
    assert not remember.exists()


def test_remove_falls_back_to_default(docker_config: Path, tmp_path: Path) -> None:
    docker_config.mkdir()
    (docker_config / "config.json").write_text(json.dumps(
        {"auths": {}, "currentContext": "gone"}))
    remember = tmp_path / "previous-context"
    context.create("cove", URL, "Cove")
    context.use("cove", remember)
    assert remember.read_text().strip() == "gone"
    # The remembered context was deleted meanwhile: fall back to the default.
    context.remove("cove", remember)
    cfg = _config(docker_config)
    assert "currentContext" not in cfg and cfg["auths"] == {}
    assert context.current() == "default"


def test_remove_when_not_current_leaves_current_alone(docker_config: Path,
                                                      tmp_path: Path) -> None:
    context.create("cove", URL, "Cove")
    context.create("other", "unix:///o.sock", "other")
    context.use("other")
    context.remove("cove", tmp_path / "previous-context")
    assert context.current() == "other"
    assert not context.exists("cove") and context.exists("other")


def test_remove_missing_context_is_fine(docker_config: Path) -> None:
    context.remove("cove")
    assert context.current() == "default"
    assert not context.exists("cove")


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_use_keeps_config_json_private(docker_config: Path, umask_022: None) -> None:
    """config.json holds registry credentials ("auths"); docker keeps it 0600 and so must
    Cove when it rewrites the file (its temporary file is created with the umask)."""
    docker_config.mkdir()
    cfg = docker_config / "config.json"
    cfg.write_text(json.dumps({"auths": {"registry.example": {"auth": "dXNlcjpwYXNz"}}}))
    cfg.chmod(0o600)
    context.use("cove")
    assert _config(docker_config)["currentContext"] == "cove"
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600


def test_new_config_json_is_private(docker_config: Path, umask_022: None) -> None:
    context.use("cove")
    mode = stat.S_IMODE((docker_config / "config.json").stat().st_mode)
    assert mode & 0o077 == 0, oct(mode)


def test_use_writes_through_a_symlinked_config_json(docker_config: Path,
                                                    tmp_path: Path) -> None:
    """A config.json that is a symlink (dotfiles managers) stays one; docker's own
    writer follows the link, so Cove must not replace it with a plain file."""
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    target = dotfiles / "docker-config.json"
    target.write_text(json.dumps({"auths": {"ghcr.io": {}}}))
    docker_config.mkdir()
    (docker_config / "config.json").symlink_to(target)
    context.use("cove")
    assert (docker_config / "config.json").is_symlink()
    assert json.loads(target.read_text()) == {"auths": {"ghcr.io": {}},
                                              "currentContext": "cove"}
