"""The `cove` command line.

Every command exits 0 on success and otherwise prints one line, ``cove: error: ...``,
naming the problem and the fix (after any guest log lines that explain it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from desktop import __version__, context, lifecycle, windows_engine
from desktop.control import ControlError
from desktop.instance import DEFAULT_INSTANCE, Instance
from desktop.platform import defaultsocket
from desktop.settings import (
    GIB,
    MAX_RESOURCE_SAVER_MINUTES,
    MIB,
    SHARE_TRANSPORTS,
    Settings,
    SettingsError,
    check_resource_saver,
    parse_shares,
    parse_size,
)
from desktop.status import (
    Event,
    EventKind,
    PortState,
    State,
    Status,
    Step,
    data_disk_message,
    is_up,
    step_text,
)

log = logging.getLogger(__name__)


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def _instance(args: argparse.Namespace) -> Instance:
    return Instance(args.instance)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- start -------------------------------------------------------------------------------


def _apply_flags(inst: Instance, args: argparse.Namespace) -> bool:
    """Fold --cpus/--memory/--disk/--arch into the settings; True if anything changed."""
    changed = False

    def change(settings: Settings) -> bool:
        nonlocal changed
        before = settings.to_json()
        _fold_flags(inst, settings, args)
        settings.validate()
        changed = settings.to_json() != before
        return changed

    if _any_flag(args) or not inst.settings_file.exists():
        inst.update_settings(change)
    return changed


def _any_flag(args: argparse.Namespace) -> bool:
    return any(getattr(args, n, None) is not None
               for n in ("arch", "cpus", "memory", "disk", "resource_saver"))


def _fold_flags(inst: Instance, settings: Settings, args: argparse.Namespace) -> None:
    arch = getattr(args, "arch", None)
    if arch is not None and arch != settings.arch:
        if inst.data_disk.exists():
            # The engine's images and containers on the data disk are for one architecture.
            raise SettingsError(
                f"--arch: instance {inst.name!r} was created for {settings.arch}; its images "
                f"and containers are {settings.arch}. Use another instance "
                f"(cove start -i NAME --arch {arch}) or delete this one first (cove delete)"
            )
        settings.arch = arch
    if args.cpus is not None:
        settings.cpus = args.cpus
    if getattr(args, "resource_saver", None) is not None:
        settings.resource_saver_minutes = check_resource_saver(args.resource_saver)
    if args.memory is not None:
        settings.memory_mib = parse_size(args.memory, "--memory", GIB) // MIB
    if args.disk is not None:
        disk_gib = parse_size(args.disk, "--disk", GIB) // GIB
        if inst.data_disk.exists() and disk_gib < settings.disk_gib:
            raise SettingsError(
                f"--disk: the data disk can only grow (it is {settings.disk_gib}G now)"
            )
        settings.disk_gib = disk_gib


def _print_step(ev: Event) -> None:
    """A start's progress, one line a step (and the accelerator's notes)."""
    if ev.get("event") in (EventKind.CONTEXT_NOT_SET, EventKind.SHARES_NOTE):
        _say(f"  note: {ev.get('message')}")
    if ev.get("event") != State.STARTING:
        return
    step = ev.get("step", "")
    extra = ""
    if step == Step.AGENT and ev.get("accel"):
        extra = f" (accelerator: {ev['accel']})"
        for note in ev.get("accel_notes") or []:
            _say(f"  note: {note}; using software emulation (TCG)")
    _say(f"  {step_text(step)}{extra}")


def _wait_running(inst: Instance, proc: subprocess.Popen | None) -> Status:
    try:
        return lifecycle.wait_running(inst, proc, on_event=_print_step)
    except lifecycle.StartFailed as e:
        if e.detail:
            _say(e.detail)
        raise


def cmd_start(args: argparse.Namespace) -> int:
    inst = _instance(args)
    changed = _apply_flags(inst, args)  # validates before anything is written
    lifecycle.set_activation(inst, not args.no_activate)
    if lifecycle.is_running(inst):
        client = lifecycle.client(inst)
        if getattr(args, "resource_saver", None) is not None:
            client.request("resource_saver", minutes=args.resource_saver)  # applies now
            changed = _any_flag(argparse.Namespace(**{**vars(args), "resource_saver": None}))
        st = client.status()
        msg = f"Cove ({inst.name}) is already {st['state']}"
        if changed:
            msg += "; the new settings apply after `cove restart`"
        print(msg)
        return 0
    settings = inst.load_settings()
    lifecycle.ensure_image(settings.arch, progress=_say)
    t0 = time.monotonic()
    _say(f"starting Cove ({inst.name}): {settings.cpus} CPUs, "
         f"{settings.memory_mib // 1024 if settings.memory_mib >= 1024 else settings.memory_mib}"
         f"{'G' if settings.memory_mib >= 1024 else 'M'} memory, {settings.disk_gib}G disk")
    proc = lifecycle.spawn_backend(inst)
    st = _wait_running(inst, proc)
    info = lifecycle.engine_info(inst)
    took = time.monotonic() - t0
    print(f"Cove is running ({took:.1f} s): Docker engine {info.get('ServerVersion')}, "
          f"{st.get('accel')}; docker context '{inst.context_name}'"
          + ("" if not args.no_activate else " (not made current)"))
    return 0


# -- stop / restart / status -------------------------------------------------------------


def cmd_stop(args: argparse.Namespace) -> int:
    inst = _instance(args)
    t0 = time.monotonic()
    if not lifecycle.stop_backend(inst, save=not args.power_off):
        print(f"Cove ({inst.name}) is not running")
        return 0
    saved = "; its state is saved: the next start resumes it where it was" \
        if lifecycle.has_saved_state(inst) else ""
    print(f"Cove ({inst.name}) stopped ({time.monotonic() - t0:.1f} s){saved}")
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    inst = _instance(args)
    lifecycle.stop_backend(inst)
    for name in ("cpus", "memory", "disk"):
        setattr(args, name, None)
    args.no_activate = not lifecycle.activates(inst)
    return cmd_start(args)


def cmd_status(args: argparse.Namespace) -> int:
    inst = _instance(args)
    st = lifecycle.status_of(inst)
    engine, engine_text = _engine_mode(inst)
    defaults = default_paths(inst, st)
    if args.json:
        print(json.dumps({**st, "engine": engine, "default_paths": defaults}, indent=2))
        return 0
    print(f"Cove ({st['instance']}): {st['state']}"
          + (" (its VM still runs without a backend)" if st.get("orphan_pid") else "")
          + (" (its VM's state is saved: `cove start` resumes it)"
             if st.get("saved_state") else "")
          + (" (restored from its saved state)" if st.get("restored") else ""))
    if st.get("reason"):
        print(f"  reason:  {st['reason'].splitlines()[0]}")
    rows = [("engine", engine_text), ("version", st.get("engine_version") or "-"),
            ("docker", st["docker_host"]),
            ("context", st["context"]), ("cpus", st["cpus"]),
            ("memory", f"{st['memory'] / GIB:.1f} GiB"), ("disk", f"{st['disk'] / GIB:.0f} GiB"),
            ("accel", st.get("accel") or "-"), ("uptime", f"{st.get('uptime', 0):.0f} s"),
            ("default", ", ".join(defaults) or (
                "none" if sys.platform == "win32" else "none (cove setup default-socket)"))]
    if (saver := st.get("resource_saver")) is not None:
        minutes = saver.get("minutes", 0)
        rows.append(("saver", "off" if not minutes else
                     f"rests after {minutes:g} idle min"
                     + (" (resting now)" if saver.get("resting") else "")))
    for k, v in rows:
        print(f"  {k + ':':8} {v}")
    disk = st.get("data_disk") or {}
    if note := data_disk_message(disk.get("level", ""), disk.get("size", 0),
                                 disk.get("free", 0), st.get("disk", 0) // GIB):
        print(f"  {note}")
    for p in st.get("ports") or []:
        if p.get("state") in PortState.TROUBLE:
            print(f"  port {p['host_port']}/{p['proto']} ({p['container'] or 'host network'})"
                  f": {p['reason']}")
    return 0


def _engine_mode(inst: Instance) -> tuple[str, str]:
    """The active engine mode and its status line text ("unknown" when engine.json is
    unreadable: status still answers, and says why)."""
    try:
        mode = windows_engine.load_mode(inst.home)
    except windows_engine.EngineStateError as e:
        return "unknown", f"unknown ({e})"
    return mode, f"{mode} ({windows_engine.DESCRIPTIONS[mode]})"


def cmd_ports(args: argparse.Namespace) -> int:
    inst = _instance(args)
    st = lifecycle.status_of(inst)
    ports = st.get("ports") or []
    if args.json:
        print(json.dumps(ports, indent=2))
        return 0
    if not is_up(st["state"]):
        print(f"Cove ({inst.name}) is {st['state']}: no ports are forwarded")
        return 0
    print(f"{'HOST':24} {'GUEST':7} {'PROTO':5} {'CONTAINER':24} STATE")
    for p in ports:
        host = ",".join(f"[{a}]:{p['host_port']}" if ":" in a else f"{a}:{p['host_port']}"
                        for a in p["host_addresses"])
        state = p["state"] if p["state"] not in PortState.TROUBLE else \
            f"{p['state']}: {p['reason']}"
        print(f"{host:24} {p['guest_port']:<7} {p['proto']:5} "
              f"{p['container'] or '(host network)':24} {state}")
    return 0


# -- engine ------------------------------------------------------------------------------


def engine_switcher(inst: Instance) -> windows_engine.Switcher:
    """The engine switcher for `inst` (tests replace it with one built on fakes)."""

    def start_vm() -> None:
        # The VM starts as with `cove start`; a backend already booting is followed.
        proc = None
        if not lifecycle.is_running(inst):
            lifecycle.ensure_image(inst.load_settings().arch, progress=_say)
            proc = lifecycle.spawn_backend(inst)
        _wait_running(inst, proc)

    return windows_engine.switcher_for(inst, start_vm)


def cmd_engine(args: argparse.Namespace) -> int:
    """`cove engine use linux|windows` and `cove engine status`."""
    inst = _instance(args)
    sw = engine_switcher(inst)
    if args.action == "status":
        st = sw.status()
        if args.json:
            print(json.dumps(st, indent=2))
            return 0
        for i, e in enumerate([st, *st["others"]]):
            up = f"running (Docker {e['version'] or '?'})" if e["running"] else "not running"
            if i == 0:
                print(f"engine: {e['mode']} ({e['description']}), {up}")
                print(f"  endpoint: {e['endpoint']}")
                print(f"  context:  {inst.context_name} points at it")
            else:
                print(f"  also:     {e['mode']} ({e['description']}), {up}")
        return 0
    if not args.mode:
        raise CliError("cove engine use needs an engine: linux or windows")
    if args.dockerd:
        if args.mode != "windows":
            raise CliError("--dockerd is for the windows engine: "
                           "cove engine use windows --dockerd PATH")
        win = sw.engines["windows"]
        assert isinstance(win, windows_engine.WindowsEngine)
        settings = win.load_settings()
        settings.dockerd = args.dockerd
        win.save_settings(settings)
    if args.mode == "linux":
        _say("switching to the Linux engine (the Cove VM starts if it is not running)")
    else:
        _say("switching to Windows containers (dockerd.exe starts if it is not running)")
    res = sw.switch(args.mode)
    left = "" if res.previous == res.mode else f"; the {res.previous} engine was left running"
    print(f"engine: {res.mode} ({windows_engine.DESCRIPTIONS[res.mode]})"
          f"{', Docker ' + res.version if res.version else ''}; docker context "
          f"'{inst.context_name}' points at {res.endpoint}{left}")
    return 0


# -- shares ------------------------------------------------------------------------------


def _share_paths(entries: list[Any]) -> list[str]:
    return [p for p, _ in parse_shares(entries)]


def cmd_shares(args: argparse.Namespace) -> int:
    """List, add or remove shared folders; a change to a running VM's set asks first."""
    inst = _instance(args)
    settings = inst.load_settings()
    st = lifecycle.status_of(inst)
    running = st["state"] in (State.RUNNING, State.STARTING, State.DEGRADED)
    if args.action == "list":
        _list_shares(st, parse_shares(settings.shares), running, args.json)
        return 0
    if not args.path:
        raise CliError(f"cove shares {args.action} needs a folder path")
    # Kept in the setting's own normal form (on Windows: C:\Users\me), so a folder given
    # another way (c:/users/me/) is found again.
    path = _share_paths([os.path.normpath(os.path.abspath(os.path.expanduser(args.path)))])[0]
    changed = False

    def change(s: Settings) -> bool:
        # Under the settings lock, on the file as it is now: what another program saved
        # meanwhile stays.
        nonlocal changed
        changed = _change_shares(s, args.action, path, args.transport)
        return changed

    inst.update_settings(change)
    if not changed:
        return 0
    verb = "shared" if args.action == "add" else "no longer shared"
    if not running:
        print(f"{path} is {verb} from the next start")
        return 0
    _say(f"{path} is {verb} once the VM restarts (running containers stop; those with a "
         "restart policy start again).")
    restart = args.restart
    if restart is None:
        restart = sys.stdin.isatty() and input("Restart now? [y/N] ").strip().lower() in (
            "y", "yes")
    if not restart:
        print("Saved. Run `cove restart` to apply it.")
        return 0
    args.no_activate = not lifecycle.activates(inst)
    lifecycle.stop_backend(inst)
    for name in ("cpus", "memory", "disk"):
        setattr(args, name, None)
    return cmd_start(args)


