"""Text colours that stay readable on a light and on a dark desktop theme.

A colour picked for a light window (a grey hint, a red error) is hard to read on a dark
one; each tone here is a pair, and `tone` takes the one for the widget's palette. Both
of a pair reach WCAG's 4.5:1 contrast against their theme's window (a unit test
measures it on Fusion's light palette and a dark one).
"""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QWidget

ERROR = ("#c62828", "#ff8a80")  # (on a light window, on a dark one)
HINT = ("#5f6368", "#a8adb3")


def is_dark(palette: QPalette) -> bool:
    return palette.color(QPalette.ColorRole.Window).lightness() < 128


def tone(widget: QWidget, pair: tuple[str, str]) -> str:
    """The colour of `pair` for the theme `widget` is drawn in (as it is when asked: a
    widget takes it when made)."""
    return pair[is_dark(widget.palette())]


def contrast(a: QColor, b: QColor) -> float:
    """WCAG 2's contrast ratio of two colours (1 to 21)."""
    def luminance(c: QColor) -> float:
        def channel(v: float) -> float:
            return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4
        return (0.2126 * channel(c.redF()) + 0.7152 * channel(c.greenF())
                + 0.0722 * channel(c.blueF()))
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)
