"""The engine switch (desktop.windows_engine) with a fake Windows host that
replays recorded outputs, a fake Windows engine behind it, and a real fake Linux engine
(the Docker API on a unix socket)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path, PureWindowsPath

import pytest

from desktop import context
from desktop.settings import SettingsError
from desktop.windows_engine import engine as winengine
from desktop.windows_engine import switch as engines
from desktop.windows_engine.engine import SERVICE, WindowsEngine
from desktop.windows_engine.errors import EngineError, EngineStateError, SwitchRefused
from desktop.windows_engine.switch import LinuxEngine
from tests.helpers.tray_fakes import FakeDockerAPI
from tests.helpers.windows_fakes import (
    DOCKERD,
    FakePipe,
    FakeWindowsHost,
    fixture,
    switcher,
)


@pytest.fixture
def home(docker_config: Path, tmp_path: Path) -> Path:
    """The instances' folder (COVE_HOME is not set: the switch is handed it), beside the
    shared temp DOCKER_CONFIG."""
    return tmp_path / "cove"


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[FakeDockerAPI]:
    (tmp_path / "cove" / "default").mkdir(parents=True)
    api = FakeDockerAPI(tmp_path / "cove" / "default" / "docker.sock")
    yield api
    api.close()


@pytest.fixture
def host() -> FakeWindowsHost:
    return FakeWindowsHost()


def _cove_endpoint() -> str:
    meta = context._meta_dir("cove") / "meta.json"
    return str(json.loads(meta.read_text())["Endpoints"]["docker"]["Host"])


# -- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize(("system", "shown"), [("Linux", "Linux"), ("Darwin", "macOS")])
def test_refused_on_a_host_that_is_not_windows(home: Path, vm: FakeDockerAPI, system: str,
                                               shown: str) -> None:
    host = FakeWindowsHost(system=system)
    sw = switcher(home, host, vm.path)
    with pytest.raises(SwitchRefused) as e:
        sw.switch("windows")
    assert str(e.value) == f"Windows containers need a Windows host; this is {shown}"
    assert host.commands == []  # nothing Windows was tried
    assert not engines.engine_file(home).exists()
    assert sw.active() == "linux"


def test_refused_when_the_containers_feature_is_disabled(home: Path, vm: FakeDockerAPI,
                                                         host: FakeWindowsHost) -> None:
    host.feature = "feature_disabled.json"
    with pytest.raises(SwitchRefused) as e:
        switcher(home, host, vm.path).switch("windows")
    msg = str(e.value)
    assert "Containers feature is disabled" in msg
    assert "Enable-WindowsOptionalFeature -Online -FeatureName Containers -All" in msg
    assert "elevated PowerShell" in msg and "restart Windows" in msg
    assert host.service is None and host.elevated == []
    assert not context.exists("cove")


def test_refused_on_an_edition_without_the_feature(home: Path, vm: FakeDockerAPI,
                                                   host: FakeWindowsHost) -> None:
    host.feature = "feature_absent.txt"
    with pytest.raises(SwitchRefused, match="no Containers feature.*Pro, Enterprise"):
        switcher(home, host, vm.path).switch("windows")


def test_feature_query_failure_says_how_to_check(home: Path, vm: FakeDockerAPI,
                                                 host: FakeWindowsHost) -> None:
    host.feature = "feature_error.txt"
    with pytest.raises(EngineError) as e:
        switcher(home, host, vm.path).switch("windows")
    assert "Get-CimInstance : Access denied" in str(e.value)
    assert "Get-WindowsOptionalFeature -Online -FeatureName Containers" in str(e.value)


def test_refused_when_dockerd_is_missing(home: Path, vm: FakeDockerAPI,
                                         host: FakeWindowsHost) -> None:
    host.files = set()
    with pytest.raises(SwitchRefused) as e:
        switcher(home, host, vm.path).switch("windows")
    msg = str(e.value)
    assert DOCKERD in msg and r"C:\Users\alice\AppData\Local\Programs\Cove\dockerd.exe" in msg
    assert winengine.DOCKERD_DOWNLOAD in msg and "--dockerd PATH" in msg
    assert host.service is None


def test_dockerd_from_the_settings_must_exist(home: Path, vm: FakeDockerAPI,
                                              host: FakeWindowsHost) -> None:
    win = WindowsEngine(home, host)
    win.save_settings(winengine.WindowsSettings(dockerd=r"D:\tools\dockerd.exe"))
    with pytest.raises(SwitchRefused, match=r"not at D:\\tools\\dockerd.exe"):
        win.check()
    host.files.add(r"D:\tools\dockerd.exe")
    win.check()
    assert win.find_dockerd() == r"D:\tools\dockerd.exe"


def test_parsers_read_the_recorded_outputs() -> None:
    assert winengine.parse_feature(0, fixture("feature_enabled.json")) == "enabled"
    assert winengine.parse_feature(0, fixture("feature_disabled.json")) == "disabled"
    assert winengine.parse_feature(0, fixture("feature_absent.txt")) == "absent"
    assert winengine.parse_sc_query(0, fixture("sc_query_running.txt")) == "running"
    assert winengine.parse_sc_query(0, fixture("sc_query_stopped.txt")) == "stopped"
    assert winengine.parse_sc_query(0, fixture("sc_query_start_pending.txt")) == \
        "start_pending"
    assert winengine.parse_sc_query(1060, fixture("sc_query_missing.txt")) == "missing"
    qc = fixture("sc_qc.txt").replace("{binpath}", '"C:\\x y\\dockerd.exe" --run-service')
    assert winengine.parse_sc_binpath(qc) == '"C:\\x y\\dockerd.exe" --run-service'


# -- the command line --------------------------------------------------------------------


def test_the_exact_dockerd_command_line() -> None:
    layout = winengine.Layout(PureWindowsPath(r"C:\Users\alice\.cove\windows"))
    assert winengine.command_line(DOCKERD, layout) == [
        DOCKERD, "--run-service", "--service-name", "cove-windows-engine",
        "-H", "npipe:////./pipe/cove_windows_engine", "--group", "cove-users",
        "--exec-root", r"C:\Users\alice\.cove\windows\exec",
        "--data-root", r"C:\Users\alice\.cove\windows\data",
        "--pidfile", r"C:\Users\alice\.cove\windows\dockerd.pid",
        "--config-file", r"C:\Users\alice\.cove\windows\daemon.json"]
    assert "--register-service" not in winengine.command_line(DOCKERD, layout)
    assert winengine.binary_path(DOCKERD, layout).startswith(
        '"C:\\Program Files\\Docker\\dockerd.exe" --run-service --service-name ')


def test_install_script_registers_the_service_for_this_user() -> None:
    script = winengine.install_script('"C:\\it\'s\\dockerd.exe" --run-service', r"PC\alice",
                                      update=False)
    assert "$bin = '\"C:\\it''s\\dockerd.exe\" --run-service'" in script  # quoted for PS
    assert "$user = 'PC\\alice'" in script
    assert f"New-Service -Name {SERVICE} -BinaryPathName $bin" in script
    assert "New-LocalGroup -Name $group" in script and "Add-LocalGroupMember" in script
    assert f"sc.exe sdset {SERVICE} $sddl" in script and "RPWP" in script
    assert "--register-service" not in script
    update = winengine.install_script("x", r"PC\alice", update=True)
    assert "Invoke-CimMethod -MethodName Change" in update and "New-Service" not in update


# -- switching ---------------------------------------------------------------------------


def test_switch_to_windows_starts_it_and_repoints_the_context(
        home: Path, vm: FakeDockerAPI, host: FakeWindowsHost) -> None:
    pipe = FakePipe()
    sw = switcher(home, host, vm.path, pipe)
    res = sw.switch("windows")
    assert (res.mode, res.started, res.previous, res.version) == \
        ("windows", True, "linux", "27.3.1")
    assert host.service == "running" and len(host.elevated) == 1  # one consent prompt
    assert _cove_endpoint() == "npipe:////./pipe/cove_windows_engine"
    assert context.current() == "cove"
    assert pipe.targets == ["npipe:////./pipe/cove_windows_engine"]
    assert engines.load_mode(home) == "windows"
    assert json.loads(engines.engine_file(home).read_text()) == {"mode": "windows"}
    # daemon.json is the Windows mode's own engine config; the VM was not touched.
    assert json.loads((home / "windows" / "daemon.json").read_text()) == {}
    assert not any(m != "GET" for m, _ in vm.calls)  # nothing was asked of the VM
    assert ["sc.exe", "stop", SERVICE] not in host.commands


def test_switch_back_to_linux_leaves_windows_running(home: Path, vm: FakeDockerAPI,
                                                     host: FakeWindowsHost) -> None:
    pipe = FakePipe()
    sw = switcher(home, host, vm.path, pipe)
    sw.switch("windows")
    res = sw.switch("linux")  # the VM answers: not started again
    assert (res.mode, res.started, res.previous, res.version) == \
        ("linux", False, "windows", "26.1.5")
    assert _cove_endpoint() == f"unix://{vm.path}"
    assert pipe.targets[-1] == f"unix://{vm.path}"
    assert host.service == "running"
    assert ["sc.exe", "stop", SERVICE] not in host.commands
    st = sw.status()
    assert st["mode"] == "linux" and st["running"] is True
    assert st["others"] == [{"mode": "windows", "description": "native dockerd.exe",
                             "endpoint": winengine.ENDPOINT, "running": True,
                             "version": "27.3.1"}]
    # Back to Windows: it runs already, so no start and no prompt.
    res = sw.switch("windows")
    assert res.started is False and len(host.elevated) == 1
    assert host.commands.count(["sc.exe", "start", SERVICE]) == 1


def test_switch_to_linux_starts_the_vm_when_it_is_down(home: Path, host: FakeWindowsHost,
                                                       tmp_path: Path) -> None:
    sock = tmp_path / "vm.sock"
    starts: list[str] = []
    apis: list[FakeDockerAPI] = []
    sw = switcher(home, host, sock, vm_starts=starts)
    sw.engines["linux"]._start_vm = lambda: (  # type: ignore[attr-defined]
        starts.append("start"), apis.append(FakeDockerAPI(sock)))
    try:
        res = sw.switch("linux")
    finally:
        for a in apis:
            a.close()
    assert starts == ["start"] and res.started is True


def test_pipe_not_owned_is_left_alone(home: Path, vm: FakeDockerAPI,
                                      host: FakeWindowsHost) -> None:
    pipe = FakePipe(owned=False)
    switcher(home, host, vm.path, pipe).switch("windows")
    assert pipe.targets == []


def test_engine_that_never_answers_times_out(home: Path, vm: FakeDockerAPI,
                                             host: FakeWindowsHost) -> None:
    host.boot_pings = 10**9
    now = [0.0]
    sw = switcher(home, host, vm.path)
    sw._clock = lambda: now[0]
    sw._sleep = lambda s: now.__setitem__(0, now[0] + s)
    with pytest.raises(EngineError, match="did not answer at npipe:////./pipe/"):
        sw.switch("windows", timeout=5)
    assert engines.load_mode(home) == "linux"  # the switch did not happen
    assert not context.exists("cove")


def test_declined_consent_is_explained(home: Path, vm: FakeDockerAPI,
                                       host: FakeWindowsHost) -> None:
    host.decline_uac = True
    with pytest.raises(EngineError, match="one-time administrator approval.*declined"):
        switcher(home, host, vm.path).switch("windows")
    assert host.service is None and engines.load_mode(home) == "linux"


def test_start_denied_names_the_fix(home: Path, vm: FakeDockerAPI,
                                    host: FakeWindowsHost) -> None:
    host.start_denied = True
    with pytest.raises(EngineError, match=f"did not let this user start the {SERVICE}"):
        switcher(home, host, vm.path).switch("windows")


def test_a_new_dockerd_path_repoints_a_stopped_service(home: Path, vm: FakeDockerAPI,
                                                       host: FakeWindowsHost) -> None:
    sw = switcher(home, host, vm.path)
    sw.switch("windows")
    host.service = "stopped"
    host.files.add(r"D:\docker\dockerd.exe")
    win = sw.engines["windows"]
    assert isinstance(win, WindowsEngine)
    win.save_settings(winengine.WindowsSettings(dockerd=r"D:\docker\dockerd.exe"))
    sw.switch("windows")
    assert len(host.elevated) == 2 and "Invoke-CimMethod" in host.elevated[1]
    assert host.binpath.startswith(r"D:\docker\dockerd.exe --run-service")


# -- settings and engine.json ---------------------------------------------------------


def test_each_mode_keeps_its_own_settings(home: Path, vm: FakeDockerAPI,
                                          host: FakeWindowsHost) -> None:
    from desktop.instance import Instance
    from desktop.settings import Settings

    inst = Instance("default", home=home)
    inst.save_settings(Settings(cpus=1, memory_mib=1024, engine_config={"debug": True}))
    win = WindowsEngine(home, host)
    win.save_settings(winengine.WindowsSettings(engine_config={"storage-opts": ["size=40G"]}))
    switcher(home, host, vm.path).switch("windows")
    assert json.loads((home / "windows" / "daemon.json").read_text()) == \
        {"storage-opts": ["size=40G"]}
    assert inst.load_settings().engine_config == {"debug": True}
    assert win.load_settings().engine_config == {"storage-opts": ["size=40G"]}
    assert win.settings_file != inst.settings_file


def test_windows_settings_refuse_options_cove_sets(home: Path, host: FakeWindowsHost) -> None:
    win = WindowsEngine(home, host)
    with pytest.raises(SettingsError, match="'data-root' is set by Cove"):
        win.save_settings(winengine.WindowsSettings(engine_config={"data-root": "D:\\x"}))
    win.settings_file.parent.mkdir(parents=True)
    win.settings_file.write_text('{"dockerd": ')
    with pytest.raises(SettingsError, match="not valid JSON"):
        win.load_settings()
    assert win.settings_file.read_text() == '{"dockerd": '


@pytest.mark.parametrize("content", ['{"mode": "wind', '{"mode": "solaris"}', "[]"])
def test_corrupt_engine_json_is_an_error_and_kept(home: Path, vm: FakeDockerAPI,
                                                  host: FakeWindowsHost, content: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    engines.engine_file(home).write_text(content)
    sw = switcher(home, host, vm.path)
    with pytest.raises(EngineStateError) as e:
        sw.switch("windows")
    assert str(engines.engine_file(home)) in str(e.value)
    assert "cove engine use" in str(e.value)
    assert engines.engine_file(home).read_text() == content  # not lost
    assert host.commands == [] and not context.exists("cove")


def test_save_mode_is_atomic_and_checked(home: Path) -> None:
    engines.save_mode(home, "windows")
    assert engines.load_mode(home) == "windows"
    assert [p.name for p in home.iterdir()] == ["engine.json"]  # no temporary left
    with pytest.raises(EngineError):
        engines.save_mode(home, "solaris")
    assert engines.load_mode(home) == "windows"


def test_unknown_mode_is_refused(home: Path, vm: FakeDockerAPI, host: FakeWindowsHost) -> None:
    with pytest.raises(EngineError, match="'wsl' is not one of linux, windows"):
        switcher(home, host, vm.path).switch("wsl")


def test_linux_engine_gets_over_its_unix_socket(vm: FakeDockerAPI) -> None:
    engine = LinuxEngine(vm.path, start_vm=lambda: None)
    status, body = engine.get("/version")
    assert status == 200 and json.loads(body)["Version"] == "26.1.5"
    assert engine.get("/_ping") == (200, b"OK")


# -- docker_engine through the backend ---------------------------------------------------


class _FakeControl:
    def __init__(self, status: dict | None = None, fail: Exception | None = None) -> None:
        self.status, self.fail = status, fail
        self.requests: list[tuple[str, dict]] = []

    def request(self, op: str, timeout: float = 0, **params: object) -> object:
        self.requests.append((op, params))
        if self.fail is not None:
            raise self.fail
        return self.status if op == "status" else {"served": True, "target": params}


def test_backend_docker_engine_pipe_owned_follows_the_backend(tmp_path: Path) -> None:
    from desktop.control import ControlError
    from desktop.instance import Instance

    inst = Instance("default", home=tmp_path)
    served = engines.BackendDockerEnginePipe(
        inst, _FakeControl({"docker_engine": {"served": True, "target": "x"}}))
    assert served.owned() is True
    held_elsewhere = engines.BackendDockerEnginePipe(
        inst, _FakeControl({"docker_engine": {"served": False, "target": "x"}}))
    assert held_elsewhere.owned() is False
    no_backend = engines.BackendDockerEnginePipe(inst, _FakeControl(fail=ControlError("down")))
    assert no_backend.owned() is False


def test_backend_docker_engine_pipe_retarget_sends_the_op(tmp_path: Path) -> None:
    from desktop.control import ControlError
    from desktop.instance import Instance

    inst = Instance("default", home=tmp_path)
    ctl = _FakeControl({})
    engines.BackendDockerEnginePipe(inst, ctl).retarget("npipe:////./pipe/cove_windows_engine")
    assert ctl.requests == [("docker_engine_target",
                             {"endpoint": "npipe:////./pipe/cove_windows_engine"})]
    broken = engines.BackendDockerEnginePipe(inst, _FakeControl(fail=ControlError("gone")))
    with pytest.raises(engines.EngineError, match="could not re-point .*docker_engine.*gone"):
        broken.retarget("npipe:////./pipe/cove_windows_engine")
