"""The diagnostics bundle (desktop.tray.diagnostics): redaction and the zip."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from desktop.instance import Instance
from desktop.settings import Settings
from desktop.tray.diagnostics import REDACTED, build_bundle, redact, redact_text
from tests.helpers.paths import REPO


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


def test_redact_json_escaped_inside_a_json_log_line() -> None:
    line = ('{"level": "info", "msg": "agent said {\\"token\\": \\"s3cr3t-abc\\", '
            '\\"password\\": \\"a\\\\\\"b\\", \\"cpus\\": 2}"}')
    out = redact_text(line)
    assert "s3cr3t" not in out and 'a\\\\\\"b' not in out
    assert out == ('{"level": "info", "msg": "agent said {\\"token\\": \\"<redacted>\\", '
                   '\\"password\\": \\"<redacted>\\", \\"cpus\\": 2}"}')
    assert json.loads(out)["msg"].startswith('agent said {"token": "<redacted>"')


def test_redact_sig_query_parameter() -> None:
    url = "GET https://blob.example/c/f?sv=2022&sig=AbC%2Bdef0123%3D&se=2030"
    assert redact_text(url) == f"GET https://blob.example/c/f?sv=2022&sig={REDACTED}"


def test_redact_amz_signature() -> None:
    url = "https://b.s3.example/k?X-Amz-Date=20240101&X-Amz-Signature=0f1e2d3c4b5a69788796a5b4"
    assert redact_text(url) == f"https://b.s3.example/k?X-Amz-Date=20240101&X-Amz-Signature={REDACTED}"


def test_redact_session() -> None:
    assert redact_text("cookie jar: session=9f8e7d6c5b4a; path=/") == \
        f"cookie jar: session={REDACTED}; path=/"


def test_redact_any_key_ending_in_key() -> None:
    assert redact_text("api_key=k-1234 secret_key=abcd encryption-key: zzz9 mode=x") == \
        f"api_key={REDACTED} secret_key={REDACTED} encryption-key: {REDACTED} mode=x"
    assert redact_text('{"account_key": "AAAA", "keyboard": "us"}') == \
        f'{{"account_key": "{REDACTED}", "keyboard": "us"}}'


def test_redact_bare_forge_tokens() -> None:
    gh, pat = "ghp_" + "a1B2" * 9, "github_pat_11ABCDEFG0" + "x" * 60
    gl, oauth = "glpat-" + "Zz9_" * 5, "gho_" + "Q" * 36
    text = f"cloned with {gh} then {pat}, pushed with {gl} ({oauth})"
    assert redact_text(text) == \
        f"cloned with {REDACTED} then {REDACTED}, pushed with {REDACTED} ({REDACTED})"


def test_redact_a_key_whose_begin_line_the_tail_cut_off() -> None:
    body = "Rm9vYmFyYmF6cXV4\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\nAB==\n"
    text = body + "-----END PRIVATE KEY-----\nbackend: running\n"
    assert redact_text(text) == f"{REDACTED}\nbackend: running\n"
    escaped = 'cqhkiG9w0B\\nAQEFAASC\\n-----END RSA PRIVATE KEY-----\\n", "level": "info"}\n'
    assert redact_text(escaped) == f'{REDACTED}\\n", "level": "info"}}\n'


def test_an_end_line_after_other_text_is_not_taken_for_a_cut_key() -> None:
    text = 'the agent expects "-----END PRIVATE KEY-----" last\nnext line\n'
    assert redact_text(text) == text


@pytest.mark.parametrize("text", ['"x_" * 50_000', '"a" * 100_000', '"http://" + "u" * 100_000'])
def test_a_long_run_of_word_characters_costs_its_length_not_its_square(text: str) -> None:
    """A 100 KB blob in a log (base64, a minified line) took minutes: every position
    started a key that scanned the rest of the run. (In a process of its own: a regex
    holds the interpreter until it ends.)"""
    code = f"from desktop.tray.diagnostics import redact_text; redact_text({text})"
    try:
        subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"redacting {text} took more than 10 s")


ORDINARY_LINES = [
    "booting the VM (accelerator: tcg)",
    '{"time": "2024-05-01T10:00:00", "level": "info", "msg": "engine running (27.1.1)"}',
    "9p: walk stopped at 'keyboard': [Errno 2] No such file or directory",
    "container web: port 8080/tcp on 127.0.0.1 -> 80",
    "signal=15 received; stopping (reason: requested)",
    "design: sigma=0.5 monkey=1 keyboard=us",
    "GET /v1.45/containers/json?all=1&limit=10 HTTP/1.1",
    '{"msg": "share \\"/home/me/src\\" mounted over link", "cpus": 4}',
    "-----BEGIN CERTIFICATE-----",
    "kernel: ghost_ penguin glpat",
]


def test_ordinary_log_lines_are_left_intact() -> None:
    for line in ORDINARY_LINES:
        assert redact_text(line) == line, line


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
