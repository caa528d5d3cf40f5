"""The diagnostics bundle: one zip a user can attach to a bug report.

It holds the instance's logs, its settings, the versions of everything involved, the
backend's status and the engine's `docker info`, each passed through `redact` first:
values of secret-looking keys (tokens, passwords, keys, auth, sessions, signatures: in
JSON, in JSON escaped inside a JSON log line, in ``key=value`` and URL queries),
environment values (``NAME=value`` becomes ``NAME=<redacted>``), credentials in URLs,
private keys (also one whose BEGIN line the log's tail cut off), bearer tokens and the
forges' own tokens (``ghp_...``, ``github_pat_...``, ``glpat-...``) are removed. Files
that only hold secrets (boot.json with the per-boot token, the SSH key) are never read.
"""

from __future__ import annotations

import json
import platform
import re
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from desktop import __version__, home
from desktop.instance import Instance

REDACTED = "<redacted>"
LOG_TAIL_BYTES = 2 * 2**20  # the last 2 MiB of each log

SECRET_KEY = re.compile(
    r"(pass(word|wd|phrase)?|secret|token|auth|credential|cookie|session|signature"
    r"|api[_-]?key|access[_-]?key|private[_-]?key|^key$|_key$|-key$|^sig$)", re.IGNORECASE)
ENV_KEYS = {"env", "environment", "environ"}

_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|\Z)",
                  re.DOTALL)
_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
_PEM_END = re.compile(r"-----END [A-Z ]*PRIVATE KEY-----")
# What stands before a key's END line when the tail began inside the key: base64 lines
# (raw, or with JSON's "\n" escapes in a JSON log line).
_PEM_BODY = re.compile(r"(?:[A-Za-z0-9+/=\s]|\\[nr])*")
# GitHub's personal, OAuth, user, server and refresh tokens, its fine-grained PATs,
# GitLab's PATs: recognisable alone, with no key before them.
_FORGE_TOKEN = re.compile(
    r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}|glpat-[A-Za-z0-9_-]{20,})")