def _change_shares(settings: Settings, action: str, path: str, transport: str) -> bool:
    """Add or remove `path` in `settings`; False (said why) when nothing changes."""
    before = _share_paths(settings.shares)
    if action == "add":
        if not Path(path).is_dir():
            raise CliError(f"{path} is not a folder on this computer")
        if path in before:
            print(f"{path} is already shared")
            return False
        entry: Any = path if transport == "auto" else {"path": path, "transport": transport}
        settings.shares = [*settings.shares, entry]
        return True
    if path not in before:
        raise CliError(f"{path} is not shared; shared folders: {', '.join(before) or 'none'}")
    settings.shares = [e for e in settings.shares if _share_paths([e])[0] != path]
    return True


def _list_shares(st: Status, saved: list[tuple[str, str]], running: bool,
                 as_json: bool) -> None:
    booted = {sh["path"]: sh["transport"] for sh in st.get("shares") or []}
    failed = {sh["path"]: sh["error"] for sh in st.get("shares") or [] if sh.get("error")}
    in_vm = {sh["path"]: sh.get("vm_path", sh["path"]) for sh in st.get("shares") or []}
    if as_json:
        print(json.dumps([{"path": p, "transport": booted.get(p, t),
                           "mounted": p in booted and p not in failed,
                           "vm_path": in_vm.get(p, p),
                           **({"error": failed[p]} if p in failed else {})}
                          for p, t in saved], indent=2))
        return
    if not saved:
        print("No folder is shared with the VM (add one: cove shares add PATH)")
    for path, transport in saved:
        where = f"mounted ({booted[path]})" if path in booted else (
            "after a restart" if running else transport)
        if path in failed:
            where = f"not mounted ({booted[path]}): {failed[path]}"
        elif in_vm.get(path, path) != path:
            where += f" at {in_vm[path]} in the VM"
        print(f"{path:40} {where}")
    for path in booted:
        if path not in dict(saved):
            print(f"{path:40} mounted until the next restart (removed from settings)")


