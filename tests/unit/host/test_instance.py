"""Instance folders (desktop.instance), settings (desktop.settings), the pid file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from desktop import instance, pidfile, settings
from desktop.instance import Instance
from desktop.platform.sockets import NotASocketError, remove_socket
from desktop.settings import GIB, MIB, Settings, SettingsError


@pytest.fixture(autouse=True)
def fixed_host(fixed_host: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every test: the shared fixed host (8 CPUs, 16 GiB; tests/conftest.py) and a temp
    COVE_HOME (only that: HOME and the rest of the environment are the test's own)."""
    monkeypatch.setenv("COVE_HOME", str(tmp_path / "cove"))


posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX folder modes")


# -- sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("4G", 4 * GIB),
        ("4g", 4 * GIB),
        ("4GiB", 4 * GIB),
        ("4GB", 4 * GIB),
        ("512M", 512 * MIB),
        ("512MiB", 512 * MIB),
        ("2048", 2048 * MIB),  # no unit: the default unit (MiB)
        (" 1.5G ", int(1.5 * GIB)),
        ("1T", 2**40),
        ("1024K", MIB),
        (3, 3 * MIB),
    ],
)
def test_parse_size(value: str | int, expected: int) -> None:
    assert settings.parse_size(value, "--memory") == expected


def test_parse_size_other_default_unit() -> None:
    assert settings.parse_size("64", "--disk", GIB) == 64 * GIB
    assert settings.parse_size("512M", "--disk", GIB) == 512 * MIB  # explicit unit wins


@pytest.mark.parametrize("value", ["10X", "", "G", "-4G", "4 G B", "four", "4GG", "0x10"])
def test_parse_size_errors_name_the_flag(value: str) -> None:
    with pytest.raises(SettingsError, match="^--memory: ") as e:
        settings.parse_size(value, "--memory")
    assert repr(value) in str(e.value)
    assert "4G" in str(e.value)  # and shows what a size looks like


# -- settings ----------------------------------------------------------------------------


def test_default_settings_are_valid() -> None:
    s = Settings()
    s.validate()
    assert 1 <= s.cpus <= 4
    assert s.memory_mib == 8192  # half of 16 GiB, at most 8 GiB
    assert s.arch == "amd64" and s.disk_gib == 64


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"cpus": 0}, "cpus"),
        ({"cpus": -2}, "cpus"),
        ({"cpus": 9}, "cpus"),  # more than the host's 8
        ({"cpus": 2.5}, "cpus"),
        ({"cpus": True}, "cpus"),
        ({"cpus": "4"}, "cpus"),
        ({"memory_mib": 256}, "memory"),
        ({"memory_mib": 16 * 1024 + 1}, "memory"),  # more than the host has
        ({"memory_mib": "4G"}, "memory"),
        ({"disk_gib": 4}, "disk"),
        ({"disk_gib": 5000}, "disk"),
        ({"disk_gib": 64.5}, "disk"),
        ({"arch": "riscv64"}, "arch"),
        ({"arch": "x86_64"}, "arch"),
        ({"engine_config": ["not", "an", "object"]}, "engine_config"),
        ({"expose_ports_on_all_interfaces": "yes"}, "expose_ports_on_all_interfaces"),
        ({"containers_reach_host_loopback": 0}, "containers_reach_host_loopback"),
        ({"shares": "/home"}, "shares"),
        ({"shares": ["/home", 3]}, "shares"),
        ({"resource_saver_minutes": -1}, "resource_saver_minutes"),
        ({"resource_saver_minutes": 1441}, "resource_saver_minutes"),
        ({"resource_saver_minutes": True}, "resource_saver_minutes"),
        ({"resource_saver_minutes": "5"}, "resource_saver_minutes"),
        ({"resource_saver_minutes": float("nan")}, "resource_saver_minutes"),
    ],
)
def test_validate_names_the_field(changes: dict, field: str) -> None:
    s = Settings(**changes)
    with pytest.raises(SettingsError, match=f"^{field}: "):
        s.validate()


