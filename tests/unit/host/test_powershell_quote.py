"""One quoting rule for every PowerShell script Cove writes (desktop.platform.powershell),
read back by PowerShell's own rules (tests/helpers/pwsh.py): the Hyper-V driver's
scripts and the Windows engine's install, which runs as administrator."""

from __future__ import annotations

import pytest

from desktop.drivers.hyperv import powershell as hyperv_powershell
from desktop.platform.powershell import SINGLE_QUOTES, quote
from desktop.windows_engine import engine as winengine
from tests.helpers.pwsh import QUOTES, read_literal, unquote

# Each single-quote character, alone and in a value that would inject code if it ended
# the string: `'; Remove-Item ...` run elevated.
HOSTILE = [f"PC\\o{q}brien" for q in QUOTES] + \
    [f"x{q}; Remove-Item -Recurse C:\\ ; {q}" for q in QUOTES] + \
    [q * 3 for q in QUOTES] + ["".join(QUOTES), "$(Stop-Computer)", "`n$env:X", "plain"]


def test_the_five_quote_characters_are_powershells() -> None:
    assert set(SINGLE_QUOTES) == set(QUOTES) == {"'", "\u2018", "\u2019", "\u201a", "\u201b"}


@pytest.mark.parametrize("value", HOSTILE)
def test_a_quoted_value_reads_back_whole(value: str) -> None:
    assert unquote(quote(value)) == value


def test_nul_is_refused() -> None:
    with pytest.raises(ValueError):
        quote("a\0b")


def test_one_function_serves_both_scripts() -> None:
    assert hyperv_powershell.quote is quote
    assert winengine.quote is quote


@pytest.mark.parametrize("user", HOSTILE)
def test_the_elevated_install_keeps_a_user_name_inside_its_literal(user: str) -> None:
    """Each assignment line of the install script is `$name = <one literal>`, nothing after."""
    binpath = f'"C:\\Users\\{user}\\dockerd.exe" --run-service'
    script = winengine.install_script(binpath, user, update=False)
    values = {}
    for line in script.splitlines():
        if line.startswith(("$user = ", "$bin = ")):
            name, _, rest = line.partition(" = ")
            value, end = read_literal(rest)
            assert rest[end:] == "", f"code after the literal: {line!r}"
            values[name] = value
    assert values == {"$user": user, "$bin": binpath}
