"""The engine switch's errors (all carry a message naming the problem and the fix)::

    EngineError                  anything a user can meet here
     +-- EngineStateError        engine.json is unreadable (it is left as it is)
     +-- SwitchRefused           the chosen engine cannot run on this computer
"""

from __future__ import annotations


class EngineError(Exception):
    """A user-facing engine error: the message names the problem and the fix."""


class EngineStateError(EngineError):
    """engine.json cannot be read; it is kept for the user to fix or move aside."""


class SwitchRefused(EngineError):
    """The chosen engine cannot run here (wrong host, missing feature or program)."""
