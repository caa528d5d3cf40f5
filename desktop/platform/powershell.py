"""Values in PowerShell scripts: one quoting rule for every script Cove writes (the
Hyper-V driver's, the Windows engine's elevated install).

A value goes into a script only as a single-quoted literal, in which PowerShell expands
nothing (no ``$var``, no ``$(...)``, no backtick escapes). PowerShell's tokenizer takes
any of five characters as a single quote: ``'`` and the typographic U+2018, U+2019,
U+201A and U+201B (a user name or folder such as ``C:\\Users\\O’Brien`` has one). Inside
the literal, a quote character followed by another is one literal character; a lone one
ends the string. So each of the five is doubled, or the rest of the value would run as
code (in a script run as administrator, for the engine's install).
"""

from __future__ import annotations

SINGLE_QUOTES = "'\u2018\u2019\u201a\u201b"


def quote(value: object) -> str:
    """`value` as a single-quoted PowerShell literal: nothing in it is expanded."""
    text = str(value)
    if "\0" in text:
        raise ValueError("a PowerShell string cannot hold a NUL character")
    return "'" + "".join(ch * 2 if ch in SINGLE_QUOTES else ch for ch in text) + "'"
