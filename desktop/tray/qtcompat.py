"""Emitting Qt signals from Python, safely on every PySide6 version Cove meets.

PySide6 6.12's ``SignalInstance.emit`` returns ``True`` without a reference of its own,
so each emission takes one reference from the interpreter's ``True``; on Python 3.11
(where ``True`` is not immortal) a long-running tray would eventually free it and
abort ("bool_dealloc"). `emit` gives the reference back when this PySide6 is one that
takes it, as measured once at import (a fixed PySide6 is left alone).
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

from PySide6.QtCore import QObject, Signal


class _Probe(QObject):
    ping = Signal()


def _emit_takes_true() -> bool:
    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(8):
        probe.ping.emit()
    return before - sys.getrefcount(True) >= 8


_TAKES_TRUE = sys.implementation.name == "cpython" and _emit_takes_true()


def emit(signal: Any, *args: Any) -> None:
    """`signal.emit(*args)`."""
    result = signal.emit(*args)
    if _TAKES_TRUE and result is True:
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(True))
