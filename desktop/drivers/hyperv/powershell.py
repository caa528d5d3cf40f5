"""Run one PowerShell script and get its JSON result back: the Hyper-V driver's transport.

Each call is one ``powershell.exe`` process (Windows PowerShell 5.1, which every Windows
10/11 has; the Hyper-V module is a Windows PowerShell module). The script goes in as
``-EncodedCommand`` (base64 of UTF-16LE), not on stdin with ``-Command -``:

* stdin passes through the console's input code page, so a path such as
  ``C:\\Users\\Jürgen`` would arrive mangled; UTF-16LE carries every character;
* ``-Command -`` reads the script line by line like an interactive prompt (a multi-line
  block needs a blank line to end, and a parse error leaves the exit status at 0);
* the price is the command-line limit (32767 UTF-16 units): a script may be up to about
  12 000 characters (`MAX_SCRIPT`), ten times the longest one the driver sends.

Every script is wrapped by `wrap`: errors stop it (``$ErrorActionPreference = 'Stop'``),
output is UTF-8, and a failure is written to stderr as one ``COVE-ERROR <id> <message>``
line and exit status 1, which `classify` turns into a `PowerShellError` naming the
problem and its fix. A script reports its result by writing one JSON document
(``ConvertTo-Json -Compress``) to stdout; `run` returns it parsed (None if it wrote none).

Values put into a script go through `quote` (`desktop.platform.powershell`: a single-quoted
literal, in which PowerShell expands nothing; the five characters it takes for a single
quote are doubled).

`Recorded` is the fake for tests: it answers scripts from recorded transcripts
(``tests/unit/fixtures/hyperv/*.json``) and keeps the scripts it was given.

Exceptions::

    DriverError
    +-- PowerShellError       kind: "not-installed", "missing-module", "permission",
                              "not-found", "timeout", "bad-output", "failed"
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from desktop.drivers import DriverError
from desktop.platform.powershell import quote

log = logging.getLogger(__name__)
__all__ = ["Call", "PowerShell", "PowerShellError", "Recorded", "quote"]

EXE = "powershell.exe"
ARGS = ("-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-EncodedCommand")
MAX_SCRIPT = 12000  # characters: base64(UTF-16LE) must fit in a 32767-unit command line
ERROR_MARK = "COVE-ERROR"
HYPERV_ADMINS_SID = "S-1-5-32-578"  # the built-in "Hyper-V Administrators" group

PRELUDE = """\
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
[Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false
try {
"""
POSTLUDE = """
} catch {
  $e = $_
  $id = [string]$e.FullyQualifiedErrorId
  $msg = ([string]$e.Exception.Message) -replace '\\s+', ' '
  [Console]::Error.WriteLine("COVE-ERROR $id $msg")
  exit 1
}
"""


class PowerShellError(DriverError):
    """A PowerShell script failed; `kind` sorts the cause, the message names the fix."""

    def __init__(self, message: str, kind: str = "failed", detail: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.detail = detail


def wrap(body: str) -> str:
    """The script as it is run: error handling and UTF-8 output around `body`."""
    indented = "\n".join("  " + line if line else "" for line in body.strip("\n").splitlines())
    return PRELUDE + indented + POSTLUDE


def encode(script: str) -> str:
    """`-EncodedCommand`'s argument: base64 of the script in UTF-16LE."""
    return base64.b64encode(script.encode("utf-16-le")).decode("ascii")


def command(script: str, exe: str = EXE) -> list[str]:
    """The full command line that runs `script` (already wrapped)."""
    if len(script) > MAX_SCRIPT:
        raise ValueError(f"PowerShell script of {len(script)} characters is over the "
                         f"{MAX_SCRIPT}-character limit of -EncodedCommand")
    return [exe, *ARGS, encode(script)]


# What a failure looks like -> (kind, what to tell the user). Matched on the error's
# text, lower-cased; the first match wins.
_CAUSES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("missing-module",
     ("is not recognized as the name of a cmdlet", "commandnotfoundexception",
      "the specified module 'hyper-v' was not loaded"),
     "the Hyper-V PowerShell module is missing; enable Hyper-V in an elevated PowerShell "
     "(Enable-WindowsOptionalFeature -Online -FeatureName Microsoft-Hyper-V-All) and "
     "restart Windows, or use the QEMU driver"),
    ("permission",
     ("you do not have the required permission", "access is denied",
      "unauthorizedaccess", "requires elevation", "registry access is not allowed"),
     "you are not allowed to manage Hyper-V; add yourself to the Hyper-V Administrators "
     "group in an elevated PowerShell (Add-LocalGroupMember -SID "
     f"{HYPERV_ADMINS_SID} -Member $env:USERNAME), then sign out and in again"),
    ("service",
     ("virtual machine management service", "the rpc server is unavailable"),
     "the Hyper-V Virtual Machine Management service is not running; start it in an "
     "elevated PowerShell (Start-Service vmms) or restart Windows"),
    ("not-found",
     ("unable to find a virtual machine", "objectnotfound", "cannot find path",
      "could not find a part of the path", "the system cannot find the file"),
     "Hyper-V does not know it"),
)


