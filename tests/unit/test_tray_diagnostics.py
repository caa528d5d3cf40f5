"""The diagnostics bundle (desktop.tray.diagnostics): redaction and the zip."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from desktop.instance import Instance, Settings
from desktop.tray.diagnostics import REDACTED, build_bundle, redact, redact_text


def test_redact_secret_keys_in_json() -> None:
    data = {"token": "ab" * 32, "auths": {"registry.example": {"auth": "dXNlcjpwYXNz"}},
            "Password": "hunter2", "ssh_authorized_key": "ssh-ed25519 AAAA me@host",
            "cpus": 4, "name": "web", "nested": [{"api_key": "k-123", "ok": "fine"}],
            "token_expired": False}
    assert redact(data) == {"token": REDACTED, "auths": REDACTED, "Password": REDACTED,
                            "ssh_authorized_key": REDACTED, "cpus": 4, "name": "web",
                            "nested": [{"api_key": REDACTED, "ok": "fine"}],
                            "token_expired": False}


def test_redact_environment_values_keeps_names() -> None:
    data = {"Config": {"Env": ["PATH=/usr/bin", "DB_PASSWORD=hunter2", "EMPTY="],
                       "Image": "postgres:16"},
            "environment": {"HOME": "/root", "AWS_SECRET_ACCESS_KEY": "abc"}}
    assert redact(data) == {"Config": {"Env": [f"PATH={REDACTED}", f"DB_PASSWORD={REDACTED}",
                                               f"EMPTY={REDACTED}"], "Image": "postgres:16"},
                            "environment": {"HOME": REDACTED,
                                            "AWS_SECRET_ACCESS_KEY": REDACTED}}


def test_redact_text() -> None:
    cases = {
        'header COVE/1 0123456789abcdef0123456789abcdef control': f"header COVE/1 {REDACTED} "
                                                                  "control",
        'Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc': f"Authorization: Bearer {REDACTED}",
        'proxy http://alice:s3cret@proxy:3128 set': f"proxy http://{REDACTED}@proxy:3128 set",
        '{"token": "deadbeef", "cpus": 2}': f'{{"token": "{REDACTED}", "cpus": 2}}',
        "password=hunter2 user=bob": f"password={REDACTED} user=bob",
        "docker run -e API_TOKEN=xyz -e MODE=dev img": f"docker run -e API_TOKEN={REDACTED} "
                                                       f"-e MODE={REDACTED} img",
        "export HOME=/home/me": f"export HOME={REDACTED}",
        "booting the VM (accelerator: tcg)": "booting the VM (accelerator: tcg)",
        "container web: port 8080/tcp": "container web: port 8080/tcp",
    }
    for text, want in cases.items():
        assert redact_text(text) == want, text


def test_redact_private_key_block() -> None:
    text = "key:\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaA\nAAAA\n" \
           "-----END OPENSSH PRIVATE KEY-----\nafter"
    assert redact_text(text) == f"key:\n{REDACTED}\nafter"


def test_bundle_contents(tmp_path: Path) -> None:
    inst = Instance("t", home=tmp_path / "h")
    inst.ensure_folder()
    inst.save_settings(Settings(cpus=1, memory_mib=1024, engine_config={
        "registry-mirrors": ["https://bob:pw@mirror.example"]}, shares=[]))
    inst.backend_log.write_text(json.dumps({"message": "link header COVE/1 " + "f" * 64}) + "\n")
    inst.events_log.write_text('{"event": "error", "reason": "DB_PASSWORD=x in env"}\n')
    inst.boot_config.write_text(json.dumps({"token": "f" * 64}))
    dest = build_bundle(inst, tmp_path / "out" / "d.zip",
                        docker_info=lambda: {"ServerVersion": "26.1.5",
                                             "HttpProxy": "http://a:b@p:1"},
                        status=lambda: {"state": "running", "engine_version": "26.1.5"})
    with zipfile.ZipFile(dest) as z:
        names = sorted(z.namelist())
        files = {n.split("/", 1)[1]: z.read(n).decode() for n in names}
    assert set(files) == {"README.txt", "versions.json", "settings.json", "status.json",
                          "docker-info.json", "logs/backend.log", "logs/events.log"}
    everything = "\n".join(files.values())
    assert "f" * 64 not in everything  # the per-boot token (boot.json is never read)
    assert "bob:pw" not in everything and "a:b@" not in everything
    assert f"DB_PASSWORD={REDACTED}" in files["logs/events.log"]
    assert json.loads(files["settings.json"])["cpus"] == 1
    assert json.loads(files["docker-info.json"])["ServerVersion"] == "26.1.5"
    versions = json.loads(files["versions.json"])
    assert versions["cove"] and versions["qt"] and versions["engine"]["ServerVersion"] == \
        "26.1.5"
    assert json.loads(files["status.json"]) == {"state": "running", "engine_version": "26.1.5"}


def test_bundle_when_cove_is_stopped(tmp_path: Path) -> None:
    inst = Instance("t", home=tmp_path / "h")

    def unreachable() -> dict:
        raise ConnectionError("the Docker engine is not running")

    dest = build_bundle(inst, tmp_path / "d.zip", docker_info=unreachable)
    with zipfile.ZipFile(dest) as z:
        info = json.loads(z.read("cove-diagnostics/docker-info.json"))
        status = json.loads(z.read("cove-diagnostics/status.json"))
    assert info == {"unavailable": "the Docker engine is not running"}
    assert status == {"unavailable": "Cove is not running"}