# -- delete / reset ----------------------------------------------------------------------


def _confirm(question: str, force: bool) -> None:
    if force:
        return
    if not sys.stdin.isatty():
        raise CliError(f"{question} Refusing without a terminal to ask; add --force")
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise CliError("cancelled")


def cmd_delete(args: argparse.Namespace) -> int:
    inst = _instance(args)
    if not inst.exists():
        print(f"Cove ({inst.name}) does not exist")
        return 0
    _confirm(f"Delete instance '{inst.name}' with all its images, containers and volumes?",
             args.force)
    for note in lifecycle.delete_instance(inst):
        _say(f"note: {note}")
    print(f"Cove ({inst.name}) deleted")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    inst = _instance(args)
    _confirm(f"Reset '{inst.name}' to factory defaults? This deletes its data disk (all "
             "images, containers and volumes) and its settings.", args.force)
    for note in lifecycle.reset_instance(inst):
        _say(f"note: {note}")
    print(f"Cove ({inst.name}) is reset to factory defaults; `cove start` starts it afresh")
    return 0


# -- logs / version ----------------------------------------------------------------------


def cmd_logs(args: argparse.Namespace) -> int:
    inst = _instance(args)
    names = [args.name] if args.name else ["backend", "agent", "dockerd", "containerd"]
    for name in names:
        if len(names) > 1:
            print(f"==> {name} <==")
        if name in ("backend", "serial"):
            path = inst.backend_log if name == "backend" else inst.serial_log
            try:
                text = path.read_text(errors="replace")
            except OSError:
                text = ""
            lines = text.splitlines()[-args.lines:]
            print("\n".join(_format_backend_line(ln) if name == "backend" else ln
                            for ln in lines))
        else:
            try:
                print(lifecycle.client(inst).logs(name, args.lines))
            except ControlError as e:
                print(f"(unavailable: {e})")
    if args.follow:
        _follow(inst.backend_log)
    return 0


