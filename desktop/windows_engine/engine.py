"""The native Windows engine: dockerd.exe with the windowsfilter driver, beside the VM.

Why a service. dockerd.exe drives the Host Compute Service and the windowsfilter layer
store, which only an elevated (Administrator) process may do, and by default its named
pipe admits only Administrators. A tray running as the user cannot stop, restart or even
watch an elevated child it started, and a UAC prompt on every switch would be hostile.
So Cove does what Docker's own Windows engine does — run as a Windows service — but
with its own name, pipe and folders so it never disturbs another Docker installation:

* once, with the user's consent (one UAC prompt), an elevated PowerShell script
  (`install_script`) registers the service ``cove-windows-engine`` with the exact
  command line below, lets the user start/stop/query it (its security descriptor), asks
  the service manager to restart it if it crashes, and creates the local group
  ``cove-users`` (with the user in it) that dockerd's ``--group`` admits to the pipe;
* after that, starting is ``sc.exe start``, needing no elevation and no prompt.

`dockerd --register-service` is not used: it registers the name "docker" with its own
defaults, which would collide with a Docker Engine or Docker Desktop already there.

The command line (`command_line`)::

    dockerd.exe --run-service --service-name cove-windows-engine
                -H npipe:////./pipe/cove_windows_engine --group cove-users
                --exec-root %COVE_HOME%\\windows\\exec --data-root %COVE_HOME%\\windows\\data
                --pidfile %COVE_HOME%\\windows\\dockerd.pid
                --config-file %COVE_HOME%\\windows\\daemon.json

daemon.json is written from the Windows mode's own settings
(``$COVE_HOME/windows/settings.json``: ``dockerd``, the program's path, and
``engine_config``, the daemon.json), separate from the VM instance's settings.

Checks before switching (`WindowsEngine.check`, each a SwitchRefused naming the fix): a
Windows host; the Containers optional feature enabled — read without elevation from
WMI's Win32_OptionalFeature (``Get-WindowsOptionalFeature`` and ``dism /get-featureinfo``
both need an elevated prompt); dockerd.exe present.

Every process, PowerShell call and pipe goes through a `WindowsHost` (`desktop.windows_engine.host`
is the real one), so tests drive this module with a fake host and recorded outputs.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePath
from typing import Any, Protocol

from desktop.home import WINDOWS_ENGINE_DIR
from desktop.platform.acl import make_private
from desktop.platform.files import atomic_write
from desktop.platform.powershell import quote
from desktop.settings import SettingsError
from desktop.windows_engine.errors import EngineError, SwitchRefused

log = logging.getLogger(__name__)

SERVICE = "cove-windows-engine"
PIPE = "cove_windows_engine"
ENDPOINT = f"npipe:////./pipe/{PIPE}"
GROUP = "cove-users"
DOCKERD_DOWNLOAD = "https://download.docker.com/win/static/stable/x86_64/"
ENABLE_COMMAND = "Enable-WindowsOptionalFeature -Online -FeatureName Containers -All"

# dockerd refuses to start when a flag and daemon.json set the same option; Cove sets these.
RESERVED_CONFIG = ("hosts", "group", "data-root", "exec-root", "pidfile")

FEATURE_QUERY = ("Get-CimInstance -ClassName Win32_OptionalFeature -Filter \"Name='Containers'\""
                 " | Select-Object Name,InstallState | ConvertTo-Json")
# Win32_OptionalFeature.InstallState
INSTALL_STATES = {1: "enabled", 2: "disabled", 3: "absent", 4: "unknown"}


class WindowsHost(Protocol):
    """The computer as the Windows engine sees it.

    `run` runs a program and returns (exit status, its output — stdout then stderr);
    `run_elevated` runs a PowerShell script as Administrator after the UAC consent prompt
    and returns the same (a declined prompt is a failure whose output says so);
    `pipe_get` is one HTTP GET over a local named pipe (OSError when nobody serves it)."""

    def system(self) -> str: ...  # platform.system(): "Windows", "Linux", "Darwin"

    def run(self, argv: list[str]) -> tuple[int, str]: ...

    def run_elevated(self, script: str) -> tuple[int, str]: ...

    def exists(self, path: str) -> bool: ...

    def env(self, name: str) -> str | None: ...

    def install_dir(self) -> str: ...  # where Cove's own program files are

    def user(self) -> str: ...  # DOMAIN\name of the signed-in user

    def pipe_get(self, pipe: str, path: str) -> tuple[int, bytes]: ...


# -- the Windows mode's settings -----------------------------------------------------------


@dataclass
class WindowsSettings:
    dockerd: str = ""  # dockerd.exe's path; "" looks in the usual places
    engine_config: dict[str, Any] = field(default_factory=dict)  # daemon.json

    def validate(self) -> None:
        if not isinstance(self.dockerd, str):
            raise SettingsError("dockerd: must be the path of dockerd.exe (a string)")
        if not isinstance(self.engine_config, dict):
            raise SettingsError("engine_config: must be a JSON object (the Windows engine's "
                                "daemon.json)")
        for key in RESERVED_CONFIG:
            if key in self.engine_config:
                raise SettingsError(
                    f"engine_config: {key!r} is set by Cove on dockerd.exe's command line "
                    "(dockerd refuses an option given twice); remove it from engine_config")

    @classmethod
    def from_json(cls, data: Any, source: str) -> WindowsSettings:
        if not isinstance(data, dict):
            raise SettingsError(f"{source}: must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(f"{source}: unknown field {unknown[0]!r}; known fields: "
                                f"{', '.join(sorted(known))}")
        s = cls(**data)
        try:
            s.validate()
        except SettingsError as e:
            raise SettingsError(f"{source}: {e}") from None
        return s


def load_settings(path: Path) -> WindowsSettings:
    """The Windows mode's settings (defaults when the file is absent). An invalid file is
    a SettingsError naming it; it is never overwritten."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return WindowsSettings()
    try:
        data = json.loads(text)
    except ValueError as e:
        raise SettingsError(f"{path} is not valid JSON ({e}); fix it or move it aside to "
                            "start from the defaults") from None
    return WindowsSettings.from_json(data, str(path))


