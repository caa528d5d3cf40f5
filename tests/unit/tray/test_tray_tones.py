"""Text colours readable on a light and a dark theme (WCAG contrast, measured)."""

from __future__ import annotations

import os
from collections.abc import Iterator

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtGui import QColor, QPalette  # noqa: E402
from PySide6.QtWidgets import QApplication, QStyleFactory  # noqa: E402
from pytestqt.qtbot import QtBot  # noqa: E402

from desktop.tray.runform import RunDialog  # noqa: E402
from desktop.tray.screenshots import dark_palette  # noqa: E402
from desktop.tray.tones import ERROR, HINT, contrast, is_dark  # noqa: E402


def _light() -> QPalette:
    style = QStyleFactory.create("Fusion")
    assert style is not None
    return style.standardPalette()


@pytest.fixture
def themed(qapp: QApplication) -> Iterator[QApplication]:
    before = qapp.palette()
    yield qapp
    qapp.setPalette(before)


def test_the_measure_is_wcags() -> None:
    assert contrast(QColor("#000000"), QColor("#ffffff")) == pytest.approx(21.0)
    assert contrast(QColor("#777777"), QColor("#ffffff")) == pytest.approx(4.48, abs=0.01)
    # the grey hint Cove drew before, on a dark window: unreadable
    assert contrast(QColor("#5f6368"), QColor("#2b2d30")) < 3


@pytest.mark.parametrize("pair", [ERROR, HINT], ids=["error", "hint"])
def test_each_tone_reads_on_its_theme(pair: tuple[str, str]) -> None:
    for palette in (_light(), dark_palette()):
        window = palette.color(QPalette.ColorRole.Window)
        colour = QColor(pair[is_dark(palette)])
        assert contrast(colour, window) >= 4.5, (pair, window.name())


def test_a_dialog_made_in_a_dark_theme_takes_the_dark_tone(themed: QApplication,
                                                           qtbot: QtBot) -> None:
    themed.setPalette(dark_palette())
    dark = RunDialog("nginx:1.27", [])
    qtbot.addWidget(dark)
    assert ERROR[1] in dark.error.styleSheet()
    themed.setPalette(_light())
    light = RunDialog("nginx:1.27", [])
    qtbot.addWidget(light)
    assert ERROR[0] in light.error.styleSheet()
