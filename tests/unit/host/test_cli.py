"""The `cove` command line (desktop.cli), in-process, with no backend and no VM."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from desktop import cli, instance, lifecycle, settings


@pytest.fixture(autouse=True)
def cove_home(cove_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test: the shared temp COVE_HOME (tests/conftest.py), and no backend."""

    def no_backend(inst: instance.Instance) -> None:
        raise AssertionError("a failed `cove start` must not launch the backend")

    monkeypatch.setattr(lifecycle, "spawn_backend", no_backend)
    return cove_home


def _settings_file(home: Path, name: str = "default") -> Path:
    return home / name / "settings.json"


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got {lines}"
    assert lines[0].startswith("cove: error: ")
    return lines[0]


def test_start_cpus_zero_is_a_usage_error(cove_home: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["start", "--cpus", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "error:" in last and "--cpus" in last and "at least 1" in last
    assert not _settings_file(cove_home).exists()


@pytest.mark.parametrize("value", ["-1", "soon", "2000"])
def test_start_resource_saver_out_of_range_is_a_usage_error(
        cove_home: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["start", "--resource-saver", value])
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--resource-saver" in last and "minutes from 0 (never) to 1440" in last
    assert not _settings_file(cove_home).exists()


def test_start_cpus_not_a_number(cove_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["start", "--cpus", "four"])
    assert e.value.code == 2
    assert "'four' is not a whole number" in capsys.readouterr().err
    assert not _settings_file(cove_home).exists()


def test_start_too_many_cpus(cove_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["start", "--cpus", "64"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "cpus: 64 is more than this computer has (8)" in line
    assert not _settings_file(cove_home).exists()


def test_start_bad_memory(cove_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["start", "--memory", "10X"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "--memory" in line and "'10X'" in line
    assert not _settings_file(cove_home).exists()


@pytest.mark.parametrize(("flag", "value", "field"),
                         [("--memory", "256M", "memory"), ("--memory", "64G", "memory"),
                          ("--disk", "4G", "disk"), ("--disk", "10T", "disk")])
def test_start_out_of_range_sizes(cove_home: Path, capsys: pytest.CaptureFixture[str],
                                  flag: str, value: str, field: str) -> None:
    assert cli.main(["start", flag, value]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"cove: error: {field}: ")
    assert not _settings_file(cove_home).exists()


def test_start_bad_flags_leave_existing_settings_alone(
        cove_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inst = instance.Instance("default")
    inst.save_settings(settings.Settings(cpus=2, memory_mib=2048, disk_gib=64))
    before = inst.settings_file.read_bytes()
    mtime = inst.settings_file.stat().st_mtime_ns
    assert cli.main(["start", "--cpus", "2", "--memory", "10X"]) == 1
    assert cli.main(["start", "--cpus", "64"]) == 1
    capsys.readouterr()
    assert inst.settings_file.read_bytes() == before
    assert inst.settings_file.stat().st_mtime_ns == mtime


def test_start_disk_cannot_shrink(cove_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inst = instance.Instance("default")
    inst.save_settings(settings.Settings(cpus=2, memory_mib=2048, disk_gib=64))
    inst.data_disk.write_bytes(b"")  # the disk exists already
    before = inst.settings_file.read_bytes()
    assert cli.main(["start", "--disk", "32G"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "--disk" in line and "only grow" in line and "64G" in line
    assert inst.settings_file.read_bytes() == before


def test_start_invalid_settings_file(cove_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _settings_file(cove_home)
    f.parent.mkdir(parents=True)
    f.write_text('{"cpus": 2,')
    assert cli.main(["start", "--cpus", "3"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert str(f) in line and "not valid JSON" in line
    assert f.read_text() == '{"cpus": 2,'


@pytest.mark.parametrize(("name", "why"), [("../x", "is not allowed"), ("a/b", "is not allowed"),
                                         ("UPPER", "is not allowed"), ("images", "is reserved"),
                                         ("windows", "is reserved")])
def test_start_bad_instance_name(cove_home: Path, capsys: pytest.CaptureFixture[str],
                                 name: str, why: str) -> None:
    assert cli.main(["start", "--instance", name]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert f"instance name {name!r} {why}" in line
    assert not cove_home.exists()  # nothing created anywhere
    assert not (cove_home.parent / "x").exists()


def test_instance_from_env(cove_home: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COVE_INSTANCE", "work")
    assert cli.main(["status", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["instance"] == "work" and st["context"] == "cove-work"


def test_status_json_never_started(cove_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--json"]) == 0
    out = capsys.readouterr().out
    st = json.loads(out)
    assert st["state"] == "stopped"
    assert st["docker_host"] == f"unix://{cove_home / 'default' / 'docker.sock'}"
    assert st["instance"] == "default" and st["context"] == "cove"
    assert st["memory"] == settings.Settings().memory_mib * settings.MIB
    assert not _settings_file(cove_home).exists()  # status writes nothing


def test_status_text_never_started(cove_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "Cove (default): stopped"
    assert f"unix://{cove_home / 'default' / 'docker.sock'}" in out


def test_status_ignores_a_stale_pid_file(cove_home: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    folder = cove_home / "default"
    folder.mkdir(parents=True)
    (folder / "backend.pid").write_text("999999999 12345\n")  # no such process
    assert cli.main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "stopped"


def test_stop_when_not_running(cove_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["stop"]) == 0
    assert capsys.readouterr().out.strip() == "Cove (default) is not running"


@pytest.mark.parametrize("argv, save", [(["stop"], True), (["stop", "--power-off"], False),
                                        (["delete", "--force"], False)])
def test_stop_asks_for_a_save_and_power_off_or_delete_never(
        cove_home: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], save: bool) -> None:
    asked: list[bool] = []

    def stop_backend(inst: instance.Instance, timeout: float = 180,
                     save: bool = False) -> bool:
        asked.append(save)
        return True

    monkeypatch.setattr(lifecycle, "stop_backend", stop_backend)
    instance.Instance("default").ensure_folder()
    assert cli.main(argv) == 0
    assert asked == [save]


def test_status_says_a_saved_state_waits(cove_home: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    inst = instance.Instance("default")
    inst.ensure_folder()
    for name in ("saved.state", "saved.json"):
        inst.path(name).write_text("{}")
    assert cli.main(["status"]) == 0
    assert "its VM's state is saved: `cove start` resumes it" in capsys.readouterr().out
    inst.path("saved.json").unlink()  # a stream without its manifest is no saved state
    assert cli.main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["saved_state"] is False


def test_delete_missing_instance(cove_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["delete", "--force", "--instance", "nope"]) == 0
    assert "does not exist" in capsys.readouterr().out


def test_delete_without_terminal_needs_force(cove_home: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    inst = instance.Instance("work")
    inst.save_settings(settings.Settings(cpus=2))
    assert cli.main(["delete", "--instance", "work"]) == 1  # stdin is not a tty here
    assert "--force" in _one_error_line(capsys.readouterr().err)
    assert inst.settings_file.exists()
    assert cli.main(["delete", "--instance", "work", "--force"]) == 0
    assert not inst.folder.exists()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version"]) == 0
    from desktop import __version__

    assert capsys.readouterr().out.startswith(f"cove {__version__} ")


def test_image_unsupported_arch(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["image", "build", "--arch", "riscv64"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "riscv64" in err and "amd64" in err and "arm64" in err


# -- shares ------------------------------------------------------------------------------


def _saved_shares(home: Path) -> list:
    return json.loads(_settings_file(home).read_text())["shares"]


@pytest.fixture
def user_home(tmp_path: Path) -> Path:
    """The user's home (the default share), as a real folder."""
    h = tmp_path / "home"
    h.mkdir()
    return h


def test_shares_list_defaults(cove_home: Path, user_home: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["shares"]) == 0
    out = capsys.readouterr().out
    assert out.split() == [str(user_home), "auto"]
    assert cli.main(["shares", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"path": str(user_home), "transport": "auto", "mounted": False,
         "vm_path": str(user_home)}]
    assert not _settings_file(cove_home).exists()  # listing writes nothing


def test_shares_add(cove_home: Path, user_home: Path, tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    assert cli.main(["shares", "add", str(proj)]) == 0
    assert capsys.readouterr().out.strip() == f"{proj} is shared from the next start"
    assert _saved_shares(cove_home) == [str(user_home), str(proj)]
    data = tmp_path / "data"
    data.mkdir()
    assert cli.main(["shares", "add", str(data), "--transport", "9p", "--restart"]) == 0
    capsys.readouterr()
    assert _saved_shares(cove_home) == [str(user_home), str(proj),
                                        {"path": str(data), "transport": "9p"}]
    assert cli.main(["shares", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"path": str(user_home), "transport": "auto", "mounted": False,
         "vm_path": str(user_home)},
        {"path": str(proj), "transport": "auto", "mounted": False, "vm_path": str(proj)},
        {"path": str(data), "transport": "9p", "mounted": False, "vm_path": str(data)}]
    assert cli.main(["shares", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split() for ln in lines] == [[str(user_home), "auto"], [str(proj), "auto"],
                                            [str(data), "9p"]]


def test_shares_add_normalizes_the_path(cove_home: Path, user_home: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "proj" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "proj")
    assert cli.main(["shares", "add", "sub/"]) == 0
    assert cli.main(["shares", "add", "~/../proj/./sub"]) == 0  # the same folder
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{tmp_path}/proj/sub is shared from the next start",
                   f"{tmp_path}/proj/sub is already shared"]
    assert _saved_shares(cove_home) == [str(user_home), f"{tmp_path}/proj/sub"]


def test_shares_add_already_shared_changes_nothing(cove_home: Path, user_home: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    inst = instance.Instance("default")
    inst.save_settings(settings.Settings(shares=[{"path": str(user_home),
                                                  "transport": "9p"}]))
    before = inst.settings_file.read_bytes()
    mtime = inst.settings_file.stat().st_mtime_ns
    assert cli.main(["shares", "add", str(user_home), "--transport", "virtiofs"]) == 0
    assert capsys.readouterr().out.strip() == f"{user_home} is already shared"
    assert inst.settings_file.read_bytes() == before
    assert inst.settings_file.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("what", ["missing", "file"])
def test_shares_add_refuses_what_is_not_a_folder(cove_home: Path, user_home: Path,
                                                 tmp_path: Path, what: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "target"
    if what == "file":
        target.write_text("x")
    assert cli.main(["shares", "add", str(target)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line == f"cove: error: {target} is not a folder on this computer"
    assert not _settings_file(cove_home).exists()


def test_shares_add_nested_refused_both_ways(cove_home: Path, user_home: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = user_home / "code"
    code.mkdir()
    # Inside the home folder, which is shared by default.
    assert cli.main(["shares", "add", str(code)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line == (f"cove: error: shares: {code} is inside {user_home}, which is shared "
                    "too; keep only one of them")
    assert not _settings_file(cove_home).exists()
    # The other way: a folder holding one that is shared.
    inst = instance.Instance("default")
    inst.save_settings(settings.Settings(shares=[str(code)]))
    before = inst.settings_file.read_bytes()
    assert cli.main(["shares", "add", str(user_home)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert f"{code} is inside {user_home}" in line
    assert inst.settings_file.read_bytes() == before


def test_shares_add_a_vm_folder_refused(cove_home: Path, user_home: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["shares", "add", "/etc"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "/etc overlaps the VM's own /etc" in line
    assert not _settings_file(cove_home).exists()


def test_shares_remove(cove_home: Path, user_home: Path, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    inst = instance.Instance("default")
    inst.save_settings(settings.Settings(shares=[str(user_home),
                                                 {"path": str(data), "transport": "9p"}]))
    # A shared folder that is gone from the computer can still be removed.
    assert cli.main(["shares", "remove", str(data)]) == 0
    assert capsys.readouterr().out.strip() == f"{data} is no longer shared from the next start"
    assert _saved_shares(cove_home) == [str(user_home)]
    assert cli.main(["shares", "remove", str(user_home) + "/"]) == 0
    capsys.readouterr()
    assert _saved_shares(cove_home) == []
    assert cli.main(["shares"]) == 0
    assert capsys.readouterr().out.strip() == (
        "No folder is shared with the VM (add one: cove shares add PATH)")
    assert cli.main(["shares", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_shares_remove_not_shared(cove_home: Path, user_home: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["shares", "remove", str(tmp_path)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line == (f"cove: error: {tmp_path} is not shared; shared folders: {user_home}")
    instance.Instance("default").save_settings(settings.Settings(shares=[]))
    assert cli.main(["shares", "remove", str(tmp_path)]) == 1
    assert _one_error_line(capsys.readouterr().err).endswith("shared folders: none")


@pytest.mark.parametrize("action", ["add", "remove"])
def test_shares_needs_a_path(cove_home: Path, action: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["shares", action]) == 1
    assert _one_error_line(capsys.readouterr().err) == (
        f"cove: error: cove shares {action} needs a folder path")


def test_shares_restart_flags_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["shares", "add", "/srv", "--restart", "--no-restart"])
    assert e.value.code == 2
    capsys.readouterr()


def test_shares_with_invalid_settings_file(cove_home: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    f = _settings_file(cove_home)
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps({"shares": ["relative/path"]}))
    assert cli.main(["shares"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "'relative/path' is not an absolute path" in line
    assert json.loads(f.read_text()) == {"shares": ["relative/path"]}


def test_start_arch_cannot_change_once_the_disk_exists(
        cove_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inst = instance.Instance("default")
    inst.save_settings(settings.Settings(arch="amd64"))
    inst.data_disk.write_bytes(b"")  # images and containers for amd64 live here
    assert cli.main(["start", "--arch", "arm64"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "--arch" in line and "amd64" in line and "cove delete" in line
    assert json.loads(_settings_file(cove_home).read_text())["arch"] == "amd64"


def test_start_arch_is_kept_for_a_new_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    inst = instance.Instance("arm")
    args = cli.build_parser().parse_args(["start", "-i", "arm", "--arch", "arm64"])
    assert cli._apply_flags(inst, args) is True
    assert inst.load_settings().arch == "arm64"


@pytest.mark.parametrize(("machine", "arch"), [("x86_64", "amd64"), ("arm64", "arm64"),
                                               ("aarch64", "arm64"), ("AMD64", "amd64")])
def test_default_arch_follows_the_host(monkeypatch: pytest.MonkeyPatch, machine: str,
                                       arch: str) -> None:
    import platform

    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert settings.default_arch() == arch
    assert settings.Settings().arch == arch


# -- cove engine -------------------------------------------------------------------------


def _fake_switcher(monkeypatch: pytest.MonkeyPatch, system: str = "Windows") -> Any:
    from tests.helpers.windows_fakes import FakeWindowsHost, switcher

    host = FakeWindowsHost(system=system)
    home = instance.cove_home()
    sock = home / "default" / "docker.sock"
    monkeypatch.setattr(cli, "engine_switcher", lambda inst: switcher(home, host, sock))
    return host


def test_engine_use_windows_refused_on_linux(cove_home: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_switcher(monkeypatch, system="Linux")
    assert cli.main(["engine", "use", "windows"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "cove: error: Windows containers need a Windows host; this is Linux"
    assert not (cove_home / "engine.json").exists()


def test_engine_use_windows_and_status(cove_home: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    host = _fake_switcher(monkeypatch)
    assert cli.main(["engine", "use", "windows"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("engine: windows (native dockerd.exe), Docker 27.3.1; docker "
                          "context 'cove' points at npipe:////./pipe/cove_windows_engine")
    assert "the linux engine was left running" in out
    assert host.service == "running"
    assert cli.main(["engine", "status", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert (st["mode"], st["running"], st["version"]) == ("windows", True, "27.3.1")
    assert st["others"][0]["mode"] == "linux" and st["others"][0]["running"] is False
    assert cli.main(["engine", "status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "engine: windows (native dockerd.exe), running (Docker 27.3.1)"
    assert lines[-1] == "  also:     linux (the Cove VM), not running"
    # `cove status` says which engine is active, in text and JSON.
    assert cli.main(["status"]) == 0
    assert "  engine:  windows (native dockerd.exe)" in capsys.readouterr().out.splitlines()
    assert cli.main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["engine"] == "windows"


def test_engine_use_dockerd_path_is_saved(cove_home: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    host = _fake_switcher(monkeypatch)
    host.files = {r"E:\bin\dockerd.exe"}
    assert cli.main(["engine", "use", "windows", "--dockerd", r"E:\bin\dockerd.exe"]) == 0
    saved = json.loads((cove_home / "windows" / "settings.json").read_text())
    assert saved["dockerd"] == r"E:\bin\dockerd.exe"
    assert host.binpath.startswith(r"E:\bin\dockerd.exe --run-service")
    assert cli.main(["engine", "use", "linux", "--dockerd", "x"]) == 1
    assert "--dockerd is for the windows engine" in capsys.readouterr().err


def test_engine_use_needs_a_mode(cove_home: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_switcher(monkeypatch)
    assert cli.main(["engine", "use"]) == 1
    assert "needs an engine: linux or windows" in _one_error_line(capsys.readouterr().err)


def test_status_shows_the_linux_engine_by_default(cove_home: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status"]) == 0
    assert "  engine:  linux (the Cove VM)" in capsys.readouterr().out.splitlines()
    assert cli.main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["engine"] == "linux"


def test_status_survives_a_corrupt_engine_json(cove_home: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    cove_home.mkdir(parents=True)
    (cove_home / "engine.json").write_text("{oops")
    assert cli.main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["engine"] == "unknown"
    assert cli.main(["status"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if "engine:" in ln][0]
    assert "unknown" in line and "engine.json is not valid JSON" in line
    assert (cove_home / "engine.json").read_text() == "{oops"


def test_setup_hyperv_refused_off_windows(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["setup", "hyperv"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "Windows hosts with Hyper-V" in line and "QEMU" in line


def test_shares_add_stores_the_normal_form_and_finds_it_again(
        cove_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    (tmp_path / "t").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "t"))  # the default share
    assert cli.main(["shares", "add", str(folder) + "/", "--no-restart"]) == 0
    assert cli.main(["shares", "add", str(folder) + "/./", "--no-restart"]) == 0
    assert "already shared" in capsys.readouterr().out
    assert cli.main(["shares", "remove", str(folder) + "//", "--no-restart"]) == 0
    assert str(folder) not in instance.Instance("default").load_settings().shares


def test_shares_list_says_where_and_why_not(cove_home: Path, user_home: Path,
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A running VM's shares: where each is in the VM, and why one is not mounted."""
    docs = tmp_path / "docs"
    docs.mkdir()
    assert cli.main(["shares", "add", str(docs), "--transport", "link", "--no-restart"]) == 0
    capsys.readouterr()
    status = {"state": "running", "shares": [
        {"path": str(user_home), "transport": "link", "vm_path": "/mnt/host/c/Users/me"},
        {"path": str(docs), "transport": "link", "vm_path": str(docs),
         "error": "no fs 1 stream came from the host"}]}
    monkeypatch.setattr(lifecycle, "status_of", lambda inst: status)
    assert cli.main(["shares", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"path": str(user_home), "transport": "link", "mounted": True,
         "vm_path": "/mnt/host/c/Users/me"},
        {"path": str(docs), "transport": "link", "mounted": False, "vm_path": str(docs),
         "error": "no fs 1 stream came from the host"}]
    assert cli.main(["shares", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [str(user_home), "mounted", "(link)", "at",
                                "/mnt/host/c/Users/me", "in", "the", "VM"]
    assert lines[1].split()[:3] == [str(docs), "not", "mounted"]
    assert lines[1].endswith("(link): no fs 1 stream came from the host")


def test_a_closed_stdout_ends_quietly(cove_home: Path) -> None:
    """`cove status | head -1`: the reader went before the output; no traceback."""
    import os
    import subprocess
    import sys

    from tests.helpers.paths import REPO

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "desktop", "status"], stdout=write_end,
                              stderr=subprocess.PIPE, cwd=REPO, timeout=60,
                              env={**os.environ, "COVE_HOME": str(cove_home)})
    finally:
        os.close(write_end)
    assert b"Traceback" not in proc.stderr and b"BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == 141


def test_delete_goes_on_when_config_json_is_unreadable(cove_home: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    settings.Settings()  # the defaults are valid here
    instance.Instance("default").ensure_folder()
    cfg = tmp_path / "docker" / "config.json"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_bytes(b"{broken")
    assert cli.main(["delete", "--force"]) == 0
    err = capsys.readouterr().err
    assert "note: the docker context 'cove' was not removed" in err and str(cfg) in err
    assert cfg.read_bytes() == b"{broken"
    assert not instance.Instance("default").exists()


def test_shell_and_ports_work_while_degraded(cove_home: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A wedged engine is exactly when a shell in the VM is needed."""
    from desktop import ssh

    status = {"state": "degraded", "ssh_port": 2222, "ports": [
        {"host_port": 8080, "host_addresses": ["127.0.0.1"], "guest_port": 8080,
         "proto": "tcp", "container": "web", "state": "forwarding", "reason": ""}]}
    monkeypatch.setattr(lifecycle, "status_of", lambda inst: status)
    ran: list[tuple[int, str]] = []
    monkeypatch.setattr(ssh, "run", lambda folder, port, cmd, **kw: ran.append((port, cmd)) or 0)
    assert cli.main(["shell", "pkill", "-CONT", "-x", "dockerd"]) == 0
    assert ran == [(2222, "pkill -CONT -x dockerd")]
    assert cli.main(["ports"]) == 0
    assert "127.0.0.1:8080" in capsys.readouterr().out
    status["state"] = "stopped"
    assert cli.main(["shell", "true"]) == 1


def test_status_says_the_data_disk_is_full_and_how_to_grow_it(
        cove_home: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    status = {"state": "running", "instance": "default", "docker_host": "unix:///x",
              "context": "cove", "cpus": 2, "memory": 2**31, "disk": 8 * 2**30,
              "data_disk": {"size": 8 * 2**30, "free": 50 * 2**20, "level": "full"}}
    monkeypatch.setattr(lifecycle, "status_of", lambda inst: status)
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert "the data disk is full" in out and "no space left on device" in out
    assert "cove start --disk 16G, then cove restart" in out
    status["data_disk"] = {"size": 8 * 2**30, "free": 6 * 2**30, "level": "ok"}
    assert cli.main(["status"]) == 0
    assert "data disk" not in capsys.readouterr().out