def private_folder(folder: Path) -> None:
    """The engine's folder (its settings, daemon.json, the data root), made if needed,
    with a DACL for the user, SYSTEM (the service runs as it) and Administrators only."""
    folder.mkdir(parents=True, exist_ok=True)
    make_private(folder)


def save_settings(path: Path, settings: WindowsSettings) -> None:
    settings.validate()
    private_folder(path.parent)
    atomic_write(path, json.dumps(asdict(settings), indent=2, sort_keys=True) + "\n", 0o644)


# -- the command line, the service and the feature ----------------------------------------


@dataclass(frozen=True)
class Layout:
    """The Windows engine's folder, ``%COVE_HOME%\\windows`` (a PurePath, so the exact
    Windows command line can be built and checked anywhere)."""

    root: PurePath

    settings = property(lambda self: self.root / "settings.json")
    config = property(lambda self: self.root / "daemon.json")
    data_root = property(lambda self: self.root / "data")
    exec_root = property(lambda self: self.root / "exec")
    pidfile = property(lambda self: self.root / "dockerd.pid")


def command_line(dockerd: str, layout: Layout) -> list[str]:
    """dockerd.exe's arguments as the service manager runs them."""
    return [dockerd, "--run-service", "--service-name", SERVICE,
            "-H", ENDPOINT, "--group", GROUP,
            "--exec-root", str(layout.exec_root), "--data-root", str(layout.data_root),
            "--pidfile", str(layout.pidfile), "--config-file", str(layout.config)]


def binary_path(dockerd: str, layout: Layout) -> str:
    """The service's command line as one string, quoted the way Windows parses it."""
    return subprocess.list2cmdline(command_line(dockerd, layout))


def install_script(binpath: str, user: str, update: bool) -> str:
    """The one elevated step: register (or re-point) the service and let `user` use it.

    The service's security descriptor keeps the default rights of SYSTEM, Administrators
    and interactive users, and gives `user` query, start and stop (LC, RP, WP) — so
    Cove switches engines without another prompt."""
    lines = [
        "$ErrorActionPreference = 'Stop'",
        f"$group = {quote(GROUP)}",
        f"$user = {quote(user)}",
        "if (-not (Get-LocalGroup -Name $group -ErrorAction SilentlyContinue)) {",
        "  New-LocalGroup -Name $group -Description 'May use the Windows engine Cove runs'"
        " | Out-Null }",
        "if (-not (Get-LocalGroupMember -Group $group -Member $user"
        " -ErrorAction SilentlyContinue)) {",
        "  Add-LocalGroupMember -Group $group -Member $user }",
        f"$bin = {quote(binpath)}",
    ]
    if update:
        lines.append(f"$r = Get-CimInstance Win32_Service -Filter \"Name='{SERVICE}'\" | "
                     "Invoke-CimMethod -MethodName Change -Arguments @{PathName = $bin}")
        lines.append("if ($r.ReturnValue -ne 0) { throw \"the service could not be "
                     "changed (error $($r.ReturnValue))\" }")
    else:
        lines.append(f"New-Service -Name {SERVICE} -BinaryPathName $bin -DisplayName "
                     "'Cove Windows engine' -StartupType Manual | Out-Null")
    lines += [
        "$sid = ([Security.Principal.NTAccount]$user).Translate("
        "[Security.Principal.SecurityIdentifier]).Value",
        "$sddl = 'D:(A;;CCLCSWRPWPDTLOCRRC;;;SY)(A;;CCDCLCSWRPWPDTLOCRSDRCWDWO;;;BA)"
        "(A;;CCLCSWLOCRRC;;;IU)' + \"(A;;CCLCSWRPWPDTLOCRRC;;;$sid)\"",
        f"& sc.exe sdset {SERVICE} $sddl | Out-Null",
        "if ($LASTEXITCODE -ne 0) { throw \"sc.exe sdset failed ($LASTEXITCODE)\" }",
        f"& sc.exe failure {SERVICE} reset= 86400 actions= restart/5000/restart/10000// "
        "| Out-Null",
    ]
    return "\n".join(lines) + "\n"


