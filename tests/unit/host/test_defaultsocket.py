"""The default Docker socket (desktop.platform.defaultsocket and `cove setup
default-socket`), on real unix sockets and symlinks in a temporary folder standing in for
/var/run: Cove takes the path only when no engine answers there, and gives back only its
own link."""

from __future__ import annotations

import json
import os
import pwd
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from desktop import cli, instance, lifecycle
from desktop.platform import defaultsocket

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="unix sockets")


class Engine:
    """A listening unix socket (an engine's API socket, ours or another's)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)

    def close(self) -> None:  # the socket file stays, as a killed engine leaves it
        self.sock.close()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "var-run"
    d.mkdir()
    return d


@pytest.fixture
def ours(tmp_path: Path) -> Iterator[Engine]:
    e = Engine(tmp_path / "docker.sock")
    yield e
    e.close()


def _connects(path: Path) -> bool:
    return defaultsocket._answers(str(path))


def test_an_absent_default_socket_is_made_a_link_to_ours(run_dir: Path, ours: Engine) -> None:
    path = run_dir / "docker.sock"
    assert defaultsocket.claim(ours.path, path) == f"{path} now points at {ours.path}"
    assert path.is_symlink() and os.readlink(path) == str(ours.path)
    assert defaultsocket.points_at(ours.path, path) and _connects(path)
    assert defaultsocket.claim(ours.path, path) == f"{path} already points at {ours.path}"
    assert sorted(p.name for p in run_dir.iterdir()) == ["docker.sock"]  # no temporary left


def test_a_link_to_nothing_is_replaced_and_said(run_dir: Path, ours: Engine,
                                                tmp_path: Path) -> None:
    path = run_dir / "docker.sock"
    path.symlink_to(tmp_path / "gone" / "docker.sock")  # an uninstalled product's link
    said = defaultsocket.claim(ours.path, path)
    assert said == (f"{path} now points at {ours.path} (it was a link to "
                    f"{tmp_path / 'gone' / 'docker.sock'} (nothing answers))")
    assert defaultsocket.points_at(ours.path, path)


def test_a_link_to_an_engine_that_answers_is_never_taken(run_dir: Path, ours: Engine,
                                                         tmp_path: Path) -> None:
    other = Engine(tmp_path / "other.sock")
    try:
        path = run_dir / "docker.sock"
        path.symlink_to(other.path)
        with pytest.raises(defaultsocket.DefaultSocketError) as e:
            defaultsocket.claim(ours.path, path)
        assert str(e.value) == (
            f"{path} is a link to {other.path} (an engine answers there): another engine "
            f"serves it; quit that engine (or remove the link: sudo rm {path}) and run "
            "this again")
        assert os.readlink(path) == str(other.path)
    finally:
        other.close()


@pytest.mark.parametrize("alive", [True, False])
def test_a_socket_file_is_never_taken(run_dir: Path, ours: Engine, alive: bool) -> None:
    """The host's own dockerd (or one killed, whose socket file stayed): its path."""
    path = run_dir / "docker.sock"
    engine = Engine(path)
    if not alive:
        engine.close()
    try:
        with pytest.raises(defaultsocket.DefaultSocketError) as e:
            defaultsocket.claim(ours.path, path)
        what = "a socket an engine answers on" if alive else "a socket nothing answers on"
        assert str(e.value) == (
            f"{path} is {what}: Cove does not take it from another engine; stop that "
            f"engine, or remove the socket yourself (sudo rm {path}), and run this again")
        assert not path.is_symlink() and path.exists()
    finally:
        engine.close()


def test_a_file_that_is_not_a_socket_is_left(run_dir: Path, ours: Engine) -> None:
    path = run_dir / "docker.sock"
    path.write_text("notes")
    with pytest.raises(defaultsocket.DefaultSocketError, match="a file that is not a "
                       "socket: Cove leaves it as it is"):
        defaultsocket.claim(ours.path, path)
    assert path.read_text() == "notes"


