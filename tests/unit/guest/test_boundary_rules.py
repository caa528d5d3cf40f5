"""The guest's side of the container boundary, without a VM: the boot secret taken out
of sysfs, and the firewall rules that close the host's Cove ports to containers."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from guest_engine import agent, protocol
from guest_engine.boot import config, network, system


class Kernel:
    """sysfs as the kernel keeps it: unloading the module (when it is one) or unbinding
    the device removes /sys/firmware/qemu_fw_cfg; a built-in driver cannot be unloaded."""

    def __init__(self, root: Path, built_in: bool) -> None:
        self.sysfs = root / "firmware" / "qemu_fw_cfg"
        raw = self.sysfs / "by_name" / protocol.FW_CFG_NAME / "raw"
        raw.parent.mkdir(parents=True)
        raw.write_text(json.dumps({"token": "s3cret"}))
        self.driver = root / "bus" / "platform" / "drivers" / "fw_cfg"
        self.driver.mkdir(parents=True)
        (self.driver / "QEMU0002:00").symlink_to(root)
        (self.driver / "module").symlink_to(root)
        self.built_in = built_in
        self.unbound: list[str] = []
        self.commands: list[list[str]] = []

    def run(self, cmd: list[str], check: bool = True, **kw: object) -> subprocess.CompletedProcess:
        self.commands.append(cmd)
        ok = cmd == ["modprobe", "-r", "qemu_fw_cfg"] and not self.built_in
        if ok:
            shutil.rmtree(self.sysfs)
        return subprocess.CompletedProcess(cmd, 0 if ok else 1, "", "")

    def write_unbind(self, path: Path, text: str) -> None:
        assert path == self.driver / "unbind"
        self.unbound.append(text)
        shutil.rmtree(self.sysfs, ignore_errors=True)


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           request: pytest.FixtureRequest) -> Kernel:
    k = Kernel(tmp_path, built_in=request.param)
    monkeypatch.setattr(system, "run", k.run)
    real = Path.write_text

    def write_text(self: Path, text: str, *a: object, **kw: object) -> int:
        if self.name == "unbind":
            k.write_unbind(self, text)
            return len(text)
        return real(self, text, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", write_text)
    monkeypatch.setattr(config, "FW_CFG_DRIVER", k.driver)
    return k


@pytest.mark.parametrize("kernel", [False, True], indirect=True, ids=["module", "built-in"])
def test_the_boot_config_is_read_then_gone_from_sysfs(kernel: Kernel,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config.vsock, "vsock_transport", lambda: "")
    assert config.read_boot_config(kernel.sysfs) == {"token": "s3cret"}
    assert not kernel.sysfs.exists()
    assert kernel.unbound == (["QEMU0002:00"] if kernel.built_in else [])


def _calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []

    def run(cmd: list[str], check: bool = True, **kw: object) -> subprocess.CompletedProcess:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(system, "run", run)
    return calls


def test_the_private_ports_are_closed_to_containers_and_the_vm(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _calls(monkeypatch)
    network.close_host_ports("10.0.2.2", [41000, 41001], loopback_open=True)
    rules = [" ".join(c) for c in calls if "-I" in c]
    for port in (41000, 41001):
        for chain in ("OUTPUT", "DOCKER-USER"):
            # Only a connection's opening segment: the host's own connections, whose
            # replies may go to any port, pass.
            assert (f"iptables -w -I {chain} -d 10.0.2.2 -p tcp --syn --dport {port} "
                    "-j REJECT --reject-with tcp-reset") in rules
    assert len(rules) == 4


def test_a_closed_loopback_refuses_every_new_container_connection_to_the_host(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _calls(monkeypatch)
    network.close_host_ports("10.0.2.2", [], loopback_open=False)
    rules = [" ".join(c) for c in calls if "-I" in c]
    assert rules == [
        "iptables -w -I DOCKER-USER -d 10.0.2.2 -p tcp --syn -j REJECT --reject-with tcp-reset",
        "iptables -w -I DOCKER-USER -d 10.0.2.2 -p udp -j REJECT"]


class _Info:
    def __init__(self, config: dict) -> None:
        self.config = config
        self.network = {"gateway": "10.0.2.2", "interface": "eth0"}
        self.errors: list[str] = []


def test_the_agent_takes_only_real_ports_from_the_boot_config(
        monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[tuple] = []
    monkeypatch.setattr(network, "close_host_ports", lambda *a: got.append(a))
    a = agent.Agent.__new__(agent.Agent)
    a.info = _Info({"private_host_ports": [41000, "41001", True, 0, 70000, -1, 41002],
                    "containers_reach_host_loopback": "no"})
    a._close_host_ports()
    # Anything but false leaves the default (open); a bad port entry is dropped.
    assert got == [("10.0.2.2", [41000, 41002], True)]