def test_validate_limits_say_what_the_host_has() -> None:
    with pytest.raises(SettingsError, match=r"more than this computer has \(8\)"):
        Settings(cpus=9).validate()
    with pytest.raises(SettingsError, match=r"16384 MiB"):
        Settings(memory_mib=20000).validate()


def test_validate_accepts_the_edges() -> None:
    Settings(cpus=8, memory_mib=16 * 1024, disk_gib=4096, arch="arm64").validate()
    Settings(cpus=1, memory_mib=512, disk_gib=8).validate()


def test_from_json_round_trip() -> None:
    s = Settings(cpus=2, memory_mib=4096, disk_gib=100, arch="arm64",
                 engine_config={"features": {"buildkit": True}}, shares=["/src"])
    again = Settings.from_json(json.loads(json.dumps(s.to_json())))
    assert again == s


def test_from_json_unknown_fields_named() -> None:
    with pytest.raises(SettingsError) as e:
        Settings.from_json({"cpus": 2, "memroy_mib": 4096, "zzz": 1}, "settings.json")
    msg = str(e.value)
    assert msg.startswith("settings.json: ")
    assert "'memroy_mib'" in msg
    assert "memory_mib" in msg  # lists the known fields so the typo is easy to see


@pytest.mark.parametrize("data", [[], "cpus", 3, None])
def test_from_json_not_an_object(data: object) -> None:
    with pytest.raises(SettingsError, match="must be a JSON object"):
        Settings.from_json(data)


def test_from_json_validates() -> None:
    with pytest.raises(SettingsError, match="^cpus: "):
        Settings.from_json({"cpus": 0})


# -- instance names and folders ----------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "work", "a", "dev-2", "x_y", "0abc", "a" * 31])
def test_valid_names(name: str) -> None:
    home = Path("/nonexistent-cove-home")  # short, so the socket paths fit
    inst = Instance(name, home)
    assert inst.folder == home / name
    assert inst.settings_file == home / name / "settings.json"
    assert inst.docker_socket == home / name / "docker.sock"
    assert not inst.exists()