def test_a_folder_only_root_may_write_names_sudo(run_dir: Path, ours: Engine,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """As a user, symlink(2) into root's /var/run fails with EACCES."""
    def symlink(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(defaultsocket.os, "symlink", symlink)
    path = run_dir / "docker.sock"
    with pytest.raises(defaultsocket.DefaultSocketError) as e:
        defaultsocket.claim(ours.path, path)
    assert str(e.value) == (f"cannot write {path} (Permission denied): it is root's; run it "
                            "as root (sudo cove setup default-socket)")
    assert not os.path.lexists(path)


def test_release_removes_only_our_link(run_dir: Path, ours: Engine, tmp_path: Path) -> None:
    path = run_dir / "docker.sock"
    path.symlink_to(tmp_path / "other.sock")
    assert defaultsocket.release(ours.path, path) is False and path.is_symlink()
    path.unlink()
    assert defaultsocket.release(ours.path, path) is False  # nothing there
    defaultsocket.claim(ours.path, path)
    assert defaultsocket.release(ours.path, path) is True and not os.path.lexists(path)


def test_release_that_only_root_may_do_says_how(run_dir: Path, ours: Engine,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = run_dir / "docker.sock"
    defaultsocket.claim(ours.path, path)

    def unlink(p: object) -> None:
        raise PermissionError(13, "Permission denied", str(p))

    monkeypatch.setattr(defaultsocket.os, "unlink", unlink)
    with pytest.raises(defaultsocket.DefaultSocketError) as e:
        defaultsocket.release(ours.path, path)
    assert str(e.value) == (f"{path} still points at {ours.path}, which is gone: remove it "
                            f"as root (sudo rm {path}); Permission denied")


# -- the command line ----------------------------------------------------------------------


@pytest.fixture
def default_socket(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = run_dir / "docker.sock"
    monkeypatch.setattr(defaultsocket, "DEFAULT_SOCKET", path)
    monkeypatch.delenv("SUDO_USER", raising=False)
    return path


def test_setup_asks_first_and_delete_takes_it_back(
        cove_home: Path, default_socket: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    inst = instance.Instance("default")
    inst.ensure_folder()
    engine = Engine(inst.docker_socket)
    try:
        # No terminal to ask, no --force: refused, nothing made.
        assert cli.main(["setup", "default-socket"]) == 1
        err = capsys.readouterr().err
        assert "Point " + str(default_socket) in err and "add --force" in err
        assert not os.path.lexists(default_socket)
        assert cli.main(["setup", "default-socket", "--force"]) == 0
        out = capsys.readouterr().out
        assert f"{default_socket} now points at {inst.docker_socket}" in out
        assert _connects(default_socket)
        # `cove status` says which default paths Cove serves.
        assert cli.main(["status"]) == 0
        assert f"default: {default_socket}" in capsys.readouterr().out
        assert cli.main(["status", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["default_paths"] == [str(default_socket)]
        # A reset keeps it (the same socket path after); a delete takes it back.
        lifecycle.reset_instance(inst)
        assert defaultsocket.points_at(inst.docker_socket)
    finally:
        engine.close()
    assert cli.main(["delete", "--force"]) == 0
    assert not os.path.lexists(default_socket)
    assert cli.main(["status"]) == 0
    assert "default: none (cove setup default-socket)" in capsys.readouterr().out


def test_setup_of_an_instance_that_does_not_exist(cove_home: Path, default_socket: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["setup", "default-socket", "--instance", "nope", "--force"]) == 1
    assert "Cove (nope) does not exist; start it first" in capsys.readouterr().err
    assert not os.path.lexists(default_socket)


def test_remove_leaves_another_engines_path(cove_home: Path, default_socket: Path,
                                            tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    default_socket.symlink_to(tmp_path / "someone-elses.sock")
    assert cli.main(["setup", "default-socket", "--remove"]) == 0
    assert "does not point at Cove (default): left as it is" in capsys.readouterr().out
    assert default_socket.is_symlink()


def test_under_sudo_the_invoking_users_instance_is_meant(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`sudo cove setup default-socket`: HOME is root's, SUDO_USER the user's; the link
    must reach the user's socket. COVE_HOME, when set, still decides."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("SUDO_USER", "someone")
    monkeypatch.delenv("COVE_HOME", raising=False)

    class Entry:
        pw_dir = str(tmp_path / "home" / "someone")

    monkeypatch.setattr(pwd, "getpwnam", lambda name: Entry if name == "someone" else
                        (_ for _ in ()).throw(KeyError(name)))
    args = cli.build_parser().parse_args(["setup", "default-socket"])
    inst = cli._invoking_users_instance(args)
    assert inst.docker_socket == tmp_path / "home/someone/.cove/default/docker.sock"
    monkeypatch.setenv("SUDO_USER", "ghost")
    with pytest.raises(cli.CliError, match="SUDO_USER 'ghost' is not a user here"):
        cli._invoking_users_instance(args)
    monkeypatch.setenv("COVE_HOME", str(tmp_path / "ch"))
    assert cli._invoking_users_instance(args).docker_socket == \
        tmp_path / "ch/default/docker.sock"