def parse_feature(rc: int, output: str) -> str:
    """The Containers feature's state from FEATURE_QUERY's output: enabled, disabled,
    absent (this edition has none: nothing is printed) or unknown. EngineError when
    PowerShell failed."""
    text = output.strip()
    if rc != 0:
        raise EngineError(
            "Cove could not tell whether the Windows Containers feature is enabled "
            f"(PowerShell said: {text.splitlines()[0] if text else f'exit status {rc}'}); "
            "check in an elevated PowerShell: "
            "Get-WindowsOptionalFeature -Online -FeatureName Containers")
    if not text:
        return "absent"
    try:
        data = json.loads(text)
    except ValueError:
        raise EngineError(f"unexpected answer about the Containers feature: {text[:200]}") \
            from None
    if isinstance(data, list):
        data = data[0] if data else {}
    state = data.get("InstallState") if isinstance(data, dict) else None
    return INSTALL_STATES.get(state, "unknown") if isinstance(state, int) else "unknown"


SC_STATE_RE = re.compile(r"^\s*STATE\s*:\s*\d+\s+(\w+)", re.MULTILINE)
SC_BINPATH_RE = re.compile(r"^\s*BINARY_PATH_NAME\s*:\s*(.*?)\s*$", re.MULTILINE)
SC_NO_SERVICE = 1060  # ERROR_SERVICE_DOES_NOT_EXIST
SC_ALREADY_RUNNING = 1056  # ERROR_SERVICE_ALREADY_RUNNING
SC_ACCESS_DENIED = 5


def parse_sc_query(rc: int, output: str) -> str:
    """`sc.exe query NAME` -> "missing", "stopped", "start_pending", "running", …"""
    if rc == SC_NO_SERVICE:
        return "missing"
    m = SC_STATE_RE.search(output)
    if rc != 0 or not m:
        raise EngineError(f"sc.exe query {SERVICE} failed (exit status {rc}): "
                          f"{output.strip()[:200]}")
    return m.group(1).lower()


def parse_sc_binpath(output: str) -> str:
    m = SC_BINPATH_RE.search(output)
    return m.group(1) if m else ""


# -- the engine ----------------------------------------------------------------------------


SYSTEM_NAMES = {"Darwin": "macOS"}