def _format_backend_line(line: str) -> str:
    try:
        e = json.loads(line)
        ts = time.strftime("%H:%M:%S", time.localtime(e["time"]))
        return f"{ts} {e['level']:7} {e['message']}"
    except (ValueError, KeyError, TypeError):
        return line


def _follow(path: Path) -> None:
    with path.open() as f:
        f.seek(0, os.SEEK_END)
        try:
            while True:
                line = f.readline()
                if line:
                    print(_format_backend_line(line.rstrip("\n")), flush=True)
                else:
                    time.sleep(0.3)
        except KeyboardInterrupt:
            return


def cmd_shell(args: argparse.Namespace) -> int:
    inst = _instance(args)
    st = lifecycle.status_of(inst)
    if not is_up(st["state"]):  # degraded too: when a shell is needed most
        raise CliError(f"Cove ({inst.name}) is {st['state']}; start it with `cove start`")
    # SSH reaches the VM without the backend: wake it, and keep it awake while the shell
    # is open (the Resource Saver would pause it under the user's feet).
    awake = _KeepAwake(inst)
    try:
        return _shell(inst, st, args)
    finally:
        awake.close()


class _KeepAwake:
    """Tells the backend every few seconds that the VM is in use (`wake`)."""

    EVERY = 20.0

    def __init__(self, inst: Instance) -> None:
        self.inst = inst
        self._stop = threading.Event()
        self._wake()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="keep-awake")
        self._thread.start()

    def _wake(self) -> None:
        try:
            lifecycle.client(self.inst).request("wake")
        except (ControlError, OSError) as e:
            log.debug("wake: %s", e)

    def _loop(self) -> None:
        while not self._stop.wait(self.EVERY):
            self._wake()

    def close(self) -> None:
        self._stop.set()