def classify(what: str, returncode: int, stdout: str, stderr: str) -> PowerShellError:
    """A failed run's output as a PowerShellError; `what` says what was being done."""
    lines = [ln.strip() for ln in stderr.replace("\r", "").splitlines() if ln.strip()]
    marked = [ln[len(ERROR_MARK):].strip() for ln in lines if ln.startswith(ERROR_MARK)]
    detail = marked[-1] if marked else " ".join(lines)[-600:] or stdout.strip()[-600:]
    # The marked line is "<FullyQualifiedErrorId> <message>"; users want the message.
    message = detail.split(" ", 1)[1] if marked and " " in detail else detail
    low = detail.lower()
    for kind, needles, fix in _CAUSES:
        if any(n in low for n in needles):
            text = f"{what} failed: {message}"
            if kind != "not-found":
                text += f"; {fix}"
            return PowerShellError(text, kind, detail)
    return PowerShellError(
        f"{what} failed (PowerShell exit status {returncode}): {message or 'no error text'}",
        "failed", detail)


def parse_json(what: str, stdout: str) -> Any:
    """The script's JSON result: the last non-empty stdout line (warnings may precede it)."""
    lines = [ln.strip() for ln in stdout.replace("\r", "").splitlines() if ln.strip()]
    if not lines:
        return None
    text = lines[-1].lstrip("\ufeff")
    try:
        return json.loads(text)
    except ValueError:
        raise PowerShellError(f"{what}: PowerShell wrote something that is not JSON: "
                              f"{text[:200]!r}", "bad-output", text) from None


class PowerShell:
    """Runs scripts in powershell.exe, one process per script."""

    def __init__(self, exe: str | None = None) -> None:
        self.exe = exe

    def find(self) -> str | None:
        return self.exe or shutil.which(EXE)

    def execute(self, script: str, timeout: float | None) -> tuple[int, str, str]:
        """Run a wrapped script; (exit status, stdout, stderr). Raises PowerShellError
        when PowerShell is missing or does not finish in time (None: no limit)."""
        exe = self.find()
        if exe is None:
            raise PowerShellError(f"{EXE} not found: Hyper-V is managed through Windows "
                                  "PowerShell, which this host does not have",
                                  "not-installed")
        try:
            proc = subprocess.run(command(script, exe), capture_output=True,
                                  stdin=subprocess.DEVNULL, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PowerShellError(f"PowerShell did not finish within {timeout or 0:.0f} s",
                                  "timeout") from None
        except OSError as e:
            raise PowerShellError(f"cannot run {exe}: {e}", "not-installed") from e
        return (proc.returncode, proc.stdout.decode("utf-8", errors="replace"),
                proc.stderr.decode("utf-8", errors="replace"))

    def run(self, what: str, body: str, timeout: float | None = 60) -> Any:
        """Run `body` (wrapped); its JSON result, or None. Raises PowerShellError."""
        script = wrap(body)
        log.debug("PowerShell (%s):\n%s", what, body)
        code, out, err = self.execute(script, timeout)
        if code != 0:
            raise classify(what, code, out, err)
        return parse_json(what, out)


@dataclass
class Call:
    """One recorded exchange: a script containing every string of `match` gets `stdout`,
    `stderr` and `exit`."""

    match: list[str]
    stdout: str = ""
    stderr: str = ""
    exit: int = 0
    repeat: bool = False  # may answer any number of scripts (polling)


@dataclass
class Recorded(PowerShell):
    """A fake PowerShell answering from recorded transcripts, in order.

    Each script is answered by the first not-yet-used call whose `match` strings all
    occur in it (a `repeat` call is never used up); a script no call matches raises
    AssertionError, so a test sees every script it did not expect. `scripts` keeps the
    bodies (unwrapped) in the order they were run.
    """

    calls: list[Call] = field(default_factory=list)
    scripts: list[str] = field(default_factory=list)
    timeouts: list[float | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(exe="powershell.exe")
        self._used: set[int] = set()

    @classmethod
    def load(cls, *paths: Path) -> Recorded:
        calls: list[Call] = []
        for p in paths:
            data = json.loads(Path(p).read_text(encoding="utf-8"))
            calls += [Call(**c) for c in data["calls"]]
        return cls(calls)

    def add(self, calls: Iterable[Call]) -> None:
        self.calls += list(calls)

    def run(self, what: str, body: str, timeout: float | None = 60) -> Any:
        self.scripts.append(body)
        self.timeouts.append(timeout)
        return super().run(what, body, timeout)

    def execute(self, script: str, timeout: float | None) -> tuple[int, str, str]:
        command(script)  # the same length check as a real run
        for i, c in enumerate(self.calls):
            if i in self._used or not all(m in script for m in c.match):
                continue
            if not c.repeat:
                self._used.add(i)
            return c.exit, c.stdout, c.stderr
        raise AssertionError("no recorded PowerShell output matches this script:\n" + script)

    def unused(self) -> list[Call]:
        return [c for i, c in enumerate(self.calls) if i not in self._used and not c.repeat]