class WindowsEngine:
    """The "windows" engine mode (see the module docstring); a `switch.Engine`."""

    mode = "windows"
    endpoint = ENDPOINT

    def __init__(self, home: Path, host: WindowsHost, root: PurePath | None = None) -> None:
        """`home` is $COVE_HOME; `root` the folder as dockerd.exe sees it (the same
        unless a test builds the Windows command line elsewhere)."""
        self.folder = home / WINDOWS_ENGINE_DIR
        self.layout = Layout(root or self.folder)
        self.host = host

    @property
    def settings_file(self) -> Path:
        return self.folder / "settings.json"

    def load_settings(self) -> WindowsSettings:
        return load_settings(self.settings_file)

    def save_settings(self, settings: WindowsSettings) -> None:
        save_settings(self.settings_file, settings)

    # -- checks --------------------------------------------------------------------------

    def check(self) -> None:
        """SwitchRefused naming the problem and the fix, or nothing."""
        system = self.host.system()
        if system != "Windows":
            raise SwitchRefused("Windows containers need a Windows host; this is "
                                f"{SYSTEM_NAMES.get(system, system)}")
        state = self.feature_state()
        if state == "absent":
            raise SwitchRefused(
                "this edition of Windows has no Containers feature (Windows Home lacks "
                "it); Windows containers need Windows Pro, Enterprise or Education")
        if state != "enabled":
            raise SwitchRefused(
                f"the Windows Containers feature is {state}; enable it in an elevated "
                f"PowerShell with `{ENABLE_COMMAND}`, then restart Windows")
        self.find_dockerd()

    def feature_state(self) -> str:
        rc, out = self.host.run(["powershell.exe", "-NoProfile", "-NonInteractive",
                                 "-Command", FEATURE_QUERY])
        return parse_feature(rc, out)

    def candidates(self) -> list[str]:
        """Where dockerd.exe is looked for when the settings do not say."""
        program_files = self.host.env("ProgramFiles") or r"C:\Program Files"
        return [f"{program_files}\\Docker\\dockerd.exe",
                f"{self.host.install_dir()}\\dockerd.exe"]

    def find_dockerd(self) -> str:
        settings = self.load_settings()
        if settings.dockerd:
            if not self.host.exists(settings.dockerd):
                raise SwitchRefused(
                    f"dockerd.exe is not at {settings.dockerd} (the dockerd setting in "
                    f"{self.settings_file}); fix the path, or download the static Windows "
                    f"build from {DOCKERD_DOWNLOAD} and unzip dockerd.exe there")
            return settings.dockerd
        places = self.candidates()
        for p in places:
            if self.host.exists(p):
                return p
        raise SwitchRefused(
            f"dockerd.exe was not found (looked at {' and '.join(places)}); download the "
            f"static Windows build from {DOCKERD_DOWNLOAD} and unzip dockerd.exe into "
            f"{places[0].rsplit(chr(92), 1)[0]}, or give its path: "
            "cove engine use windows --dockerd PATH")

    # -- the service ---------------------------------------------------------------------

    def service_state(self) -> str:
        return parse_sc_query(*self.host.run(["sc.exe", "query", SERVICE]))

    def start(self) -> None:
        """Register the service if needed (one consent prompt), write daemon.json and
        start it; returns once the service manager accepted the start (the switcher
        then waits for /_ping)."""
        dockerd = self.find_dockerd()
        settings = self.load_settings()
        private_folder(self.folder)
        config = self.folder / "daemon.json"
        atomic_write(config, json.dumps(settings.engine_config, indent=2, sort_keys=True)
                     + "\n", 0o644)
        want = binary_path(dockerd, self.layout)
        state = self.service_state()
        if state == "missing":
            self._elevated(install_script(want, self.host.user(), update=False))
        else:
            rc, out = self.host.run(["sc.exe", "qc", SERVICE])
            if rc == 0 and parse_sc_binpath(out) != want:
                if state == "running":
                    # Its command line changed (another dockerd.exe): keep the running
                    # one; the change applies when the engine next starts.
                    log.info("the Windows engine runs an older command line; keeping it")
                else:
                    self._elevated(install_script(want, self.host.user(), update=True))
        if state == "running":
            return
        rc, out = self.host.run(["sc.exe", "start", SERVICE])
        if rc == SC_ACCESS_DENIED:
            raise EngineError(
                f"Windows did not let this user start the {SERVICE} service; it was "
                "registered for another user. Run `cove engine use windows` as that user, "
                f"or remove it (elevated: sc.exe delete {SERVICE}) and switch again")
        if rc not in (0, SC_ALREADY_RUNNING):
            raise EngineError(
                f"the Windows engine service did not start (sc.exe start: exit status {rc}: "
                f"{out.strip().splitlines()[-1] if out.strip() else 'no message'}); if the "
                "Containers feature was enabled just now, restart Windows first; dockerd's "
                f"messages are in the Application event log (source {SERVICE})")

    def _elevated(self, script: str) -> None:
        rc, out = self.host.run_elevated(script)
        if rc == 0:
            return
        if "canceled by the user" in out or "cancelled by the user" in out:
            raise EngineError(
                "Windows containers need a one-time administrator approval to register "
                f"Cove's engine service ({SERVICE}); the prompt was declined. Switch again "
                "and approve it")
        first = next((ln.strip() for ln in out.splitlines() if ln.strip()), f"exit {rc}")
        raise EngineError(f"registering the {SERVICE} service failed: {first}; run "
                          "`cove engine use windows` again, or ask an administrator")

    def stop(self) -> None:
        """Stop the service (switching never does; quitting Cove for good may)."""
        rc, out = self.host.run(["sc.exe", "stop", SERVICE])
        if rc not in (0, 1062):  # 1062: ERROR_SERVICE_NOT_ACTIVE
            raise EngineError(f"the Windows engine did not stop (sc.exe stop: exit status "
                              f"{rc}): {out.strip()[:200]}")

    def get(self, path: str) -> tuple[int, bytes]:
        return self.host.pipe_get(PIPE, path)