def _shell(inst: Instance, st: Any, args: argparse.Namespace) -> int:
    from desktop import ssh

    try:
        if args.cmd:
            import shlex

            return ssh.run(inst.folder, st["ssh_port"], shlex.join(args.cmd))
        if not sys.stdin.isatty():
            return ssh.run(inst.folder, st["ssh_port"], "sh -s", feed_stdin=True)
        return ssh.interactive(inst.folder, st["ssh_port"])
    except (OSError, EOFError) as e:
        raise CliError(f"could not open a shell in the VM: {e}") from e
    except Exception as e:  # paramiko's SSHException family
        raise CliError(f"could not open a shell in the VM: {e}") from e


def cmd_setup(args: argparse.Namespace) -> int:
    """`cove setup hyperv`: register the hvsock service the Hyper-V guest link uses (an
    administrator's one-time step; everything after runs as the user).
    `cove setup default-socket`: point /var/run/docker.sock at the instance."""
    if args.what == "default-socket":
        return _setup_default_socket(args)
    from desktop.drivers import DriverError, hyperv

    if sys.platform != "win32":
        raise CliError("cove setup hyperv is for Windows hosts with Hyper-V; this host "
                       f"is {sys.platform} and uses QEMU")
    try:
        key = hyperv.setup()
    except DriverError as e:
        raise CliError(str(e)) from e
    print(f"Hyper-V is set up for Cove (guest link service registered: {key})")
    return 0


def _invoking_users_instance(args: argparse.Namespace) -> Instance:
    """The instance of the user who ran `sudo cove ...` (not root's), unless COVE_HOME
    names one: the default socket must point at that user's socket."""
    sudo_user = os.environ.get("SUDO_USER")
    if os.name == "posix" and os.geteuid() == 0 and sudo_user and sudo_user != "root" \
            and not os.environ.get("COVE_HOME"):
        import pwd

        try:
            home = Path(pwd.getpwnam(sudo_user).pw_dir) / ".cove"
        except KeyError:
            raise CliError(f"SUDO_USER {sudo_user!r} is not a user here; set COVE_HOME "
                           "to the instance's folder's parent") from None
        return Instance(args.instance, home=home)
    return _instance(args)


