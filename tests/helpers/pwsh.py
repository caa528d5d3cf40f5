"""PowerShell's reading of a single-quoted string literal, written from its language
specification (not from Cove's `quote`): the literal opens at any of the five single-quote
characters; inside, a quote character followed by another quote character is one literal
character (the second); any other lone quote character ends the string."""

from __future__ import annotations

QUOTES = "'\u2018\u2019\u201a\u201b"


def read_literal(text: str, start: int = 0) -> tuple[str, int]:
    """The value of the single-quoted literal at `text[start]`, and the index just past
    its closing quote. AssertionError when no literal starts there or it never ends."""
    assert text[start] in QUOTES, f"no single-quoted literal at {start}: {text!r}"
    out, i = [], start + 1
    while i < len(text):
        ch = text[i]
        if ch in QUOTES:
            if i + 1 < len(text) and text[i + 1] in QUOTES:
                out.append(text[i + 1])
                i += 2
                continue
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise AssertionError(f"unterminated literal: {text!r}")


def unquote(literal: str) -> str:
    """The value of `literal`, which must be exactly one single-quoted literal."""
    value, end = read_literal(literal)
    assert end == len(literal), f"the literal ends early, at {end}: {literal!r}"
    return value