@pytest.mark.parametrize(
    "name",
    ["a/b", "..", ".", "", "UPPER", "Work", "images", "windows", "-x", "_x", "a b", "a" * 32,
     "../x", "x/..", "é", "a\x00", "a\nb"],
)
def test_invalid_names(name: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    with pytest.raises(SettingsError, match="instance name") as e:
        Instance(name, home)
    assert repr(name) in str(e.value)
    assert not home.exists()  # nothing was created


def test_name_with_trailing_newline_refused(tmp_path: Path) -> None:
    """`$` in NAME_RE also matches before a final newline, so "default\\n" slipped through
    and would name a folder (and a docker context) with a newline in it."""
    for name in ("default\n", "work\n"):
        with pytest.raises(SettingsError, match="instance name"):
            Instance(name, tmp_path)
    (tmp_path / "work\n").mkdir()
    assert instance.list_instances(tmp_path) == []


def test_context_names(tmp_path: Path) -> None:
    assert Instance("default", tmp_path).context_name == "cove"
    assert Instance("work", tmp_path).context_name == "cove-work"


def test_home_from_env(tmp_path: Path) -> None:
    assert Instance().folder == tmp_path / "cove" / "default"


def test_a_long_home_is_refused_at_start_not_at_every_command(tmp_path: Path) -> None:
    """`cove status` and `cove delete` work whatever the length; `cove start` refuses
    (tests/unit/host/test_socket_paths.py), and Windows has no socket files at all."""
    home = tmp_path / ("d" * 120)
    assert Instance("default", home).folder == home / "default"


def test_save_and_load_settings(tmp_path: Path) -> None:
    inst = Instance("work", tmp_path)
    assert inst.load_settings() == Settings()  # no file: the defaults
    assert not inst.exists()
    s = Settings(cpus=3, memory_mib=3072, disk_gib=80)
    inst.save_settings(s)
    assert inst.exists()
    assert inst.folder.stat().st_mode & 0o777 == 0o700
    assert inst.load_settings() == s
    assert json.loads(inst.settings_file.read_text())["cpus"] == 3
    assert not list(inst.folder.glob("*.tmp"))


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


@posix_only
def test_home_and_instance_folder_are_made_private(tmp_path: Path) -> None:
    """Made 0700 whatever the umask, so no other user reads the logs or ssh_config, nor
    connects to the sockets made in them."""
    old = os.umask(0)
    try:
        inst = Instance("work", tmp_path / "home")
        inst.ensure_folder()
    finally:
        os.umask(old)
    assert (_mode(inst.home), _mode(inst.folder)) == (0o700, 0o700)


@posix_only
def test_existing_loose_folders_are_narrowed_to_0700(tmp_path: Path) -> None:
    inst = Instance("work", tmp_path / "home")
    inst.folder.mkdir(parents=True)
    inst.home.chmod(0o755)
    inst.folder.chmod(0o777)
    (inst.folder / "backend.log").write_text("kept\n")
    inst.ensure_folder()
    assert (_mode(inst.home), _mode(inst.folder)) == (0o700, 0o700)
    assert (inst.folder / "backend.log").read_text() == "kept\n"


@posix_only
def test_a_folder_of_another_user_is_refused_and_left_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inst = Instance("work", tmp_path / "home")
    inst.home.mkdir()
    inst.home.chmod(0o755)
    owner = inst.home.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
    with pytest.raises(SettingsError) as e:
        inst.ensure_folder()
    assert str(inst.home) in str(e.value) and "another user" in str(e.value)
    assert "chown" in str(e.value) and "COVE_HOME" in str(e.value)
    assert _mode(inst.home) == 0o755
    assert not inst.folder.exists()


@posix_only
def test_a_shared_sticky_folder_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(SettingsError, match="every user shares"):
        Instance("work", shared).ensure_folder()
    assert _mode(shared) == 0o1777


def test_save_settings_refuses_invalid(tmp_path: Path) -> None:
    inst = Instance("work", tmp_path)
    inst.save_settings(Settings(cpus=2))
    before = inst.settings_file.read_bytes()
    with pytest.raises(SettingsError, match="cpus"):
        inst.save_settings(Settings(cpus=0))
    assert inst.settings_file.read_bytes() == before


@pytest.mark.parametrize("text", ['{"cpus": 2,', "not json", '{"cpus": 2} trailing',
                                  "[" * 100_000])  # nested past the parser (fuzzing found it)
def test_load_settings_invalid_json(tmp_path: Path, text: str) -> None:
    inst = Instance("default", tmp_path)
    inst.ensure_folder()
    inst.settings_file.write_text(text)
    mtime = inst.settings_file.stat().st_mtime_ns
    with pytest.raises(SettingsError) as e:
        inst.load_settings()
    assert str(inst.settings_file) in str(e.value)
    assert "not valid JSON" in str(e.value)
    assert inst.settings_file.read_text() == text
    assert inst.settings_file.stat().st_mtime_ns == mtime


def test_load_settings_invalid_values_name_the_file(tmp_path: Path) -> None:
    inst = Instance("default", tmp_path)
    inst.ensure_folder()
    inst.settings_file.write_text('{"cpus": 4, "colour": "blue"}')
    with pytest.raises(SettingsError, match="'colour'") as e:
        inst.load_settings()
    assert str(inst.settings_file) in str(e.value)


@pytest.mark.parametrize("text, field", [('{"cpus": 0}', "cpus"), ('{"disk_gib": 1}', "disk"),
                                         ('{"shares": ["rel"]}', "shares")])
def test_load_settings_a_bad_value_names_the_file_and_the_field(
        tmp_path: Path, text: str, field: str) -> None:
    """Not only the field: without the file, "cpus: 0 must be..." reads like a flag's
    error (found by fuzzing the settings file)."""
    inst = Instance("default", tmp_path)
    inst.ensure_folder()
    inst.settings_file.write_text(text)
    with pytest.raises(SettingsError) as e:
        inst.load_settings()
    assert str(e.value).startswith(f"{inst.settings_file}: {field}")


def test_list_instances(tmp_path: Path) -> None:
    assert instance.list_instances(tmp_path / "none") == []
    for name in ("work", "default", "images", "windows", "Bad", ".hidden"):
        (tmp_path / name).mkdir()
    (tmp_path / "afile").write_text("")
    assert instance.list_instances(tmp_path) == ["default", "work"]


# -- sockets -----------------------------------------------------------------------------


def test_remove_socket_refuses_a_regular_file(tmp_path: Path) -> None:
    f = tmp_path / "docker.sock"
    f.write_text("precious")
    with pytest.raises(NotASocketError, match="not a socket"):
        remove_socket(f)
    assert f.read_text() == "precious"


def test_remove_socket_refuses_a_folder_and_a_symlink(tmp_path: Path) -> None:
    d = tmp_path / "dir.sock"
    d.mkdir()
    with pytest.raises(NotASocketError):
        remove_socket(d)
    assert d.is_dir()
    # A symlink to a socket is not itself a socket: it stays.
    real = tmp_path / "real.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(real))
    link = tmp_path / "link.sock"
    link.symlink_to(real)
    with pytest.raises(NotASocketError):
        remove_socket(link)
    assert link.is_symlink() and real.exists()


def test_remove_socket_removes_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
    assert path.exists()
    remove_socket(path)
    assert not path.exists()
    remove_socket(path)  # already gone: fine


# -- pid file ----------------------------------------------------------------------------


def test_pidfile_current_process(tmp_path: Path) -> None:
    path = tmp_path / "backend.pid"
    pidfile.write(path)
    assert pidfile.read_live(path) == os.getpid()
    pid_s, start = path.read_text().split()
    assert pid_s == str(os.getpid()) and start == pidfile.process_start_time(os.getpid())
    assert not list(tmp_path.glob("*.tmp"))


def test_pidfile_wrong_start_time_is_stale(tmp_path: Path) -> None:
    path = tmp_path / "backend.pid"
    start = pidfile.process_start_time(os.getpid())
    assert start
    # The same pid with another start time: the pid was reused by another process.
    path.write_text(f"{os.getpid()} {int(start) + 1}\n")
    assert pidfile.read_live(path) is None


def test_pidfile_dead_process_is_stale(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    start = pidfile.process_start_time(proc.pid)
    path = tmp_path / "backend.pid"
    pidfile.write(path, proc.pid)
    proc.wait()
    assert pidfile.process_start_time(proc.pid) == ""
    assert pidfile.read_live(path) is None
    assert start != ""


@pytest.mark.parametrize("text", ["", "garbage", "12", "0 123", "-5 1", "1 2 3", "abc def"])
def test_pidfile_unreadable_is_stale(tmp_path: Path, text: str) -> None:
    path = tmp_path / "backend.pid"
    path.write_text(text)
    assert pidfile.read_live(path) is None
    assert pidfile.read_live(tmp_path / "missing.pid") is None


def test_pidfile_remove_if_ours(tmp_path: Path) -> None:
    ours = tmp_path / "ours.pid"
    pidfile.write(ours)
    pidfile.remove_if_ours(ours)
    assert not ours.exists()
    theirs = tmp_path / "theirs.pid"
    theirs.write_text("1 1\n")
    pidfile.remove_if_ours(theirs)
    assert theirs.exists()
    pidfile.remove_if_ours(tmp_path / "missing.pid")


# -- shares ------------------------------------------------------------------------------


def test_parse_shares_accepted_forms() -> None:
    assert settings.parse_shares([]) == []
    assert settings.parse_shares([
        "/home/me",
        {"path": "/srv/data"},
        {"path": "/opt/src", "transport": "9p"},
        {"path": "/Volumes", "transport": "virtiofs"},
        {"path": "/data", "transport": "auto"},
    ]) == [("/home/me", "auto"), ("/srv/data", "auto"), ("/opt/src", "9p"),
           ("/Volumes", "virtiofs"), ("/data", "auto")]


@pytest.mark.parametrize("path", [
    "/home/me", "/root", "/tmp", "/private", "/var/folders", "/mnt/other", "/var/lib/other",
    "/run2", "/etcetera", "/lib32", "/usr2/x", "/home/me/a,b", "/home/me/with space",
])
def test_parse_shares_accepts_folders_beside_the_vms_own(path: str) -> None:
    # Names that only start like a reserved folder ("/run2", "/etcetera") are not in it.
    assert settings.parse_shares([path]) == [(path, "auto")]


def test_parse_shares_siblings_with_a_common_prefix_do_not_nest() -> None:
    assert settings.parse_shares(["/home/me", "/home/meadow"]) == [
        ("/home/me", "auto"), ("/home/meadow", "auto")]
    assert settings.parse_shares(["/home/meadow", "/home/me"]) == [
        ("/home/meadow", "auto"), ("/home/me", "auto")]


def test_parse_shares_at_most_max_shares() -> None:
    ok = [f"/srv/s{i}" for i in range(settings.MAX_SHARES)]
    assert len(settings.parse_shares(ok)) == settings.MAX_SHARES
    with pytest.raises(SettingsError) as e:
        settings.parse_shares([*ok, "/srv/one-more"])
    assert str(e.value) == (f"shares: {settings.MAX_SHARES + 1} folders; "
                            f"at most {settings.MAX_SHARES}")


@pytest.mark.parametrize("entries", ["/home/me", {"path": "/home/me"}, None, 3])
def test_parse_shares_not_a_list(entries: object) -> None:
    with pytest.raises(SettingsError, match=r"^shares: must be a list of folder paths$"):
        settings.parse_shares(entries)


@pytest.mark.parametrize("entry", [
    3, None, ["/home/me"], {"transport": "9p"}, {"path": 5},
    {"path": "/home/me", "transport": "9p", "readonly": True}, {},
])
def test_parse_shares_bad_entry_shape(entry: object) -> None:
    with pytest.raises(SettingsError) as e:
        settings.parse_shares(["/srv/ok", entry])
    msg = str(e.value)
    assert msg.startswith(f"shares: {entry!r} is not a folder path")
    assert '{"path": ..., "transport": ...}' in msg  # shows the form it takes


@pytest.mark.parametrize("transport", ["nfs", "", "VIRTIOFS", None, 9])
def test_parse_shares_bad_transport(transport: object) -> None:
    with pytest.raises(SettingsError) as e:
        settings.parse_shares([{"path": "/srv/x", "transport": transport}])
    assert str(e.value) == (f"shares: /srv/x: transport {transport!r} is not one of "
                            "auto, virtiofs, 9p, link")


@pytest.mark.parametrize("path", ["home/me", "~/code", "", ".", "./src"])
def test_parse_shares_relative_path(path: str) -> None:
    with pytest.raises(SettingsError) as e:
        settings.parse_shares([path])
    assert str(e.value) == f"shares: {path!r} is not an absolute path; write it from /"


@pytest.mark.parametrize(("path", "norm"), [
    ("/home/me/", "/home/me"),
    ("/home/./me", "/home/me"),
    ("/home//me", "/home/me"),
    ("/home/me/../you", "/home/you"),
    ("/home/me/.", "/home/me"),
    # POSIX normpath keeps a leading "//", but Linux (the VM) reads it as "/": "//etc"
    # is /etc and must not slip past the reserved-folder check.
    ("//home/me", "/home/me"),
    ("//etc", "/etc"),
    ("//var/lib/docker", "/var/lib/docker"),
])
def test_parse_shares_unnormalized_path_names_the_fix(path: str, norm: str) -> None:
    with pytest.raises(SettingsError) as e:
        settings.parse_shares([path])
    assert str(e.value) == f"shares: write {path!r} as {norm!r}"


def test_parse_shares_double_slash_is_not_a_second_copy() -> None:
    with pytest.raises(SettingsError, match="write '//home/me' as '/home/me'"):
        settings.parse_shares(["/home/me", "//home/me"])


def test_parse_shares_root_refused() -> None:
    with pytest.raises(SettingsError) as e:
        settings.parse_shares(["/"])
    msg = str(e.value)
    assert msg.startswith("shares: / would share the whole computer")
    assert "your home" in msg  # what to share instead


@pytest.mark.parametrize("reserved", settings.VM_RESERVED)
def test_parse_shares_vm_folders_and_below_refused(reserved: str) -> None:
    for path in (reserved, reserved + "/sub", reserved + "/a/b"):
        with pytest.raises(SettingsError) as e:
            settings.parse_shares([path])
        assert str(e.value) == (f"shares: {path} overlaps the VM's own {reserved}; share a "
                                "folder outside it (e.g. under your home)")


@pytest.mark.parametrize(("path", "reserved"), [
    ("/var", "/var/lib/containerd"),  # the first reserved folder under it
    ("/var/lib", "/var/lib/containerd"),
    ("/mnt", "/mnt/data"),
])
def test_parse_shares_folders_holding_vm_folders_refused(path: str, reserved: str) -> None:
    with pytest.raises(SettingsError) as e:
        settings.parse_shares([path])
    assert str(e.value).startswith(f"shares: {path} overlaps the VM's own {reserved}; ")


@pytest.mark.parametrize("entries", [
    ["/home/me", "/home/me/code"],
    ["/home/me/code", "/home/me"],
    ["/srv/x", "/home/me", {"path": "/home/me/code", "transport": "9p"}],
    [{"path": "/home/me/code", "transport": "9p"}, "/srv/x", "/home/me"],
])
def test_parse_shares_nesting_refused_both_ways(entries: list) -> None:
    with pytest.raises(SettingsError) as e:
        settings.parse_shares(entries)
    assert str(e.value) == ("shares: /home/me/code is inside /home/me, which is shared too; "
                            "keep only one of them")


def test_parse_shares_duplicate_refused() -> None:
    with pytest.raises(SettingsError, match="keep only one of them"):
        settings.parse_shares(["/home/me", {"path": "/home/me", "transport": "9p"}])


def test_settings_validate_checks_shares() -> None:
    with pytest.raises(SettingsError, match=r"^shares: /etc overlaps"):
        Settings(shares=["/etc"]).validate()
    with pytest.raises(SettingsError, match=r"^shares: /a/b is inside /a"):
        Settings.from_json({"shares": ["/a", "/a/b"]})
    Settings(shares=[]).validate()
    Settings(shares=["/a", {"path": "/b", "transport": "9p"}]).validate()


def test_save_settings_refuses_bad_shares(tmp_path: Path) -> None:
    inst = Instance("default", home=tmp_path / "cove")
    with pytest.raises(SettingsError, match="^shares: "):
        inst.save_settings(Settings(shares=["relative"]))
    assert not inst.settings_file.exists()


def test_shares_round_trip_through_the_settings_file(tmp_path: Path) -> None:
    inst = Instance("default", home=tmp_path / "cove")
    shares = ["/home/me", {"path": "/srv/x", "transport": "9p"}]
    inst.save_settings(Settings(shares=shares))
    assert json.loads(inst.settings_file.read_text())["shares"] == shares
    assert inst.load_settings().shares == shares


@pytest.mark.parametrize(("platform", "expected"), [
    ("linux", ["{home}", "{tmp}"]),
    ("darwin", ["{home}", "/Volumes", "/private", "/tmp", "/var/folders"]),
    ("win32", []),
    ("freebsd14", ["{home}", "{tmp}"]),
])
def test_default_shares_per_platform(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                     platform: str, expected: list[str]) -> None:
    # macOS's default shares include /tmp: its home must lie elsewhere (it need not exist).
    home = "/Users/me" if platform == "darwin" else str(tmp_path / "me")
    if platform != "darwin":
        Path(home).mkdir()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # what gettempdir() answers
    monkeypatch.setenv("HOME", home)
    monkeypatch.setattr(sys, "platform", platform)
    want = [p.replace("{home}", home).replace("{tmp}", str(tmp)) for p in expected]
    assert settings.default_shares() == want
    assert Settings().shares == want
    # The defaults are valid shares (none nests in another or covers the VM's folders).
    assert [p for p, _ in settings.parse_shares(settings.default_shares())] == want


def test_a_home_folder_that_does_not_exist_is_not_shared_by_default(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "nonexistent"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))
    monkeypatch.setattr(sys, "platform", "linux")
    assert settings.default_shares() == []


@pytest.mark.parametrize("where", ["home/tmp", "tmp-is-home", "missing", "/run/user/1000",
                                   "/var/lib/docker/tmp"])
def test_a_temporary_folder_that_cannot_be_shared_is_left_out(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, where: str) -> None:
    """Inside the home (already shared), holding the home (shares must not nest), missing,
    or one of the VM's own folders: the home alone is shared by default."""
    home = tmp_path / "home"
    (home / "tmp").mkdir(parents=True)
    tmp = {"home/tmp": str(home / "tmp"), "tmp-is-home": str(tmp_path),
           "missing": str(tmp_path / "gone")}.get(where, where)
    monkeypatch.setattr(tempfile, "tempdir", tmp)
    monkeypatch.setattr(os.path, "isdir", lambda p: p != str(tmp_path / "gone"))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(sys, "platform", "linux")
    assert settings.default_shares() == [str(home)]


def test_default_shares_fresh_list_each_time() -> None:
    a, b = Settings(), Settings()
    a.shares.append("/srv/x")
    assert "/srv/x" not in b.shares


def test_writers_of_the_settings_never_undo_each_other(tmp_path: Path) -> None:
    """The CLI and the tray change different fields at the same moment: both stay."""
    import threading
    import time

    inst = Instance("default", home=tmp_path / "cove")
    inst.save_settings(Settings(cpus=1))
    started = threading.Event()

    def slow(s: Settings) -> None:
        started.set()
        time.sleep(0.3)  # the other writer comes meanwhile, and must wait
        s.cpus = 2

    t = threading.Thread(target=inst.update_settings, args=(slow,))
    t.start()
    started.wait(5)
    inst.update_settings(lambda s: setattr(s, "disk_gib", 128))
    t.join(5)
    saved = inst.load_settings()
    assert (saved.cpus, saved.disk_gib) == (2, 128)
    assert sorted(p.name for p in inst.folder.iterdir()) == ["settings.json", "settings.lock"]


def test_an_invalid_change_writes_nothing(tmp_path: Path) -> None:
    inst = Instance("default", home=tmp_path / "cove")
    inst.save_settings(Settings(cpus=1))
    before = inst.settings_file.read_bytes()
    with pytest.raises(SettingsError):
        inst.update_settings(lambda s: setattr(s, "cpus", 0))
    assert inst.settings_file.read_bytes() == before


@pytest.mark.parametrize("content", ["", "123", "abc def", "123 456 789", "\0\0\0"])
def test_a_truncated_or_torn_pid_file_reads_as_no_backend(tmp_path: Path, content: str) -> None:
    p = tmp_path / "backend.pid"
    p.write_text(content)
    assert pidfile.read_live(p) is None