def _setup_default_socket(args: argparse.Namespace) -> int:
    if sys.platform == "win32":
        raise CliError("on Windows the docker CLI's default is the docker_engine pipe, "
                       "which Cove serves while no other engine holds it (setting "
                       "docker_engine_pipe); there is no socket to set up")
    inst = _invoking_users_instance(args)
    try:
        if args.remove:
            if defaultsocket.release(inst.docker_socket):
                print(f"{defaultsocket.DEFAULT_SOCKET} no longer points at Cove "
                      f"({inst.name})")
            else:
                print(f"{defaultsocket.DEFAULT_SOCKET} does not point at Cove ({inst.name}):"
                      f" left as it is ({defaultsocket.describe()})")
            return 0
        if not inst.exists():
            raise CliError(f"Cove ({inst.name}) does not exist; start it first (cove start)")
        if not defaultsocket.points_at(inst.docker_socket):
            _confirm(f"Point {defaultsocket.DEFAULT_SOCKET} at Cove ({inst.name})? Tools "
                     "that use the default Docker socket will then use Cove.", args.force)
        print(defaultsocket.claim(inst.docker_socket))
    except defaultsocket.DefaultSocketError as e:
        raise CliError(str(e)) from e
    print("`cove delete` takes it back; so does `cove setup default-socket --remove`.")
    return 0


def default_paths(inst: Instance, st: Status) -> list[str]:
    """The well-known engine paths Cove serves for `inst` now: /var/run/docker.sock when
    it points at the instance; on Windows the docker_engine pipe when Cove holds it."""
    if sys.platform == "win32":
        from desktop.platform.winpipe import DOCKER_ENGINE

        return [DOCKER_ENGINE] if (st.get("docker_engine") or {}).get("served") else []
    ours = defaultsocket.points_at(inst.docker_socket)
    return [str(defaultsocket.DEFAULT_SOCKET)] if ours else []


def cmd_version(args: argparse.Namespace) -> int:
    """The version, and which guest image `cove start` would boot and where it comes from
    (a packaged Cove's own read-only image, or one built on this machine)."""
    import platform

    from desktop.settings import default_arch
    from vm_image import builder
    from vm_image.cli import SOURCE_TEXT

    packaged = ", packaged" if builder.is_packaged() else ""
    print(f"cove {__version__} (python {platform.python_version()}, {sys.platform}{packaged})")
    arch = default_arch()
    img = builder.find_image(arch)
    if img is None:
        print(f"guest image: none: {builder.missing_image_message(arch)}")
    else:
        print(f"guest image: {img.key}, {SOURCE_TEXT[img.source]}: {img.path}")
    return 0


def cmd_backend(args: argparse.Namespace) -> int:
    from desktop import backend

    return backend.main(args.instance)


def cmd_desktop(args: argparse.Namespace) -> int:
    from desktop.tray import app

    return app.main(["--instance", args.instance] + (["--no-start"] if args.no_start else []))


def cmd_image(args: argparse.Namespace) -> int:
    from vm_image import cli as image_cli

    return image_cli.run(args)