_LINK_HEADER = re.compile(r"(COVE/\d+\s+)[0-9a-fA-F]{16,}")
_BEARER = re.compile(r"\b(Bearer|Basic|token)(\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
_URL_CREDS = re.compile(r"(?<![a-zA-Z0-9+.-])([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@")
# "token": "...", token=..., password: ..., sig=..., X-Amz-Signature=..., api_key=...:
# a key (a whole word, optionally quoted, also with escaped quotes: \"token\": \"...\", as
# JSON inside a JSON log line's message is) and its separator; `_redact_key_values` keeps
# the secret-looking ones and redacts the value after them. Keys are matched from a word's
# start only (the lookbehind) and judged apart, so a long run of word characters costs its
# length once, not its square.
_KEY = re.compile(r"""(?<![\w.-])(?P<name>[\w.-]+)(?:\\?["'])?(?P<sep>\s*[:=]\s*)""")
_SECRET_NAME = re.compile(
    r"pass(?:word|wd|phrase)?|secret|token|auth|credential|cookie|session|signature"
    r"|api[_-]?key|access[_-]?key|private[_-]?key|^sig$|[_-]key$", re.IGNORECASE)
# A string inside a JSON string, escaped: \"...\" whose own escapes are doubled.
_ESCAPED_STRING = r'\\"(?:[^"\\]|\\\\\\["\\]|\\\\[^"\\]|\\[^"\\])*\\"'
_VALUE = re.compile(
    rf"""(?!(?:Bearer|Basic)\s)(?:{_ESCAPED_STRING}|"(?:[^"\\]|\\.)*"|'[^']*'|[^\s,;}}\]]+)""",
    re.IGNORECASE)
# Environment assignments: FOO=bar, -e FOO=bar, export FOO=bar.
_ENV_ASSIGN = re.compile(
    r"(?<![\w/.-])(?P<name>[A-Z_][A-Z0-9_]*)=(?P<value>\"[^\"]*\"|'[^']*'|\S+)")


def _cut_key(text: str) -> str:
    """A log tail that begins inside a private key: base64 lines, then its END line.
    Everything up to that line is the key's."""
    end = _PEM_END.search(text)
    if end is None or _PEM_BEGIN.search(text, 0, end.start()) is not None:
        return text
    if not _PEM_BODY.fullmatch(text, 0, end.start()):
        return text  # an END line after other text: not a key the tail cut
    return REDACTED + text[end.end():]


def redact_text(text: str) -> str:
    """`text` with secrets and environment values replaced by <redacted>."""
    text = _PEM.sub(REDACTED, _cut_key(text))
    text = _LINK_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _URL_CREDS.sub(lambda m: m.group(1) + REDACTED + "@", text)
    text = _BEARER.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = _FORGE_TOKEN.sub(REDACTED, text)

    text = _redact_key_values(text)
    return _ENV_ASSIGN.sub(lambda m: f"{m.group('name')}={REDACTED}", text)


def _redact_key_values(text: str) -> str:
    """The value after each secret-looking key (`_KEY`, `_SECRET_NAME`) redacted, its
    quotes kept."""
    out: list[str] = []
    pos = 0
    for m in _KEY.finditer(text):
        if m.start() < pos or not _SECRET_NAME.search(m.group("name")):
            continue  # inside a value redacted already, or not a secret's key
        v = _VALUE.match(text, m.end())
        if v is None:
            continue
        value = v.group(0)
        quote = '\\"' if value.startswith('\\"') else \
            value[0] if value[:1] in ("'", '"') else ""
        out += [text[pos:m.end()], quote, REDACTED, quote]
        pos = v.end()
    out.append(text[pos:])
    return "".join(out)


def _redact_env(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED for k in value}
    if isinstance(value, list):
        return [f"{str(v).split('=', 1)[0]}={REDACTED}" if isinstance(v, str) else REDACTED
                for v in value]
    return REDACTED


def redact(value: Any) -> Any:
    """A copy of a JSON-like value with secrets and environment values removed."""
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            key = str(k)
            if key.lower() in ENV_KEYS:
                out[k] = _redact_env(v)
            elif SECRET_KEY.search(key) and not isinstance(v, (bool, int, float, type(None))):
                out[k] = REDACTED
            else:
                out[k] = redact(v)
        return out
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def _tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str | None:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError:
        return None
    return data.decode("utf-8", "replace")


def versions(engine: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"cove": __version__, "python": platform.python_version(),
                           "platform": platform.platform(), "machine": platform.machine()}
    try:
        import PySide6
        from PySide6.QtCore import qVersion

        out["pyside6"] = PySide6.__version__
        out["qt"] = qVersion()
    except ImportError:
        pass
    try:
        import docker

        out["docker_sdk"] = docker.__version__
    except ImportError:
        pass
    if engine:
        out["engine"] = {k: engine.get(k) for k in ("ServerVersion", "KernelVersion",
                                                      "OperatingSystem", "Architecture",
                                                      "NCPU", "MemTotal", "Driver")}
    return out


LOGS = (home.BACKEND_LOG, home.EVENTS_LOG, home.SERIAL_LOG, home.QEMU_LOG, home.BACKEND_OUT,
        home.SERIAL_CRASH_LOG)


def build_bundle(inst: Instance, dest: Path,
                 docker_info: Callable[[], dict[str, Any]] | None = None,
                 status: Callable[[], Any] | None = None) -> Path:
    """Write the zip to `dest` and return it. `docker_info` and `status` are asked for
    the engine's info and the backend's status; a failure is recorded, not raised."""

    def ask(fn: Callable[[], Any] | None) -> Any:
        if fn is None:
            return {"unavailable": "Cove is not running"}
        try:
            return fn()
        except Exception as e:
            return {"unavailable": str(e)}

    info = ask(docker_info)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        def put(name: str, text: str) -> None:
            z.writestr(f"cove-diagnostics/{name}", text)

        put("README.txt",
            f"Cove diagnostics for instance '{inst.name}', {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
            "Secrets, tokens and environment values were replaced by <redacted>.\n")
        put("versions.json", json.dumps(redact(versions(info if "unavailable" not in info
                                                         else None)), indent=2))
        for name in LOGS:
            text = _tail(inst.folder / name)
            if text is not None:
                put(f"logs/{name}", redact_text(text))
        try:
            settings: Any = json.loads(inst.settings_file.read_text())
        except (OSError, ValueError) as e:
            settings = {"unavailable": str(e)}
        put("settings.json", json.dumps(redact(settings), indent=2))
        put("status.json", json.dumps(redact(ask(status)), indent=2))
        put("docker-info.json", json.dumps(redact(info), indent=2))
    return dest


def default_name() -> str:
    return f"cove-diagnostics-{time.strftime('%Y%m%d-%H%M%S')}.zip"