# -- parser ------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """One line naming the problem (argparse's usage block goes with --help)."""
        self.exit(2, f"cove: error: {self.prog.removeprefix('cove ')}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cove", description="Run Linux containers on this "
                                "computer: a small VM with the Docker engine.")
    p.add_argument("--version", action="version", version=f"cove {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("--instance", "-i", default=os.environ.get("COVE_INSTANCE",
                        DEFAULT_INSTANCE), help="instance name (default: default)")
        sp.set_defaults(func=func)
        return sp

    def positive_int(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{v!r} is not a whole number") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"{n} is too few; use at least 1")
        return n

    def minutes(v: str) -> float:
        try:
            return check_resource_saver(float(v))
        except (ValueError, SettingsError) as e:
            raise argparse.ArgumentTypeError(
                f"{v!r}: a number of minutes from 0 (never) to "
                f"{MAX_RESOURCE_SAVER_MINUTES}") from e

    s = add("start", cmd_start, "start Cove (boots the VM and the engine)")
    s.add_argument("--cpus", type=positive_int, help="virtual CPUs")
    s.add_argument("--memory", help="memory, e.g. 4G or 2048M")
    s.add_argument("--disk", help="data disk size, e.g. 64G (grow only)")
    s.add_argument("--resource-saver", type=minutes, metavar="MINUTES",
                   help="pause the idle VM after MINUTES with no container running and no "
                        "client (0: never; default 5); applies at once")
    s.add_argument("--arch", choices=["amd64", "arm64"],
                   help="the VM's architecture, for a new instance (default: this host's)")
    s.add_argument("--no-activate", action="store_true",
                   help="do not make the cove docker context current")
    sp = add("stop", cmd_stop, "stop Cove: the VM's state is saved for the next start "
             "where it can be (no shared folders, QEMU on Linux or macOS), otherwise "
             "containers are stopped gracefully and the VM shut down")
    sp.add_argument("--power-off", action="store_true",
                    help="shut the VM down even where its state could be saved (the next "
                    "start boots)")
    r = add("restart", cmd_restart, "stop and start Cove")
    r.set_defaults(no_activate=False)
    st = add("status", cmd_status, "show whether Cove runs, and its resources")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    d = add("delete", cmd_delete, "delete an instance and its data disk")
    d.add_argument("--force", "-f", action="store_true", help="do not ask")
    rs = add("reset", cmd_reset, "reset an instance to factory defaults (deletes its data)")
    rs.add_argument("--force", "-f", action="store_true", help="do not ask")
    pt = add("ports", cmd_ports, "list the container ports forwarded to this computer")
    pt.add_argument("--json", action="store_true", help="machine-readable output")
    sr = add("shares", cmd_shares, "list, add or remove host folders shared with the VM")
    sr.add_argument("action", nargs="?", choices=["list", "add", "remove"], default="list")
    sr.add_argument("path", nargs="?", help="the host folder")
    sr.add_argument("--transport", choices=list(SHARE_TRANSPORTS), default="auto",
                    help="how the folder is shared (default: virtiofs where possible; "
                         "link: Cove's own file server, what Windows uses)")
    sr.add_argument("--json", action="store_true", help="machine-readable list")
    rg = sr.add_mutually_exclusive_group()
    rg.add_argument("--restart", dest="restart", action="store_true", default=None,
                    help="restart the VM at once if the change needs it")
    rg.add_argument("--no-restart", dest="restart", action="store_false",
                    help="only save the change")
    lg = add("logs", cmd_logs, "show the backend's, agent's and engine's logs")
    lg.add_argument("name", nargs="?", choices=["backend", "agent", "dockerd", "containerd",
                                                "serial"])
    lg.add_argument("--follow", "-f", action="store_true")
    lg.add_argument("--lines", "-n", type=positive_int, default=50)
    en = add("engine", cmd_engine, "switch between Linux containers (the VM) and Windows "
             "containers (native dockerd.exe, Windows only)")
    en.add_argument("action", choices=["use", "status"])
    en.add_argument("mode", nargs="?", choices=list(windows_engine.MODES),
                    help="the engine to use: linux or windows")
    en.add_argument("--dockerd", metavar="PATH", help="where dockerd.exe is (windows)")
    en.add_argument("--json", action="store_true", help="machine-readable status")
    su = add("setup", cmd_setup, "one-time, elevated host set-up (Windows: Hyper-V's guest "
             "link service)")
    su.add_argument("what", choices=["hyperv", "default-socket"],
                    help="hyperv (Windows); default-socket: point /var/run/docker.sock "
                         "at this instance (as root; macOS and Linux)")
    su.add_argument("--remove", action="store_true",
                    help="default-socket: take /var/run/docker.sock back")
    su.add_argument("--force", "-f", action="store_true", help="do not ask")
    sh = add("shell", cmd_shell, "a shell (or a command) in the VM, over SSH")
    sh.add_argument("cmd", nargs=argparse.REMAINDER, help="command to run instead of a shell")
    add("version", cmd_version, "print Cove's version")
    add("backend", cmd_backend, argparse.SUPPRESS)
    dt = add("desktop", cmd_desktop, "start the Cove tray app (and Cove with it)")
    dt.add_argument("--no-start", action="store_true",
                    help="do not start the backend when it is not running")
    img = sub.add_parser("image", help="build or locate the guest image")
    from vm_image import cli as image_cli

    image_cli.add_arguments(img)
    img.set_defaults(func=cmd_image)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (CliError, SettingsError, ControlError, lifecycle.LifecycleError,
            windows_engine.EngineError, context.ContextError) as e:
        print(f"cove: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`cove status | head -2`): no traceback, and none at exit
        # when Python flushes stdout again. 141 is what a shell reports for SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141
